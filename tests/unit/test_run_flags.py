"""`run`'s flags come from the settings model: every setting has one, with its env variable in the help."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from agent.cli import build_parser
from agent.cli.flags import options_from
from agent.cli.run import RunCommand
from agent.errors import ConfigError
from agent.runtime.app import run_agent
from agent.runtime.settings import AgentSettings, MetricsSettings, load_settings
from connectors.kafka_security import KafkaSecurity
from connectors.kafka_tuning import KafkaTuning
from tests.support.environment import clear_agent_environment


@pytest.fixture(autouse=True)
def without_dknn_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_agent_environment(monkeypatch)  # the settings come from these tests alone


def setting_overrides(namespace: argparse.Namespace) -> dict[str, object]:
    """The settings the run flags give, nested as the settings model is."""
    return dict(options_from(namespace, RunCommand).settings)  # type: ignore[attr-defined]


def run_parser() -> argparse.ArgumentParser:
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices["run"]


def test_every_setting_has_a_flag_naming_its_environment_variable() -> None:
    flags = {opt: action for action in run_parser()._actions for opt in action.option_strings}
    sections = {"kafka_security": KafkaSecurity, "metrics": MetricsSettings, "kafka_tuning": KafkaTuning}
    expected = [(name, f"DKNN_{name.upper()}") for name in AgentSettings.model_fields if name not in sections]
    for section, model in sections.items():
        secret = {name for name, info in model.model_fields.items() if "SecretStr" in str(info.annotation)}
        expected += [
            (f"{section}_{name}", f"DKNN_{section.upper()}__{name.upper()}")
            for name in model.model_fields
            if name not in secret
        ]
    for name, env in expected:
        flag = "--" + name.replace("_", "-")
        assert flag in flags, f"setting {name} has no flag {flag}"
        assert env in (flags[flag].help or ""), f"{flag}'s help does not name {env}"
    assert "--kafka-security-sasl-plain-password" not in flags  # secrets: environment or file only
    assert "--metrics-basic-auth-password" not in flags


def test_flags_become_nested_settings_and_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DKNN_DRIFT_ARL_EVENTS", "50")
    monkeypatch.setenv("DKNN_KAFKA_SECURITY__SASL_PLAIN_PASSWORD", "from-env")
    args = run_parser().parse_args(
        [
            "--artifacts",
            "b",
            "--bootstrap-servers",
            "k:9092",
            "--drift-arl-events",
            "1000",
            "--retry-budget-s",
            "5",
            "--kafka-security-security-protocol",
            "SASL_SSL",
            "--kafka-security-sasl-mechanism",
            "PLAIN",
            "--metrics-port",
            "9200",
        ]
    )
    settings = load_settings(None, setting_overrides(args))
    assert (settings.drift_arl_events, settings.retry_budget_s) == (1000.0, 5.0)
    assert settings.metrics.port == 9200  # the section's flags keep their names: --metrics-port
    security = settings.kafka_security
    assert (security.security_protocol, security.sasl_mechanism) == ("SASL_SSL", "PLAIN")
    assert security.sasl_plain_password is not None and security.sasl_plain_password.get_secret_value() == "from-env"


def test_a_choice_flag_refuses_an_unknown_value() -> None:
    with pytest.raises(SystemExit):
        run_parser().parse_args(["--artifacts", "b", "--index", "faiss"])
    with pytest.raises(SystemExit):
        run_parser().parse_args(["--artifacts", "b", "--auto-offset-reset", "none"])


class _ConsumerCreatedError(Exception):
    """Raised by the stand-in KafkaConsumer once it has recorded its configuration."""


def consumer_config(bundle: Path, monkeypatch: pytest.MonkeyPatch, *flags: str) -> dict[str, object]:
    """What `dknn-agent run --artifacts BUNDLE ... FLAGS` hands the KafkaConsumer (a stand-in that
    records its configuration and stops the agent there)."""
    import connectors.kafka

    seen: dict[str, object] = {}

    def consumer(**config: object) -> None:
        seen.update(config)
        raise _ConsumerCreatedError

    monkeypatch.setattr(connectors.kafka, "KafkaConsumer", consumer)
    base = ["--artifacts", str(bundle), "--bootstrap-servers", "k:9092", "--metrics-host", "127.0.0.1"]
    args = run_parser().parse_args([*base, "--metrics-port", "0", *flags])
    with pytest.raises(_ConsumerCreatedError):
        run_agent(load_settings(None, setting_overrides(args)))
    return seen


def test_the_auto_offset_reset_flag_reaches_the_agents_kafka_consumer(
    tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = consumer_config(tiny_bundle, monkeypatch, "--auto-offset-reset", "latest")
    assert (seen["auto_offset_reset"], seen["bootstrap_servers"], seen["group_id"]) == (
        "latest",
        "k:9092",
        "dknn-agent",
    )


def test_kafka_tuning_reaches_the_consumer_and_a_guarantee_key_is_refused_when_settings_load(
    tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tuning = '{"fetch_max_wait_ms": 250, "client_id": "team-a"}'
    seen = consumer_config(tiny_bundle, monkeypatch, "--kafka-tuning-consumer", tuning)
    assert (seen["fetch_max_wait_ms"], seen["client_id"], seen["enable_auto_commit"]) == (250, "team-a", False)
    monkeypatch.setenv("DKNN_KAFKA_TUNING__PRODUCER", '{"acks": 1}')
    with pytest.raises(ConfigError, match=r"kafka_tuning\.producer.*'acks' cannot be set .*all in-sync replicas"):
        load_settings(None, {"artifacts": str(tiny_bundle), "bootstrap_servers": "k:9092"})
    with pytest.raises(SystemExit):
        run_parser().parse_args(["--artifacts", "b", "--kafka-tuning-consumer", "[1, 2]"])
