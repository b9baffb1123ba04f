"""The Helm chart (deploy/helm/dknn-agent) rendered by the real helm and checked for what matters in
review: the schema refuses typos, replicas never outnumber partitions, a graceful stop is never cut
short, the agent accepts the config the chart writes, the rules and dashboards are the ones in
dashboards/ (one source of truth, also after `helm package`), and every value a platform team
needs to run the agent next to its own model renders as documented."""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import re
import subprocess
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from agent.cli import parse_command
from agent.cli.review import ReviewCommand, settings_from
from agent.runtime.settings import AgentSettings, MetricsSettings, load_settings, unknown_variables
from tests.deploy.conftest import CHART, MINIMAL, PLATFORM_VALUES, PRODUCTION_VALUES, ROOT, Tools, by_kind, one

RULES = ROOT / "dashboards" / "prometheus" / "rules.yml"
DASHBOARDS = sorted((ROOT / "dashboards" / "grafana").glob("*.json"))
PRODUCTION = ["-f", str(PRODUCTION_VALUES)]
PLATFORM = ["-f", str(PLATFORM_VALUES)]
# Every optional part on: what the rules/dashboards checks need.
EVERYTHING = [
    *MINIMAL,
    "--set",
    "serviceMonitor.enabled=true,prometheusRule.enabled=true,grafanaDashboards.enabled=true",
]
# Settings the chart fills in itself (paths, ports, brokers, secrets); the rest are values.config.
CHART_MANAGED = {"artifacts", "bundle_digest", "bootstrap_servers", "source", "sink", "kafka_security"}
# The metrics section's: the chart sets them from its `metrics` values; config.metrics has the rest.
CHART_MANAGED_METRICS = {"host", "port", "tls_certfile", "tls_keyfile", "basic_auth_username", "basic_auth_password"}


def agent_config(docs: list[dict]) -> dict:
    """The agent's config.yaml from the ConfigMap the Deployment mounts."""
    spec = one(docs, "Deployment")["spec"]["template"]["spec"]
    name = next(volume["configMap"]["name"] for volume in spec["volumes"] if volume["name"] == "config")
    (config_map,) = [doc for doc in by_kind(docs, "ConfigMap") if doc["metadata"]["name"] == name]
    return yaml.safe_load(config_map["data"]["config.yaml"])


def test_lint_strict_passes_with_default_and_production_values(tools: Tools) -> None:
    for args in (MINIMAL, PRODUCTION, PLATFORM):
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
        # the values a platform team adds: misspelt keys and bad values
        ([*MINIMAL, "--set", "config.auto_offset_reset=none"], "auto_offset_reset"),
        ([*MINIMAL, "--set", "config.unknown_model=drop"], "unknown_model"),
        ([*MINIMAL, "--set", "config.max_inputs_per_event=0"], "max_inputs_per_event"),
        ([*MINIMAL, "--set", "config.metrics.port=9000"], "port"),  # the chart's own: metrics.port
        ([*MINIMAL, "--set", "config.metrics.timeout_s=0"], "timeout_s"),
        ([*MINIMAL, "--set", "config.metrics_timeout_s=5"], "metrics_timeout_s"),  # the flat name of before
        ([*MINIMAL, "--set", "nameOverride=Fraud_Agent"], "nameOverride"),
        ([*MINIMAL, "--set", "fullnameOverrides=fraud"], "fullnameOverrides"),
        ([*MINIMAL, "--set", "commonLabel.team=ml"], "commonLabel"),
        ([*MINIMAL, "--set-json", "commonLabels.replicas=3"], "/commonLabels/replicas"),
        ([*MINIMAL, "--set-json", 'extraEnvs=[{"name":"A","value":"1"}]'], "extraEnvs"),
        ([*MINIMAL, "--set-json", 'extraEnv={"name":"A"}'], "/extraEnv"),
        ([*MINIMAL, "--set-json", 'extraVolumeMount=[{"name":"a","mountPath":"/a"}]'], "extraVolumeMount"),
        ([*MINIMAL, "--set-json", 'extraVolumeMounts=[{"name":"a"}]'], "mountPath"),
        ([*MINIMAL, "--set-json", 'extraVolume=[{"name":"a","emptyDir":{}}]'], "extraVolume"),
        ([*MINIMAL, "--set-json", 'extraInitContainer=[{"name":"a","image":"b"}]'], "extraInitContainer"),
        ([*MINIMAL, "--set-json", 'extraInitContainers=[{"name":"a"}]'], "image"),
        ([*MINIMAL, "--set", "kafka.tls.ca.existingSecrets=kafka-ca"], "existingSecrets"),
        ([*MINIMAL, "--set", "kafka.tls.client.certkey=user.crt"], "certkey"),
        ([*MINIMAL, "--set", "kafka.tls.clients.existingSecret=user"], "clients"),
        ([*MINIMAL, "--set", "metrics.tls.enable=true"], "enable"),
        ([*MINIMAL, "--set", "metrics.tls.existingsecret=x"], "existingsecret"),
        ([*MINIMAL, "--set", "metrics.basicAuth.passwordkey=pw"], "passwordkey"),
        ([*MINIMAL, "--set", "metrics.basicauth.enabled=true"], "basicauth"),
        ([*MINIMAL, "--set", "serviceMonitor.tlsConfig.insecureSkipVerfy=true"], "insecureSkipVerfy"),
        ([*MINIMAL, "--set", "serviceMonitor.tlsConfig.ca.secrets=ca"], "secrets"),
        ([*MINIMAL, "--set", "serviceMonitor.tlsConfig.servername=a"], "servername"),
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
    metrics = config["properties"]["metrics"]
    assert metrics["additionalProperties"] is False
    assert set(metrics["properties"]) | CHART_MANAGED_METRICS == set(MetricsSettings.model_fields)
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


@pytest.mark.parametrize("args", [MINIMAL, PRODUCTION, PLATFORM], ids=["default", "production", "platform"])
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
    assert settings.metrics.port == container["ports"][0]["containerPort"]
    security = settings.kafka_security
    files = (security.ssl_cafile, security.ssl_certfile, security.ssl_keyfile)
    for path in (*files, settings.metrics.tls_certfile, settings.metrics.tls_keyfile):
        assert path is None or any(str(path).startswith(mount + "/") for mount in mounts), path
    if args == PRODUCTION:
        assert security.security_protocol == "SASL_SSL" and security.sasl_plain_password is not None
        assert settings.bundle_digest is not None and settings.scores_topic == "mnist-scores"
        assert settings.auto_offset_reset == "earliest"  # the agent's default: the chart does not set it
    if args == PLATFORM:
        assert security.security_protocol == "SSL" and None not in files
        assert settings.metrics.tls_certfile is not None and settings.metrics.basic_auth_password is not None
        assert settings.auto_offset_reset == "latest" and settings.model_names == ("fraud-detector",)
        assert settings.trusted_factories == ("fraud_models",)  # from extraEnv
        assert settings.kafka_tuning.producer == {"client_id": "fraud-dknn", "compression_type": "gzip"}


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


@pytest.mark.parametrize("args", [EVERYTHING, PLATFORM], ids=["defaults", "platform"])
def test_the_charts_alerts_keep_namespace_and_job(tools: Tools, args: list[str]) -> None:
    """Two releases with one job name in two namespaces must not merge: every aggregation of every
    rule the chart ships keeps namespace and job, and the traffic alerts do aggregate."""
    groups = one(tools.render(*args), "PrometheusRule")["spec"]["groups"]
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


# -- names and labels --------------------------------------------------------------------------


def test_name_overrides_rename_every_object_and_keep_the_scrape_job(tools: Tools) -> None:
    rules = yaml.safe_load(RULES.read_text())["groups"]
    down = _alerts(rules)["DknnAgentDown"]["expr"]
    selector = re.search(r'job=~"([^"]+)"', down)
    assert selector
    keda = ["--set", "autoscaling.mode=keda,kafka.securityProtocol=SSL,kafka.tls.existingSecret=kafka-ca"]
    for override, fullname, app_name in (
        (["--set", "nameOverride=fraud-agent"], "dknn-agent-fraud-agent", "fraud-agent"),
        (["--set", "fullnameOverride=fraud-dknn"], "fraud-dknn", "dknn-agent"),
        (["--set", "fullnameOverride=fraud-dknn,nameOverride=fraud-agent"], "fraud-dknn", "fraud-agent"),
    ):
        docs = tools.render(*EVERYTHING, *keda, *override)
        for doc in docs:
            name = doc["metadata"]["name"]
            assert name == fullname or name.startswith(fullname + "-"), f"{doc['kind']} {name}"
            assert doc["metadata"]["labels"]["app.kubernetes.io/name"] == app_name
        deployment = one(docs, "Deployment")
        selected = deployment["spec"]["selector"]["matchLabels"]
        assert selected["app.kubernetes.io/name"] == app_name
        assert selected.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
        assert one(docs, "Service")["spec"]["selector"] == selected
        monitor = one(docs, "ServiceMonitor")
        assert monitor["spec"]["selector"]["matchLabels"] == selected
        (relabel,) = monitor["spec"]["endpoints"][0]["relabelings"]
        assert re.fullmatch(selector.group(1), relabel["replacement"]), relabel
        assert one(docs, "ScaledObject")["spec"]["scaleTargetRef"]["name"] == fullname


@pytest.mark.parametrize(
    "args",
    [
        PLATFORM,
        [
            *EVERYTHING,
            "--set",
            "commonLabels.team=fraud-ml,autoscaling.mode=hpa,kafka.securityProtocol=SASL_PLAINTEXT,"
            "kafka.sasl.mechanism=PLAIN,kafka.sasl.username=u,kafka.sasl.password=p,podLabels.tier=ml",
        ],
    ],
    ids=["platform", "hpa-everything"],
)
def test_common_labels_are_on_every_object_and_on_the_pods(tools: Tools, args: list[str]) -> None:
    docs = tools.render(*args)
    common = {"team": "fraud-ml"}
    kinds = {doc["kind"] for doc in docs}
    assert {"Deployment", "Service", "ConfigMap", "ServiceMonitor", "PrometheusRule"} <= kinds
    for doc in docs:
        labels = doc["metadata"]["labels"]
        assert common.items() <= labels.items(), f"{doc['kind']} {doc['metadata']['name']}: {labels}"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
    pod = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert common.items() <= pod.items()
    monitor = one(docs, "ServiceMonitor")["metadata"]["labels"]
    assert monitor["release" if args == PLATFORM else "team"]  # its own labels beside the common ones
    dashboards = [
        doc for doc in docs if doc["kind"] == "ConfigMap" and "grafana_dashboard" in doc["metadata"]["labels"]
    ]
    assert all(doc["metadata"]["labels"]["grafana_dashboard"] == "1" for doc in dashboards)


def test_common_labels_may_not_redefine_the_charts_own(tools: Tools) -> None:
    for label in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "helm.sh/chart"):
        proc = tools.template(*MINIMAL, "--set-json", "commonLabels=" + json.dumps({label: "x"}), check=False)
        assert proc.returncode != 0 and f"commonLabels.{label}: the chart sets this label itself" in proc.stderr


# -- extra env, volumes, mounts, init containers ------------------------------------------------


def test_extra_env_volumes_mounts_and_init_containers_reach_the_pod(tools: Tools) -> None:
    values = yaml.safe_load(PLATFORM_VALUES.read_text())
    spec = one(tools.render(*PLATFORM), "Deployment")["spec"]["template"]["spec"]
    agent = spec["containers"][0]
    # After the chart's own, in the order given.
    assert agent["env"][-len(values["extraEnv"]) :] == values["extraEnv"]
    assert agent["env"][0]["name"] == "OMP_NUM_THREADS"
    assert agent["volumeMounts"][-1] == values["extraVolumeMounts"][0]
    assert spec["volumes"][-1] == values["extraVolumes"][0]
    # The bundle is copied first; the team's own init containers follow.
    assert [c["name"] for c in spec["initContainers"]] == ["bundle", "model-code"]
    assert spec["initContainers"][1] == values["extraInitContainers"][0]


def test_extra_init_containers_without_a_bundle_image(tools: Tools) -> None:
    init = {"name": "wait", "image": "busybox:1.37", "command": ["true"]}
    spec = one(tools.render(*MINIMAL, "--set-json", f"extraInitContainers=[{json.dumps(init)}]"), "Deployment")
    assert spec["spec"]["template"]["spec"]["initContainers"] == [init]
    default = one(tools.render(*MINIMAL), "Deployment")["spec"]["template"]["spec"]
    assert "initContainers" not in default
    assert [e["name"] for e in default["containers"][0]["env"]] == ["OMP_NUM_THREADS", "MKL_NUM_THREADS"]
    assert {v["name"] for v in default["volumes"]} == {"config", "tmp", "bundle"}


def test_the_bundle_copy_leaves_files_the_agent_can_read(tools: Tools) -> None:
    """The init container copies as the pod's user (the agent's), without -p: the copies belong to
    the agent's uid whatever the modes and owners in the bundle image."""
    spec = one(tools.render(*PRODUCTION), "Deployment")["spec"]["template"]["spec"]
    (init,) = spec["initContainers"]
    assert init["command"][:2] == ["cp", "-R"] and not any(flag.startswith("-") for flag in init["command"][2:]), init[
        "command"
    ]
    for container in (init, spec["containers"][0]):
        assert "runAsUser" not in container["securityContext"]  # both run as the pod's runAsUser
    assert spec["securityContext"]["runAsUser"] == 10001


# -- /metrics over TLS, with basic auth ---------------------------------------------------------


def test_metrics_tls_and_basic_auth_reach_the_agent_the_probes_and_the_service_monitor(tools: Tools) -> None:
    docs = tools.render(*PLATFORM, "--namespace", "fraud")
    config = agent_config(docs)
    spec = one(docs, "Deployment")["spec"]["template"]["spec"]
    agent = spec["containers"][0]
    assert (config["metrics"]["tls_certfile"], config["metrics"]["tls_keyfile"]) == (
        "/etc/dknn/metrics-tls/tls.crt",
        "/etc/dknn/metrics-tls/tls.key",
    )
    mount = next(m for m in agent["volumeMounts"] if m["mountPath"] == "/etc/dknn/metrics-tls")
    assert mount["readOnly"] is True
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    assert volume["secret"]["secretName"] == "fraud-dknn-metrics-tls"
    assert {item["path"]: item["key"] for item in volume["secret"]["items"]} == {
        "tls.crt": "tls.crt",
        "tls.key": "tls.key",
    }
    env = {item["name"]: item for item in agent["env"]}
    for name, key in (
        ("DKNN_METRICS__BASIC_AUTH_USERNAME", "username"),
        ("DKNN_METRICS__BASIC_AUTH_PASSWORD", "password"),
    ):
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": "fraud-dknn-metrics-auth", "key": key}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert agent[probe]["httpGet"]["scheme"] == "HTTPS"
    (endpoint,) = one(docs, "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["scheme"] == "https"
    assert endpoint["tlsConfig"] == {
        "serverName": "fraud-dknn.fraud.svc",  # the Service's name in the release's namespace
        "ca": {"secret": {"name": "fraud-dknn-metrics-tls", "key": "ca.crt"}},
    }
    assert endpoint["basicAuth"] == {
        "username": {"name": "fraud-dknn-metrics-auth", "key": "username"},
        "password": {"name": "fraud-dknn-metrics-auth", "key": "password"},
    }


TLS_ON = "metrics.tls.enabled=true,metrics.tls.existingSecret=agent-tls,serviceMonitor.enabled=true"


@pytest.mark.parametrize(
    ("extra", "tls_config"),
    [
        (
            "serviceMonitor.tlsConfig.ca.configMap=trust-bundle,serviceMonitor.tlsConfig.ca.key=root.pem,"
            "serviceMonitor.tlsConfig.serverName=agent.example.com",
            {"serverName": "agent.example.com", "ca": {"configMap": {"name": "trust-bundle", "key": "root.pem"}}},
        ),
        (
            "serviceMonitor.tlsConfig.insecureSkipVerify=true",
            {"serverName": "dknn-agent.default.svc", "insecureSkipVerify": True},
        ),
    ],
    ids=["configmap-ca", "insecure-skip-verify"],
)
def test_service_monitor_tls_config_variants(tools: Tools, extra: str, tls_config: dict) -> None:
    (endpoint,) = one(tools.render(*MINIMAL, "--set", f"{TLS_ON},{extra}"), "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["scheme"] == "https" and endpoint["tlsConfig"] == tls_config
    assert "basicAuth" not in endpoint


@pytest.mark.parametrize(
    ("sets", "complaint"),
    [
        ("metrics.tls.enabled=true", "metrics.tls.enabled needs metrics.tls.existingSecret"),
        ("metrics.basicAuth.enabled=true", "metrics.basicAuth.enabled needs metrics.basicAuth.existingSecret"),
        (TLS_ON, "needs serviceMonitor.tlsConfig.ca.secret (or .configMap)"),
        (f"{TLS_ON},serviceMonitor.tlsConfig.ca.secret=a,serviceMonitor.tlsConfig.ca.configMap=b", "not both"),
        (
            f"{TLS_ON},serviceMonitor.tlsConfig.ca.secret=a,serviceMonitor.tlsConfig.insecureSkipVerify=true",
            "contradict each other",
        ),
    ],
)
def test_metrics_tls_and_auth_mistakes_fail_rendering(tools: Tools, sets: str, complaint: str) -> None:
    proc = tools.template(*MINIMAL, "--set", sets, check=False)
    assert proc.returncode != 0 and complaint in proc.stderr, proc.stderr


def test_without_metrics_tls_or_auth_the_endpoint_stays_plain(tools: Tools) -> None:
    docs = tools.render(*EVERYTHING)
    config = agent_config(docs)
    assert config["metrics"] == {"host": "0.0.0.0", "port": 9108}
    agent = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert "scheme" not in agent["readinessProbe"]["httpGet"]
    assert not any(item["name"].startswith("DKNN_METRICS") for item in agent["env"])
    (endpoint,) = one(docs, "ServiceMonitor")["spec"]["endpoints"]
    assert not {"scheme", "tlsConfig", "basicAuth"} & set(endpoint)
    # TLS without a ServiceMonitor needs no CA for Prometheus.
    tools.render(*MINIMAL, "--set", "metrics.tls.enabled=true,metrics.tls.existingSecret=agent-tls")


def test_the_endpoints_limits_from_values_config_join_what_the_chart_sets(tools: Tools) -> None:
    config = agent_config(tools.render(*MINIMAL, "--set", "config.metrics.max_connections=4,metrics.port=9200"))
    assert config["metrics"] == {"host": "0.0.0.0", "port": 9200, "max_connections": 4}


# -- Kafka TLS from one Secret or from Strimzi's separate ones ----------------------------------


def _kafka_tls(docs: list[dict]) -> tuple[list[tuple[str, str, str]], dict]:
    """(secret, key, path) of each projected file, and the agent's kafka_security."""
    spec = one(docs, "Deployment")["spec"]["template"]["spec"]
    volumes = [v for v in spec["volumes"] if v["name"] == "kafka-tls"]
    files = []
    if volumes:
        (volume,) = volumes
        assert volume["projected"]["defaultMode"] == 0o440
        for source in volume["projected"]["sources"]:
            files += [(source["secret"]["name"], item["key"], item["path"]) for item in source["secret"]["items"]]
        mount = next(m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "kafka-tls")
        assert mount == {"name": "kafka-tls", "mountPath": "/etc/dknn/kafka-tls", "readOnly": True}
    return files, agent_config(without_console(docs))["kafka_security"]


def test_kafka_tls_from_strimzis_cluster_ca_and_kafka_user_secrets(tools: Tools) -> None:
    docs = tools.render(*PLATFORM)
    files, security = _kafka_tls(docs)
    assert files == [
        ("fraud-kafka-cluster-ca-cert", "ca.crt", "ca.crt"),
        ("fraud-dknn", "user.crt", "tls.crt"),
        ("fraud-dknn", "user.key", "tls.key"),
    ]
    assert security == {
        "security_protocol": "SSL",
        "ssl_cafile": "/etc/dknn/kafka-tls/ca.crt",
        "ssl_certfile": "/etc/dknn/kafka-tls/tls.crt",
        "ssl_keyfile": "/etc/dknn/kafka-tls/tls.key",
    }
    # KEDA's scaler reads the lag with the same CA and client certificate.
    refs = {
        ref["parameter"]: (ref["name"], ref["key"])
        for ref in one(docs, "TriggerAuthentication")["spec"]["secretTargetRef"]
    }
    assert refs == {
        "ca": ("fraud-kafka-cluster-ca-cert", "ca.crt"),
        "cert": ("fraud-dknn", "user.crt"),
        "key": ("fraud-dknn", "user.key"),
    }
    assert one(docs, "ScaledObject")["spec"]["triggers"][0]["metadata"]["tls"] == "enable"


@pytest.mark.parametrize(
    ("sets", "files"),
    [
        ("kafka.tls.existingSecret=kafka-ca", [("kafka-ca", "ca.crt", "ca.crt")]),
        (
            "kafka.tls.existingSecret=kafka-tls,kafka.tls.caKey=ca.pem,kafka.tls.certKey=tls.crt,kafka.tls.keyKey=tls.key",
            [
                ("kafka-tls", "ca.pem", "ca.crt"),
                ("kafka-tls", "tls.crt", "tls.crt"),
                ("kafka-tls", "tls.key", "tls.key"),
            ],
        ),
        ("kafka.tls.ca.existingSecret=cluster-ca-cert", [("cluster-ca-cert", "ca.crt", "ca.crt")]),
        (
            "kafka.tls.existingSecret=kafka-ca,kafka.tls.client.existingSecret=agent-user",
            [
                ("kafka-ca", "ca.crt", "ca.crt"),
                ("agent-user", "user.crt", "tls.crt"),
                ("agent-user", "user.key", "tls.key"),
            ],
        ),
        ("kafka.securityProtocol=PLAINTEXT", []),
    ],
    ids=["one-secret-ca", "one-secret-mtls", "ca-secret", "ca-and-client-secrets", "none"],
)
def test_kafka_tls_sources(tools: Tools, sets: str, files: list[tuple[str, str, str]]) -> None:
    rendered, security = _kafka_tls(tools.render(*MINIMAL, "--set", f"kafka.securityProtocol=SSL,{sets}"))
    assert rendered == files
    setting = {"ca.crt": "ssl_cafile", "tls.crt": "ssl_certfile", "tls.key": "ssl_keyfile"}
    assert {key: value for key, value in security.items() if key.startswith("ssl_")} == {
        setting[path]: f"/etc/dknn/kafka-tls/{path}" for _, _, path in files
    }


@pytest.mark.parametrize(
    ("sets", "complaint"),
    [
        ("kafka.tls.existingSecret=a,kafka.tls.ca.existingSecret=b", "both name the CA"),
        ("kafka.tls.existingSecret=a,kafka.tls.certKey=c,kafka.tls.client.existingSecret=u", "both name the client"),
    ],
)
def test_kafka_tls_named_twice_fails_rendering(tools: Tools, sets: str, complaint: str) -> None:
    proc = tools.template(*MINIMAL, "--set", sets, check=False)
    assert proc.returncode != 0 and complaint in proc.stderr, proc.stderr


def test_kedas_offset_reset_policy_follows_the_agents(tools: Tools) -> None:
    for args, policy in ((PRODUCTION, "earliest"), (PLATFORM, "latest")):
        trigger = one(tools.render(*args), "ScaledObject")["spec"]["triggers"][0]["metadata"]
        assert trigger["offsetResetPolicy"] == policy


# -- the review console (console.*, `dknn-agent review`) -----------------------------------------

CONSOLE = [*MINIMAL, "--set", "console.enabled=true", "--set-json", 'console.auth.users=["ana:pw1","bo:pw2"]']


def console_objects(docs: list[dict]) -> dict[str, dict]:
    """The console's objects by kind (the chart renders one of each)."""
    found = [doc for doc in docs if doc["metadata"]["labels"].get("app.kubernetes.io/component") == "review-console"]
    by = {doc["kind"]: doc for doc in found}
    assert len(by) == len(found), [doc["kind"] for doc in found]
    return by


def without_console(docs: list[dict]) -> list[dict]:
    return [doc for doc in docs if doc["metadata"]["labels"].get("app.kubernetes.io/component") != "review-console"]


def agent_objects(docs: list[dict]) -> dict[str, dict]:
    """The agent's objects by kind (the ConfigMaps aside, one of each)."""
    return {doc["kind"]: doc for doc in without_console(docs)}


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


def test_the_console_is_off_by_default(tools: Tools) -> None:
    docs = tools.render(*MINIMAL)
    assert not console_objects(docs)
    assert not [doc for doc in docs if "console" in doc["metadata"]["name"]]


def test_the_console_runs_the_review_command_on_the_agents_bundle_and_image(tools: Tools) -> None:
    docs = tools.render(*CONSOLE)
    console, agent = console_objects(docs), agent_objects(docs)
    assert set(console) == {"Deployment", "Service", "NetworkPolicy", "Secret"}
    spec = console["Deployment"]["spec"]["template"]["spec"]
    agent_spec = agent["Deployment"]["spec"]["template"]["spec"]
    assert console["Deployment"]["spec"]["replicas"] == 1  # its SQLite file is its own
    (container,) = spec["containers"]
    assert container["image"] == agent_spec["containers"][0]["image"]
    assert container["command"] == ["dknn-agent", "review"]
    args = dict(arg.removeprefix("--").split("=", 1) for arg in container["args"])
    assert args == {
        "artifacts": "/bundle",
        "bootstrap-servers": "kafka:9092",
        "quarantine-topic": agent_config(without_console(docs))["quarantine_topic"],
        "reviews-topic": "inference-reviews",
        "group": "dknn-review-console",
        "host": "0.0.0.0",
        "port": "8080",
        "auth-file": "/etc/dknn/console-auth/auth",
        "database": "/var/lib/dknn-review/reviews.sqlite",
    }
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    # Locked down like the agent: the same pod and container security contexts, no API token.
    assert container["securityContext"] == agent_spec["containers"][0]["securityContext"]
    assert spec["securityContext"] == agent_spec["securityContext"] and spec["automountServiceAccountToken"] is False
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    agent_volumes = {volume["name"]: volume for volume in agent_spec["volumes"]}
    assert volumes["bundle"] == agent_volumes["bundle"]
    mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
    assert mounts["/bundle"]["readOnly"] and mounts["/etc/dknn/console-auth"]["readOnly"]
    assert volumes[mounts["/var/lib/dknn-review"]["name"]]["emptyDir"]["sizeLimit"] == "1Gi"
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    auth = volumes[mounts["/etc/dknn/console-auth"]["name"]]["secret"]
    assert auth["secretName"] == console["Secret"]["metadata"]["name"]
    assert auth["items"] == [{"key": "auth", "path": "auth"}]
    assert base64.b64decode(console["Secret"]["data"]["auth"]).decode() == "ana:pw1\nbo:pw2\n"
    service = console["Service"]["spec"]
    assert service["type"] == "ClusterIP" and service["ports"] == [
        {"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}
    ]
    assert console["Deployment"]["metadata"]["name"] == agent["Deployment"]["metadata"]["name"] + "-console"


def test_no_selector_of_the_agent_takes_in_a_console_pod_nor_the_other_way(tools: Tools) -> None:
    """The console's pods carry their own app.kubernetes.io/name: the agent's Deployment, Service,
    PodDisruptionBudget, NetworkPolicy and ServiceMonitor select only agent pods (and Services), the
    console's NetworkPolicy, Service and ServiceMonitor only the console's."""
    docs = tools.render(*CONSOLE, "--set", "serviceMonitor.enabled=true")
    console, agent = console_objects(docs), agent_objects(docs)
    pods = {
        name: objects["Deployment"]["spec"]["template"]["metadata"]["labels"]
        for name, objects in (("console", console), ("agent", agent))
    }
    services = {
        name: objects["Service"]["metadata"]["labels"] for name, objects in (("console", console), ("agent", agent))
    }
    for own, objects, other in (("console", console, "agent"), ("agent", agent, "console")):
        for selector in (
            objects["Deployment"]["spec"]["selector"]["matchLabels"],
            objects["Service"]["spec"]["selector"],
            objects["NetworkPolicy"]["spec"]["podSelector"]["matchLabels"],
            *([agent["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"]] if own == "agent" else []),
        ):
            assert matches(selector, pods[own]) and not matches(selector, pods[other]), (own, selector)
        monitor = objects["ServiceMonitor"]["spec"]["selector"]["matchLabels"]
        assert matches(monitor, services[own]) and not matches(monitor, services[other]), own
    assert console["ServiceMonitor"]["spec"]["endpoints"][0]["port"] == "http"


def test_the_consoles_network_policy_admits_its_port_and_reaches_only_the_brokers_and_dns(tools: Tools) -> None:
    ingress_from = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}]
    prometheus = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    brokers = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kafka"}}}]
    docs = tools.render(
        *CONSOLE,
        "--set-json",
        f"console.networkPolicy.from={json.dumps(ingress_from)}",
        "--set-json",
        f"networkPolicy.metricsFrom={json.dumps(prometheus)}",
        "--set-json",
        f"networkPolicy.kafkaTo={json.dumps(brokers)}",
    )
    policy = console_objects(docs)["NetworkPolicy"]["spec"]
    agent_policy = agent_objects(docs)["NetworkPolicy"]["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    assert policy["ingress"] == [
        {"ports": [{"port": "http", "protocol": "TCP"}], "from": ingress_from},
        {"ports": [{"port": "http", "protocol": "TCP"}], "from": prometheus},  # the agent's scrapers
    ]
    assert policy["egress"] == agent_policy["egress"]  # DNS, and the brokers on kafka.ports only
    assert policy["egress"][1]["to"] == brokers
    open_policy = console_objects(tools.render(*CONSOLE))["NetworkPolicy"]["spec"]
    assert open_policy["ingress"] == [{"ports": [{"port": "http", "protocol": "TCP"}]}]  # any pod, this port only
    assert "NetworkPolicy" not in console_objects(tools.render(*CONSOLE, "--set", "networkPolicy.enabled=false"))


def test_the_console_takes_the_agents_kafka_security(
    tools: Tools, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SASL_SSL with a CA (production values): the console's DKNN_KAFKA_SECURITY__* variables, read by
    the settings' own loader, are the agent's kafka_security, and the files they name are mounted."""
    docs = tools.render(*PRODUCTION, "--set", "console.enabled=true,console.auth.existingSecret=reviewers")
    console = console_objects(docs)
    assert "Secret" not in console  # an existing one
    spec = console["Deployment"]["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    env = {item["name"]: item.get("value", "from-secret") for item in container["env"]}
    assert unknown_variables(env) == []
    password = next(item for item in container["env"] if item["name"] == "DKNN_KAFKA_SECURITY__SASL_PLAIN_PASSWORD")
    assert password["valueFrom"]["secretKeyRef"] == {"name": "dknn-agent-kafka", "key": "password"}
    for name in [name for name in os.environ if name.startswith("DKNN_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"artifacts": "/bundle", "bootstrap_servers": "k:1"}))
    security = load_settings(config, strict=True).kafka_security
    assert settings_from({}).kafka_security == security  # what `dknn-agent review` reads: the same
    expected = agent_config(without_console(docs))["kafka_security"]
    assert security.model_dump(include=set(expected), mode="json") == expected
    assert security.sasl_plain_username == "dknn-agent" and security.sasl_plain_password is not None
    mounts = {mount["mountPath"] for mount in container["volumeMounts"]}
    assert str(security.ssl_cafile).startswith("/etc/dknn/kafka-tls/") and "/etc/dknn/kafka-tls" in mounts
    (init,) = spec["initContainers"]  # the bundle copied from its image, as for the agent
    assert init["command"][:2] == ["cp", "-R"]
    args = [arg for arg in container["args"] if arg.startswith("--quarantine-topic=")]
    assert args == ["--quarantine-topic=mnist-quarantine"]


@pytest.mark.parametrize(
    "auth", ["console.auth.users[0]=ana:pw", "console.auth.type=token,console.auth.existingSecret=t"]
)
def test_the_review_command_accepts_the_arguments_the_chart_gives_it(tools: Tools, auth: str) -> None:
    """The container's command line through the CLI's own parser and options model."""
    docs = tools.render(*MINIMAL, "--set", f"console.enabled=true,{auth}")
    (container,) = console_objects(docs)["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert container["command"][0] == "dknn-agent"
    command = parse_command([*container["command"][1:], *container["args"]])
    assert isinstance(command, ReviewCommand)
    assert (command.host, command.port, command.insecure_no_auth) == ("0.0.0.0", 8080, False)
    assert command.artifacts == Path("/bundle") and command.database == Path("/var/lib/dknn-review/reviews.sqlite")
    given = command.token_file if "token" in auth else command.auth_file
    assert given is not None and given.parent == Path("/etc/dknn/console-auth")
    assert (command.auth_file is None) == ("token" in auth) and (command.token_file is None) != ("token" in auth)


def test_console_credentials_from_an_existing_secret_or_a_token(tools: Tools) -> None:
    docs = tools.render(
        *MINIMAL,
        "--set",
        "console.enabled=true,console.auth.type=token,console.auth.existingSecret=review-token,console.auth.key=t",
    )
    console = console_objects(docs)
    assert "Secret" not in console
    spec = console["Deployment"]["spec"]["template"]["spec"]
    assert "--token-file=/etc/dknn/console-auth/token" in spec["containers"][0]["args"]
    assert not [arg for arg in spec["containers"][0]["args"] if arg.startswith("--auth-file")]
    (auth,) = [volume["secret"] for volume in spec["volumes"] if volume["name"] == "auth"]
    assert auth == {"secretName": "review-token", "defaultMode": 0o440, "items": [{"key": "t", "path": "token"}]}
    made = console_objects(
        tools.render(
            *MINIMAL, "--set", "console.enabled=true,console.auth.type=token,console.auth.token=s3cret-token-0123456789"
        )
    )
    assert base64.b64decode(made["Secret"]["data"]["auth"]).decode() == "s3cret-token-0123456789\n"


@pytest.mark.parametrize(
    ("sets", "complaint"),
    [
        ("console.enabled=true", "console.enabled needs credentials"),
        ("console.enabled=true,console.auth.type=token", "console.auth.type token needs"),
        ("console.enabled=true,console.auth.existingSecret=a,console.auth.users[0]=a:b", "set one"),
        ("console.enabled=true,console.auth.token=0123456789abcdef", "basic auth takes console.auth.users"),
    ],
)
def test_a_console_without_credentials_fails_rendering(tools: Tools, sets: str, complaint: str) -> None:
    proc = tools.template(*MINIMAL, "--set", sets, check=False)
    assert proc.returncode != 0 and complaint in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--set", "console.enable=true"], "enable"),
        (["--set", "console.reviewTopic=reviews"], "reviewTopic"),
        (["--set", "console.auth.type=oauth"], "/console/auth/type"),
        (["--set", "console.auth.existingsecret=a"], "existingsecret"),
        (["--set-json", 'console.auth.users=["no-password"]'], "/console/auth/users/0"),
        (["--set", "console.networkPolicy.form=x"], "form"),
        (["--set", "console.database.size=1Gi"], "size"),
        (["--set", "console.port=80"], "/console/port"),
        (["--set", "console.auth.type=token,console.auth.token=short"], "/console/auth/token"),  # the console's minimum
    ],
)
def test_the_schema_refuses_console_typos(tools: Tools, args: list[str], complaint: str) -> None:
    proc = tools.template(*MINIMAL, *args, check=False)
    assert proc.returncode != 0 and "values don't meet the specifications of the schema" in proc.stderr
    assert complaint in proc.stderr, proc.stderr


def test_the_consoles_scrape_job_is_its_own(tools: Tools) -> None:
    """Not one DknnAgentDown (job=~"dknn-agent.*") or the dashboards' $job would take for an agent."""
    rules = yaml.safe_load(RULES.read_text())["groups"]
    selector = re.search(r'job=~"([^"]+)"', _alerts(rules)["DknnAgentDown"]["expr"])
    assert selector
    for release in ("dknn-agent", "fraud"):
        rendered = tools.helm_run(
            "template",
            release,
            str(CHART),
            "--kube-version",
            "1.33.0",
            *CONSOLE,
            "--set",
            "serviceMonitor.enabled=true",
        ).stdout
        monitor = console_objects([doc for doc in yaml.safe_load_all(rendered) if doc])["ServiceMonitor"]
        (relabel,) = monitor["spec"]["endpoints"][0]["relabelings"]
        assert relabel["replacement"].startswith("dknn-review-console")
        assert not re.fullmatch(selector.group(1), relabel["replacement"])


def test_common_labels_reach_the_console_which_keeps_its_own(tools: Tools) -> None:
    docs = tools.render(*CONSOLE, "--set", "commonLabels.team=fraud-ml,console.podLabels.tier=review")
    for doc in console_objects(docs).values():
        assert doc["metadata"]["labels"]["team"] == "fraud-ml"
        assert doc["metadata"]["labels"]["app.kubernetes.io/component"] == "review-console"
    pod = console_objects(docs)["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert pod["team"] == "fraud-ml" and pod["tier"] == "review"
