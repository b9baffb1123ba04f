"""The Grafana dashboards (dashboards/grafana/), proven without a Grafana server.

- the committed JSON is exactly what dashboards/grafana/generate.py produces;
- it validates against Grafana's own types (dashboards/grafana/validate.sh: @grafana/schema through
  ts-json-schema-generator, then check-jsonschema), and that validation is strict: copies with an
  unknown field or a wrong type fail, each at the path that was broken;
- every PromQL expression reads only raw metrics of the agent's contract (docs/design.md §6 plus
  the drift and readiness gauges), no recording rules, with labels those metrics have; every query
  goes through the $datasource variable and is scoped to $job and $instance (the review console's
  metrics, a scrape job of their own, to $review_job);
- promtool parses every query, and a real Prometheus that scrapes two replicas exporting the contract
  (fakes, with traffic flowing) answers every panel query with finite data carrying the legend's labels;
- the panels on-call needs are there, with stable uids and panel ids.

A missing tool is a failure, not a skip: node, npm and check-jsonschema (dashboards/grafana/validate.sh
says what to install), the pinned grafana-foundation-sdk, prometheus and promtool (on PATH: `make tools`
fetches them without root, and make puts them on PATH).
"""

from __future__ import annotations

import copy
import json
import math
import random
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server

from agent.runtime.telemetry import ReviewTelemetry
from tests.observability.metric_contract import (
    ALERT_NAMES,
    CONSOLE_FAMILIES,
    COUNTERS,
    GAUGES,
    HISTOGRAMS,
    LABEL_VALUES,
    REVIEW_COUNTERS,
    REVIEW_GAUGES,
    REVIEW_HISTOGRAMS,
    REVIEW_METRICS,
    label_values,
)

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "dashboards" / "grafana"
GENERATE = GRAFANA / "generate.py"
VALIDATE = GRAFANA / "validate.sh"
DASHBOARD_FILES = {"dknn-overview": GRAFANA / "dknn-overview.json", "dknn-detail": GRAFANA / "dknn-detail.json"}
SDK_PIN = "grafana-foundation-sdk==1769699379!11.6.0"
HINT = f"see {VALIDATE.relative_to(ROOT)} (node, npm, check-jsonschema) and pip install '{SDK_PIN}'"
PROMETHEUS_HINT = (
    "run `make tools` (no root needed), then the tests through make, which puts ~/.cache/dknn-agent/bin on PATH"
)

TARGET_LABELS = {"job", "instance"}
SCOPE = 'job="$job", instance=~"$instance"'
REVIEW_JOB = "dknn-review-console"  # the review console's scrape job (the chart's, for release dknn-agent)
# Series Prometheus itself writes (not recording rules): scrape health and alert state.
PROMETHEUS_SERIES: dict[str, set[str] | None] = {"up": set(), "ALERTS": None}  # None: any label


def contract_series() -> dict[str, set[str]]:
    """Queryable series name -> its labels (job, instance and, for buckets, le included)."""
    plain = {**COUNTERS, **GAUGES, **REVIEW_COUNTERS, **REVIEW_GAUGES}
    series = {name: labels | TARGET_LABELS for name, labels in plain.items()}
    for name, labels in {**HISTOGRAMS, **REVIEW_HISTOGRAMS}.items():
        series[f"{name}_bucket"] = labels | TARGET_LABELS | {"le"}
        series[f"{name}_sum"] = labels | TARGET_LABELS
        series[f"{name}_count"] = labels | TARGET_LABELS
    return series


SERIES = contract_series()

# Aggregation operators, their modifiers, binary and set operators, keywords: not series names.
PROMQL_WORDS = {
    *("sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk"),
    *("quantile", "limitk", "limit_ratio", "by", "without", "on", "ignoring", "group_left", "group_right"),
    *("bool", "and", "or", "unless", "offset", "atan2"),
}


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def run(*cmd: str | Path, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def validate(*files: Path) -> subprocess.CompletedProcess[str]:
    return run("bash", VALIDATE, *files, timeout=600)


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows' nested panels included."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(where, PromQL, the object carrying the query) for panel targets and annotations."""
    for panel in panels(dashboard):
        for t in panel.get("targets", []):
            yield f"panel {panel.get('id')} {panel.get('title')!r} {t.get('refId')}", t["expr"], t
    for anno in dashboard.get("annotations", {}).get("list", []):
        if "expr" in anno:
            yield f"annotation {anno['name']!r}", anno["expr"], anno


def variable_queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            query = var["query"] if isinstance(var["query"], str) else var["query"].get("query", "")
            match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
            assert match, f"variable {var['name']}: expected label_values(<selector>, <label>), got {query!r}"
            yield f"variable {var['name']}", match.group(1)


def strip_strings(expr: str) -> str:
    return re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)


def selectors(expr: str) -> list[tuple[str, dict[str, tuple[str, str]]]]:
    """(metric, {label: (operator, value)}) for every vector selector with a label matcher block."""
    found = []
    for match in re.finditer(r"([A-Za-z_:][\w:]*)\s*\{([^}]*)\}", expr):
        matchers: dict[str, tuple[str, str]] = {}
        for m in re.finditer(r'(\w+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"', match.group(2)):
            matchers.setdefault(m.group(1), (m.group(2), m.group(3)))
        found.append((match.group(1), matchers))
    return found


def metric_names(expr: str) -> set[str]:
    """Identifiers in a PromQL expression that name series (not functions, keywords, labels)."""
    text = strip_strings(expr)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", r"\1", text)  # label lists
    text = re.sub(r"\$\{?\w+\}?", " ", text)  # dashboard variables
    text = re.sub(r"\b\d+(\.\d+)?([eE][-+]?\d+)?\b", " ", text)  # numbers
    names = set()
    for m in re.finditer(r"[A-Za-z_:][\w:]*", text):
        name, after = m.group(0), text[m.end() :].lstrip()
        if after.startswith("(") or name in PROMQL_WORDS:
            continue  # a function call, or an aggregation / keyword
        names.add(name)
    return names


def grouping_labels(expr: str) -> set[str]:
    return {
        label.strip()
        for group in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", strip_strings(expr))
        for label in group.split(",")
        if label.strip()
    }


def labels_of(name: str) -> set[str] | None:
    """The labels a series carries; None when any label may occur (ALERTS)."""
    if name in PROMETHEUS_SERIES:
        labels = PROMETHEUS_SERIES[name]
        return None if labels is None else labels | TARGET_LABELS
    return SERIES.get(name)


# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dashboards() -> dict[str, dict[str, Any]]:
    missing = [str(p.relative_to(ROOT)) for p in DASHBOARD_FILES.values() if not p.exists()]
    assert not missing, f"missing {missing}: run python {GENERATE.relative_to(ROOT)}"
    return {uid: json.loads(path.read_text(encoding="utf-8")) for uid, path in DASHBOARD_FILES.items()}


@pytest.fixture(scope="module")
def tools() -> None:
    """validate.sh's prerequisites, checked up front so that a missing one is named (a failure)."""
    missing = [tool for tool in ("bash", "node", "npm", "python3") if shutil.which(tool) is None]
    if not (ROOT / ".venv" / "bin" / "check-jsonschema").exists() and shutil.which("check-jsonschema") is None:
        missing.append("check-jsonschema")
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: {HINT}")


@pytest.fixture(scope="module")
def committed_validation(tools: None) -> subprocess.CompletedProcess[str]:
    return validate(*DASHBOARD_FILES.values())


# Mutations of a valid dashboard that Grafana's types must refuse: (name, change, expected error).
def _first(dashboard: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(p for p in panels(dashboard) if p.get("type") == kind)


MUTATIONS: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "unknown top-level field": (
        lambda d: d.update(refreshInterval="30s"),
        r"\$: Additional properties are not allowed \('refreshInterval' was unexpected\)",
    ),
    "unknown panel field": (
        lambda d: _first(d, "timeseries").update(legendMode="table"),
        r"\$\.panels\[\d+\]: Additional properties are not allowed \('legendMode' was unexpected\)",
    ),
    "unknown panel option": (
        lambda d: _first(d, "timeseries")["options"]["legend"].update(displayMod="table"),
        r"\$\.panels\[\d+\]\.options\.legend: Additional properties are not allowed",
    ),
    "unknown annotation field": (
        lambda d: d["annotations"]["list"][0].update(query="up"),
        r"\$\.annotations\.list\[0\]: Additional properties are not allowed \('query' was unexpected\)",
    ),
    "wrong type: title": (lambda d: d.update(title=42), r"\$\.title: 42 is not of type 'string'"),
    "wrong type: gridPos.w": (
        lambda d: _first(d, "stat")["gridPos"].update(w="3"),
        r"\$\.panels\[\d+\]\.gridPos\.w: '3' is not of type 'number'",
    ),
    "wrong type: custom field config": (
        lambda d: _first(d, "timeseries")["fieldConfig"]["defaults"]["custom"].update(lineWidth="thin"),
        r"\.fieldConfig\.defaults\.custom\.lineWidth: 'thin' is not of type 'number'",
    ),
    "wrong enum: tooltip mode": (
        lambda d: _first(d, "timeseries")["options"]["tooltip"].update(mode="sometimes"),
        r"\.options\.tooltip\.mode: 'sometimes' is not one of",
    ),
    "wrong type: templating list": (
        lambda d: d["templating"].update(list={"job": "dknn-agent"}),
        r"\$\.templating\.list: .* is not of type 'array'",
    ),
}


@pytest.fixture(scope="module")
def mutated_validation(
    tools: None, dashboards: dict[str, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> tuple[subprocess.CompletedProcess[str], dict[str, Path]]:
    """One validate.sh run over every mutated copy (each file's errors are reported separately)."""
    out = tmp_path_factory.mktemp("mutated")
    files = {}
    for i, (name, (mutate, _)) in enumerate(MUTATIONS.items()):
        dashboard = copy.deepcopy(dashboards["dknn-overview"])
        mutate(dashboard)
        files[name] = out / f"mutation-{i}.json"
        files[name].write_text(json.dumps(dashboard, indent=2), encoding="utf-8")
    return validate(*files.values()), files


# ---------------------------------------------------------------------------------------------
# Generated, valid, strict
# ---------------------------------------------------------------------------------------------


def test_committed_json_is_what_the_generator_writes() -> None:
    result = run(sys.executable, GENERATE, "--check")
    if "No module named 'grafana_foundation_sdk'" in result.stderr:
        pytest.fail(f"grafana-foundation-sdk is not installed: pip install '{SDK_PIN}'")
    assert result.returncode == 0, (
        f"committed dashboards are stale; run python {GENERATE.relative_to(ROOT)}\n{result.stdout}\n{result.stderr}"
    )


def test_generator_check_detects_a_stale_file(tmp_path: Path) -> None:
    written = run(sys.executable, GENERATE, "--out", tmp_path)
    assert written.returncode == 0, written.stderr
    assert run(sys.executable, GENERATE, "--check", "--out", tmp_path).returncode == 0
    stale = tmp_path / "dknn-detail.json"
    edited = json.loads(stale.read_text(encoding="utf-8"))
    edited["title"] += " (edited by hand)"
    stale.write_text(json.dumps(edited, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    result = run(sys.executable, GENERATE, "--check", "--out", tmp_path)
    assert result.returncode == 1 and "dknn-detail.json" in result.stdout + result.stderr


def test_committed_dashboards_validate_against_grafana_schema(
    committed_validation: subprocess.CompletedProcess[str],
) -> None:
    result = committed_validation
    assert result.returncode == 0, f"validate.sh failed ({HINT}):\n{result.stdout}\n{result.stderr}"
    assert "ok -- validation done" in result.stdout


@pytest.mark.parametrize("name", MUTATIONS)
def test_validation_refuses_a_mutated_dashboard(
    name: str, mutated_validation: tuple[subprocess.CompletedProcess[str], dict[str, Path]]
) -> None:
    result, files = mutated_validation
    assert result.returncode == 1, (
        f"validate.sh accepted mutated dashboards ({HINT}):\n{result.stdout}\n{result.stderr}"
    )
    errors = [line.strip() for line in result.stdout.splitlines() if line.strip().startswith(f"{files[name]}::")]
    pattern = MUTATIONS[name][1]
    assert any(re.search(pattern, line) for line in errors), (
        f"{name}: expected an error matching {pattern!r} for {files[name].name}; got:\n" + "\n".join(errors)
    )


# ---------------------------------------------------------------------------------------------
# PromQL: the contract, $datasource, $job / $instance
# ---------------------------------------------------------------------------------------------


def test_queries_use_only_contract_metrics(dashboards: dict[str, dict[str, Any]]) -> None:
    problems = []
    for uid, dashboard in dashboards.items():
        for where, expr in [*((w, e) for w, e, _ in queries(dashboard)), *variable_queries(dashboard)]:
            for token in re.findall(r"[\w:]*dknn_[\w:]*", strip_strings(expr)):
                if token not in SERIES:
                    problems.append(
                        f"{uid} {where}: {token} is not a contract series (raw metrics only, histograms via _bucket/_sum/_count)"
                    )
            for name in metric_names(expr):
                if name not in SERIES and name not in PROMETHEUS_SERIES:
                    problems.append(f"{uid} {where}: unknown metric {name!r} in {expr}")
    assert not problems, "\n".join(problems)


def test_every_contract_metric_is_on_a_dashboard(dashboards: dict[str, dict[str, Any]]) -> None:
    used = {name for d in dashboards.values() for _, expr, _ in queries(d) for name in metric_names(expr)}
    families = {re.sub(r"_(bucket|sum|count)$", "", name) for name in used} | used
    missing = sorted((set(COUNTERS) | set(GAUGES) | set(HISTOGRAMS) | REVIEW_METRICS) - families)
    assert not missing, f"contract metrics on no dashboard: {missing}"


def test_labels_exist_on_the_metrics_queried(dashboards: dict[str, dict[str, Any]]) -> None:
    problems = []
    for uid, dashboard in dashboards.items():
        for where, expr, query in queries(dashboard):
            names = metric_names(expr)
            known = [labels_of(n) for n in names]
            available = None if any(k is None for k in known) else set().union(*(k for k in known if k is not None))
            for metric, matchers in selectors(expr):
                own = labels_of(metric)
                for label, (op, value) in matchers.items():
                    if own is not None and label not in own:
                        problems.append(f"{uid} {where}: {metric} has no label {label!r}")
                    bounded = label_values(metric, label)
                    if bounded is not None and op in ("=", "!=") and value not in bounded:
                        problems.append(f"{uid} {where}: {metric} {label}={value!r} is not one of {sorted(bounded)}")
            if available is None:
                continue
            for label in grouping_labels(expr) - available:
                problems.append(f"{uid} {where}: grouping by {label!r}, a label none of {sorted(names)} has")
            legend = query.get("legendFormat", "")
            grouped = grouping_labels(expr)
            for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", legend):
                if label not in (grouped or available):
                    problems.append(f"{uid} {where}: legend uses {{{{{label}}}}}, which the result does not carry")
    assert not problems, "\n".join(problems)


def test_every_query_goes_through_the_datasource_variable(dashboards: dict[str, dict[str, Any]]) -> None:
    problems = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            ds = node.get("datasource")
            if isinstance(ds, dict) and ds.get("uid") != "${datasource}":
                problems.append(f"{path}.datasource = {ds} (hard-coded data source)")
            if isinstance(ds, str) and ds != "${datasource}":
                problems.append(f"{path}.datasource = {ds!r}")
            for key, value in node.items():
                walk(value, f"{path}.{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{path}[{i}]")

    expected = {"type": "prometheus", "uid": "${datasource}"}
    for uid, dashboard in dashboards.items():
        walk(dashboard, uid)
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        if (variables["datasource"]["type"], variables["datasource"]["query"]) != ("datasource", "prometheus"):
            problems.append(f"{uid}: $datasource is not a Prometheus data source variable")
        carriers = [(f"panel {p['id']}", p) for p in panels(dashboard) if p.get("type") != "row"]
        carriers += [(f"annotation {a['name']!r}", a) for a in dashboard["annotations"]["list"]]
        carriers += [(f"variable {n}", variables[n]) for n in ("job", "instance", "review_job") if n in variables]
        for where, carrier in carriers:
            if carrier.get("datasource") != expected:
                problems.append(f"{uid} {where}: datasource {carrier.get('datasource')} is not {expected}")
    assert not problems, "\n".join(problems)


def test_every_agent_selector_is_scoped_to_job_and_instance(dashboards: dict[str, dict[str, Any]]) -> None:
    problems = []
    for uid, dashboard in dashboards.items():
        for where, expr, _ in queries(dashboard):
            names = metric_names(expr)
            scoped = {metric for metric, m in selectors(expr) if metric != "ALERTS"}
            for metric in names - {"ALERTS"}:
                if metric not in scoped:
                    problems.append(f"{uid} {where}: {metric} without a label selector")
            for metric, matchers in selectors(expr):
                if metric == "ALERTS":
                    if matchers.get("job") != ("=~", "$job|"):
                        problems.append(f"{uid} {where}: ALERTS not scoped to $job")
                elif re.sub(r"_(bucket|sum|count)$", "", metric) in REVIEW_METRICS:
                    if matchers.get("job") != ("=", "$review_job"):
                        problems.append(
                            f'{uid} {where}: {metric} (the review console\'s) not scoped by job="$review_job"'
                        )
                elif matchers.get("job") != ("=", "$job") or matchers.get("instance") != ("=~", "$instance"):
                    problems.append(f'{uid} {where}: {metric} not scoped by job="$job", instance=~"$instance"')
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------------------------------
# Structure: uids, ids, version, variables, annotations, the panels on-call needs
# ---------------------------------------------------------------------------------------------


def test_stable_identity_and_version(dashboards: dict[str, dict[str, Any]]) -> None:
    for uid, dashboard in dashboards.items():
        assert dashboard["uid"] == uid
        assert isinstance(dashboard["version"], int) and dashboard["version"] >= 1
        assert "id" not in dashboard or dashboard["id"] is None, "a numeric id is local to one Grafana instance"
        ids = [p["id"] for p in panels(dashboard)]
        assert all(isinstance(i, int) and i > 0 for i in ids), ids
        assert len(ids) == len(set(ids)), f"{uid}: duplicate panel ids"
    overview_ids = {p["id"] for p in panels(dashboards["dknn-overview"])}
    detail_ids = {p["id"] for p in panels(dashboards["dknn-detail"])}
    assert not overview_ids & detail_ids, "panel ids are kept distinct across the two dashboards"


def test_panels_do_not_overlap(dashboards: dict[str, dict[str, Any]]) -> None:
    for uid, dashboard in dashboards.items():
        taken: dict[tuple[int, int], int] = {}
        for panel in dashboard["panels"]:
            g = panel["gridPos"]
            assert g["x"] >= 0 and g["x"] + g["w"] <= 24, (uid, panel["id"], g)
            for x in range(g["x"], g["x"] + g["w"]):
                for y in range(g["y"], g["y"] + g["h"]):
                    assert (x, y) not in taken, f"{uid}: panel {panel['id']} overlaps panel {taken[(x, y)]}"
                    taken[(x, y)] = panel["id"]


def test_job_and_instance_variables(dashboards: dict[str, dict[str, Any]]) -> None:
    for uid, dashboard in dashboards.items():
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        review = ["review_job"] if uid == "dknn-overview" else []  # the Review row is the overview's
        assert list(variables) == ["datasource", "job", "instance", *review]
        if review:
            assert variables["review_job"]["query"] == "label_values(dknn_review_console_events, job)"
        assert variables["job"]["query"] == "label_values(dknn_ready, job)"
        assert variables["instance"]["query"] == 'label_values(dknn_ready{job="$job"}, instance)'
        assert variables["instance"]["multi"] and variables["instance"]["includeAll"]


def test_the_agents_jobs_are_found_by_a_series_the_console_does_not_export(
    dashboards: dict[str, dict[str, Any]],
) -> None:
    """Both export dknn_build_info; $job and $instance read dknn_ready, the agent's alone."""
    for dashboard in dashboards.values():
        for where, selector in variable_queries(dashboard):
            if where in ("variable job", "variable instance"):
                (metric,) = metric_names(selector)
                assert metric in GAUGES and metric not in CONSOLE_FAMILIES, (where, metric)


def test_alert_annotations(dashboards: dict[str, dict[str, Any]]) -> None:
    for uid, dashboard in dashboards.items():
        annotations = dashboard["annotations"]["list"]
        assert annotations and all(a["expr"].startswith('ALERTS{alertname=~"Dknn.*"') for a in annotations), uid
        assert all(a["enable"] and a["titleFormat"] == "{{alertname}}" for a in annotations), uid
        named = {n for a in annotations for n in re.findall(r"Dknn[A-Za-z]+", a["expr"])}
        assert named <= ALERT_NAMES, named - ALERT_NAMES
        assert {"DknnDistributionShiftDetected", "DknnTrafficShifted"} <= named


def _exprs(dashboard: dict[str, Any], kind: str | None = None) -> list[str]:
    return [t["expr"] for p in panels(dashboard) if kind in (None, p.get("type")) for t in p.get("targets", [])]


@pytest.mark.parametrize(
    ("what", "kind", "pattern"),
    [
        ("events in by outcome", "timeseries", r"sum\(rate\(dknn_events_consumed_total"),
        ("events scored by verdict", "timeseries", r"sum by \(verdict\) \(rate\(dknn_events_scored_total"),
        ("dead-lettered by reason", "timeseries", r"sum by \(reason\) \(rate\(dknn_events_dead_lettered_total"),
        ("consumer lag", "timeseries", r"dknn_consumer_lag_messages"),
        ("credibility heatmap", "heatmap", r"sum by \(le\) \(increase\(dknn_credibility_bucket"),
        ("mean credibility", "timeseries", r"rate\(dknn_credibility_sum.*/ sum\(rate\(dknn_credibility_count"),
        ("quarantine share", "timeseries", r'dknn_events_scored_total\{verdict="quarantined"'),
        ("change drift signal", "timeseries", r"dknn_drift_change_statistic_log10"),
        ("change alarms", "timeseries", r"increase\(dknn_drift_change_total"),
        ("state drift signal", "state-timeline", r"dknn_drift_shifted"),
        ("window ratio vs bound", "timeseries", r"dknn_drift_window_low_credibility_bound"),
        ("label mix", "timeseries", r"sum by \(label\) \(rate\(dknn_predictions_total"),
        ("disagreement rate", "timeseries", r"dknn_model_disagreements_total.*/.*dknn_predictions_total"),
        ("stage percentiles", "timeseries", r"histogram_quantile\(0\.95, sum by \(stage, le\)"),
        (
            "end-to-end percentiles",
            "timeseries",
            r"histogram_quantile\(0\.99, sum by \(le\) \(rate\(dknn_event_latency",
        ),
        ("bundle per instance", "table", r"max by \(instance, model, version.*dknn_bundle_info"),
        ("outputs refused", "timeseries", r"dknn_outputs_refused_total"),
        ("commits rejected", "timeseries", r"dknn_commits_rejected_total"),
        (
            "served-answer mismatch share",
            "timeseries",
            r"sum\(rate\(dknn_served_answer_mismatches_total.*/ \(sum\(rate\(dknn_served_answers_compared_total",
        ),
        ("readiness", "state-timeline", r"dknn_ready"),
        ("shift at a glance", "stat", r"max\(dknn_drift_shifted"),
        ("reviews per verdict", "timeseries", r"sum by \(verdict\) \(rate\(dknn_reviews_total"),
        ("review coverage", "stat", r"max\(dknn_review_coverage_ratio"),
        ("quarantine precision", "stat", r"max\(dknn_quarantine_precision_ratio"),
        ("review latency p95", "timeseries", r"histogram_quantile\(0\.95, sum by \(le\) \(rate\(dknn_review_latency"),
    ],
)
def test_overview_has_the_on_call_panels(
    dashboards: dict[str, dict[str, Any]], what: str, kind: str, pattern: str
) -> None:
    exprs = _exprs(dashboards["dknn-overview"], kind)
    assert any(re.search(pattern, e) for e in exprs), f"overview lacks {what}: no {kind} query matching {pattern!r}"


def test_heatmaps_read_histogram_buckets_as_heatmap_frames(dashboards: dict[str, dict[str, Any]]) -> None:
    heatmaps = [p for d in dashboards.values() for p in panels(d) if p.get("type") == "heatmap"]
    assert heatmaps
    for panel in heatmaps:
        (t,) = panel["targets"]
        assert t["format"] == "heatmap" and t["legendFormat"] == "{{le}}" and "_bucket" in t["expr"]
        assert panel["options"]["calculate"] is False, "buckets come from the histogram; Grafana must not re-bucket"


def test_dashboards_link_to_each_other(dashboards: dict[str, dict[str, Any]]) -> None:
    for dashboard in dashboards.values():
        (link,) = dashboard["links"]
        assert link["type"] == "dashboards" and link["tags"] == ["dknn"] and link["includeVars"] and link["keepTime"]
        assert "dknn" in dashboard["tags"]


# ---------------------------------------------------------------------------------------------
# The PromQL checks above are not vacuous: each refuses a typical mistake
# ---------------------------------------------------------------------------------------------


def _set_expr(d: dict[str, Any], old: str, new: str) -> None:
    target = next(t for p in panels(d) for t in p.get("targets", []) if old in t["expr"])
    target["expr"] = target["expr"].replace(old, new)


CHECK_MISTAKES: dict[str, tuple[Callable[[dict[str, Any]], None], Callable[[dict[str, dict[str, Any]]], None]]] = {
    "recording rule": (
        lambda d: _set_expr(
            d, f"rate(dknn_events_consumed_total{{{SCOPE}}}[$__rate_interval])", "job:dknn_events_consumed:rate5m"
        ),
        test_queries_use_only_contract_metrics,
    ),
    "metric outside the contract": (
        lambda d: _set_expr(d, "dknn_consumer_lag_messages{", "kafka_consumergroup_lag{"),
        test_queries_use_only_contract_metrics,
    ),
    "histogram without suffix": (
        lambda d: _set_expr(d, "dknn_credibility_sum", "dknn_credibility"),
        test_queries_use_only_contract_metrics,
    ),
    "label the metric lacks": (
        lambda d: _set_expr(
            d, "sum by (verdict) (rate(dknn_events_scored_total", "sum by (reason) (rate(dknn_events_scored_total"
        ),
        test_labels_exist_on_the_metrics_queried,
    ),
    "label value outside its set": (
        lambda d: _set_expr(d, 'verdict="quarantined"', 'verdict="rejected"'),
        test_labels_exist_on_the_metrics_queried,
    ),
    "another metric's label value": (  # schema is a dead-letter reason, never a skip reason
        lambda d: _set_expr(d, "dknn_events_skipped_total{", 'dknn_events_skipped_total{reason="schema", '),
        test_labels_exist_on_the_metrics_queried,
    ),
    "hard-coded data source": (
        lambda d: next(p for p in panels(d) if p.get("targets")).update(
            datasource={"type": "prometheus", "uid": "P1809F7CD0C75ACF3"}
        ),
        test_every_query_goes_through_the_datasource_variable,
    ),
    "review metric scoped to the agent's job": (
        lambda d: _set_expr(d, 'dknn_reviews_total{job="$review_job"}', f"dknn_reviews_total{{{SCOPE}}}"),
        test_every_agent_selector_is_scoped_to_job_and_instance,
    ),
    "unscoped selector": (
        lambda d: _set_expr(d, ', instance=~"$instance"}', "}"),
        test_every_agent_selector_is_scoped_to_job_and_instance,
    ),
}


@pytest.mark.parametrize("name", CHECK_MISTAKES)
def test_promql_checks_catch_mistakes(name: str, dashboards: dict[str, dict[str, Any]]) -> None:
    mutate, check = CHECK_MISTAKES[name]
    broken = copy.deepcopy(dashboards)
    mutate(broken["dknn-overview"])
    with pytest.raises(AssertionError):
        check(broken)


# ---------------------------------------------------------------------------------------------
# The queries run: promtool parses every one, and a real Prometheus answers every panel query
# with data after scraping two replicas that export the metric contract
# ---------------------------------------------------------------------------------------------

# What Grafana would substitute; $__rate_interval is short because the test scrapes every second.
VARIABLES = {"job": "dknn-agent", "instance": ".+", "review_job": REVIEW_JOB, "__rate_interval": "20s"}


def concrete(expr: str) -> str:
    def value(match: re.Match[str]) -> str:
        assert match.group(1) in VARIABLES, f"unknown dashboard variable ${match.group(1)} in {expr}"
        return VARIABLES[match.group(1)]

    return re.sub(r"\$\{?(\w+)\}?", value, expr)


def all_queries(dashboards: dict[str, dict[str, Any]]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(f"{uid} {where}", expr, q) for uid, d in dashboards.items() for where, expr, q in queries(d)]


def test_promtool_parses_every_query(dashboards: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail(f"promtool not found: {PROMETHEUS_HINT}")
    found = all_queries(dashboards)
    selectors_ = [f"{sel}" for _, sel in (v for d in dashboards.values() for v in variable_queries(d))]
    rules = [{"record": f"dashboard_query:{i}", "expr": concrete(expr)} for i, (_, expr, _) in enumerate(found)]
    rules += [{"record": f"dashboard_variable:{i}", "expr": concrete(s)} for i, s in enumerate(selectors_)]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard-queries", "rules": rules}]}), encoding="utf-8")
    result = run(promtool, "check", "rules", path)
    assert result.returncode == 0, f"promtool refused a dashboard query:\n{result.stdout}\n{result.stderr}"


class Exporter:
    """A registry served on a free port, with `tick` putting traffic into it every 0.2 s until `stop`."""

    def serve(self, registry: CollectorRegistry) -> None:
        self.server, _ = start_http_server(0, addr="127.0.0.1", registry=registry)
        self.port = self.server.server_port
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._traffic, daemon=True)
        self.thread.start()

    def tick(self) -> None:
        raise NotImplementedError

    def _traffic(self) -> None:
        while not self.stopped.wait(0.2):
            self.tick()

    def stop(self) -> None:
        self.stopped.set()
        self.server.shutdown()
        self.thread.join(5)


class FakeReplica(Exporter):
    """One agent replica's /metrics as the contract describes it, with traffic flowing."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        reg = CollectorRegistry()

        def counter(name: str, *labels: str) -> Counter:
            return Counter(name, name, labels, namespace="dknn", registry=reg)

        def gauge(name: str, *labels: str) -> Gauge:
            return Gauge(name, name, labels, namespace="dknn", registry=reg)

        def histogram(name: str, *labels: str, buckets: tuple[float, ...] = Histogram.DEFAULT_BUCKETS) -> Histogram:
            return Histogram(name, name, labels, namespace="dknn", registry=reg, buckets=buckets)

        probability = (0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
        self.consumed = counter("events_consumed")
        self.scored = counter("events_scored", "verdict")
        self.dead = counter("events_dead_lettered", "reason")
        self.skipped = counter("events_skipped", "reason")
        self.compared = counter("served_answers_compared")
        self.mismatched = counter("served_answer_mismatches")
        self.unmatched = counter("served_answers_unmatched")
        self.predictions = counter("predictions", "label")
        self.disagreements = counter("model_disagreements")
        self.refused = counter("outputs_refused", "output")
        counter("commits_rejected")
        counter("drift_change")
        self.credibility = histogram("credibility", buckets=probability)
        self.confidence = histogram("confidence", buckets=(*probability[3:-1], 0.95, 0.99, 1.0))
        self.stage = histogram("stage_duration_seconds", "stage")
        self.latency = histogram("event_latency_seconds")
        self.lag = gauge("consumer_lag_messages", "topic", "partition")
        self.low_ratio = gauge("low_credibility_ratio", "window")
        self.statistic = gauge("drift_change_statistic_log10")
        gauge("drift_change_threshold_log10").set(2.0)
        gauge("drift_shifted").set(0)
        self.window_ratio = gauge("drift_window_low_credibility_ratio")
        gauge("drift_window_low_credibility_bound").set(0.13)
        gauge("ready").set(1)
        bundle = {"model": "mnist-cnn", "version": "1", "k": "75", "layers": "4", "index": "annoy"}
        Info("bundle", "bundle", namespace="dknn", registry=reg).info({**bundle, "calibration_size": "750"})
        Info("build", "build", namespace="dknn", registry=reg).info({"version": "0.1.0", "python": "3.11.2"})
        for verdict in LABEL_VALUES["verdict"]:  # the agent pre-creates its bounded series at zero
            self.scored.labels(verdict)
        for reason in label_values("dknn_events_dead_lettered_total", "reason") or ():
            self.dead.labels(reason)
        for reason in label_values("dknn_events_skipped_total", "reason") or ():
            self.skipped.labels(reason)
        for output in LABEL_VALUES["output"]:
            self.refused.labels(output)
        self.partitions = [str(seed * 3 + p) for p in range(3)]  # partitions this replica owns
        self.serve(reg)

    def tick(self) -> None:
        rng = self.rng
        for _ in range(20):
            self.consumed.inc()
            if rng.random() < 0.05:
                self.dead.labels(rng.choice(["schema", "bad_json", "shape", "out_of_range"])).inc()
                continue
            if rng.random() < 0.05:  # a record for another model on a shared topic (unknown_model: skip)
                self.skipped.labels("unknown_model").inc()
                continue
            credibility = rng.random() ** 2
            self.credibility.observe(credibility)
            self.confidence.observe(rng.random())
            self.scored.labels("quarantined" if credibility < 0.1 else "accepted").inc()
            self.predictions.labels(str(rng.randrange(10))).inc()
            if rng.random() < 0.02:
                self.disagreements.inc()
            if rng.random() < 0.5:  # the event carried the server's answer (or its response arrived)
                self.compared.inc()
                if rng.random() < 0.02:
                    self.mismatched.inc()
            elif rng.random() < 0.02:
                self.unmatched.inc()
            self.latency.observe(rng.uniform(0.01, 2.0))
        for stage in LABEL_VALUES["stage"]:
            self.stage.labels(stage).observe(rng.uniform(0.001, 0.2))
        for window in LABEL_VALUES["window"]:
            self.low_ratio.labels(window).set(rng.uniform(0.05, 0.2))
        self.statistic.set(rng.uniform(-3, 1))
        self.window_ratio.set(rng.uniform(0.05, 0.2))
        for partition in self.partitions:
            self.lag.labels("inference-events", partition).set(rng.randrange(0, 500))


class FakeConsole(Exporter):
    """The review console's own metrics (`ReviewTelemetry`, its /metrics), with reviews coming in."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.telemetry = ReviewTelemetry()
        self.telemetry.records_skipped.labels(topic="quarantine", reason="bad_json")  # at zero, as a skip leaves it
        self.verdicts = sorted(label_values("dknn_reviews_total", "verdict") or ())
        assert self.verdicts
        self.serve(self.telemetry.registry)

    def tick(self) -> None:
        rng = self.rng
        for _ in range(5):
            self.telemetry.reviewed(rng.choice(self.verdicts), rng.uniform(30, 48 * 3600))
        self.telemetry.state(rng.randrange(100, 1000), rng.uniform(0.2, 0.8), rng.uniform(0.4, 0.9))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Any]]:
    """A real Prometheus scraping two fake replicas of job dknn-agent and a fake review console (a job of
    its own) every second."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail(f"prometheus not found: {PROMETHEUS_HINT}")
    workdir = tmp_path_factory.mktemp("prometheus")
    replicas = [FakeReplica(seed) for seed in range(2)]
    console = FakeConsole(7)
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {"job_name": "dknn-agent", "static_configs": [{"targets": [f"127.0.0.1:{r.port}" for r in replicas]}]},
            {"job_name": REVIEW_JOB, "static_configs": [{"targets": [f"127.0.0.1:{console.port}"]}]},
        ],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
    port = free_port()
    log = (workdir / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )

    def api(path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return body["data"]

    try:
        deadline = time.monotonic() + 120
        while True:  # until both replicas have been scraped often enough for every rate()
            try:
                ready = api("query", query=concrete(f"count(rate(dknn_events_consumed_total[{RATE_WINDOW}]) > 0)"))
                if ready["result"] and ready["result"][0]["value"][1] == "2":
                    break
            except OSError:
                pass
            assert proc.poll() is None, (workdir / "prometheus.log").read_text()
            assert time.monotonic() < deadline, (
                "Prometheus has no rates after 120 s:\n" + (workdir / "prometheus.log").read_text()
            )
            time.sleep(0.5)
        time.sleep(2)  # a few more scrapes: every histogram bucket has moved
        yield api
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        for r in replicas:
            r.stop()
        console.stop()


RATE_WINDOW = VARIABLES["__rate_interval"]


def test_every_panel_query_returns_data_from_prometheus(
    dashboards: dict[str, dict[str, Any]], prometheus: Callable[..., Any]
) -> None:
    problems = []
    for where, expr, query in all_queries(dashboards):
        if "ALERTS" in expr and "vector(0)" not in expr:
            continue  # annotations: no alert rules are loaded here, so ALERTS is empty
        data = prometheus("query", query=concrete(expr))
        values = [float(r["value"][1]) for r in data["result"]]
        if not values:
            problems.append(f"{where}: no series for {concrete(expr)}")
        elif not any(math.isfinite(v) for v in values):
            problems.append(f"{where}: only NaN/Inf for {concrete(expr)}")
        legend = query.get("legendFormat", "")
        for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", legend):
            if any(label not in r["metric"] for r in data["result"]):
                problems.append(f"{where}: legend {{{{{label}}}}} but the result has no {label!r} label")
    assert not problems, "\n".join(problems)


def test_template_variables_find_the_job_and_its_replicas(
    dashboards: dict[str, dict[str, Any]], prometheus: Callable[..., Any]
) -> None:
    variables = {v["name"]: v for v in dashboards["dknn-overview"]["templating"]["list"]}
    selectors_ = dict(variable_queries(dashboards["dknn-overview"]))
    job_match = selectors_["variable job"]
    # The console is scraped too, and exports dknn_build_info like the agent: $job still offers the agent only.
    assert prometheus("label/job/values", **{"match[]": job_match}) == ["dknn-agent"]
    assert prometheus("label/job/values", **{"match[]": "dknn_build_info"}) == ["dknn-agent", REVIEW_JOB]
    instances = prometheus("label/instance/values", **{"match[]": concrete(selectors_["variable instance"])})
    assert len(instances) == 2 and variables["instance"]["allValue"] == ".+"
    review = prometheus("label/job/values", **{"match[]": selectors_["variable review_job"]})
    assert review == [REVIEW_JOB]
