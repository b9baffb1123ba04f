"""Session fixtures for integration tests: one real Kafka broker, unique names per test.

The broker is the real Apache Kafka 4.x from `deploy/local/kafka.sh` (jars from Maven Central,
JDK 17), started once per session on free ports in a temporary data dir. Set
`DKNN_TEST_KAFKA=host:port` to use an already-running broker instead (it must allow topic
creation through the admin API). No mock or imitation brokers here.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

KAFKA_SH = Path(__file__).resolve().parents[2] / "deploy" / "local" / "kafka.sh"


@dataclass(frozen=True)
class LocalKafka:
    """The session broker: its bootstrap address and, when we started it, its data dir."""

    bootstrap: str
    data_dir: Path | None

    def run(self, command: str, timeout_s: float = 180) -> str:
        """Run `kafka.sh <command> --data-dir ...` (tests that stop and restart the broker)."""
        if self.data_dir is None:
            pytest.skip("DKNN_TEST_KAFKA points at an external broker; cannot control it")
        return _kafka_sh(command, "--data-dir", str(self.data_dir), timeout_s=timeout_s)


def _kafka_sh(*args: str, timeout_s: float) -> str:
    proc = subprocess.run(
        ["bash", str(KAFKA_SH), *args], capture_output=True, text=True, timeout=timeout_s, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"kafka.sh {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc.stdout


@pytest.fixture(scope="session")
def local_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    external = os.environ.get("DKNN_TEST_KAFKA")
    if external:
        yield LocalKafka(bootstrap=external, data_dir=None)
        return
    data_dir = tmp_path_factory.mktemp("kafka")
    _kafka_sh("fetch", timeout_s=900)
    started = time.monotonic()
    # --exit-with: if this pytest process dies without running finalizers, the broker follows.
    out = _kafka_sh("start", "--data-dir", str(data_dir), "--exit-with", str(os.getpid()), timeout_s=180)
    match = re.search(r"^BOOTSTRAP=(\S+)$", out, re.M)
    assert match, f"kafka.sh start printed no BOOTSTRAP line: {out!r}"
    print(f"\nlocal Kafka at {match.group(1)} (started in {time.monotonic() - started:.1f}s, data {data_dir})")
    try:
        yield LocalKafka(bootstrap=match.group(1), data_dir=data_dir)
    finally:
        _kafka_sh("stop", "--data-dir", str(data_dir), timeout_s=120)


@pytest.fixture(scope="session")
def kafka_bootstrap(local_kafka: LocalKafka) -> str:
    """host:port of a real broker for the whole session."""
    return local_kafka.bootstrap


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> str:
    """A topic / group name prefix no other test (or earlier run on the same broker) uses."""
    base = re.sub(r"[^A-Za-z0-9]+", "-", request.node.name).strip("-")[:60]
    return f"{base}-{uuid.uuid4().hex[:8]}"
