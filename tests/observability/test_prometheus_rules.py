"""The operator's Prometheus artifacts, proven with the real tools.

- dashboards/prometheus/rules.yml passes `promtool check rules`, and its unit tests
  (dashboards/prometheus/tests/*.yml) pass `promtool test rules`; every alert fires and clears
  there, and every recording rule is checked;
- dashboards/alertmanager/alertmanager.yml passes `amtool check-config` and routes by severity;
- every alert has a severity, a summary, a templated description and a runbook_url whose anchor is
  a heading of docs/runbook.md;
- every metric the rules read is one the agent exports (docs/design.md §6);
- rules.yml is dashboards/prometheus/generate.py's rendering of rules.yml.in with the default
  thresholds, and other thresholds render valid rules too;
- the traffic alerts aggregate by namespace and job: one job name in two namespaces is two alerts.

promtool and amtool missing is a failure, not a skip: `make tools` fetches them (no root needed), and
make puts them on PATH.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.observability.metric_contract import ALERT_NAMES, CONTRACT, LABEL_VALUES

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "dashboards" / "prometheus" / "rules.yml"
GENERATE = ROOT / "dashboards" / "prometheus" / "generate.py"
RULE_TESTS = sorted((ROOT / "dashboards" / "prometheus" / "tests").glob("*.yml"))
ALERTMANAGER = ROOT / "dashboards" / "alertmanager" / "alertmanager.yml"
RUNBOOK = ROOT / "docs" / "runbook.md"
RUNBOOK_URL = "https://github.com/dknn-agent/dknn-agent/blob/main/docs/runbook.md#"
GRAFANA_DASHBOARDS = sorted((ROOT / "dashboards" / "grafana").glob("*.json"))
INSTALL_HINT = (
    "run `make tools` (no root needed), then the tests through make, which puts ~/.cache/dknn-agent/bin on PATH"
)

SEVERITIES = {"page", "ticket"}

# A dknn_ name not preceded by a name character or ':' (so not the middle of a recorded series
# such as job:dknn_events_consumed:rate5m).
METRIC_NAME = re.compile(r"(?<![\w:])dknn_\w+")
RECORDED_NAME = re.compile(r"(?<![\w:])[a-zA-Z_]\w*:[\w:]*\w")
LABEL_MATCHER = re.compile(r"\b(\w+)\s*(?:=|!=|=~|!~)\s*\"([^\"]*)\"")
# A panel named in the runbook: an italic span starting with a capital, e.g. *Consumer lag by topic*.
PANEL_REFERENCE = re.compile(r"(?<![*\w])\*([A-Z][^*\n]*?)\*(?![*\w])")
DURATION = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
DURATION_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


# -- helpers ----------------------------------------------------------------------------------


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not on PATH: {INSTALL_HINT}", pytrace=False)
    return path


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def rules() -> list[dict[str, Any]]:
    return [rule for group in load(RULES)["groups"] for rule in group["rules"]]


def alerts() -> list[dict[str, Any]]:
    return [rule for rule in rules() if "alert" in rule]


def recordings() -> list[dict[str, Any]]:
    return [rule for rule in rules() if "record" in rule]


def seconds(duration: str) -> float:
    parts = DURATION.findall(duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"not a Prometheus duration: {duration!r}"
    return sum(int(n) * DURATION_SECONDS[u] for n, u in parts)


def github_anchor(heading: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def runbook_anchors() -> set[str]:
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", RUNBOOK.read_text(encoding="utf-8"), flags=re.MULTILINE)
    return {github_anchor(heading) for heading in headings}


def rule_tests() -> list[dict[str, Any]]:
    return [test for path in RULE_TESTS for test in load(path)["tests"]]


# -- the real tools ---------------------------------------------------------------------------


def test_promtool_check_rules() -> None:
    result = run(tool("promtool"), "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize("path", RULE_TESTS, ids=[path.name for path in RULE_TESTS])
def test_promtool_test_rules(path: Path) -> None:
    result = run(tool("promtool"), "test", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_rule_unit_tests_exist() -> None:
    assert RULE_TESTS, "no promtool unit tests in dashboards/prometheus/tests/"


def test_amtool_check_config() -> None:
    result = run(tool("amtool"), "check-config", str(ALERTMANAGER))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize(("labels", "receiver"), [("severity=page", "dknn-page"), ("severity=ticket", "dknn-ticket")])
def test_alertmanager_routes_by_severity(labels: str, receiver: str) -> None:
    result = run(
        tool("amtool"),
        "config",
        "routes",
        "test",
        f"--config.file={ALERTMANAGER}",
        f"--verify.receivers={receiver}",
        "alertname=DknnAgentDown",
        "job=dknn-agent",
        labels,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- the rules' contents ----------------------------------------------------------------------


def test_the_alerts_are_the_agreed_set() -> None:
    names = [rule["alert"] for rule in alerts()]
    assert len(names) == len(set(names)), f"duplicate alert names: {names}"
    assert set(names) == ALERT_NAMES


@pytest.mark.parametrize("rule", alerts(), ids=lambda rule: rule["alert"])
def test_alert_labels_and_annotations(rule: dict[str, Any]) -> None:
    name = rule["alert"]
    assert rule.get("labels", {}).get("severity") in SEVERITIES, f"{name}: labels.severity must be page or ticket"
    annotations = rule.get("annotations", {})
    assert annotations.get("summary", "").strip(), f"{name}: no summary"
    description = annotations.get("description", "")
    assert re.search(r"\{\{[^}]*\$(labels|value)", description), f"{name}: description uses neither $labels nor $value"
    url = annotations.get("runbook_url", "")
    assert url.startswith(RUNBOOK_URL), f"{name}: runbook_url {url!r} does not point into docs/runbook.md"
    anchor = url.removeprefix(RUNBOOK_URL)
    assert anchor == name.lower(), f"{name}: runbook_url should end in #{name.lower()}"
    assert anchor in runbook_anchors(), f"{name}: docs/runbook.md has no heading for #{anchor}"


def test_traffic_alerts_aggregate_by_namespace_and_job() -> None:
    """Replicas of one consumer group each run a detector: one shift must be one alert per job, and
    the same job name in two namespaces (two deployments) must stay two."""
    traffic = {
        "DknnDistributionShiftDetected",
        "DknnTrafficShifted",
        "DknnLowCredibilityRateHigh",
        "DknnDeadLetterRateHigh",
        "DknnConsumerLagGrowing",
        "DknnServedAnswerMismatch",
    }
    recorded = {rule["record"]: rule["expr"] for rule in recordings()}

    def expand(expr: str) -> str:  # the expression with the recorded series it reads, recursively
        return " ".join([expr, *(expand(recorded[n]) for n in RECORDED_NAME.findall(expr) if n in recorded)])

    for rule in alerts():
        if rule["alert"] in traffic:
            expr = expand(rule["expr"])
            assert re.search(r"\b(sum|max|min|count) by \(namespace, job[,)]", expr), (
                f"{rule['alert']} is not aggregated by namespace and job"
            )
            assert not re.search(r"\bby \(job\b", expr), f"{rule['alert']} aggregates by job alone somewhere"
    for name in recorded:
        assert name.startswith("namespace_job"), f"{name}: every recording rule keeps namespace and job"


def test_rules_yml_is_the_template_rendered_with_the_defaults() -> None:
    result = run(sys.executable, str(GENERATE), "--check")
    assert result.returncode == 0, result.stdout + result.stderr


def test_other_thresholds_render_valid_rules(tmp_path: Path) -> None:
    """What the chart does with prometheusRule.thresholds, checked by promtool."""
    out = tmp_path / "rules.yml"
    values = ["deadLetterRatio=0.2", "deadLetterFor=30m", "lagMessages=250000", "lagGrowingFor=1h"]
    values += ["servedMismatchRatio=0.05", "servedMismatchFor=1h"]
    result = run(sys.executable, str(GENERATE), "--out", str(out), *(f"--set={value}" for value in values))
    assert result.returncode == 0, result.stderr
    checked = run(tool("promtool"), "check", "rules", str(out))
    assert checked.returncode == 0 and "SUCCESS" in checked.stdout, checked.stdout + checked.stderr
    rendered = {rule["alert"]: rule for group in load(out)["groups"] for rule in group["rules"] if "alert" in rule}
    dead = rendered["DknnDeadLetterRateHigh"]
    assert dead["expr"].endswith("> 0.2") and dead["for"] == "30m"
    assert "{{ 0.2 | humanizePercentage }} for 30m" in dead["annotations"]["description"]
    lag = rendered["DknnConsumerLagGrowing"]
    assert "> 250000 and" in lag["expr"] and lag["for"] == "1h"
    served = rendered["DknnServedAnswerMismatch"]
    assert served["expr"].endswith("> 0.05") and served["for"] == "1h"
    assert "(alert above {{ 0.05 | humanizePercentage }} for 1h)" in served["annotations"]["description"]
    assert rendered["DknnTrafficShifted"] == {rule["alert"]: rule for rule in alerts()}["DknnTrafficShifted"]


def test_every_metric_is_in_the_contract() -> None:
    texts = [rule["expr"] for rule in rules()]
    texts += [value for rule in alerts() for value in rule.get("annotations", {}).values()]
    used = {name for text in texts for name in METRIC_NAME.findall(text)}
    assert used, "no dknn_ metric found in rules.yml"
    assert used <= CONTRACT, f"not exported by the agent: {sorted(used - CONTRACT)}"


def test_label_values_are_bounded_values() -> None:
    for rule in rules():
        for label, value in LABEL_MATCHER.findall(rule["expr"]):
            if label in LABEL_VALUES:
                assert value in LABEL_VALUES[label], f"{rule.get('alert') or rule['record']}: {label}={value!r}"


def test_recorded_series_are_defined_before_use() -> None:
    """Rules of one group run in order at one timestamp; separate groups run independently. A rule
    reading a recorded series must come after it in the same group, or it reads a stale value (and
    promtool's unit tests turn flaky: groups are evaluated in random order there)."""
    recorded: set[str] = set()
    for group in load(RULES)["groups"]:
        defined: set[str] = set()
        for rule in group["rules"]:
            name = rule.get("alert") or rule["record"]
            for used in RECORDED_NAME.findall(rule["expr"]):
                assert used in defined, f"{name} reads {used}, not recorded above it in group {group['name']}"
            if "record" in rule:
                assert rule["record"] not in recorded, f"recorded twice: {rule['record']}"
                assert re.fullmatch(r"[a-z_]+:dknn_\w+:\w+", rule["record"]), f"not level:metric:operation: {name}"
                defined.add(rule["record"])
                recorded.add(rule["record"])


def test_runbook_panels_exist_in_the_grafana_dashboards() -> None:
    """The runbook sends on-call to panels by title: each must be a panel of dashboards/grafana/."""
    assert GRAFANA_DASHBOARDS, "no Grafana dashboards in dashboards/grafana/"
    titles: set[str] = set()

    def collect(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            titles.add(panel.get("title", ""))
            collect(panel.get("panels", []))

    for path in GRAFANA_DASHBOARDS:
        collect(json.loads(path.read_text(encoding="utf-8"))["panels"])
    named = set(PANEL_REFERENCE.findall(RUNBOOK.read_text(encoding="utf-8")))
    assert named, "docs/runbook.md names no dashboard panel"
    assert named <= titles, f"docs/runbook.md names panels the dashboards do not have: {sorted(named - titles)}"


# -- the unit tests cover everything ----------------------------------------------------------


def test_unit_tests_read_only_contract_metrics() -> None:
    for test in rule_tests():
        for series in test.get("input_series", []):
            name = series["series"].split("{", 1)[0].strip()
            assert name in CONTRACT or name == "up", f"input series {name} is not exported by the agent"


def test_every_alert_fires_and_clears_in_the_unit_tests() -> None:
    fires: dict[str, list[float]] = {name: [] for name in ALERT_NAMES}
    quiet: dict[str, list[float]] = {name: [] for name in ALERT_NAMES}
    for test in rule_tests():
        for case in test.get("alert_rule_test", []):
            expected = case.get("exp_alerts") or []
            (fires if expected else quiet)[case["alertname"]].append(seconds(case["eval_time"]))
            for alert in expected:
                assert alert["exp_labels"].get("severity") in SEVERITIES, f"{case['alertname']}: expected severity"
                assert {"summary", "description", "runbook_url"} <= set(alert.get("exp_annotations", {})), (
                    f"{case['alertname']} at {case['eval_time']}: expected annotations incomplete"
                )
    for name in sorted(ALERT_NAMES):
        assert fires[name], f"{name} never fires in dashboards/prometheus/tests/"
        assert any(t > min(fires[name]) for t in quiet[name]), f"{name} never clears after firing in the unit tests"


def test_every_recording_rule_is_checked_in_the_unit_tests() -> None:
    checked = {case["expr"].strip() for test in rule_tests() for case in test.get("promql_expr_test", [])}
    missing = {rule["record"] for rule in recordings()} - checked
    assert not missing, f"recording rules without a promql_expr_test: {sorted(missing)}"


def test_two_replicas_page_once_for_one_shift() -> None:
    """The shift alerts' unit tests feed two instances of one job and expect exactly one alert,
    labelled by job and not by instance."""
    for test in rule_tests():
        instances = {m for s in test.get("input_series", []) for m in re.findall(r'instance="([^"]+)"', s["series"])}
        for case in test.get("alert_rule_test", []):
            if case["alertname"] == "DknnDistributionShiftDetected" and case.get("exp_alerts") and len(instances) >= 2:
                assert len(case["exp_alerts"]) == 1
                assert "instance" not in case["exp_alerts"][0]["exp_labels"]
                return
    pytest.fail("no unit test where two replicas' change detectors fire and one alert is expected")


def test_one_job_name_in_two_namespaces_is_two_alerts() -> None:
    """A unit test feeds one job name from two namespaces and expects alerts that keep them apart."""
    for test in rule_tests():
        namespaces = {m for s in test.get("input_series", []) for m in re.findall(r'namespace="([^"]+)"', s["series"])}
        jobs = {m for s in test.get("input_series", []) for m in re.findall(r'job="([^"]+)"', s["series"])}
        if len(namespaces) < 2 or len(jobs) != 1:
            continue
        for case in test.get("alert_rule_test", []):
            expected = case.get("exp_alerts") or []
            if len(expected) == 2 and {alert["exp_labels"].get("namespace") for alert in expected} == namespaces:
                return
    pytest.fail("no unit test where one job name in two namespaces gives one alert per namespace")
