"""`make demo` for real: deploy/local/demo.sh with a Kafka broker, the agent and the demo producer.

The script runs on the MNIST smoke bundle with a small stream (DEMO_COUNT=300: 112 clean, 75
shifted, 113 clean events) and DEMO_HOLD_S=1, so it exits by itself once every event is handled;
Prometheus and Alertmanager (installed by .ci/run) start with the shipped rules on free ports and
must be gone afterwards. A second run makes the agent read a topic the producer does not write to,
so no event can be handled: the script must say so and exit 1 rather than claim success. Both runs
must leave no broker behind.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.conftest import ROOT, clean_env, free_port, kafka_sh, summaries

pytestmark = pytest.mark.slow

DEMO_SH = ROOT / "deploy" / "local" / "demo.sh"


@dataclass(frozen=True)
class DemoRun:
    returncode: int
    output: str  # stdout and stderr, interleaved as written
    port: int

    def explain(self) -> str:
        return f"demo.sh exited {self.returncode}; output:\n{self.output[-8000:]}"


def run_demo(bundle: Path, data_dir: Path, env: Mapping[str, str], timeout: float) -> DemoRun:
    """Runs demo.sh in its own process group, so that on a timeout the agent, the producer and the
    broker are stopped with it; afterwards the broker of `data_dir` must be gone."""
    port = free_port()
    full_env = clean_env(
        {
            "DKNN_BIN": str(Path(sys.executable).parent),
            "DKNN_DEMO_KAFKA_DATA": str(data_dir),
            "DKNN_METRICS__PORT": str(port),
            **env,
        }
    )
    process = subprocess.Popen(
        ["bash", str(DEMO_SH), str(bundle)],
        cwd=ROOT,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGTERM)  # the script's trap stops the agent and the broker
        try:
            output, _ = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            output, _ = process.communicate(timeout=60)
        pytest.fail(f"demo.sh did not finish within {timeout}s; output:\n{output[-8000:]}")
    finally:
        status = kafka_sh("status", "--data-dir", data_dir, timeout=60)
        kafka_sh("stop", "--data-dir", data_dir, "--purge", timeout=120)
    assert status.returncode == 3, f"demo.sh left its broker running:\n{status.stdout}{status.stderr}"
    return DemoRun(process.returncode, output, port)


def published(output: str) -> dict[str, int]:
    match = re.search(r"^published (.+) to inference-[a-z]+$", output, re.M)
    assert match, output
    return {kind: int(n) for kind, n in (item.split("=") for item in match.group(1).split(", "))}


def port_answers(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_make_demo(kafka_jars: None, mnist_bundle: Path, tmp_path: Path) -> None:
    prometheus, alertmanager, console = free_port(), free_port(), free_port()
    env = {
        "DEMO_HOLD_S": "1",
        "DEMO_COUNT": "300",
        "DEMO_RATE": "300",
        "DEMO_PROMETHEUS_PORT": str(prometheus),
        "DEMO_ALERTMANAGER_PORT": str(alertmanager),
        "DEMO_CONSOLE_PORT": str(console),
    }
    run = run_demo(mnist_bundle, tmp_path / "kafka", env, timeout=400)
    assert run.returncode == 0, run.explain()
    output = run.output
    assert re.search(r"^Kafka at 127\.0\.0\.1:\d+$", output, re.M), run.explain()
    assert f"agent ready: http://127.0.0.1:{run.port}/metrics  (/healthz, /readyz)" in output, run.explain()
    assert f"Prometheus with the shipped rules: http://127.0.0.1:{prometheus}/alerts" in output, run.explain()
    assert f"Alertmanager: http://127.0.0.1:{alertmanager}" in output, run.explain()
    assert f"Review console: http://127.0.0.1:{console}/  (quarantined events" in output, run.explain()
    assert f"Review them in the console: http://127.0.0.1:{console}/" in output, run.explain()
    phases = re.findall(r"^\[produce-demo\] phase (\d) of 3: (\d+) events \((.+)\)$", output, re.M)
    assert [(n, int(count)) for n, count, _ in phases] == [("1", 112), ("2", 75), ("3", 113)], run.explain()
    assert "noise" not in phases[0][2] and "noise 15%" in phases[1][2], run.explain()
    assert re.search(r"^Drift: the change signal fired \d+ time\(s\); the shifted-state signal is ", output, re.M)
    assert re.search(rf"^Prometheus alerts: .+; http://127.0.0.1:{prometheus}/alerts$", output, re.M), run.explain()
    assert not port_answers(prometheus) and not port_answers(alertmanager), "demo.sh left Prometheus running"
    assert not port_answers(console), "demo.sh left the review console running"
    kinds = published(output)
    assert sum(kinds.values()) == 300 and set(kinds) <= {"clean", "noise", "rotated", "fgsm", "malformed"}, kinds
    assert "All 300 events handled. Quarantined and dead-lettered events are in the topics" in output, run.explain()
    assert "Only " not in output and "Traceback" not in output, run.explain()

    lines = summaries(output)
    assert lines, run.explain()
    for line in lines:
        assert line["scored"] + line["dead"] <= line["events"] and line["quarantined"] <= line["scored"], line
    # The last live summary before the message counts the whole stream, and so does the one at exit.
    before = summaries(output[: output.index("All 300 events handled")])
    assert before and before[-1]["events"] == 300 and before[-1]["scored"] + before[-1]["dead"] == 300, run.explain()
    final = lines[-1]
    assert final["events"] == 300 and final["scored"] == 300 - kinds.get("malformed", 0), run.explain()
    assert final["dead"] == kinds.get("malformed", 0), run.explain()  # every malformed event, nothing else
    assert 0.0 < final["credibility"] <= 1.0, run.explain()


def test_make_demo_fails_loudly_when_events_are_not_handled(
    kafka_jars: None, mnist_bundle: Path, tmp_path: Path
) -> None:
    # The producer publishes to a topic the agent does not read, so nothing is handled.
    env = {"DEMO_HOLD_S": "1", "DEMO_COUNT": "40", "DEMO_RATE": "200", "DEMO_WAIT_S": "2", "DEMO_ALERTING": "0"}
    run = run_demo(mnist_bundle, tmp_path / "kafka", {**env, "DEMO_TOPIC": "inference-unread"}, timeout=400)
    assert run.returncode == 1, run.explain()
    assert sum(published(run.output).values()) == 40, run.explain()
    assert "Only 0 of 40 events handled (0 consumed) within 2s" in run.output, run.explain()
    assert "events handled. Quarantined" not in run.output, run.explain()
    assert summaries(run.output)[-1]["events"] == 0, run.explain()  # the agent's summary at exit got out
