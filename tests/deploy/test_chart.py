"""The Helm chart (deploy/helm/dknn-agent) rendered by the real helm and checked for what matters in
review: the schema refuses typos, replicas never outnumber partitions, a graceful stop is never cut
short, the agent accepts the config the chart writes, and the rules and dashboards are the ones in
dashboards/ (one source of truth, also after `helm package`)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from agent.runtime.settings import AgentSettings, load_settings, unknown_variables
from tests.deploy.conftest import CHART, MINIMAL, PRODUCTION_VALUES, ROOT, Tools, by_kind, one

RULES = ROOT / "dashboards" / "prometheus" / "rules.yml"
DASHBOARDS = sorted((ROOT / "dashboards" / "grafana").glob("*.json"))
PRODUCTION = ["-f", str(PRODUCTION_VALUES)]
# Every optional part on: what the rules/dashboards checks need.
EVERYTHING = [
    *MINIMAL,
    "--set",
    "serviceMonitor.enabled=true,prometheusRule.enabled=true,grafanaDashboards.enabled=true",
]
# Settings the chart fills in itself (paths, ports, brokers, secrets); the rest are values.config.
CHART_MANAGED = {
    "artifacts",
    "bundle_digest",
    "bootstrap_servers",
    "metrics_host",
    "metrics_port",
    "metrics_tls_certfile",
    "metrics_tls_keyfile",
    "metrics_basic_auth_username",
    "metrics_basic_auth_password",
    "source",
    "sink",
    "kafka_security",
}


def agent_config(docs: list[dict]) -> dict:
    """The agent's config.yaml from the ConfigMap the Deployment mounts."""
    spec = one(docs, "Deployment")["spec"]["template"]["spec"]
    name = next(volume["configMap"]["name"] for volume in spec["volumes"] if volume["name"] == "config")
    (config_map,) = [doc for doc in by_kind(docs, "ConfigMap") if doc["metadata"]["name"] == name]
    return yaml.safe_load(config_map["data"]["config.yaml"])


def test_lint_strict_passes_with_default_and_production_values(tools: Tools) -> None:
    for args in (MINIMAL, PRODUCTION):
        proc = tools.helm_run("lint", "--strict", "--kube-version", "1.33.0", str(CHART), *args, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--set", "kafka.bootstrapServer=kafka:9092"], "bootstrapServer"),  # misspelt key
        ([*MINIMAL, "--set", "config.treshold=0.2"], "treshold"),  # misspelt agent setting
        ([*MINIMAL, "--set", "replicaCount=two"], "replicaCount"),  # wrong type
        ([*MINIMAL, "--set", "autoscaling.mode=vpa"], "/autoscaling/mode"),  # not one of the choices
        ([*MINIMAL, "--set", "config.threshold=1.5"], "threshold"),  # out of the agent's range
        ([*MINIMAL, "--set-json", "prometheusRule.thresholds.deadLetterRate=0.1"], "deadLetterRate"),
        ([*MINIMAL, "--set-json", "prometheusRule.thresholds.deadLetterRatio=1.5"], "deadLetterRatio"),
        ([*MINIMAL, "--set", "prometheusRule.thresholds.deadLetterRatio=0.1"], "deadLetterRatio"),  # a string
        ([*MINIMAL, "--set", "prometheusRule.thresholds.lagMessages=many"], "lagMessages"),
        ([*MINIMAL, "--set", "prometheusRule.thresholds.deadLetterFor=10min"], "deadLetterFor"),
    ],
)
def test_values_schema_refuses_typos_and_bad_values(tools: Tools, args: list[str], complaint: str) -> None:
    proc = tools.template(*args, check=False)
    assert proc.returncode != 0, f"rendered despite {args}"
    assert "values don't meet the specifications of the schema" in proc.stderr
    assert complaint in proc.stderr
    lint = tools.helm_run("lint", "--strict", str(CHART), *args, check=False)
    assert lint.returncode != 0 and complaint in lint.stdout + lint.stderr


def test_schema_covers_exactly_the_settings_the_chart_does_not_set() -> None:
    """A new agent setting must be added to values.schema.json (or to CHART_MANAGED), not be
    silently refused by the chart's schema."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    config = schema["properties"]["config"]
    assert config["additionalProperties"] is False
    assert set(config["properties"]) | CHART_MANAGED == set(AgentSettings.model_fields)
    assert not set(config["properties"]) & CHART_MANAGED


def test_every_object_of_the_schema_is_closed() -> None:
    def walk(node: dict, where: str) -> None:
        if node.get("type") == "object" and "properties" in node:
            assert node.get("additionalProperties") is False, f"{where} accepts unknown keys"
        for key, child in node.get("properties", {}).items():
            walk(child, f"{where}.{key}")

    walk(json.loads((CHART / "values.schema.json").read_text()), "values")


@pytest.mark.parametrize("mode", ["keda", "hpa"])
def test_autoscaling_never_exceeds_the_input_partitions(tools: Tools, mode: str) -> None:
    base = [*MINIMAL, "--set", f"autoscaling.mode={mode},inputPartitions=4"]
    proc = tools.template(*base, "--set", "autoscaling.maxReplicas=5", check=False)
    assert proc.returncode != 0
    assert "autoscaling.maxReplicas 5 exceeds inputPartitions 4" in proc.stderr
    docs = tools.render(*base, "--set", "autoscaling.maxReplicas=4")
    scaler = one(docs, "ScaledObject" if mode == "keda" else "HorizontalPodAutoscaler")
    top = scaler["spec"]["maxReplicaCount" if mode == "keda" else "maxReplicas"]
    assert top == 4
    assert "replicas" not in one(docs, "Deployment")["spec"]  # the autoscaler owns the count


def test_fixed_replicas_never_exceed_the_input_partitions(tools: Tools) -> None:
    proc = tools.template(*MINIMAL, "--set", "replicaCount=7,inputPartitions=6", check=False)
    assert proc.returncode != 0 and "replicaCount 7 exceeds inputPartitions 6" in proc.stderr
    assert (
        one(tools.render(*MINIMAL, "--set", "replicaCount=6,inputPartitions=6"), "Deployment")["spec"]["replicas"] == 6
    )


def test_keda_scales_the_agents_own_group_and_topic_on_lag(tools: Tools) -> None:
    docs = tools.render(*PRODUCTION)
    scaler = one(docs, "ScaledObject")
    config = agent_config(docs)
    trigger = scaler["spec"]["triggers"][0]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["consumerGroup"] == config["group_id"] == "dknn-agent-mnist"
    assert trigger["metadata"]["topic"] == config["input_topic"] == "mnist-inference"
    assert trigger["metadata"]["sasl"] == "scram_sha512" and trigger["metadata"]["tls"] == "enable"
    assert scaler["spec"]["scaleTargetRef"]["name"] == one(docs, "Deployment")["metadata"]["name"]
    auth = one(docs, "TriggerAuthentication")
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    assert {ref["parameter"] for ref in auth["spec"]["secretTargetRef"]} == {"password", "ca"}


@pytest.mark.parametrize(
    "args",
    [
        MINIMAL,
        PRODUCTION,
        [*MINIMAL, "--set", "config.flush_timeout_s=600,config.retry_budget_s=3600,shutdownMarginSeconds=5"],
        [*MINIMAL, "--set-json", "config.flush_timeout_s=0.5", "--set", "config.retry_budget_s=0"],
    ],
)
def test_termination_grace_outlasts_the_agents_flush_and_retry_budget(tools: Tools, args: list[str]) -> None:
    docs = tools.render(*args)
    config = agent_config(docs)
    budget = {name: config[name] for name in ("flush_timeout_s", "retry_budget_s") if name in config}
    settings = AgentSettings(**budget, artifacts=Path("/b"), bootstrap_servers="k:1")
    grace = one(docs, "Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > settings.flush_timeout_s + settings.retry_budget_s


def test_chart_defaults_for_the_stop_budget_are_the_agents(tools: Tools) -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for name in ("flush_timeout_s", "retry_budget_s"):
        assert values["config"][name] == AgentSettings.model_fields[name].default


@pytest.mark.parametrize("args", [MINIMAL, PRODUCTION], ids=["default", "production"])
def test_the_agent_accepts_the_config_and_environment_the_chart_gives_it(
    tools: Tools, args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ConfigMap's YAML through the agent's own loader (strict), with the container's DKNN_*
    variables set, and the paths it names mounted by the Deployment."""
    docs = tools.render(*args)
    deployment = one(docs, "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["--config", "/etc/dknn/config.yaml"]
    env = {item["name"]: item.get("value", "from-secret") for item in container["env"]}
    assert unknown_variables(env) == []
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(agent_config(docs)))
    for name in [name for name in os.environ if name.startswith("DKNN_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(config_file, strict=True)
    assert settings.artifacts == Path("/bundle")
    mounts = {mount["mountPath"] for mount in container["volumeMounts"]}
    assert {"/bundle", "/etc/dknn/config.yaml", "/tmp"} <= mounts
    assert settings.metrics_port == container["ports"][0]["containerPort"]
    security = settings.kafka_security
    for path in (security.ssl_cafile, security.ssl_certfile, security.ssl_keyfile):
        assert path is None or any(str(path).startswith(mount + "/") for mount in mounts), path
    if args == PRODUCTION:
        assert security.security_protocol == "SASL_SSL" and security.sasl_plain_password is not None
        assert settings.bundle_digest is not None and settings.scores_topic == "mnist-scores"


def test_pods_run_locked_down_and_probe_the_agents_endpoints(tools: Tools) -> None:
    spec = one(tools.render(*PRODUCTION), "Deployment")["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0
    assert spec["automountServiceAccountToken"] is False
    for container in spec["containers"] + spec.get("initContainers", []):
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
    (init,) = spec["initContainers"]  # production values: the bundle comes from an image
    source = init["command"][2].removesuffix("/.")
    assert init["volumeMounts"][0]["mountPath"] != source, "the emptyDir would hide the image's bundle"
    agent = spec["containers"][0]
    assert agent["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert agent["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert agent["resources"]["requests"] and agent["resources"]["limits"]["memory"]
    assert {c["topologyKey"] for c in spec["topologySpreadConstraints"]} == {
        "kubernetes.io/hostname",
        "topology.kubernetes.io/zone",
    }


def test_a_new_bundle_version_rolls_the_pods(tools: Tools) -> None:
    def template(version: str) -> dict:
        return one(tools.render(*MINIMAL, "--set", f"bundle.version={version}"), "Deployment")["spec"]["template"]

    assert template("1") != template("2")
    assert template("2")["metadata"]["labels"]["dknn.io/bundle-version"] == "2"


def test_prometheus_rule_is_dashboards_rules_yml(tools: Tools) -> None:
    rule = one(tools.render(*EVERYTHING), "PrometheusRule")
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]


def test_dashboard_configmaps_are_dashboards_grafana(tools: Tools) -> None:
    docs = tools.render(*EVERYTHING)
    shipped = {}
    for config_map in by_kind(docs, "ConfigMap"):
        if config_map["metadata"].get("labels", {}).get("grafana_dashboard") == "1":
            shipped.update(config_map["data"])
    assert DASHBOARDS, "no dashboards in dashboards/grafana/"
    assert shipped == {path.name: path.read_text().rstrip("\n") for path in DASHBOARDS}


def test_scrape_job_matches_the_rules_selector(tools: Tools) -> None:
    """DknnAgentDown selects job=~"dknn-agent.*": the ServiceMonitor's job label must match it."""
    rules = yaml.safe_load(RULES.read_text())["groups"]
    down = next(rule for group in rules for rule in group["rules"] if rule.get("alert") == "DknnAgentDown")
    selector = re.search(r'job=~"([^"]+)"', down["expr"])
    assert selector, down["expr"]
    for release in ("dknn-agent", "fraud"):
        monitor = one(
            [
                doc
                for doc in yaml.safe_load_all(
                    tools.helm_run("template", release, str(CHART), "--kube-version", "1.33.0", *EVERYTHING).stdout
                )
                if doc
            ],
            "ServiceMonitor",
        )
        job = monitor["spec"]["endpoints"][0]["relabelings"][0]
        assert job["targetLabel"] == "job" and re.fullmatch(selector.group(1), job["replacement"])


def test_one_source_of_truth_survives_helm_package(tools: Tools, tmp_path: Path) -> None:
    """The chart links to dashboards/ (git stores links, not copies); `helm package` follows them."""
    listed = subprocess.run(
        ["git", "ls-files", "-s", "deploy/helm/dknn-agent/files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split("\n")
    modes = {line.split()[-1]: line.split()[0] for line in listed if line}
    assert modes == {
        "deploy/helm/dknn-agent/files/grafana": "120000",
        "deploy/helm/dknn-agent/files/prometheus": "120000",
    }
    tools.helm_run("package", str(CHART), "--destination", str(tmp_path))
    (package,) = tmp_path.glob("dknn-agent-*.tgz")
    docs = tools.render(*EVERYTHING, chart=package)
    assert one(docs, "PrometheusRule")["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]
    listing = subprocess.run(["tar", "tzf", str(package)], capture_output=True, text=True, check=True).stdout.split()
    # The rules' template (what the PrometheusRule renders), not its default rendering nor its generator.
    assert sorted(name for name in listing if "/files/" in name) == sorted(
        ["dknn-agent/files/prometheus/rules.yml.in"] + [f"dknn-agent/files/grafana/{path.name}" for path in DASHBOARDS]
    )


# -- the alert thresholds (dashboards/prometheus/rules.yml.in) ---------------------------------

TRAFFIC_ALERTS = {
    "DknnDistributionShiftDetected",
    "DknnTrafficShifted",
    "DknnLowCredibilityRateHigh",
    "DknnDeadLetterRateHigh",
    "DknnConsumerLagGrowing",
}


def _rules_generator() -> ModuleType:
    """dashboards/prometheus/generate.py, loaded by path (dashboards/ is not a package)."""
    spec = importlib.util.spec_from_file_location("dknn_rules_generate", ROOT / "dashboards/prometheus/generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _alerts(groups: list[dict]) -> dict[str, dict]:
    return {rule["alert"]: rule for group in groups for rule in group["rules"] if "alert" in rule}


def test_the_charts_default_thresholds_are_the_ones_rules_yml_is_rendered_with() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["prometheusRule"]["thresholds"] == _rules_generator().DEFAULTS


def test_changed_thresholds_show_up_in_the_prometheus_rule(tools: Tools) -> None:
    changed = {"deadLetterRatio": 0.2, "lagMessages": 250000}
    docs = tools.render(
        *EVERYTHING,
        "--set-json",
        "prometheusRule.thresholds=" + json.dumps(changed),
        "--set",
        "prometheusRule.thresholds.deadLetterFor=30m,prometheusRule.thresholds.trafficShiftedFor=1h",
    )
    groups = one(docs, "PrometheusRule")["spec"]["groups"]
    alerts = _alerts(groups)
    dead = alerts["DknnDeadLetterRateHigh"]
    assert dead["expr"].endswith(" > 0.2") and dead["for"] == "30m"
    assert "(alert above {{ 0.2 | humanizePercentage }} for 30m)" in dead["annotations"]["description"]
    lag = alerts["DknnConsumerLagGrowing"]
    assert " > 250000 and deriv(" in lag["expr"] and lag["for"] == "15m"
    assert alerts["DknnTrafficShifted"]["for"] == "1h" and alerts["DknnLowCredibilityRateHigh"]["for"] == "10m"
    # Exactly what the generator renders with the same thresholds; nothing else moved.
    generate = _rules_generator()
    rendered = generate.render({**generate.DEFAULTS, **changed, "deadLetterFor": "30m", "trafficShiftedFor": "1h"})
    assert groups == yaml.safe_load(rendered)["groups"]
    shipped = _alerts(yaml.safe_load(RULES.read_text())["groups"])
    assert {name for name in alerts if alerts[name] != shipped[name]} == {
        "DknnDeadLetterRateHigh",
        "DknnConsumerLagGrowing",
        "DknnTrafficShifted",
    }


def test_a_threshold_without_a_value_fails_rendering(tools: Tools) -> None:
    proc = tools.template(*EVERYTHING, "--set", "prometheusRule.thresholds.lagMessages=null", check=False)
    assert proc.returncode != 0 and "prometheusRule.thresholds has no value for ${lagMessages}" in proc.stderr


def test_the_charts_alerts_keep_namespace_and_job(tools: Tools) -> None:
    """Two releases with one job name in two namespaces must not merge: every aggregation of every
    rule the chart ships keeps namespace and job, and the traffic alerts do aggregate."""
    groups = one(tools.render(*EVERYTHING), "PrometheusRule")["spec"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    for rule in rules:
        for kept in re.findall(r"\b(?:by|on) \(([^)]*)\)", rule["expr"]):
            assert kept.startswith("namespace, job"), f"{rule.get('alert') or rule['record']}: by/on ({kept})"
        if "record" in rule:
            assert rule["record"].startswith("namespace_job"), rule["record"]
    recorded = {rule["record"]: rule["expr"] for rule in rules if "record" in rule}

    def expand(expr: str) -> str:  # the expression with the recorded series it reads, recursively
        return " ".join([expr, *(expand(recorded[n]) for n in re.findall(r"namespace_job\w*:\w+:\w+", expr))])

    for name, alert in _alerts(groups).items():
        if name in TRAFFIC_ALERTS:
            assert "by (namespace, job" in expand(alert["expr"]), f"{name} does not aggregate"
