"""Running `dknn-agent run` as a real process against the session broker, and reading topics back."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from connectors.base import Record
from connectors.kafka import KafkaSource


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AgentProcess:
    """One agent replica: started with flags, readiness awaited over HTTP, stopped by signal."""

    def __init__(self, bundle: Path, bootstrap: str, topics: dict[str, str], group: str, log_path: Path) -> None:
        self.port = free_port()
        self.args = [sys.executable, "-m", "agent.cli", "run", "--artifacts", str(bundle),
                     "--bootstrap-servers", bootstrap, "--input-topic", topics["input"],
                     "--quarantine-topic", topics["quarantine"], "--dead-letter-topic", topics["dead_letter"],
                     "--scores-topic", topics["scores"], "--group-id", group,
                     "--metrics-port", str(self.port), "--batch-size", "64"]
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def start(self, wait_ready_s: float = 90) -> "AgentProcess":
        log = self.log_path.open("ab")
        env = {**os.environ, "DKNN_METRICS_HOST": "127.0.0.1"}
        self.process = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + wait_ready_s
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"agent exited early: {self.log_path.read_text()[-3000:]}"
            if self.http("/readyz")[0] == 200:
                return self
            time.sleep(0.3)
        raise AssertionError(f"agent not ready in {wait_ready_s}s: {self.log_path.read_text()[-3000:]}")

    def http(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, ""
        except OSError:
            return 0, ""

    def metrics(self) -> dict[str, float]:
        """Sample name{labels} -> value, from a real scrape."""
        from prometheus_client.parser import text_string_to_metric_families

        status, text = self.http("/metrics")
        assert status == 200
        out = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                out[f"{sample.name}{{{labels}}}"] = sample.value
        return out

    def terminate(self, timeout_s: float = 60) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout_s)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(30)


def read_all(bootstrap: str, topic: str, group: str, expect_at_least: int, timeout_s: float = 120) -> list[Record]:
    """Every record of `topic` from the beginning (a fresh group that never commits)."""
    records: list[Record] = []
    deadline = time.monotonic() + timeout_s
    with KafkaSource(bootstrap, [topic], group, session_timeout_ms=6000) as source:
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            got = source.poll(max_records=2000, timeout_s=0.5)
            records.extend(got)
            if got:
                quiet_since = time.monotonic()
            elif len(records) >= expect_at_least and time.monotonic() - quiet_since > 2:
                break
    return records


def event_ids(records: list[Record], field: str = "event_id") -> list[str]:
    return [json.loads(r.value)[field] for r in records]
