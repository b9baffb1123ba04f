"""The drift detector beside a peer: alibi-detect's on-line detectors on the same score streams.

`make bench-shift-peer` runs this module in its own environment (`.venv-peer`), because
alibi-detect 0.13 pins numpy < 2 and the agent does not; it needs only numpy, alibi-detect and the
agent's own `DriftMonitor` (pure numpy), and reads the per-input scores that `dknn-agent bench
shift --save-scores` wrote — the same pools the main drift benchmark draws from.

Three detectors see identical streams, calibrated to the same expected run time (ERT, the mean
number of clean events between false alarms): the agent's `DriftMonitor` change signal
(conformal Shiryaev–Roberts over label-free p-values, threshold = ERT), alibi-detect's
`CVMDriftOnline` on the label-free score (ties broken by uniform jitter, as the agent's p-values do)
and `FETDriftOnline` on the quarantine indicator (credibility below the threshold). The peers take
a clean reference set of their own, held out from the stream's clean pool; the agent's detector
uses the bundle's calibration set, as it does in production.

Per ERT: false alarms on clean streams (empirical mean run length, censored at a cap) and, per
shifted input and share, the delay from onset to the first alarm, after `warm` clean events that
fill the peers' windows (a warm-up with a false alarm is drawn again).
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agent.engine.drift import DriftMonitor
from dknn_lab.bench.reports import INLINE, encoded, events, now, save_report, table
from dknn_lab.bench.score_pools import KINDS, DelaySummary, SavedPools, delay_summary, load_pools, mixed

FRACTIONS = (0.2, 0.5, 1.0)
ERTS = (1_000, 10_000)
DETECTORS = ("dknn-agent (SR)", "alibi CVMDriftOnline", "alibi FETDriftOnline")
BATCH = 64  # the agent's detector is fed as the agent feeds it
PER_PREFIX = 10


@dataclass(frozen=True)
class PeerOptions:
    scores: Path
    out_dir: Path
    onsets: int = 100
    false_alarm_runs: int = 30
    warm: int = 500
    cap: int = 3_000
    reference: int = 1_000
    window_sizes: tuple[int, ...] = (20, 100)
    n_bootstraps: int = 20_000
    seed: int = 0


@dataclass(frozen=True)
class PeerFalseAlarms:
    """One detector on clean streams at one ERT: the run length to its first alarm."""

    detector: str
    ert: int
    runs: int
    mean_run_length: float
    median_run_length: float
    censored_at: int
    censored_runs: int


@dataclass(frozen=True)
class PeerDelays:
    """One detector's delays from onset to alarm, for one kind of shifted input at one share."""

    detector: str
    ert: int
    kind: str
    fraction: float
    onsets: int
    delays: DelaySummary = field(metadata=INLINE)


def _recorded_options(options: PeerOptions) -> dict[str, object]:
    """The settings a reader needs to weigh the numbers (not the paths, nor the seed)."""
    return {
        "onsets": options.onsets,
        "false_alarm_runs": options.false_alarm_runs,
        "warm": options.warm,
        "cap": options.cap,
        "reference": options.reference,
        "window_sizes": list(options.window_sizes),
        "n_bootstraps": options.n_bootstraps,
    }


@dataclass(frozen=True)
class PeerResult:
    benchmark: str = field(default="shift-peer", init=False)
    created_at: str = field(default_factory=now, init=False)
    scores: str  # the pools' file name
    options: PeerOptions = field(metadata=encoded(_recorded_options))
    alibi_detect_version: str
    false_alarms: list[PeerFalseAlarms]
    delays: list[PeerDelays]


# One alarm test per event: feed(events) -> index of the first alarm within them, or None.
Detector = Callable[[np.ndarray, np.ndarray], int | None]


class AgentDetector:
    def __init__(self, pools: SavedPools, ert: float, seed: int) -> None:
        self.monitor = DriftMonitor(
            pools.calibration_alpha, pools.calibration_label_free, pools.threshold, arl_events=ert, seed=seed
        )

    def __call__(self, scores: np.ndarray, low: np.ndarray) -> int | None:
        for start in range(0, len(scores), BATCH):
            change = self.monitor.update(scores[start : start + BATCH], low[start : start + BATCH]).change
            if change.any():
                return start + int(np.argmax(change))
        return None


class AlibiDetector:
    """An alibi-detect on-line detector fed one event at a time (its only on-line interface)."""

    def __init__(self, detector: Any, binary: bool, seed: int) -> None:
        self.detector = detector
        self.binary = binary
        self.rng = np.random.default_rng(seed)
        detector.reset_state()

    def __call__(self, scores: np.ndarray, low: np.ndarray) -> int | None:
        values = low.astype(np.float64) if self.binary else scores + self.rng.uniform(0, 1, len(scores))
        for i, value in enumerate(values):
            if self.detector.predict(np.array([value]))["data"]["is_drift"]:
                return i
        return None


def configure_peers(pools: SavedPools, reference_rows: np.ndarray, options: PeerOptions) -> dict[tuple[str, int], Any]:
    from alibi_detect.cd import CVMDriftOnline, FETDriftOnline

    rng = np.random.default_rng(options.seed)
    reference = pools.by_kind["clean"].subset(reference_rows)
    ref_scores = reference.scores + rng.uniform(0, 1, len(reference_rows))
    ref_low = reference.low.astype(np.float64)
    peers = {}
    for ert in ERTS:
        started = time.perf_counter()
        peers[("alibi CVMDriftOnline", ert)] = CVMDriftOnline(
            ref_scores[:, None],
            ert=ert,
            window_sizes=list(options.window_sizes),
            n_bootstraps=options.n_bootstraps,
            verbose=False,
        )
        peers[("alibi FETDriftOnline", ert)] = FETDriftOnline(
            ref_low[:, None],
            ert=ert,
            window_sizes=list(options.window_sizes),
            n_bootstraps=options.n_bootstraps,
            verbose=False,
        )
        print(f"peers configured for ERT {ert} in {time.perf_counter() - started:.0f} s")
    return peers


def make_detector(name: str, ert: int, pools: SavedPools, peers: dict[tuple[str, int], Any], seed: int) -> Detector:
    if name == DETECTORS[0]:
        return AgentDetector(pools, ert, seed)
    return AlibiDetector(peers[(name, ert)], binary="FET" in name, seed=seed)


def run_peer(options: PeerOptions) -> PeerResult:
    pools = load_pools(options.scores)
    rng = np.random.default_rng(options.seed)
    clean_rows = rng.permutation(len(pools.by_kind["clean"].scores))
    reference_rows, stream_rows = clean_rows[: options.reference], clean_rows[options.reference :]
    peers = configure_peers(pools, reference_rows, options)
    clean = pools.by_kind["clean"].subset(stream_rows)  # the peers' reference never enters a stream

    false_alarms: list[PeerFalseAlarms] = []
    delays: list[PeerDelays] = []
    for ert in ERTS:
        for name in DETECTORS:
            cap = 5 * ert
            lengths, censored = [], 0
            for run in range(options.false_alarm_runs):
                detector = make_detector(name, ert, pools, peers, seed=run)
                alarm = detector(*clean.draw(np.random.default_rng([options.seed, ert, run]), cap))
                censored += alarm is None
                lengths.append(cap if alarm is None else alarm + 1)
            mean = float(np.mean(lengths))
            false_alarms.append(
                PeerFalseAlarms(
                    detector=name,
                    ert=ert,
                    runs=options.false_alarm_runs,
                    mean_run_length=round(mean, 1),
                    median_run_length=float(np.median(lengths)),
                    censored_at=cap,
                    censored_runs=censored,
                )
            )
            print(f"{name} ERT {ert}: mean run length on clean streams {mean:,.0f} ({censored} censored)", flush=True)
        for name in DETECTORS:
            # Warm-ups are shared by PER_PREFIX onsets each (deep copies): the same distribution of
            # delays, a tenth of the warm-up cost.
            prefixes = []
            for i in range(-(-options.onsets // PER_PREFIX)):
                warm_rng = np.random.default_rng([options.seed, ert, i])
                while True:  # a false alarm during the warm-up: start that prefix again
                    detector = make_detector(name, ert, pools, peers, seed=i)
                    if detector(*clean.draw(warm_rng, options.warm)) is None:
                        break
                prefixes.append(detector)
            for kind in KINDS:
                for fraction in FRACTIONS:
                    found: list[int | None] = []
                    for onset in range(options.onsets):
                        stream_rng = np.random.default_rng([options.seed, ert, onset, KINDS.index(kind)])
                        stream = mixed(stream_rng, clean, pools.by_kind[kind], fraction, options.cap)
                        alarm = copy.deepcopy(prefixes[onset // PER_PREFIX])(*stream)
                        found.append(None if alarm is None else alarm + 1)
                    detected, summary = delay_summary(found)
                    delays.append(PeerDelays(name, ert, kind, fraction, options.onsets, summary))
                    print(
                        f"ERT {ert} {kind} {fraction:.0%} {name}: detected {len(detected)}/{options.onsets}, "
                        f"median {summary.delay_median}, p95 {summary.delay_p95}",
                        flush=True,
                    )
    result = PeerResult(
        scores=options.scores.name,
        options=options,
        alibi_detect_version=_alibi_version(),
        false_alarms=false_alarms,
        delays=delays,
    )
    save_report(result, markdown(result), options.out_dir, "shift-peer")
    return result


def _alibi_version() -> str:
    from importlib.metadata import version

    return version("alibi-detect")


def markdown(result: PeerResult) -> str:
    o = result.options
    by_key = {(r.ert, r.kind, r.fraction, r.detector): r for r in result.delays}
    lines = [
        "# Drift detectors side by side: dknn-agent vs alibi-detect",
        "",
        f"alibi-detect {result.alibi_detect_version}. The same streams of per-input scores from "
        f"`{result.scores}` through three detectors calibrated to the same expected run time (ERT): "
        "the agent's change signal (conformal Shiryaev–Roberts, threshold = ERT, fed in batches of 64), "
        f"`CVMDriftOnline` on the label-free score and `FETDriftOnline` on the quarantine indicator (windows "
        f"{list(o.window_sizes)}, {o.n_bootstraps:,} bootstraps, a {o.reference:,}-event clean reference held out "
        f"of the stream). Each onset: a detector that has seen {o.warm} clean events (no alarm), then the mixed stream "
        f"(cap {o.cap:,} events).",
        "",
        "## False alarms on clean streams",
        "",
        *table(
            ["ERT", "detector", "runs", "mean run length", "median", "censored (at)"],
            [
                [
                    f"{row.ert:,}",
                    row.detector,
                    row.runs,
                    f"{row.mean_run_length:,.0f}",
                    f"{row.median_run_length:,.0f}",
                    f"{row.censored_runs} ({row.censored_at:,})",
                ]
                for row in result.false_alarms
            ],
        ),
        "",
        "## Detection delay (events from onset to alarm): median / p95 (detected of onsets)",
        "",
        *table(
            ["ERT", "shifted input", "share", *DETECTORS],
            [
                [
                    f"{ert:,}",
                    kind,
                    f"{fraction:.0%}",
                    *(_delay_cell(by_key[(ert, kind, fraction, name)]) for name in DETECTORS),
                ]
                for ert in ERTS
                for kind in KINDS
                for fraction in FRACTIONS
            ],
        ),
        "",
    ]
    return "\n".join(lines)


def _delay_cell(row: PeerDelays) -> str:
    found = row.delays
    return f"{events(found.delay_median)} / {events(found.delay_p95)} ({found.detected}/{row.onsets})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dknn_lab.bench.shift_peer",
        description="The agent's drift change signal beside alibi-detect's CVMDriftOnline and FETDriftOnline on "
        "the same score streams (run by `make bench-shift-peer`, in .venv-peer).",
    )
    parser.add_argument("--scores", type=Path, required=True, help="pools from `dknn-agent bench shift --save-scores`")
    parser.add_argument("--out", type=Path, default=Path("docs/results"), help="report folder (default: docs/results)")
    parser.add_argument("--onsets", type=int, default=100, help="shift onsets per cell (default: 100)")
    parser.add_argument("--false-alarm-runs", type=int, default=30, help="clean runs per ERT (default: 30)")
    args = parser.parse_args(argv)
    run_peer(PeerOptions(args.scores, args.out, onsets=args.onsets, false_alarm_runs=args.false_alarm_runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
