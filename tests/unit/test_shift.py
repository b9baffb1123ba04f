"""The conformal shift alarm: exact p-values, Ville's false-alarm bound, power under shift."""

from __future__ import annotations

import math

import numpy as np
import pytest

from agent.errors import ConfigError, InputError
from agent.runtime.drift import ShiftDetector, conformal_p_values

N_CAL = 750


def dknn_like(rng: np.random.Generator, n: int, rate: float = 0.05) -> np.ndarray:
    """Integer scores with heavy ties at 0, like s(x) = min_j α(x, j) over L·k = 30 neighbours."""
    return rng.binomial(30, rate, n).astype(np.int64)


def brute_force_online(cal: np.ndarray, stream: np.ndarray, u: np.ndarray) -> np.ndarray:
    bag, out = list(cal), []
    for s, ui in zip(stream, u, strict=True):
        b = np.asarray(bag)
        out.append(((b > s).sum() + ui * ((b == s).sum() + 1)) / (len(b) + 1))
        bag.append(s)
    return np.asarray(out)


def ks_statistic(p: np.ndarray) -> float:
    """Kolmogorov–Smirnov distance between the sample and Uniform(0, 1)."""
    p = np.sort(p)
    n = len(p)
    ranks = np.arange(1, n + 1)
    return float(max((ranks / n - p).max(), (p - (ranks - 1) / n).max()))


def ever_alarm_fraction(streams: int, same_calibration: bool, scores) -> float:
    rng = np.random.default_rng(2024)
    cal = scores(rng, N_CAL)
    alarms = 0
    for i in range(streams):
        if not same_calibration:
            cal = scores(rng, N_CAL)
        detector = ShiftDetector(cal, threshold=100.0, seed=i)
        stream = scores(rng, 2_000)
        for start in range(0, len(stream), 250):
            detector.update(stream[start : start + 250])
        alarms += detector.alarm
    return alarms / streams


def test_fixed_reference_p_values_follow_the_stated_convention() -> None:
    cal = np.array([1.0, 2.0, 2.0, 3.0])
    p = conformal_p_values(cal, np.array([2.0, 0.0, 5.0]), np.array([0.5, 1.0, 1.0]))
    # s=2: one greater, two equal (+1 for itself) -> (1 + 0.5·3)/5; s=0: (4 + 1)/5; s=5: (0 + 1)/5.
    np.testing.assert_allclose(p, [2.5 / 5, 1.0, 0.2])


@pytest.mark.parametrize("online", [True, False])
def test_detector_p_values_match_a_brute_force_reference(online: bool) -> None:
    rng = np.random.default_rng(0)
    cal, stream = dknn_like(rng, 60), dknn_like(rng, 700, rate=0.07)
    detector = ShiftDetector(cal, seed=3, online=online)
    for start in range(0, 320, 64):  # pipeline-sized batches ...
        detector.update(stream[start : start + 64])
    detector.update(stream[320:])  # ... then one call spanning two internal chunks
    u = 1.0 - np.random.default_rng(3).random(700)
    seen = brute_force_online(cal, stream, u) if online else conformal_p_values(np.sort(cal), stream, u)
    assert detector.p_values_seen == 700
    np.testing.assert_allclose(detector.last_p_values, seen[320:])
    assert detector.reference_size == (60 + 700 if online else 60)


def test_p_values_are_uniform_on_an_exchangeable_stream() -> None:
    rng = np.random.default_rng(5)
    detector = ShiftDetector(dknn_like(rng, N_CAL), seed=1)
    detector.update(dknn_like(rng, 5_000))
    p = detector.last_p_values
    assert p.min() > 0 and p.max() <= 1
    assert ks_statistic(p) < 1.63 / math.sqrt(len(p))  # the 1 % critical value
    assert abs(np.log(p).mean() + 1) < 0.05  # E[-log p] = 1 under uniformity


@pytest.mark.parametrize(
    ("same_calibration", "scores"),
    [(False, lambda rng, n: rng.normal(size=n)), (True, dknn_like)],
    ids=["continuous-fresh-calibration", "dknn-like-one-calibration-set"],
)
def test_false_alarm_rate_is_within_villes_bound(same_calibration: bool, scores) -> None:
    fraction = ever_alarm_fraction(200, same_calibration, scores)
    assert fraction <= 0.03, f"{fraction:.3f} of 200 exchangeable streams alarmed at λ=100"


def test_alarms_within_a_few_hundred_steps_of_a_shift() -> None:
    rng = np.random.default_rng(9)
    detector = ShiftDetector(rng.normal(size=N_CAL), seed=0)
    detector.update(rng.normal(size=500))
    assert not detector.alarm
    shifted = rng.normal(size=1_000) + 1.0  # mostly stranger than calibration
    for step in range(0, len(shifted), 16):
        detector.update(shifted[step : step + 16])
        if detector.alarm:
            break
    assert detector.alarm and step < 300
    assert detector.log10_martingale >= 2.0


def test_crossing_inside_a_batch_latches_until_reset() -> None:
    rng = np.random.default_rng(4)
    cal = dknn_like(rng, N_CAL)
    detector = ShiftDetector(cal, seed=0)
    detector.update(np.concatenate([np.full(12, 30), dknn_like(rng, 20_000)]))  # spike, then calm
    assert detector.alarm and detector.alarms == 1
    assert detector.log10_martingale < 2.0  # fell back below λ inside the same batch
    detector.update(dknn_like(rng, 100))
    assert detector.alarm
    detector.reset()
    assert not detector.alarm and detector.log10_martingale == 0.0 and detector.p_values_seen == 0
    assert detector.reference_size == N_CAL


def test_restart_on_alarm_counts_crossings_and_keeps_the_alarm() -> None:
    rng = np.random.default_rng(8)
    detector = ShiftDetector(dknn_like(rng, N_CAL), seed=0, restart_on_alarm=True)
    detector.update(np.full(40, 30))
    assert detector.alarm and detector.alarms >= 3
    assert detector.log10_martingale < 2.0


def test_rejects_bad_configuration_and_input() -> None:
    with pytest.raises(ConfigError):
        ShiftDetector(np.array([]))
    with pytest.raises(ConfigError):
        ShiftDetector(np.arange(10), threshold=1.0)
    detector = ShiftDetector(np.arange(10))
    detector.update(np.array([]))
    assert detector.p_values_seen == 0
    with pytest.raises(InputError):
        detector.update(np.array([1.0, np.nan]))
