"""Distribution-drift signals an operator can be paged on (docs/design.md §2.6).

Two signals, because on-call needs two answers: *did something change?* (fast, then quiet) and
*is the traffic still shifted?* (on while it lasts, off when it is over).

**Change: a conformal Shiryaev–Roberts procedure.** Each scored event's label-free score
s(x) = min_j α(x, j) (larger = stranger) gets an on-line, randomised conformal p-value against the
calibration scores plus every score seen so far (each event joins the reference after its own
p-value). While the stream is exchangeable with the calibration data these p-values are exactly
i.i.d. uniform (Vovk's on-line exchangeability argument), whatever the model. The statistic

    R_0 = 0,    R_t = (1 + R_{t-1}) · g(p_t),    alarm when R_t ≥ c, then R restarts at 0

with a betting function g ≥ 0, ∫₀¹ g = 1, makes R_t − t a martingale under uniform p-values, so
the mean number of events between false alarms is at least c (Pollak's argument; the exact
guarantee this module is built around). c is set in events: the default 8.64 × 10^7 is one false
alarm per day per replica at 1,000 events/s. g is the equal-weight mixture of ε·p^(ε−1) over a grid
of ε in (0, 1): small ε bets hard on the rare, extreme p-values a partial shift produces, larger ε
on many moderately small ones. Why Shiryaev–Roberts and not the test martingale used before: a
martingale that has drifted far below 1 over a long clean stretch needs that deficit made up
before it alarms, and one that has alarmed keeps growing for ever; R starts from 0 after every
alarm and never goes below 0, so detection after a month of clean traffic is as fast as after a
minute, and the signal re-arms by itself.

**State: the low-credibility rate in a window, against the rate the calibration predicts.**
Quarantining below τ flags a share q₀ of in-distribution traffic. q₀ is estimated from the
calibration scores (about τ), and from a few hundred of them only: the estimate is off by about
√(τ(1 − τ)/n), 1.1 points for n = 750, and a bound built on it as if exact turned on every
15 minutes of clean traffic at 1,000 events/s when the sample happened to fall 1.2 points low
(`bench shift` on the reference bundle, README). So q₀ is the estimate's 99% upper confidence
bound (Wilson). Over the last W events the flagged count is then at most about Binomial(W, q₀);
the state turns on when the count reaches the smallest k with P(count ≥ k) ≤ δ and turns off
again at the mean plus three standard deviations (hysteresis, so it does not flicker at the
boundary). It stays on while the traffic is shifted and clears about W events after
the shift ends. It only sees shifts that lower credibility, which is what quarantine acts on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from agent.errors import ConfigError, InputError

DEFAULT_ARL_EVENTS = 8.64e7  # one false alarm per day per replica at 1,000 events/s
DEFAULT_WINDOW = 1000
DEFAULT_WINDOW_FALSE_ALARM = 1e-7  # P(count ≥ bound) for one window of in-distribution traffic
CALIBRATION_RATE_Z = 2.326  # the one-sided 99% normal quantile: q₀'s upper confidence bound
_EPSILONS = (np.arange(20) + 0.5) / 20  # the betting mixture's grid
_CHUNK = 256  # in-batch pairwise comparisons are chunk² booleans


class OnlineConformalPValues:
    """Randomised on-line conformal p-values of scores (larger = stranger), in arrival order.

    p = (|{b ∈ B : b > s}| + U·(|{b ∈ B : b = s}| + 1)) / (|B| + 1), U ~ Uniform(0, 1], where B is the
    calibration set plus every score seen before this one. The "+1" counts the point itself; U splits
    ties (DkNN scores are integers) and keeps p > 0. B is kept as sorted (value, count) pairs: DkNN
    scores take at most L·k + 1 values, so memory stays bounded however long the stream.
    """

    def __init__(self, calibration: np.ndarray, seed: int | None = 0) -> None:
        scores = np.asarray(calibration, dtype=np.float64).ravel()
        if scores.size == 0 or not np.isfinite(scores).all():
            raise ConfigError("drift detection needs a non-empty, finite set of calibration scores")
        self.values, self.counts = np.unique(scores, return_counts=True)
        self._rng = np.random.default_rng(seed)
        self._refresh()

    def _refresh(self) -> None:
        self.size = int(self.counts.sum())
        self._at_most = np.cumsum(self.counts)

    def _greater_and_equal(self, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx = np.searchsorted(self.values, scores, side="right")
        below = np.maximum(idx - 1, 0)
        at_most = np.where(idx > 0, self._at_most[below], 0)
        equal = np.where((idx > 0) & (self.values[below] == scores), self.counts[below], 0)
        return self.size - at_most, equal

    def _add(self, scores: np.ndarray) -> None:
        values, inverse = np.unique(np.concatenate([self.values, scores]), return_inverse=True)
        weights = np.concatenate([self.counts, np.ones(len(scores), dtype=self.counts.dtype)])
        self.values = values
        self.counts = np.bincount(inverse, weights=weights, minlength=len(values)).astype(np.int64)
        self._refresh()

    def __call__(self, scores: np.ndarray) -> np.ndarray:
        scores = np.asarray(scores, dtype=np.float64).ravel()
        if not np.isfinite(scores).all():
            raise InputError("label-free scores contain NaN or infinity")
        u = 1.0 - self._rng.random(len(scores))  # (0, 1]
        out = np.empty(len(scores))
        for start in range(0, len(scores), _CHUNK):
            chunk = scores[start : start + _CHUNK]
            greater, equal = self._greater_and_equal(chunk)
            earlier = np.tri(len(chunk), k=-1, dtype=bool)  # [i, j]: j arrived before i
            greater = greater + ((chunk[None, :] > chunk[:, None]) & earlier).sum(axis=1)
            equal = equal + ((chunk[None, :] == chunk[:, None]) & earlier).sum(axis=1)
            size = self.size + np.arange(len(chunk))
            out[start : start + len(chunk)] = (greater + u[start : start + len(chunk)] * (equal + 1)) / (size + 1)
            self._add(chunk)
        return out


def log_bet(p: np.ndarray) -> np.ndarray:
    """log g(p) for the betting mixture g(p) = mean_ε ε·p^(ε−1); ∫₀¹ g = 1."""
    log_p = np.log(np.asarray(p, dtype=np.float64))[:, None]
    terms = np.log(_EPSILONS)[None, :] + (_EPSILONS - 1.0)[None, :] * log_p
    peak = terms.max(axis=1, keepdims=True)
    return (peak + np.log(np.exp(terms - peak).mean(axis=1, keepdims=True))).ravel()


class ShiryaevRoberts:
    """R_t = (1 + R_{t−1})·g(p_t), alarm at R ≥ `arl_events`, restart at 0 (module docstring)."""

    def __init__(self, arl_events: float = DEFAULT_ARL_EVENTS) -> None:
        if not (math.isfinite(arl_events) and arl_events > 1.0):
            raise ConfigError(f"the change detector's mean run length must be a finite number > 1, got {arl_events}")
        self.arl_events = float(arl_events)
        self._log_threshold = math.log(self.arl_events)
        self.log_r = -math.inf  # R = 0
        self.alarms = 0

    def update(self, p: np.ndarray) -> np.ndarray:
        """Bets on p-values in arrival order; True where an alarm fired (and R restarted)."""
        fired = np.zeros(len(p), dtype=bool)
        log_r = self.log_r
        for i, bet in enumerate(log_bet(p).tolist()):
            log_r = _log1p_exp(log_r) + bet  # log((1 + R)·g)
            if log_r >= self._log_threshold:
                fired[i] = True
                log_r = -math.inf
        self.log_r = log_r
        self.alarms += int(fired.sum())
        return fired

    @property
    def log10_statistic(self) -> float:
        """log10 R (−inf right after a restart is reported as the floor −10)."""
        return max(self.log_r / math.log(10.0), -10.0)

    @property
    def log10_threshold(self) -> float:
        return math.log10(self.arl_events)


def _log1p_exp(x: float) -> float:
    """log(1 + e^x), stable for large x and −inf."""
    return x + math.log1p(math.exp(-x)) if x > 0 else math.log1p(math.exp(x))


def binomial_upper_bound(n: int, q: float, tail: float) -> int:
    """The smallest k with P(Binomial(n, q) ≥ k) ≤ tail."""
    log_terms = (
        [
            math.lgamma(n + 1)
            - math.lgamma(k + 1)
            - math.lgamma(n - k + 1)
            + (k * math.log(q) if k else 0.0)
            + ((n - k) * math.log1p(-q) if n - k else 0.0)
            for k in range(n + 1)
        ]
        if 0 < q < 1
        else None
    )
    if log_terms is None:
        return n + 1 if q >= 1 else 1
    survival = 0.0
    for k in range(n, -1, -1):
        survival += math.exp(log_terms[k])
        if survival > tail:
            return k + 1
    return 0


class LowCredibilityState:
    """On while the windowed low-credibility count is above its calibrated bound (module docstring)."""

    def __init__(
        self, expected_rate: float, window: int = DEFAULT_WINDOW, false_alarm: float = DEFAULT_WINDOW_FALSE_ALARM
    ) -> None:
        if window < 10:
            raise ConfigError(f"the drift window must hold at least 10 events, got {window}")
        if not 0.0 <= expected_rate < 1.0:
            raise ConfigError(f"expected low-credibility rate must be in [0, 1), got {expected_rate}")
        self.window = window
        self.expected_rate = expected_rate
        rate = min(max(expected_rate, 1.0 / window), 1.0 - 1.0 / window)  # a rate of 0 would make any flag an alarm
        self.on_count = binomial_upper_bound(window, rate, false_alarm)
        spread = math.sqrt(window * rate * (1.0 - rate))
        self.off_count = min(self.on_count - 1, math.ceil(window * rate + 3.0 * spread))
        self._ring = np.zeros(window, dtype=bool)
        self._pos = 0
        self._seen = 0
        self.count = 0
        self.shifted = False

    @property
    def bound(self) -> float:
        """The on-threshold as a share of the window."""
        return self.on_count / self.window

    @property
    def ratio(self) -> float:
        return self.count / max(min(self._seen, self.window), 1)

    def update(self, low: np.ndarray) -> np.ndarray:
        """Feeds quarantine decisions in arrival order; the state after each one."""
        states = np.empty(len(low), dtype=bool)
        for i, flag in enumerate(np.asarray(low, dtype=bool).tolist()):
            self.count += int(flag) - int(self._ring[self._pos])
            self._ring[self._pos] = flag
            self._pos = (self._pos + 1) % self.window
            self._seen += 1
            if self.shifted and self.count <= self.off_count:
                self.shifted = False
            elif not self.shifted and self.count >= self.on_count:
                self.shifted = True
            states[i] = self.shifted
        return states


def expected_low_credibility_rate(
    calibration_alpha: np.ndarray, calibration_label_free: np.ndarray, threshold: float
) -> float:
    """Share of calibration points whose credibility is below `threshold`: what quarantine flags
    on in-distribution traffic (credibility = the DkNN p-value of the predicted label)."""
    alpha = np.sort(np.asarray(calibration_alpha, dtype=np.float64))
    scores = np.asarray(calibration_label_free, dtype=np.float64)
    credibility = (len(alpha) - np.searchsorted(alpha, scores, side="left")) / len(alpha)
    return float((credibility < threshold).mean())


def rate_upper_bound(rate: float, n: int, z: float = CALIBRATION_RATE_Z) -> float:
    """Wilson's upper confidence bound for a share `rate` observed on `n` points: what the state
    signal assumes in-distribution traffic flags, so that a calibration sample that happened to
    flag less than the traffic will does not turn the state on (module docstring)."""
    if n < 1:
        raise ConfigError("a rate needs at least one calibration point")
    centre = rate + z * z / (2 * n)
    spread = z * math.sqrt(rate * (1.0 - rate) / n + z * z / (4 * n * n))
    return min((centre + spread) / (1.0 + z * z / n), 1.0)


@dataclass(frozen=True)
class DriftSignals:
    """What one batch did to the signals, per event in arrival order."""

    change: np.ndarray  # (n,) bool: a change alarm fired at this event
    shifted: np.ndarray  # (n,) bool: the state after this event


@dataclass(frozen=True)
class DriftStatus:
    """Both signals as they stood after the last batch fed: what a reader on another thread may see.

    Immutable and replaced whole by each `DriftMonitor.update` (one reference assignment), so a
    reader (the metrics scrape) never sees one batch's statistic beside another batch's state.
    """

    alarms: int  # change alarms so far
    log10_statistic: float  # log10 R, floored at −10 (`ShiryaevRoberts.log10_statistic`)
    log10_threshold: float  # log10 of the mean run length between false alarms
    shifted: bool  # the state signal
    window_ratio: float  # the window's low-credibility share
    window_bound: float  # the share at which the state turns on


class DriftMonitor:
    """Both signals over one agent's stream. Only the thread that owns it (the pipeline's) calls
    `update`; any thread may read `status`, the snapshot each update publishes."""

    def __init__(
        self,
        calibration_alpha: np.ndarray,
        calibration_label_free: np.ndarray,
        threshold: float,
        arl_events: float = DEFAULT_ARL_EVENTS,
        window: int = DEFAULT_WINDOW,
        seed: int | None = 0,
    ) -> None:
        self.p_values = OnlineConformalPValues(calibration_label_free, seed)
        self.change = ShiryaevRoberts(arl_events)
        rate = expected_low_credibility_rate(calibration_alpha, calibration_label_free, threshold)
        self.state = LowCredibilityState(min(rate_upper_bound(rate, len(calibration_label_free)), 0.99), window)
        self.events_seen = 0
        self.status = self._snapshot()

    def update(self, label_free_scores: np.ndarray, low_credibility: np.ndarray) -> DriftSignals:
        p = self.p_values(label_free_scores)
        self.events_seen += len(p)
        signals = DriftSignals(change=self.change.update(p), shifted=self.state.update(low_credibility))
        self.status = self._snapshot()
        return signals

    def _snapshot(self) -> DriftStatus:
        return DriftStatus(
            alarms=self.change.alarms,
            log10_statistic=self.change.log10_statistic,
            log10_threshold=self.change.log10_threshold,
            shifted=self.state.shifted,
            window_ratio=self.state.ratio,
            window_bound=self.state.bound,
        )
