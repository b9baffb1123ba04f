"""What an agent process costs in memory, and what a second one on the same node adds.

Two scorer processes are started one after the other on the same bundle; each opens it the way
`dknn-agent run` does (`DkNN.from_bundle`, Annoy files memory-mapped), scores a few batches so
its working set is touched, and waits. While both are alive, their `/proc/PID/smaps_rollup` is
read: RSS counts every resident page, shared or not, so it overstates what a second process
costs; its unique set size (private clean + private dirty pages) is what would be freed if it
exited — what it adds. Linux only; elsewhere the report says so.

Run as a module, this file is the probe process itself.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

READY = "ready"


@dataclass(frozen=True)
class ProcessMemory:
    """One process, MiB: unique = private pages, what exiting would free."""

    rss_mib: float
    pss_mib: float
    unique_mib: float
    shared_mib: float
    anonymous_mib: float


@dataclass(frozen=True)
class TwoAgents:
    first: ProcessMemory
    second: ProcessMemory
    second_adds_share_of_first_rss: float  # the second's unique pages over the first's RSS


@dataclass(frozen=True)
class MemorySkipped:
    skipped: str  # why nothing was measured


def _rollup(pid: int) -> dict[str, int]:
    """Bytes per smaps_rollup field (Rss, Pss, Shared_Clean, Private_Dirty, ...)."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, _, rest = line.partition(":")
        value = rest.split()
        if value and value[0].isdigit():
            fields[name] = int(value[0]) * 1024
    return fields


def _summary(fields: dict[str, int]) -> ProcessMemory:
    mib = 1024 * 1024
    unique = fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)
    return ProcessMemory(
        rss_mib=round(fields.get("Rss", 0) / mib, 1),
        pss_mib=round(fields.get("Pss", 0) / mib, 1),
        unique_mib=round(unique / mib, 1),
        shared_mib=round((fields.get("Shared_Clean", 0) + fields.get("Shared_Dirty", 0)) / mib, 1),
        anonymous_mib=round(fields.get("Anonymous", 0) / mib, 1),
    )


def measure_two_agents(bundle: Path, batches: int = 8, timeout_s: float = 300) -> TwoAgents | MemorySkipped:
    """Starts two probes on `bundle` and reports both processes' memory while both are alive."""
    if not Path("/proc/self/smaps_rollup").is_file():
        return MemorySkipped("needs Linux /proc/PID/smaps_rollup")
    probes: list[subprocess.Popen[str]] = []
    try:
        for _ in range(2):
            probe = subprocess.Popen(
                [sys.executable, "-m", __name__, str(bundle), str(batches)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            probes.append(probe)
            assert probe.stdout is not None
            line = probe.stdout.readline().strip()  # blocks until the probe has scored
            if line != READY:
                raise RuntimeError(f"memory probe failed to start (said {line!r})")
        first, second = (_summary(_rollup(probe.pid)) for probe in probes)
    finally:
        for probe in probes:
            if probe.stdin:
                probe.stdin.close()  # the probe exits when its stdin closes
            probe.wait(timeout_s)
    return TwoAgents(first, second, round(second.unique_mib / first.rss_mib, 3))


def _probe(bundle: str, batches: int) -> None:
    import numpy as np

    from agent.engine.dknn import DkNN

    scorer = DkNN.from_bundle(bundle)
    rng = np.random.default_rng(0)
    shape = (256, *scorer.manifest.input.shape)
    for _ in range(batches):
        scorer.score(rng.uniform(0.0, 1.0, size=shape).astype(np.float32))
    print(READY, flush=True)
    sys.stdin.read()  # hold everything resident until the parent has measured


if __name__ == "__main__":
    _probe(sys.argv[1], int(sys.argv[2]))
