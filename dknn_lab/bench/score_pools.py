"""Per-input drift scores as pools that streams are drawn from: shared by `bench shift` and its
peer comparison (`shift_peer.py`), which runs without torch — so this module needs numpy only.

A pool holds, for one kind of input, the label-free score s(x) each input got and whether its
credibility was below the quarantine threshold. Streams draw from pools with replacement; a
shifted stream replaces a share of its events by draws from a shifted pool. The `.npz` written by
`save_pools` is the one file format between the two benchmarks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

KINDS = ("rotated", "noise", "gaussian", "inverted", "fgsm")  # the shifted pools, in report order


@dataclass(frozen=True)
class Pool:
    """Per-input label-free scores and low-credibility flags of one kind of traffic."""

    scores: np.ndarray
    low: np.ndarray

    def draw(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        rows = rng.integers(len(self.scores), size=n)
        return self.scores[rows], self.low[rows]

    def subset(self, rows: np.ndarray) -> Pool:
        return Pool(self.scores[rows], self.low[rows])


def mixed(rng: np.random.Generator, clean: Pool, shifted: Pool, fraction: float, n: int) -> tuple[np.ndarray, ...]:
    """`n` events, each drawn from `shifted` with probability `fraction`, else from `clean`."""
    clean_scores, clean_low = clean.draw(rng, n)
    shift_scores, shift_low = shifted.draw(rng, n)
    take = rng.random(n) < fraction
    return np.where(take, shift_scores, clean_scores), np.where(take, shift_low, clean_low)


@dataclass(frozen=True)
class SavedPools:
    """What `save_pools` wrote: the pools by kind and the calibration a drift monitor needs."""

    by_kind: dict[str, Pool]
    calibration_alpha: np.ndarray
    calibration_label_free: np.ndarray
    threshold: float


def save_pools(path: Path, saved: SavedPools) -> None:
    """Everything a detector needs to replay these streams, without the bundle or torch."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {
        "calibration_alpha": saved.calibration_alpha,
        "calibration_label_free": saved.calibration_label_free,
        "threshold": np.array(saved.threshold),
    }
    arrays |= {f"scores_{kind}": pool.scores for kind, pool in saved.by_kind.items()}
    arrays |= {f"low_{kind}": pool.low for kind, pool in saved.by_kind.items()}
    np.savez_compressed(path, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as its allow_pickle
    print(f"scores of {len(saved.by_kind)} kinds of input saved to {path}")


def load_pools(path: Path) -> SavedPools:
    with np.load(path, allow_pickle=False) as npz:
        kinds = [name.removeprefix("scores_") for name in npz.files if name.startswith("scores_")]
        return SavedPools(
            by_kind={k: Pool(npz[f"scores_{k}"], npz[f"low_{k}"].astype(bool)) for k in kinds},
            calibration_alpha=npz["calibration_alpha"],
            calibration_label_free=npz["calibration_label_free"],
            threshold=float(npz["threshold"]),
        )


@dataclass(frozen=True)
class DelaySummary:
    """Detection delays of one cell of onsets: how many were detected, and the median and 95th
    percentile of their delays in events (None when nothing was detected)."""

    detected: int
    delay_median: float | None
    delay_p95: float | None


def delay_summary(delays: list[int | None]) -> tuple[np.ndarray, DelaySummary]:
    """Detection delays (events from onset to alarm; None = not detected) -> the detected ones and
    their summary."""
    detected = np.array([d for d in delays if d is not None], dtype=float)
    return detected, DelaySummary(
        detected=len(detected),
        delay_median=float(np.median(detected)) if len(detected) else None,
        delay_p95=float(np.percentile(detected, 95)) if len(detected) else None,
    )
