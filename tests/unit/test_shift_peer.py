"""The peer comparison's half that runs without alibi-detect: the saved pools and the agent's detector.

`make bench-shift-peer` replays pools written by `bench shift --save-scores` in another environment;
these tests pin the file format between the two and that the agent's detector, as the comparison
drives it, stays quiet on clean scores and fires on shifted ones.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from agent.engine.dknn import DkNN
from agent.research.bench.shift import Pool, save_pools
from agent.research.bench.shift_peer import AgentDetector, Pools


def test_saved_pools_round_trip_without_the_bundle(tiny_bundle: Path, tmp_path: Path) -> None:
    scorer = DkNN.from_bundle(tiny_bundle)
    rng = np.random.default_rng(0)
    by_kind = {
        "clean": Pool(scores=rng.integers(0, 5, 300), low=rng.random(300) < 0.1),
        "noise": Pool(scores=rng.integers(40, 50, 200), low=np.ones(200, bool)),
    }
    save_pools(tmp_path / "pools.npz", by_kind, scorer)
    pools = Pools.load(tmp_path / "pools.npz")
    assert set(pools.scores) == {"clean", "noise"}
    for kind, pool in by_kind.items():
        np.testing.assert_array_equal(pools.scores[kind], pool.scores)
        np.testing.assert_array_equal(pools.low[kind], pool.low)
    np.testing.assert_array_equal(pools.calibration_label_free, scorer.calibration_label_free)
    assert 0 < pools.threshold < 1


def test_agent_detector_is_quiet_on_calibration_like_scores_and_fires_on_strange_ones(tiny_bundle: Path) -> None:
    scorer = DkNN.from_bundle(tiny_bundle)
    calibration = scorer.calibration_label_free
    pools = Pools(
        scores={"clean": calibration},
        low={"clean": np.zeros(len(calibration), bool)},
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
