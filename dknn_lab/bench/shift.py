"""The drift benchmark (`dknn-agent bench shift`): false alarms, detection delay and resolution.

Streams are built from per-input scores computed once: every evaluation digit (never a calibration
point) and every shifted input is scored by the bundle, then streams draw from those scores with
replacement, so hundreds of long streams cost seconds, not hours. The detector is the agent's own
`DriftMonitor`, fed in the agent's batch size.

- **False alarms.** Clean streams only, for change thresholds where the mean run length can be
  measured (10^3, 10^4, 10^5 events): the empirical mean run length to the first alarm against the
  guarantee (at least the threshold). A run with no alarm by 20× the threshold counts at that
  length (so the reported mean is a lower bound).
- **Detection delay**, at the default threshold: each onset comes after a clean stretch of
  `prefix` events (20,000 by default); a shifted stream then replaces a fraction of the events
  by one kind of shifted input; the delay is the number of events from onset to the first change
  alarm (cap 10,000: "not detected"). Prefixes are shared between a few onsets each, which
  changes nothing in the distribution of the delay but saves the prefix cost.
- **Resolution.** After a shifted phase of `shift_length` events the stream is clean again: events
  until the state signal clears, and whether the change signal alarms again within the next
  10,000 clean events (it should not: it re-arms quietly).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agent.engine.dknn import DkNN
from agent.engine.drift import DEFAULT_ARL_EVENTS, DriftMonitor
from agent.errors import ConfigError
from agent.runtime.routing import DEFAULT_THRESHOLD
from dknn_lab.bench.perturbations import EvalSet, gaussian_noise, inverted, shifted_sets
from dknn_lab.bench.quality import score_set
from dknn_lab.bench.reports import INLINE, ModelVersion, events, now, save_report, table
from dknn_lab.bench.score_pools import KINDS, DelaySummary, Pool, SavedPools, delay_summary, mixed, save_pools
from dknn_lab.datasets import load_mnist
from dknn_lab.reference import calibration_split

FRACTIONS = (0.05, 0.2, 0.5, 1.0)
ARL_TARGETS = (1_000, 10_000, 100_000)
BATCH = 64
DETECTION_CAP = 10_000
AFTER_SHIFT = 3_000  # clean events after a shift: the state must clear, the change signal stay quiet


@dataclass(frozen=True)
class ShiftOptions:
    artifacts: Path
    data_dir: Path | None = None
    out_dir: Path = Path("docs/results")
    onsets: int = 200
    prefix: int = 20_000
    arl_runs: tuple[int, ...] = (300, 200, 100)  # per ARL target
    shift_length: int = 2_000
    seed: int = 0
    save_scores: Path | None = None  # the pools as .npz, for the peer comparison (shift_peer.py)
    scores_only: bool = False  # stop after saving them


@dataclass(frozen=True)
class FalseAlarms:
    """Clean streams at one change threshold: the run length to the first alarm against the
    guarantee, and how often the state signal turned on meanwhile."""

    threshold: int
    runs: int
    mean_run_length: float
    median_run_length: float
    censored_runs: int  # no alarm by 20× the threshold: counted at that length
    guarantee_holds: bool
    clean_events: int
    state_turned_on: int


@dataclass(frozen=True)
class Delays:
    """One kind of shifted input at one share: detection delay, then what happened once it ended."""

    kind: str
    fraction: float
    onsets: int
    delays: DelaySummary = field(metadata=INLINE)
    state_on_at_shift_end: int
    state_cleared: int
    resolution_median: float | None  # events until the state signal cleared
    change_alarms_after_shift_ended: int


@dataclass(frozen=True)
class ShiftResult:
    benchmark: str = field(default="shift", init=False)
    created_at: str = field(default_factory=now, init=False)
    bundle: ModelVersion
    threshold: float
    default_arl_events: float
    prefix: int
    shift_length: int
    batch: int
    low_credibility_rate: dict[str, float]  # kind of input -> share below the threshold
    false_alarms: list[FalseAlarms]
    delays: list[Delays]


def _feed(monitor: DriftMonitor, scores: np.ndarray, low: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    change, shifted = [], []
    for start in range(0, len(scores), BATCH):
        signals = monitor.update(scores[start : start + BATCH], low[start : start + BATCH])
        change.append(signals.change)
        shifted.append(signals.shifted)
    return np.concatenate(change), np.concatenate(shifted)


def pools(scorer: DkNN, options: ShiftOptions) -> dict[str, Pool]:
    mnist = load_mnist(options.data_dir)
    if not scorer.manifest.calibration.source_indices:
        raise ConfigError(f"{options.artifacts}: not an MNIST reference bundle (calibration source unknown)")
    rows = calibration_split(scorer.manifest, len(mnist.x_test)).evaluation
    clean = EvalSet("clean", mnist.x_test[rows], mnist.y_test[rows])
    sets = [
        clean,
        *shifted_sets(scorer.tap.model, clean, 0.25, options.seed),
        gaussian_noise(len(clean.x), clean.x.shape[1:], options.seed),
        inverted(clean),
    ]
    out = {}
    for data in sets:
        scored = score_set(scorer, data, 512, data.name)
        out[data.name] = Pool(scores=scored.label_free, low=scored.credibility < DEFAULT_THRESHOLD)
    return out


def monitor_for(scorer: DkNN, arl: float, seed: int) -> DriftMonitor:
    return DriftMonitor(
        scorer.calibration_alpha, scorer.calibration_label_free, DEFAULT_THRESHOLD, arl_events=arl, seed=seed
    )


def false_alarms(scorer: DkNN, clean: Pool, options: ShiftOptions) -> list[FalseAlarms]:
    rows = []
    for target, runs in zip(ARL_TARGETS, options.arl_runs, strict=True):
        rng = np.random.default_rng(options.seed + target)
        lengths, censored, state_on, state_events = [], 0, 0, 0
        for run in range(runs):
            monitor, seen = monitor_for(scorer, target, seed=run), 0
            while seen < 20 * target:
                change, state = _feed(monitor, *clean.draw(rng, 10 * BATCH))
                state_on += int(np.count_nonzero(np.diff(state.astype(int), prepend=0) == 1))
                state_events += len(state)
                if change.any():
                    seen += int(np.argmax(change)) + 1
                    break
                seen += len(change)
            else:
                censored += 1
            lengths.append(seen)
        mean = float(np.mean(lengths))
        rows.append(
            FalseAlarms(
                threshold=target,
                runs=runs,
                mean_run_length=round(mean, 1),
                median_run_length=float(np.median(lengths)),
                censored_runs=censored,
                guarantee_holds=mean >= target,
                clean_events=state_events,
                state_turned_on=state_on,
            )
        )
        print(f"false alarms: threshold {target}: mean run length {mean:.0f} over {runs} runs")
    return rows


def delays(
    scorer: DkNN, by_kind: dict[str, Pool], options: ShiftOptions
) -> tuple[list[Delays], dict[str, list[float]]]:
    rng = np.random.default_rng(options.seed + 1)
    per_prefix = 10
    prefixes = []
    for i in range(-(-options.onsets // per_prefix)):
        monitor = monitor_for(scorer, DEFAULT_ARL_EVENTS, seed=10_000 + i)
        _feed(monitor, *by_kind["clean"].draw(rng, options.prefix))
        prefixes.append(monitor)
    rows, samples = [], {}
    for kind in KINDS:
        for fraction in FRACTIONS:
            found, resolution, rearmed, state_on = [], [], 0, 0
            for onset in range(options.onsets):
                monitor = copy.deepcopy(prefixes[onset // per_prefix])
                scores, low = mixed(rng, by_kind["clean"], by_kind[kind], fraction, options.shift_length)
                change, state = _feed(monitor, scores, low)
                if not change.any():  # keep going up to the cap
                    more = mixed(rng, by_kind["clean"], by_kind[kind], fraction, DETECTION_CAP - len(change))
                    extra, state = _feed(monitor, *more)
                    change = np.concatenate([change, extra])
                found.append(int(np.argmax(change)) + 1 if change.any() else None)
                was_on = bool(state[-1])
                after_change, after_state = _feed(monitor, *by_kind["clean"].draw(rng, AFTER_SHIFT))
                if was_on:
                    state_on += 1
                    resolution.append(int(np.argmin(after_state)) if not after_state.all() else None)
                rearmed += int(after_change.any())
            detected, summary = delay_summary(found)
            cleared = np.array([r for r in resolution if r is not None], dtype=float)
            row = Delays(
                kind=kind,
                fraction=fraction,
                onsets=options.onsets,
                delays=summary,
                state_on_at_shift_end=state_on,
                state_cleared=len(cleared),
                resolution_median=float(np.median(cleared)) if len(cleared) else None,
                change_alarms_after_shift_ended=rearmed,
            )
            rows.append(row)
            samples[f"{kind}@{fraction}"] = detected.tolist()
            print(
                f"delay: {kind} {fraction:.0%}: detected {len(detected)}/{options.onsets}, median "
                f"{summary.delay_median}, p95 {summary.delay_p95}; state cleared median {row.resolution_median}"
            )
    return rows, samples


def run_shift(options: ShiftOptions) -> ShiftResult | None:
    """The benchmark's result, or None when `scores_only` stopped it after saving the pools."""
    scorer = DkNN.from_bundle(options.artifacts)
    by_kind = pools(scorer, options)
    if options.save_scores is not None:
        saved = SavedPools(by_kind, scorer.calibration_alpha, scorer.calibration_label_free, DEFAULT_THRESHOLD)
        save_pools(options.save_scores, saved)
    if options.scores_only:
        return None
    alarms = false_alarms(scorer, by_kind["clean"], options)
    rows, samples = delays(scorer, by_kind, options)
    result = ShiftResult(
        bundle=ModelVersion(scorer.manifest.model.name, scorer.manifest.model.version),
        threshold=DEFAULT_THRESHOLD,
        default_arl_events=DEFAULT_ARL_EVENTS,
        prefix=options.prefix,
        shift_length=options.shift_length,
        batch=BATCH,
        low_credibility_rate={name: round(float(pool.low.mean()), 4) for name, pool in by_kind.items()},
        false_alarms=alarms,
        delays=rows,
    )
    _plot_delays(samples, options.out_dir / "shift-delays.png")
    save_report(result, markdown(result), options.out_dir, f"shift-{result.bundle.model}")
    return result


def _plot_delays(samples: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(FRACTIONS), figsize=(4 * len(FRACTIONS), 3.5), sharey=True)
    for ax, fraction in zip(axes, FRACTIONS, strict=True):
        data = [samples.get(f"{kind}@{fraction}", []) or [np.nan] for kind in KINDS]
        ax.boxplot(data, showfliers=False)
        ax.set_xticks(range(1, len(KINDS) + 1), KINDS, rotation=45)
        ax.set(title=f"{fraction:.0%} shifted", yscale="log")
    axes[0].set_ylabel("events from onset to change alarm")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(result: ShiftResult) -> str:
    lines = [
        f"# Drift signals: {result.bundle.model} {result.bundle.version}",
        "",
        f"Streams drawn from scored MNIST evaluation digits and shifted inputs; the agent's DriftMonitor "
        f"fed in batches of {result.batch}; quarantine threshold {result.threshold}.",
        "",
        "## False alarms on clean streams (change signal)",
        "",
        *table(
            [
                "threshold (events)",
                "runs",
                "mean run length",
                "median",
                "censored",
                "mean ≥ threshold",
                "state signal turned on (clean events)",
            ],
            [
                [
                    f"{row.threshold:,}",
                    row.runs,
                    f"{row.mean_run_length:,.0f}",
                    f"{row.median_run_length:,.0f}",
                    row.censored_runs,
                    row.guarantee_holds,
                    f"{row.state_turned_on} ({row.clean_events:,})",
                ]
                for row in result.false_alarms
            ],
        ),
        "",
        f"## Detection delay at the default threshold ({result.default_arl_events:.3g} events), "
        f"onset after {result.prefix:,} clean events",
        "",
        *table(
            [
                "shifted input",
                "share",
                "detected",
                "delay median",
                "delay p95",
                "state on at shift end",
                "state cleared after (median events)",
                "change alarms after the shift ended",
            ],
            [
                [
                    row.kind,
                    f"{row.fraction:.0%}",
                    f"{row.delays.detected}/{row.onsets}",
                    events(row.delays.delay_median),
                    events(row.delays.delay_p95),
                    f"{row.state_on_at_shift_end}/{row.onsets}",
                    events(row.resolution_median),
                    f"{row.change_alarms_after_shift_ended}/{row.onsets}",
                ]
                for row in result.delays
            ],
        ),
        "",
        "Low-credibility share per kind of input: "
        + ", ".join(f"{kind} {share:.3f}" for kind, share in result.low_credibility_rate.items()),
        "",
    ]
    return "\n".join(lines)
