"""The evaluation's measures against scikit-learn's and against cases worked by hand."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from agent.errors import InputError
from agent.evaluation.metrics import (
    auroc,
    energy,
    paired_bootstrap,
    right_vs_wrong,
    separation,
    softmax_max,
    tpr_at_fpr,
    validity,
)


@pytest.mark.parametrize("seed", range(5))
def test_auroc_is_scikit_learns_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    positive, negative = rng.integers(0, 6, 80).astype(float), rng.integers(0, 8, 50).astype(float)  # many ties
    expected = roc_auc_score(np.r_[np.ones(80), np.zeros(50)], np.r_[positive, negative])
    assert auroc(positive, negative) == pytest.approx(expected, abs=1e-12)


def test_auroc_by_hand_and_its_refusals() -> None:
    assert auroc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert auroc(np.array([1.0]), np.array([1.0])) == 0.5
    with pytest.raises(InputError):
        auroc(np.array([]), np.array([1.0]))


def test_flagged_share_at_a_review_budget() -> None:
    clean = np.linspace(0.0, 1.0, 101)
    assert tpr_at_fpr(clean, np.array([0.005, 0.5, 0.009]), 0.01) == pytest.approx(2 / 3)
    measured = separation(clean, np.full(10, -1.0))
    assert measured == {"auroc": 1.0, "tpr_at_1_fpr": 1.0, "tpr_at_5_fpr": 1.0}


def test_softmax_and_energy_survive_huge_logits() -> None:
    logits = np.array([[1e6, 0.0, -1e6], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(softmax_max(logits), [1.0, 1 / 3])
    np.testing.assert_allclose(energy(logits), [1e6, np.log(3)])


def test_validity_counts_true_label_p_values_at_or_below_tau() -> None:
    assert validity(np.array([0.05, 0.06, 0.2, 0.9])) == {"0.05": 0.25, "0.1": 0.5, "0.2": 0.75}


def test_right_vs_wrong_and_its_bootstrap_interval() -> None:
    rng = np.random.default_rng(0)
    right = rng.random(400) < 0.8
    good = right + rng.normal(0, 0.5, 400)  # separates right from wrong
    noise = rng.normal(0, 1, 400)  # does not
    aurocs = right_vs_wrong(right, {"good": good, "noise": noise})
    assert aurocs["good"] > 0.8 and abs(aurocs["noise"] - 0.5) < 0.1
    interval = paired_bootstrap(right, good, noise, resamples=300)
    assert interval is not None and interval["low"] <= interval["difference"] <= interval["high"]
    assert interval["low"] > 0  # the better score is better beyond the resampling noise
    assert right_vs_wrong(np.ones(3, bool), {"good": np.ones(3)}) == {"good": None}
    assert paired_bootstrap(np.ones(3, bool), np.ones(3), np.ones(3)) is None
