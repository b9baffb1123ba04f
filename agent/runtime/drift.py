"""The label-free distribution-shift alarm: a conformal test martingale (docs/design.md §2.6).

Why a martingale and not a threshold on mean credibility: while the stream is exchangeable with
the calibration data the conformal p-values below are i.i.d. uniform, and any product of
"betting" factors with expectation 1 under uniformity is a non-negative martingale starting at
1. Ville's inequality bounds the chance that it *ever* reaches λ by 1/λ, for an unbounded
stream, with no window or multiple-testing correction to tune. Under shift the p-values pile up
near 0 and the martingale grows exponentially.

Conventions:

- score s(x) = min_j α(x, j) (`DkNN.calibration_label_free` holds it for the calibration set);
  larger s = stranger.
- p-value (randomised, smoothed): p = (|{a ∈ B : a > s}| + U·(|{a ∈ B : a = s}| + 1)) / (|B| + 1),
  U ~ Uniform(0, 1] from a seeded generator. The "+1" counts the test point itself; U splits
  ties (α is an integer, so ties are the norm). U is drawn from (0, 1] so p > 0 and log p is
  finite.
- reference bag B. `online=True` (default): the calibration scores *plus every score seen since
  the last reset*, each event joining B after its own p-value. This is Vovk's on-line
  exchangeability test: the p-values are then exactly i.i.d. uniform under exchangeability, so
  Ville's bound holds exactly. `online=False`: B is the fixed calibration set (an "inductive"
  martingale). Given one fixed set its p-values are *not* uniform (the set's empirical CDF is off
  by ~1/√n), the martingale bets on that error and grows slowly even without shift: measured
  with 750 calibration points and 2,000-step clean streams, the false-alarm rate at λ=100 ranged
  from 0 to 0.98 depending on which calibration set was drawn, and every long stream eventually
  alarms. Hence the default. Cost of `online`: B is stored as (distinct value, count) pairs; DkNN
  scores are integers in [0, L·k], so that is at most L·k+1 counters. Non-integer scores would
  grow it by one pair per event.
- betting function: the simple mixture ∫₀¹ ε p^(ε−1) dε, discretised as an equal-weight mixture
  over the midpoint grid ε_i = (i + ½)/G. Each ε p^(ε−1) has expectation 1 under uniform p, so
  the mixture is itself a test martingale exactly. Kept as G log-martingales, combined with
  logsumexp.
- alarm: latched. True from the first step since `reset()` at which the martingale reaches λ
  (batches are scanned step by step, so a crossing inside a batch counts) until `reset()`.
- restart (optional, `restart_on_alarm=True`): right after a crossing the martingale restarts at
  1 (the bag is kept) while the alarm stays latched, so `log10_martingale` shows evidence since
  the last alarm and `alarms` counts crossings; each restart is a fresh Ville test. By default
  the martingale keeps growing while the shift lasts.

Caveat: after a long in-distribution stretch the mixture has drifted far below 1, which delays
detection by roughly (that deficit) / (evidence per shifted event); `reset()` clears it.
"""

from __future__ import annotations

import math

import numpy as np

from agent.errors import ConfigError, InputError

DEFAULT_LAMBDA = 100.0
DEFAULT_GRID = 100
_CHUNK = 256  # in-batch pairwise comparisons are chunk² booleans


def conformal_p_values(calibration_sorted: np.ndarray, scores: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Randomised p-values of `scores` (larger = stranger) against a fixed ascending reference."""
    n = len(calibration_sorted)
    left = np.searchsorted(calibration_sorted, scores, side="left")
    right = np.searchsorted(calibration_sorted, scores, side="right")
    return ((n - right) + u * ((right - left) + 1)) / (n + 1)


def _logsumexp(values: np.ndarray, axis: int) -> np.ndarray:
    peak = values.max(axis=axis, keepdims=True)
    return (peak + np.log(np.exp(values - peak).sum(axis=axis, keepdims=True))).squeeze(axis)


class _Bag:
    """A multiset of scores as sorted distinct values with counts: O(distinct) memory."""

    def __init__(self, scores: np.ndarray) -> None:
        self.values, self.counts = np.unique(scores, return_counts=True)
        self._refresh()

    def _refresh(self) -> None:
        self.size = int(self.counts.sum())
        self._at_most = np.cumsum(self.counts)  # |{b ≤ values[i]}|

    def greater_and_equal(self, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx = np.searchsorted(self.values, scores, side="right")  # values[idx-1] ≤ s < values[idx]
        at_most = np.where(idx > 0, self._at_most[np.maximum(idx - 1, 0)], 0)
        hit = (idx > 0) & (self.values[np.maximum(idx - 1, 0)] == scores)
        equal = np.where(hit, self.counts[np.maximum(idx - 1, 0)], 0)
        return self.size - at_most, equal

    def add(self, scores: np.ndarray) -> None:
        values, inverse = np.unique(np.concatenate([self.values, scores]), return_inverse=True)
        weights = np.concatenate([self.counts, np.ones(len(scores), dtype=self.counts.dtype)])
        self.values = values
        self.counts = np.bincount(inverse, weights=weights, minlength=len(values)).astype(np.int64)
        self._refresh()


class ShiftDetector:
    """Feeds label-free scores into a simple-mixture conformal test martingale; not thread-safe."""

    def __init__(
        self,
        calibration_scores: np.ndarray,
        threshold: float = DEFAULT_LAMBDA,
        seed: int | None = 0,
        *,
        online: bool = True,
        grid_size: int = DEFAULT_GRID,
        restart_on_alarm: bool = False,
    ) -> None:
        calibration = np.sort(np.asarray(calibration_scores, dtype=np.float64).ravel())
        if calibration.size == 0 or not np.isfinite(calibration).all():
            raise ConfigError("shift detector needs a non-empty, finite set of calibration scores")
        if not threshold > 1.0:
            raise ConfigError(f"shift threshold λ must be > 1 (Ville's bound is 1/λ), got {threshold}")
        if grid_size < 1:
            raise ConfigError(f"shift grid_size must be ≥ 1, got {grid_size}")
        self.calibration = calibration
        self.threshold = float(threshold)
        self.online = online
        self.restart_on_alarm = restart_on_alarm
        self._log_threshold = math.log(self.threshold)
        self._eps = (np.arange(grid_size) + 0.5) / grid_size
        self._log_eps = np.log(self._eps)
        self._log_weight = -math.log(grid_size)
        self._rng = np.random.default_rng(seed)
        self.reset()

    def reset(self) -> None:
        """Start a fresh test: martingale 1, alarm cleared, bag back to the calibration set."""
        self._bag = _Bag(self.calibration)
        self._log_components = np.zeros_like(self._eps)  # log of each power martingale
        self._log_m = 0.0
        self.alarm = False
        self.alarms = 0
        self.p_values_seen = 0
        self.last_p_values = np.empty(0)

    @property
    def log10_martingale(self) -> float:
        """log10 of the mixture martingale (0 at start; ≥ log10 λ is the alarm)."""
        return self._log_m / math.log(10.0)

    @property
    def reference_size(self) -> int:
        """|B|: calibration points plus, in on-line mode, every score seen since the last reset."""
        return self._bag.size

    def _p_values(self, scores: np.ndarray) -> np.ndarray:
        """p-values in arrival order; in on-line mode each score joins the bag after its own."""
        u = 1.0 - self._rng.random(len(scores))  # (0, 1]: p > 0 always
        if not self.online:
            return conformal_p_values(self.calibration, scores, u)
        out = np.empty(len(scores))
        for start in range(0, len(scores), _CHUNK):
            chunk = scores[start : start + _CHUNK]
            greater, equal = self._bag.greater_and_equal(chunk)
            earlier = np.tri(len(chunk), k=-1, dtype=bool)  # [i, j]: j arrived before i
            greater = greater + ((chunk[None, :] > chunk[:, None]) & earlier).sum(axis=1)
            equal = equal + ((chunk[None, :] == chunk[:, None]) & earlier).sum(axis=1)
            size = self._bag.size + np.arange(len(chunk))
            out[start : start + len(chunk)] = (greater + u[start : start + len(chunk)] * (equal + 1)) / (size + 1)
            self._bag.add(chunk)
        return out

    def update(self, scores: np.ndarray) -> None:
        """Bets on one micro-batch of label-free scores, step by step, in arrival order."""
        scores = np.asarray(scores, dtype=np.float64).ravel()
        if scores.size == 0:
            return
        if not np.isfinite(scores).all():
            raise InputError("label-free scores contain NaN or infinity")
        p = self._p_values(scores)
        self.last_p_values = p
        self.p_values_seen += len(p)
        # (t, G): log of each power martingale's factor at every step of this batch.
        increments = self._log_eps[None, :] + (self._eps - 1.0)[None, :] * np.log(p)[:, None]
        start = 0
        while start < len(p):
            path = self._log_components + np.cumsum(increments[start:], axis=0)
            log_m = _logsumexp(path, axis=1) + self._log_weight
            crossed = np.flatnonzero(log_m >= self._log_threshold)
            if crossed.size == 0 or not self.restart_on_alarm:
                if crossed.size:
                    self.alarm, self.alarms = True, 1
                self._log_components, self._log_m = path[-1], float(log_m[-1])
                return
            self.alarm = True
            self.alarms += 1
            self._log_components = np.zeros_like(self._eps)  # a fresh test from the next step
            self._log_m = 0.0
            start += int(crossed[0]) + 1
