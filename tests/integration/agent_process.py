"""Running `dknn-agent run` as a real process against the session broker, and reading topics back."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path

from connectors.base import Record
from connectors.kafka import KafkaSource
from tests.support.environment import agent_environment


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AgentProcess:
    """One agent replica: started with flags, readiness awaited over HTTP, stopped by signal."""

    def __init__(
        self,
        bundle: Path,
        bootstrap: str,
        topics: dict[str, str],
        group: str,
        log_path: Path,
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.args = [
            sys.executable,
            "-m",
            "agent.cli",
            "run",
            "--artifacts",
            str(bundle),
            "--bootstrap-servers",
            bootstrap,
            "--input-topic",
            topics["input"],
            "--quarantine-topic",
            topics["quarantine"],
            "--dead-letter-topic",
            topics["dead_letter"],
            "--scores-topic",
            topics["scores"],
            "--group-id",
            group,
            "--metrics-port",
            str(self.port),
            "--batch-size",
            "64",
        ]
        self.log_path = log_path
        self.extra_env = dict(env or {})
        self.process: subprocess.Popen | None = None

    def start(self, wait_ready_s: float = 90) -> AgentProcess:
        log = self.log_path.open("ab")
        env = agent_environment({"DKNN_METRICS__HOST": "127.0.0.1", **self.extra_env})
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

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def consumed(self) -> float | None:
        """`dknn_events_consumed_total` of this run (it restarts at 0), None if /metrics does not answer."""
        from prometheus_client.parser import text_string_to_metric_families

        status, text = self.http("/metrics")
        if status != 200:
            return None
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "dknn_events_consumed_total"
        )

    def wait_consumed(self, at_least: float, timeout_s: float) -> float:
        """Waits until this run has consumed `at_least` records; returns the count seen."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.alive, f"agent exited: {self.log_path.read_text()[-3000:]}"
            seen = self.consumed()
            if seen is not None and seen >= at_least:
                return seen
            time.sleep(0.1)
        raise AssertionError(f"agent consumed {self.consumed()} < {at_least} in {timeout_s}s")

    def assignments(self) -> list[set[tuple[str, int]]]:
        """Every 'partitions assigned' line of this replica's log, oldest first (assignment evidence)."""
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if "partitions assigned:" in line:
                out.append({(t, int(p)) for t, p in re.findall(r"\('([^']*)', (\d+)\)", line)})
        return out

    def stop(self) -> None:
        """Best-effort cleanup for finally blocks: SIGTERM, then SIGKILL if it lingers."""
        if not self.alive:
            return
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(30)

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


def score_position(record: Record) -> tuple[int, int]:
    """(partition, offset) of the input event a scores-topic record is about."""
    source = json.loads(record.value)["source"]
    return source["partition"], source["offset"]


def header_position(record: Record) -> tuple[int, int]:
    """(partition, offset) of the input event a dead-letter (or quarantine) record is about."""
    headers = dict(record.headers)
    return int(headers["dknn.source.partition"]), int(headers["dknn.source.offset"])


class OutputFollower:
    """Follows output topics from the beginning (a fresh group that never commits), incrementally.

    Unlike `read_all` it keeps one consumer open, so waiting until every input offset shows up
    costs one pass over the outputs rather than a re-read per check.
    """

    def __init__(self, bootstrap: str, topics: Iterable[str], group: str) -> None:
        self.topics = list(topics)
        self.records: dict[str, list[Record]] = {t: [] for t in self.topics}
        self._source = KafkaSource(bootstrap, self.topics, group, session_timeout_ms=6000)

    def poll(self, timeout_s: float = 0.5) -> int:
        got = self._source.poll(max_records=2000, timeout_s=timeout_s)
        for record in got:
            self.records[record.topic].append(record)
        return len(got)

    def until(self, done: Callable[[], bool], timeout_s: float, tick: Callable[[], None] | None = None) -> bool:
        """Polls until `done()` (checked after each poll) or the timeout; `tick` runs between polls."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.poll()
            if done():
                return True
            if tick is not None:
                tick()
        return done()

    def drain(self, quiet_s: float = 1.5, timeout_s: float = 30) -> None:
        """Reads until nothing new arrives for `quiet_s` (late duplicates, quarantine records)."""
        deadline = time.monotonic() + timeout_s
        quiet_since = time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - quiet_since < quiet_s:
            if self.poll():
                quiet_since = time.monotonic()

    def close(self) -> None:
        self._source.close()

    def __enter__(self) -> OutputFollower:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
