"""The score pools both drift benchmarks draw from, and the peer comparison's half that runs without alibi-detect.

`make bench-shift-peer` replays pools written by `bench shift --save-scores` in another environment;
these tests pin the file format between the two and that the agent's detector, as the comparison
drives it, stays quiet on clean scores and fires on shifted ones.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from agent.engine.dknn import DkNN
from dknn_lab.bench.score_pools import DelaySummary, Pool, SavedPools, delay_summary, load_pools, mixed, save_pools
from dknn_lab.bench.shift_peer import AgentDetector


def test_saved_pools_round_trip_without_the_bundle(tiny_bundle: Path, tmp_path: Path) -> None:
    scorer = DkNN.from_bundle(tiny_bundle)
    rng = np.random.default_rng(0)
    by_kind = {
        "clean": Pool(scores=rng.integers(0, 5, 300), low=rng.random(300) < 0.1),
        "noise": Pool(scores=rng.integers(40, 50, 200), low=np.ones(200, bool)),
    }
    save_pools(
        tmp_path / "pools.npz", SavedPools(by_kind, scorer.calibration_alpha, scorer.calibration_label_free, 0.1)
    )
    pools = load_pools(tmp_path / "pools.npz")
    assert set(pools.by_kind) == {"clean", "noise"}
    for kind, pool in by_kind.items():
        np.testing.assert_array_equal(pools.by_kind[kind].scores, pool.scores)
        np.testing.assert_array_equal(pools.by_kind[kind].low, pool.low)
    np.testing.assert_array_equal(pools.calibration_label_free, scorer.calibration_label_free)
    assert 0 < pools.threshold < 1


def test_agent_detector_is_quiet_on_calibration_like_scores_and_fires_on_strange_ones(tiny_bundle: Path) -> None:
    scorer = DkNN.from_bundle(tiny_bundle)
    calibration = scorer.calibration_label_free
    pools = SavedPools(
        by_kind={"clean": Pool(calibration, np.zeros(len(calibration), bool))},
        calibration_alpha=scorer.calibration_alpha,
        calibration_label_free=calibration,
        threshold=0.1,
    )
    rng = np.random.default_rng(1)
    detector = AgentDetector(pools, ert=1_000, seed=0)
    assert detector(rng.choice(calibration, 500), np.zeros(500, bool)) is None
    strange = np.full(500, calibration.max() + 100.0)
    alarm = detector(strange, np.ones(500, bool))
    assert alarm is not None and alarm < 64


def test_mixed_streams_take_the_shifted_pool_at_the_given_share() -> None:
    clean, shifted = Pool(np.zeros(50), np.zeros(50, bool)), Pool(np.ones(50), np.ones(50, bool))
    rng = np.random.default_rng(0)
    assert not mixed(rng, clean, shifted, 0.0, 200)[0].any()
    assert mixed(rng, clean, shifted, 1.0, 200)[1].all()
    assert 0.4 < mixed(rng, clean, shifted, 0.5, 2000)[0].mean() < 0.6


def test_delay_summary_counts_only_detections() -> None:
    detected, summary = delay_summary([10, None, 30, 20, None])
    np.testing.assert_array_equal(detected, [10, 30, 20])
    assert summary == DelaySummary(detected=3, delay_median=20.0, delay_p95=29.0)
    assert delay_summary([None])[1] == DelaySummary(detected=0, delay_median=None, delay_p95=None)
