"""Drift signals: exact on-line p-values, the change detector's run-length guarantee, the state signal."""

from __future__ import annotations

import math

import numpy as np
import pytest

from agent.engine.drift import (
    DriftMonitor,
    LowCredibilityState,
    OnlineConformalPValues,
    ShiryaevRoberts,
    binomial_upper_bound,
    expected_low_credibility_rate,
    log_bet,
    rate_upper_bound,
)
from agent.errors import ConfigError, InputError

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
    ranks = np.arange(1, len(p) + 1)
    return float(max((ranks / len(p) - p).max(), (p - (ranks - 1) / len(p)).max()))


def test_online_p_values_match_a_brute_force_reference() -> None:
    rng = np.random.default_rng(0)
    cal, stream = dknn_like(rng, 60), dknn_like(rng, 700, rate=0.07)
    p_values = OnlineConformalPValues(cal, seed=3)
    got = np.concatenate([p_values(stream[:64]), p_values(stream[64:320]), p_values(stream[320:])])
    u = 1.0 - np.random.default_rng(3).random(700)
    np.testing.assert_allclose(got, brute_force_online(cal, stream, u))
    assert p_values.size == 760


def test_p_values_are_uniform_on_an_exchangeable_stream() -> None:
    rng = np.random.default_rng(5)
    p = OnlineConformalPValues(dknn_like(rng, N_CAL), seed=1)(dknn_like(rng, 5_000))
    assert p.min() > 0 and p.max() <= 1
    assert ks_statistic(p) < 1.63 / math.sqrt(len(p))  # the 1 % critical value
    assert abs(np.log(p).mean() + 1) < 0.05  # E[-log p] = 1 under uniformity


def test_the_betting_function_integrates_to_one() -> None:
    """∫₀¹ g = 1 is what makes R_t − t a martingale, hence the run-length guarantee."""
    edges = np.logspace(-12, 0, 400_001)
    mids = np.sqrt(edges[:-1] * edges[1:])
    integral = float((np.exp(log_bet(mids)) * np.diff(edges)).sum())
    below = float(np.mean(1e-12 ** ((np.arange(20) + 0.5) / 20)))  # ∫₀^1e-12 ε p^(ε−1) dp = (1e-12)^ε
    assert integral + below == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("threshold", [100.0, 1000.0])
def test_mean_run_length_on_unshifted_traffic_is_at_least_the_threshold(threshold: float) -> None:
    rng = np.random.default_rng(int(threshold))
    lengths = []
    for _ in range(200):
        detector, seen = ShiryaevRoberts(threshold), 0
        while True:
            fired = detector.update(1.0 - rng.random(1000))
            if fired.any():
                lengths.append(seen + int(np.argmax(fired)) + 1)
                break
            seen += 1000
    assert np.mean(lengths) >= threshold


def test_a_shift_after_a_long_clean_stretch_is_detected_fast_and_the_detector_re_arms() -> None:
    rng = np.random.default_rng(11)
    monitor = DriftMonitor(dknn_like(rng, N_CAL), dknn_like(rng, N_CAL), threshold=0.1, arl_events=8.64e7)
    for _ in range(40):  # 20,000 clean events: R stays near 0 instead of drifting down
        signals = monitor.update(dknn_like(rng, 500), np.zeros(500, dtype=bool))
        assert not signals.change.any()
    shifted = np.where(rng.random(400) < 0.5, rng.binomial(30, 0.6, 400), dknn_like(rng, 400))
    change = monitor.update(shifted, np.zeros(400, dtype=bool)).change
    assert change.any() and int(np.argmax(change)) < 100, "50% strange events: alarm within 100 events"
    assert monitor.change.log10_statistic < monitor.change.log10_threshold  # restarted after the alarm


def test_the_state_turns_on_under_shift_and_off_after_it() -> None:
    state = LowCredibilityState(expected_rate=0.1, window=1000)
    rng = np.random.default_rng(2)
    assert not state.update(rng.random(5000) < 0.1).any(), "clean traffic never turns the state on"
    shifted = state.update(rng.random(3000) < 0.5)  # half the traffic now low-credibility
    on_at = int(np.argmax(shifted))
    assert shifted[-1] and on_at < 300
    cleared = state.update(rng.random(3000) < 0.1)
    off_at = int(np.argmin(cleared))
    assert not cleared[-1] and off_at < 1500, "off about one window after the shift ends"
    assert state.off_count < state.on_count


def test_the_rate_bound_is_wilsons_upper_confidence_bound() -> None:
    # by hand: (0.5 + 4/200 + 2·sqrt(0.25/100 + 4/40000)) / (1 + 4/100)
    assert rate_upper_bound(0.5, 100, z=2.0) == pytest.approx(0.598058, abs=1e-6)
    assert 0.1 < rate_upper_bound(0.1, 750) < rate_upper_bound(0.1, 75) < 1.0
    assert rate_upper_bound(0.1, 10**9) == pytest.approx(0.1, abs=1e-4)
    assert rate_upper_bound(0.0, 750) > 0.0  # no flagged calibration point is no proof of a zero rate


def test_a_calibration_sample_that_flags_too_little_does_not_turn_the_state_on() -> None:
    """The reference bundle's calibration flags 9.9% and its clean evaluation traffic 11.1%: taken
    as exact, that turned the state on about once per million clean events (here, with traffic a
    little further off, more often); its upper confidence bound does not."""
    flags = np.random.default_rng(5).random(1_000_000) < 0.115
    as_exact, bounded = LowCredibilityState(0.0987), LowCredibilityState(rate_upper_bound(0.0987, 750))
    turned_on = np.diff(as_exact.update(flags).astype(np.int8)) == 1
    assert turned_on.sum() >= 1
    assert not bounded.update(flags).any()


def test_the_monitor_uses_the_bound_on_its_calibration_rate() -> None:
    rng = np.random.default_rng(3)
    alpha, label_free = dknn_like(rng, N_CAL), dknn_like(rng, N_CAL)
    monitor = DriftMonitor(alpha, label_free, threshold=0.1)
    rate = expected_low_credibility_rate(alpha, label_free, 0.1)
    assert monitor.state.expected_rate == pytest.approx(rate_upper_bound(rate, N_CAL))


def test_binomial_bound_matches_a_direct_sum() -> None:
    n, q, tail = 200, 0.1, 1e-4
    k = binomial_upper_bound(n, q, tail)

    def survival(k0: int) -> float:
        return sum(math.comb(n, j) * q**j * (1 - q) ** (n - j) for j in range(k0, n + 1))

    assert survival(k) <= tail < survival(k - 1)


def test_expected_rate_is_the_calibration_share_below_the_threshold() -> None:
    alpha = np.array([0, 0, 0, 0, 1, 2, 3, 5, 8, 13])
    # credibility(s) = #{a ≥ s}/10: s=0 -> 1.0, s=8 -> 0.2, s=13 -> 0.1, s=14 -> 0.0
    assert expected_low_credibility_rate(alpha, np.array([0, 8, 13, 14]), threshold=0.15) == 0.5


def test_bad_configuration_and_input_are_refused() -> None:
    with pytest.raises(ConfigError):
        ShiryaevRoberts(1.0)
    with pytest.raises(ConfigError):
        ShiryaevRoberts(math.inf)
    with pytest.raises(ConfigError):
        LowCredibilityState(0.1, window=5)
    with pytest.raises(ConfigError):
        OnlineConformalPValues(np.array([]))
    with pytest.raises(InputError):
        OnlineConformalPValues(np.arange(10))(np.array([np.nan]))
