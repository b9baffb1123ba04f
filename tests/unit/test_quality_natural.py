"""The quality benchmark's operational metrics: quarantine at a review budget, right vs wrong answers."""

from __future__ import annotations

import numpy as np

from agent.evaluation.metrics import energy, softmax_max, tpr_at_fpr
from agent.evaluation.scoring import SetScores
from dknn_lab.bench.perturbations import EvalSet
from dknn_lab.bench.quality import RightVsWrong, right_vs_wrong


def test_tpr_at_fpr_flags_at_most_the_budget_of_clean_traffic() -> None:
    rng = np.random.default_rng(0)
    clean, shifted = rng.uniform(0.2, 1.0, 1000), rng.uniform(0.0, 0.5, 1000)
    for budget in (0.01, 0.05):
        threshold = np.quantile(clean, budget, method="lower")
        assert (clean < threshold).mean() <= budget
    # shifted below the clean 1% quantile (~0.208): about 0.208 / 0.5 of them
    assert abs(tpr_at_fpr(clean, shifted, 0.01) - 0.416) < 0.05
    assert tpr_at_fpr(clean, clean + 10, 0.05) == 0.0


def test_right_vs_wrong_ranks_right_answers_first() -> None:
    y = np.array([0, 1, 2, 3])
    scores = SetScores(
        credibility=np.array([0.9, 0.8, 0.1, 0.2]),
        prediction=np.array([0, 1, 0, 0]),
        # the p-value of the model's answer ranks one wrong answer (row 3's label 0) above a right one
        p_values=np.array([[0.7, 0, 0, 0], [0, 0.2, 0, 0], [0.1, 0, 0, 0], [0.5, 0, 0, 0]]),
        model_prediction=np.array([0, 1, 0, 0]),  # right, right, wrong, wrong
        softmax_max=np.array([0.1, 0.9, 0.8, 0.2]),
        energy=np.zeros(4),
        label_free=np.zeros(4),
        neighbor_ids=np.zeros((4, 1, 1), dtype=np.int64),
    )
    result = right_vs_wrong(EvalSet("digits", np.zeros((4, 1, 28, 28), np.float32), y), scores)
    assert result == RightVsWrong(credibility=1.0, model_answer_p=0.75, softmax=0.5)


def test_energy_keeps_the_logit_scale_that_the_softmax_maximum_forgets() -> None:
    logits = np.array([[10.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    scaled = logits / 10
    assert softmax_max(logits)[0] > softmax_max(scaled)[0]  # same ranking of classes, flatter
    np.testing.assert_allclose(energy(logits), np.log(np.exp(logits).sum(axis=1)))
    assert energy(logits)[0] > energy(logits)[1]
