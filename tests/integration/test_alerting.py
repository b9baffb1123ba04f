"""The shipped alert rules and dashboards against the real tools: agent -> Prometheus -> Alertmanager.

One real agent (the session broker), one real Prometheus scraping it every second with
`dashboards/prometheus/rules.yml`, one real Alertmanager delivering to a webhook this module serves.
A clean prefix must not page, a shift must page, clean traffic again must resolve the page.

Time scale: the shipped rules look back 5-15 minutes (`increase(...[10m])`, `for: 15m`), so with
them as they are the shift page resolves no sooner than 10 minutes after the last change alarm and
DknnTrafficShifted needs 15 minutes of shifted traffic. Prometheus loads a copy of the shipped
file in which every duration (range selectors and `for:`) is divided by `DKNN_TEST_ALERT_TIMESCALE`
(default 30: 10m -> 20s); nothing else differs, which the test checks. Set it to 1 to run the
shipped file unchanged (about 12 minutes).

Needs `prometheus`, `prometheus-alertmanager` and `promtool` on PATH (`make tools` fetches them, no root
needed, and make puts them on PATH).
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import yaml

from agent.runtime.events import encode_event
from connectors.kafka import KafkaSink, ensure_topics
from tests.conftest import blobs
from tests.integration.agent_process import AgentProcess, free_port

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "dashboards" / "prometheus" / "rules.yml"
DASHBOARDS = sorted((REPO / "dashboards" / "grafana").glob("*.json"))
SHIFT_ALERTS = {"DknnDistributionShiftDetected", "DknnTrafficShifted"}
TIMESCALE = float(os.environ.get("DKNN_TEST_ALERT_TIMESCALE", "30"))
EVENTS_PER_S = 40  # paced publishing: batches of EVENTS_PER_S / 4 every 0.25 s
TOOLS = ("prometheus", "prometheus-alertmanager", "promtool")

_DURATION = re.compile(r"(\d+)([smhd])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def scaled(duration: str) -> str:
    seconds = int(_DURATION.fullmatch(duration).group(1)) * _UNIT_S[_DURATION.fullmatch(duration).group(2)]
    return f"{max(1, round(seconds / TIMESCALE))}s"


def scaled_rules(out: Path) -> Path:
    """The shipped rules with every duration divided by TIMESCALE (range selectors and `for:`)."""
    shipped = yaml.safe_load(RULES.read_text())
    rules = copy.deepcopy(shipped)
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule["expr"] = re.sub(r"\[(\d+[smhd])\]", lambda m: f"[{scaled(m.group(1))}]", rule["expr"])
            if "for" in rule:
                rule["for"] = scaled(rule["for"])
    # Only durations differ from the shipped file.
    strip = re.compile(r"\d+[smhd]")
    for mine, theirs in zip(rules["groups"], shipped["groups"], strict=True):
        for a, b in zip(mine["rules"], theirs["rules"], strict=True):
            assert {k: strip.sub("D", str(v)) for k, v in a.items()} == {
                k: strip.sub("D", str(v)) for k, v in b.items()
            }
    out.write_text(yaml.safe_dump(rules, sort_keys=False))
    return out


# -- the webhook Alertmanager delivers to --------------------------------------------------------


@dataclass
class Webhook:
    """Every alert of every notification: (monotonic time received, alertname, status)."""

    received: list[tuple[float, str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handler(self) -> type[BaseHTTPRequestHandler]:
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                now = time.monotonic()
                with hook.lock:
                    for alert in body["alerts"]:
                        hook.received.append((now, alert["labels"]["alertname"], alert["status"]))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        return Handler

    def first(self, names: set[str], status: str, after: float = 0.0) -> tuple[float, str] | None:
        with self.lock:
            for t, name, st in self.received:
                if name in names and st == status and t >= after:
                    return t, name
        return None

    def last(self, name: str) -> tuple[float, str] | None:
        """(time, status) of the latest delivery of `name`."""
        with self.lock:
            mine = [(t, st) for t, n, st in self.received if n == name]
        return mine[-1] if mine else None

    def names(self, status: str) -> set[str]:
        with self.lock:
            return {name for _, name, st in self.received if st == status}


# -- processes -----------------------------------------------------------------------------------


def http_get(url: str, timeout: float = 3) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")
    except OSError:
        return 0, ""


def wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"{proc.args[0]} exited: {log.read_text()[-3000:]}"
        if http_get(url, timeout=1)[0] == 200:
            return
        time.sleep(0.2)
    raise AssertionError(f"{url} not ready in {timeout_s}s: {log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(15)


@dataclass
class Stack:
    agent: AgentProcess
    prometheus_url: str
    webhook: Webhook
    sink: KafkaSink
    input_topic: str
    published: int = 0

    def publish(self, xs: np.ndarray, prefix: str) -> None:
        for x in xs:
            self.sink.send(self.input_topic, encode_event(f"{prefix}{self.published}", x, "tiny", "1"))
            self.published += 1
        self.sink.flush(30)

    def query(self, expr: str) -> dict:
        url = f"{self.prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        status, body = http_get(url)
        assert body, f"no answer from Prometheus for {expr!r} (HTTP {status})"
        return json.loads(body)

    def metric(self, name: str) -> float:
        return sum(v for k, v in self.agent.metrics().items() if k.split("{")[0] == name)


def clean_points(n: int, seed: int) -> np.ndarray:
    return blobs(n, seed=seed).x


def shifted_points(n: int, seed: int) -> np.ndarray:
    """Between the classes (near the origin; the blobs' centres are ~4 sigma out): low credibility.

    Far-away points (e.g. 40 + noise in every coordinate) are not: the tiny bundle's neighbours
    agree on them, so they score like clean traffic (checked: 20 of 160 quarantined).
    """
    rng = np.random.default_rng(seed)
    return rng.normal(0.0, 0.5, (n, 8)).astype(np.float32)


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not on PATH: run `make tools` (no root needed), then the tests through make, "
            "which puts ~/.cache/dknn-agent/bin on PATH"
        )
    tmp = tmp_path_factory.mktemp("alerting")
    name = f"alerting-{uuid.uuid4().hex[:8]}"
    topics = {kind: f"{name}-{kind}" for kind in ("input", "quarantine", "dead_letter", "scores")}
    ensure_topics(kafka_bootstrap, list(topics.values()))

    webhook = Webhook()
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), webhook.handler())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    agent = AgentProcess(
        tiny_bundle,
        kafka_bootstrap,
        topics,
        f"{name}-agent",
        tmp / "agent.log",
        env={"DKNN_DRIFT_ARL_EVENTS": "100000", "DKNN_DRIFT_WINDOW_EVENTS": "100"},
    )
    am_port, prom_port = free_port(), free_port()
    am_log, prom_log = tmp / "alertmanager.log", tmp / "prometheus.log"
    (tmp / "alertmanager.yml").write_text(
        yaml.safe_dump(
            {
                "route": {
                    "receiver": "hook",
                    "group_by": ["alertname", "job"],
                    "group_wait": "1s",
                    "group_interval": "1s",
                    "repeat_interval": "1h",
                },
                "receivers": [
                    {
                        "name": "hook",
                        "webhook_configs": [
                            {"url": f"http://127.0.0.1:{server.server_address[1]}/", "send_resolved": True}
                        ],
                    }
                ],
            }
        )
    )
    (tmp / "prometheus.yml").write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(RULES if TIMESCALE == 1 else scaled_rules(tmp / "rules.yml"))],
                "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]},
                "scrape_configs": [
                    {"job_name": "dknn-agent", "static_configs": [{"targets": [f"127.0.0.1:{agent.port}"]}]}
                ],
            }
        )
    )
    alertmanager = prometheus = None
    sink = None
    try:
        agent.start()
        with am_log.open("ab") as log:
            alertmanager = subprocess.Popen(
                [
                    "prometheus-alertmanager",
                    f"--config.file={tmp / 'alertmanager.yml'}",
                    f"--storage.path={tmp / 'am-data'}",
                    f"--web.listen-address=127.0.0.1:{am_port}",
                    "--cluster.listen-address=",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        with prom_log.open("ab") as log:
            prometheus = subprocess.Popen(
                [
                    "prometheus",
                    f"--config.file={tmp / 'prometheus.yml'}",
                    f"--storage.tsdb.path={tmp / 'prom-data'}",
                    f"--web.listen-address=127.0.0.1:{prom_port}",
                    # Re-send firing alerts every second (they expire in Alertmanager after 4 x this).
                    "--rules.alert.resend-delay=1s",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_ready(f"http://127.0.0.1:{am_port}/-/ready", alertmanager, am_log)
        wait_ready(f"http://127.0.0.1:{prom_port}/-/ready", prometheus, prom_log)
        sink = KafkaSink(kafka_bootstrap)
        yield Stack(agent, f"http://127.0.0.1:{prom_port}", webhook, sink, topics["input"])
    finally:
        if sink is not None:
            sink.close()
        stop(prometheus)
        stop(alertmanager)
        agent.stop()
        server.shutdown()
        server.server_close()


def quarantined_count(agent: AgentProcess) -> float:
    return sum(
        v
        for k, v in agent.metrics().items()
        if k.startswith("dknn_events_scored_total{") and "verdict=quarantined" in k
    )


def pace(stack: Stack, xs: np.ndarray, prefix: str, until: float | None = None) -> None:
    """Publishes xs at EVENTS_PER_S (batches every 0.25 s)."""
    step = max(1, EVENTS_PER_S // 4)
    for start in range(0, len(xs), step):
        began = time.monotonic()
        stack.publish(xs[start : start + step], prefix)
        time.sleep(max(0.0, 0.25 - (time.monotonic() - began)))


def test_shift_pages_and_clean_traffic_resolves_it(stack: Stack) -> None:
    hook, agent = stack.webhook, stack.agent
    # Prometheus has scraped the agent: the rules see its counters at 0 before anything flows.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if stack.query('up{job="dknn-agent"} == 1')["data"]["result"]:
            break
        time.sleep(0.5)
    else:
        raise AssertionError("Prometheus never scraped the agent")

    # (a) clean prefix: no shift alert.
    clean_n = 12 * EVENTS_PER_S
    pace(stack, clean_points(clean_n, seed=11), "c")
    agent.wait_consumed(stack.published, timeout_s=30)
    time.sleep(4)  # scrape + evaluation + group_wait of anything that would have fired
    assert agent.metrics()  # still answering
    assert stack.metric("dknn_drift_change_total") == 0, "the change signal fired on clean traffic"
    assert hook.first(SHIFT_ALERTS, "firing") is None, f"paged on clean traffic: {hook.received}"
    scored_clean = stack.metric("dknn_events_scored_total")
    quarantined_clean = quarantined_count(agent)

    # (b) shift: points between the classes until a shift alert is delivered firing.
    shift_start = time.monotonic()
    fired = None
    seed = 100
    while fired is None and time.monotonic() - shift_start < 60:
        pace(stack, shifted_points(EVENTS_PER_S, seed=seed), "s")
        seed += 1
        fired = hook.first(SHIFT_ALERTS, "firing", after=shift_start)
    assert fired is not None, (
        f"no shift alert delivered in 60 s of shifted traffic; change alarms "
        f"{stack.metric('dknn_drift_change_total')}, shifted {stack.metric('dknn_drift_shifted')}, "
        f"webhook {hook.received}"
    )
    fired_at, fired_name = fired
    # The state alert needs the shift to last its `for:` (15 minutes shipped): keep shifting until
    # it is delivered too, unless that would take minutes (TIMESCALE < 10).
    traffic_at = None
    if TIMESCALE >= 10:
        limit = 30 + 900 / TIMESCALE * 1.5
        while time.monotonic() - shift_start < limit:
            pace(stack, shifted_points(EVENTS_PER_S, seed=seed), "s")
            seed += 1
            if hook.first({"DknnTrafficShifted"}, "firing", after=shift_start):
                traffic_at = hook.first({"DknnTrafficShifted"}, "firing", after=shift_start)[0]
                break
        assert traffic_at is not None, (
            f"DknnTrafficShifted not delivered in {limit:.0f} s of shifted traffic; shifted "
            f"{stack.metric('dknn_drift_shifted')}, webhook {hook.received}"
        )
    shift_end = time.monotonic()
    agent.wait_consumed(stack.published, timeout_s=30)
    shifted_n = stack.metric("dknn_events_scored_total") - scored_clean
    quarantined = quarantined_count(agent) - quarantined_clean
    assert quarantined >= 0.5 * shifted_n, (
        f"shifted points were not low-credibility: {quarantined} of {shifted_n} quarantined"
    )

    # (c) clean again until every shift alert that fired was last delivered "resolved". The change
    # alert may already resolve during a long shift (it pages at the change; its window is 10
    # minutes, scaled); the state alert cannot resolve before the traffic is clean again.
    clean_start = time.monotonic()
    budget = 60 + 600 / TIMESCALE * 1.5
    seed = 1000

    def unresolved() -> set[str]:
        return {n for n in hook.names("firing") & SHIFT_ALERTS if hook.last(n)[1] != "resolved"}

    while unresolved() and time.monotonic() - clean_start < budget:
        pace(stack, clean_points(EVENTS_PER_S, seed=seed), "r")
        seed += 1
    assert not unresolved(), f"not resolved after {budget:.0f} s of clean traffic: {unresolved()}; {hook.received}"
    if traffic_at is not None:
        assert hook.first({"DknnTrafficShifted"}, "resolved", after=shift_start)[0] >= clean_start, (
            "DknnTrafficShifted resolved while the traffic was still shifted"
        )
    resolved = {n: hook.last(n)[0] - clean_start for n in sorted(hook.names("firing") & SHIFT_ALERTS)}
    print(
        f"\n{fired_name} firing delivered {fired_at - shift_start:.1f}s after the shift started; "
        f"DknnTrafficShifted firing delivered after "
        f"{'-' if traffic_at is None else f'{traffic_at - shift_start:.1f}'}s; "
        f"shift phase {shift_end - shift_start:.1f}s; resolved delivered at (s after clean traffic "
        f"resumed, negative = during the shift) {resolved} (timescale 1/{TIMESCALE:g}); "
        f"fired: {sorted(hook.names('firing'))}"
    )


def test_agent_metrics_pass_promtool(stack: Stack) -> None:
    status, text = stack.agent.http("/metrics")
    assert status == 200
    check = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30, check=False
    )
    assert check.returncode == 0, f"promtool check metrics:\n{check.stdout}{check.stderr}"


def dashboard_exprs() -> list[tuple[str, str, str]]:
    """(dashboard, panel title, expr) of every panel target and annotation."""
    out = []

    def walk(dashboard: str, panels: list[dict]) -> None:
        for panel in panels:
            for target in panel.get("targets", []):
                if target.get("expr"):
                    out.append((dashboard, panel.get("title", "?"), target["expr"]))
            walk(dashboard, panel.get("panels", []))

    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        walk(path.name, board["panels"])
        for annotation in board.get("annotations", {}).get("list", []):
            if annotation.get("expr"):
                out.append((path.name, f"annotation {annotation['name']}", annotation["expr"]))
    return out


def substitute(expr: str) -> str:
    for var, value in (
        ("job", "dknn-agent"),
        ("review_job", "dknn-review-console"),  # no console in this stack: its panels stay empty
        ("instance", ".*"),
        ("__rate_interval", "5s"),
        ("__interval", "5s"),
    ):
        expr = expr.replace(f"${{{var}}}", value)
        expr = re.sub(rf"\${var}\b", value, expr)
    return expr


def test_every_dashboard_query_runs(stack: Stack) -> None:
    if stack.published == 0:  # run alone: give the panels some traffic to show
        pace(stack, clean_points(4 * EVENTS_PER_S, seed=7), "d")
        time.sleep(3)
    exprs = dashboard_exprs()
    assert len(exprs) > 20
    empty, errors = [], []
    for dashboard, title, expr in exprs:
        query = substitute(expr)
        assert "$" not in query, f"unsubstituted variable in {dashboard} / {title}: {expr}"
        answer = stack.query(query)
        if answer.get("status") != "success":
            errors.append(f"{dashboard} / {title}: {answer.get('error')} in {query}")
        elif not answer["data"]["result"]:
            empty.append(f"{dashboard} / {title}: {query}")
    assert not errors, "\n".join(errors)
    print(f"\n{len(exprs)} dashboard queries, {len(empty)} without series:\n" + "\n".join(empty))
    assert len(empty) <= len(exprs) // 2, "most dashboard queries return nothing:\n" + "\n".join(empty)
