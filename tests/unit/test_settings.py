"""Settings: precedence of the four sources, nested env, YAML errors, secrets never printed."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from agent.errors import ConfigError
from agent.runtime.settings import AgentSettings, load_settings, masked_dump
from tests.support.environment import agent_environment


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.upper().startswith("DKNN_"):
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    return path


def test_defaults() -> None:
    s = load_settings(None, {"artifacts": "bundle", "bootstrap_servers": "k:9092"})
    assert s.artifacts == Path("bundle")
    assert (s.input_topic, s.quarantine_topic, s.dead_letter_topic) == (
        "inference-events",
        "inference-quarantine",
        "inference-dead-letter",
    )
    assert (s.scores_topic, s.group_id, s.metrics.port, s.threshold) == (None, "dknn-agent", 9108, 0.1)
    assert (s.metrics.host, s.metrics.max_connections, s.metrics.timeout_s) == ("0.0.0.0", 16, 5.0)
    assert (s.batch_size, s.max_batch_wait_s, s.max_event_bytes) == (256, 0.2, 1_048_576)
    assert (s.index, s.search_k, s.drift_arl_events, s.source, s.sink) == ("annoy", None, 8.64e7, None, None)
    assert s.kafka_security.security_protocol == "PLAINTEXT"
    assert s.auto_offset_reset == "earliest"  # what KafkaSource always used: a new group scores the backlog
    with pytest.raises(ValidationError):
        s.threshold = 0.5  # frozen


def test_precedence_cli_over_env_over_yaml_over_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write(
        tmp_path,
        "artifacts: /from/yaml\nbootstrap-servers: yaml:9092\nthreshold: 0.2\nbatch_size: 16\ngroup_id: yaml-group\n",
    )
    monkeypatch.setenv("DKNN_THRESHOLD", "0.3")
    monkeypatch.setenv("DKNN_BATCH_SIZE", "32")
    s = load_settings(config, {"threshold": 0.4, "batch_size": None, "scores_topic": None})
    assert s.threshold == 0.4  # CLI beats env and YAML
    assert s.batch_size == 32  # env beats YAML; a None override is "flag not given"
    assert s.group_id == "yaml-group"  # YAML beats the default
    assert s.bootstrap_servers == "yaml:9092" and s.artifacts == Path("/from/yaml")
    assert s.input_topic == "inference-events"  # default


def test_nested_env_merges_with_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write(
        tmp_path,
        "artifacts: b\nbootstrap_servers: k:9093\n"
        "kafka_security:\n  security_protocol: SASL_SSL\n  ssl_cafile: /ca.pem\n",
    )
    monkeypatch.setenv("DKNN_KAFKA_SECURITY__SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("DKNN_KAFKA_SECURITY__SASL_PLAIN_PASSWORD", "hunter2")
    monkeypatch.setenv("DKNN_SCORES_TOPIC", "")  # empty = unset
    s = load_settings(config, {})
    sec = s.kafka_security
    assert (sec.security_protocol, sec.sasl_mechanism, sec.ssl_cafile) == ("SASL_SSL", "SCRAM-SHA-512", Path("/ca.pem"))
    assert sec.sasl_plain_password is not None and sec.sasl_plain_password.get_secret_value() == "hunter2"
    assert s.scores_topic is None


def test_plain_environment_without_a_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DKNN_ARTIFACTS", "/bundle")
    monkeypatch.setenv("DKNN_SOURCE", "file:/in.jsonl")
    monkeypatch.setenv("DKNN_SINK", "file:/out")
    s = AgentSettings()
    assert s.bootstrap_servers is None and s.source == "file:/in.jsonl"


@pytest.mark.parametrize(
    ("yaml_text", "overrides", "needle"),
    [
        ("artifacts: b\nbootstrap_servers: k\nthreshhold: 0.2\n", {}, "unknown setting threshhold"),
        ("artifacts: b\nkafka_security:\n  sasl_mech: PLAIN\n", {}, "unknown setting kafka_security.sasl_mech"),
        ("artifacts: b\nmetrics:\n  prot: 1\n", {}, "unknown setting metrics.prot"),
        ("artifacts: b\nmetrics_port: 1\nmetrics: {port: 2}\n", {}, "metrics_port and metrics.port both given"),
        ("artifacts: [unclosed\n", {}, "invalid YAML at line"),
        ("- just\n- a list\n", {}, "expected a mapping"),
        ("artifacts: b\nbootstrap_servers: k\nthreshold: 1.5\n", {}, "threshold"),
        ("artifacts: b\nbootstrap_servers: k\nbatch_size: many\n", {}, "batch_size"),
        ("artifacts: b\nbootstrap_servers: k\n", {"input_topic": "bad topic!"}, "input_topic"),
        ("artifacts: b\nbootstrap_servers: k\n", {"index": "faiss"}, "index"),
        ("artifacts: b\nbootstrap_servers: k\nauto_offset_reset: none\n", {}, "auto_offset_reset"),
        ("artifacts: b\nbootstrap_servers: k\n", {"source": "ftp://x"}, "source"),
        ("artifacts: b\nbootstrap_servers: k\n", {"drift_arl_events": 1.0}, "drift_arl_events"),
        ("artifacts: b\nbootstrap_servers: k\n", {"no_such_flag": 1}, "no_such_flag"),
        ("artifacts: b\nbootstrap_servers: k\nkafka_security: {security_protocol: SASL_SSL}\n", {}, "sasl_mechanism"),
        ("artifacts: b\n", {}, "bootstrap_servers is required"),
        ("bootstrap_servers: k\n", {}, "artifacts"),
    ],
)
def test_bad_configuration_is_one_config_error_line(
    tmp_path: Path, yaml_text: str, overrides: dict, needle: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, yaml_text), overrides)
    message = str(info.value)
    assert needle in message and "\n" not in message


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path / "nope.yaml", {"artifacts": "b", "bootstrap_servers": "k"})


def test_empty_yaml_is_all_defaults(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, "# nothing\n"), {"artifacts": "b", "bootstrap_servers": "k"})
    assert s.threshold == 0.1


def test_secrets_are_masked_in_the_dump_and_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DKNN_KAFKA_SECURITY__SASL_PLAIN_PASSWORD", "hunter2")
    s = load_settings(
        None,
        {
            "artifacts": "b",
            "bootstrap_servers": "k",
            "kafka_security": {
                "security_protocol": "SASL_SSL",
                "sasl_mechanism": "PLAIN",
                "sasl_plain_username": "agent",
            },
        },
    )
    dump = masked_dump(s)
    assert dump["kafka_security"]["sasl_plain_password"] == "**********"
    assert dump["kafka_security"]["sasl_plain_username"] == "agent"
    assert dump["artifacts"] == "b" and dump["threshold"] == 0.1
    assert "hunter2" not in repr(dump) and "hunter2" not in repr(s) and "hunter2" not in str(s)
    assert dump["kafka_security"]["security_protocol"] == "SASL_SSL"  # CLI dict merged with env password
    monkeypatch.delenv("DKNN_KAFKA_SECURITY__SASL_PLAIN_PASSWORD")
    assert (
        masked_dump(load_settings(None, {"artifacts": "b", "bootstrap_servers": "k"}))["kafka_security"][
            "sasl_plain_password"
        ]
        is None
    )


def test_a_misspelt_variable_is_refused_with_a_suggestion(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DKNN_TRESHOLD", "0.9")
    with pytest.raises(ConfigError, match=r"unknown setting variable DKNN_TRESHOLD \(did you mean DKNN_THRESHOLD\?\)"):
        load_settings(None, {"artifacts": "b", "bootstrap_servers": "k"})
    settings = load_settings(None, {"artifacts": "b", "bootstrap_servers": "k"}, strict=False)  # warns only
    assert settings.threshold == 0.1
    monkeypatch.delenv("DKNN_TRESHOLD")
    monkeypatch.setenv("DKNN_KAFKA_SECURITY__SASL_MECHANISMS", "PLAIN")
    with pytest.raises(ConfigError, match="did you mean DKNN_KAFKA_SECURITY__SASL_MECHANISM"):
        load_settings(None, {"artifacts": "b", "bootstrap_servers": "k"})


def test_the_agent_knows_only_its_own_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """A script's knob is refused like any unknown variable: whoever starts the agent leaves it out."""
    monkeypatch.setenv("DKNN_TEST_KAFKA", "localhost:1")
    with pytest.raises(ConfigError, match="unknown setting variable DKNN_TEST_KAFKA"):
        load_settings(None, {"artifacts": "b", "bootstrap_servers": "k"})
    shell = {"DKNN_TEST_KAFKA": "localhost:1", "DKNN_THRESHOLD": "0.9", "PATH": "/bin"}
    assert agent_environment({"DKNN_BATCH_SIZE": "8"}, environ=shell) == {"PATH": "/bin", "DKNN_BATCH_SIZE": "8"}


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"dead_letter_topic": "inference-events"}, "is also an output topic"),
        ({"scores_topic": "inference-events"}, "is also an output topic"),
        ({"source": "file:/out/inference-dead-letter.jsonl", "sink": "file:/out"}, "the sink's own"),
        ({"drift_arl_events": float("inf")}, "drift_arl_events"),
        ({"drift_window_events": 5}, "drift_window_events"),
        ({"metrics": {"basic_auth_username": "prometheus"}}, "invalid setting metrics: .* go together"),
        ({"metrics": {"tls_certfile": "/cert.pem"}}, "invalid setting metrics: .* go together"),
        ({"metrics": {"port": 65536}}, "metrics.port"),
        ({"metrics": {"max_connections": 0}}, "metrics.max_connections"),
        ({"metrics": {"timeout_s": 0}}, "metrics.timeout_s"),
        ({"bundle_digest": "sha256:abc"}, "bundle_digest"),
        ({"trusted_factories": "mypkg.models,not a module"}, "is not a module name"),
    ],
)
def test_operator_traps_are_refused(overrides: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        load_settings(None, {"artifacts": "b", "bootstrap_servers": "k", **overrides})


def test_trusted_factories_from_a_comma_separated_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DKNN_TRUSTED_FACTORIES", "dknn_lab.models, mypkg.models")
    settings = load_settings(None, {"artifacts": "b", "bootstrap_servers": "k"})
    assert settings.trusted_factories == ("dknn_lab.models", "mypkg.models")


def test_auto_offset_reset_from_the_file_or_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write(tmp_path, "artifacts: b\nbootstrap_servers: k\nauto-offset-reset: latest\n")
    assert load_settings(config).auto_offset_reset == "latest"
    monkeypatch.setenv("DKNN_AUTO_OFFSET_RESET", "earliest")
    assert load_settings(config).auto_offset_reset == "earliest"


def test_the_metrics_section_from_the_environment_and_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write(tmp_path, "artifacts: b\nbootstrap_servers: k\nmetrics:\n  port: 9200\n  max-connections: 4\n")
    monkeypatch.setenv("DKNN_METRICS__BASIC_AUTH_USERNAME", "prometheus")
    monkeypatch.setenv("DKNN_METRICS__BASIC_AUTH_PASSWORD", "hunter2")
    s = load_settings(config, {"metrics": {"host": "127.0.0.1"}})
    assert (s.metrics.host, s.metrics.port, s.metrics.max_connections) == ("127.0.0.1", 9200, 4)
    assert s.metrics.basic_auth_password is not None and s.metrics.basic_auth_password.get_secret_value() == "hunter2"
    assert masked_dump(s)["metrics"]["basic_auth_password"] == "**********"


def test_the_flat_metrics_names_of_before_still_work_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A deployment written for `metrics_port` / DKNN_METRICS_PORT keeps starting (strict check included)."""
    config = write(tmp_path, "artifacts: b\nbootstrap_servers: k\nmetrics_port: 9200\nmetrics-timeout-s: 2\n")
    monkeypatch.setenv("DKNN_METRICS_HOST", "127.0.0.1")
    monkeypatch.setenv("DKNN_METRICS_BASIC_AUTH_USERNAME", "prometheus")
    monkeypatch.setenv("DKNN_METRICS_BASIC_AUTH_PASSWORD", "hunter2")
    monkeypatch.setenv("DKNN_METRICS_MAX_CONNECTIONS", "8")
    monkeypatch.setenv("DKNN_METRICS__MAX_CONNECTIONS", "32")  # the section's own variable wins
    with caplog.at_level("WARNING", logger="agent.runtime.settings"):
        s = load_settings(config, {}, strict=True)
    metrics = s.metrics
    assert (metrics.host, metrics.port, metrics.timeout_s, metrics.max_connections) == ("127.0.0.1", 9200, 2.0, 32)
    assert metrics.basic_auth_username == "prometheus" and metrics.basic_auth_password is not None
    warnings = [record.getMessage() for record in caplog.records]
    assert "DKNN_METRICS_HOST is deprecated: set DKNN_METRICS__HOST instead" in warnings
    assert f"{config}: metrics_port is deprecated: write it as metrics: {{port: ...}}" in warnings
    assert len(warnings) == 6 and all("\n" not in w and "hunter2" not in w for w in warnings)
    monkeypatch.setenv("DKNN_METRICS_PORT", "9300")  # a flat variable still beats the file, a flag beats both
    assert load_settings(config, {}).metrics.port == 9300
    assert load_settings(config, {"metrics": {"port": 9400}}).metrics.port == 9400
