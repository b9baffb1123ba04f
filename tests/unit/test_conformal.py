"""The conformal arithmetic against hand-computed values and its invariants."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from agent.engine import conformal


def test_hand_computed_example() -> None:
    # One input, L=2 layers, k=3 neighbours, C=3 classes; -1 is a missing neighbour.
    labels = np.array([[[0, 0, 1], [0, 2, -1]]])
    # votes: class0 = 2+1 = 3, class1 = 1, class2 = 1  ->  alpha = L*k - votes = 6 - votes
    alpha = conformal.nonconformity(labels, num_classes=3)
    assert alpha.tolist() == [[3, 5, 5]]

    calibration = np.array([0, 1, 3, 3, 5, 6])
    p = conformal.p_values(alpha, calibration)
    # p_j = |{a >= alpha_j}| / 6, ties count: alpha 3 -> {3,3,5,6}; alpha 5 -> {5,6}
    np.testing.assert_allclose(p, [[4 / 6, 2 / 6, 2 / 6]])

    verdicts = conformal.summarise(alpha, p)
    assert verdicts.prediction.tolist() == [0]
    np.testing.assert_allclose(verdicts.credibility, [4 / 6])
    np.testing.assert_allclose(verdicts.confidence, [1 - 2 / 6])
    assert verdicts.label_free_score.tolist() == [3]


def test_alpha_above_every_calibration_score_has_p_zero() -> None:
    p = conformal.p_values(np.array([[7, 0]]), np.array([1, 2, 3]))
    np.testing.assert_allclose(p, [[0.0, 1.0]])


def test_p_value_ties_break_prediction_by_alpha() -> None:
    # alpha 4 and 5 fall between the same calibration scores, so p ties; alpha decides.
    alpha = np.array([[5, 4, 9]])
    p = conformal.p_values(alpha, np.array([0, 3, 6]))
    assert p[0, 0] == p[0, 1]
    assert conformal.summarise(alpha, p).prediction.tolist() == [1]


label_arrays = arrays(
    np.int64, st.tuples(st.integers(1, 6), st.integers(1, 4), st.integers(1, 9)), elements=st.integers(-1, 4)
)


@given(labels=label_arrays, calibration=arrays(np.int64, st.integers(1, 40), elements=st.integers(0, 40)))
@settings(max_examples=200, deadline=None)
def test_invariants(labels: np.ndarray, calibration: np.ndarray) -> None:
    n, layers, k = labels.shape
    alpha = conformal.nonconformity(labels, num_classes=5)
    assert alpha.shape == (n, 5)
    assert ((alpha >= 0) & (alpha <= layers * k)).all()
    # every neighbour votes for at most one class, so the alphas of all classes sum to at least (C-1)*L*k
    assert (alpha.sum(axis=1) >= 4 * layers * k).all()

    p = conformal.p_values(alpha, np.sort(calibration))
    assert ((p >= 0) & (p <= 1)).all()
    order = np.argsort(alpha, axis=1, kind="stable")
    assert (np.diff(np.take_along_axis(p, order, axis=1), axis=1) <= 0).all()  # p non-increasing in alpha

    verdicts = conformal.summarise(alpha, p)
    np.testing.assert_allclose(verdicts.credibility, p.max(axis=1))
    second = np.sort(p, axis=1)[:, -2]
    np.testing.assert_allclose(verdicts.confidence, 1 - second)


def test_validity_on_exchangeable_scores() -> None:
    """Test and calibration scores from one distribution: P(p <= tau) stays close to tau."""
    rng = np.random.default_rng(0)
    calibration = np.sort(rng.integers(0, 300, size=750))
    test = rng.integers(0, 300, size=(20_000, 1))
    p = conformal.p_values(test, calibration)[:, 0]
    for tau in (0.05, 0.1, 0.2):
        assert (p <= tau).mean() <= tau + 0.02
