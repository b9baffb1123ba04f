"""The measures an evaluation reports, in plain numpy (the product ships without scikit-learn).

Every detector score follows one convention, **higher = more in-distribution** (credibility, the
softmax maximum, the energy score), so one AUROC routine ranks them all the same way, with the
clean inputs as the positive class.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from agent.errors import InputError

VALIDITY_TAUS = (0.05, 0.1, 0.2)
REVIEW_BUDGETS = (0.01, 0.05)  # share of clean traffic a quarantine may flag: TPR at 1% and 5% FPR


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(a positive scores above a negative), ties counting one half: the area under the ROC curve
    (the Mann–Whitney statistic, with mid-ranks for ties: what scikit-learn's roc_auc_score gives)."""
    positive, negative = np.asarray(positive, dtype=np.float64), np.asarray(negative, dtype=np.float64)
    if not len(positive) or not len(negative):
        raise InputError("AUROC needs at least one positive and one negative score")
    scores = np.concatenate([positive, negative])
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    mid_ranks = ends - (counts - 1) / 2.0  # 1-based rank of each distinct value, averaged over its ties
    ranks = mid_ranks[inverse]
    n_pos = len(positive)
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * len(negative)))


def fpr_at_95_tpr(in_distribution: np.ndarray, shifted: np.ndarray) -> float:
    """Fraction of shifted inputs still accepted when the threshold keeps 95% of clean ones."""
    threshold = np.quantile(in_distribution, 0.05)
    return float((np.asarray(shifted) >= threshold).mean())


def tpr_at_fpr(in_distribution: np.ndarray, shifted: np.ndarray, fpr: float) -> float:
    """Share of shifted inputs flagged (score below the threshold) when the threshold flags at most
    `fpr` of the in-distribution ones: quarantine at a review budget."""
    threshold = np.quantile(in_distribution, fpr, method="lower")
    return float((np.asarray(shifted) < threshold).mean())


def softmax_max(logits: np.ndarray) -> np.ndarray:
    """Maximum softmax probability per row, `(n,)` float64 (Hendrycks & Gimpel 2017).

    Computed as `1 / sum_j exp(z_j - max z)`, which equals `max softmax` exactly but never
    exponentiates a positive number, so huge logits neither overflow nor produce NaN.
    """
    z = _logits(logits)
    return 1.0 / np.exp(z - z.max(axis=1, keepdims=True)).sum(axis=1)


def energy(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Minus the free energy, T·logsumexp(logits / T) (Liu et al. 2020), `(n,)` float64; higher =
    more in-distribution. Unlike the softmax maximum it keeps the logits' scale, which an input far
    from the training data tends to shrink."""
    z = _logits(logits) / temperature
    top = z.max(axis=1)
    return temperature * (top + np.log(np.exp(z - top[:, None]).sum(axis=1)))


def _logits(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2:
        raise InputError(f"logits must be 2-D (n, classes), got shape {z.shape}")
    return z


def validity(true_label_p: np.ndarray) -> dict[str, float]:
    """Fraction of points whose true label's p-value is ≤ τ: conformal validity wants about τ."""
    p = np.asarray(true_label_p)
    return {f"{tau}": float((p <= tau).mean()) for tau in VALIDITY_TAUS}


def separation(clean: np.ndarray, shifted: np.ndarray) -> dict[str, float]:
    """How well a score tells clean inputs from a shifted set: AUROC, and the share of the set
    flagged at the thresholds that flag 1% / 5% of clean traffic."""
    return {
        "auroc": auroc(clean, shifted),
        **{f"tpr_at_{round(100 * budget)}_fpr": tpr_at_fpr(clean, shifted, budget) for budget in REVIEW_BUDGETS},
    }


def right_vs_wrong(right: np.ndarray, scores: Mapping[str, np.ndarray]) -> dict[str, float | None]:
    """AUROC at telling the model's right answers (positives) from its wrong ones, per score; None
    when the model is all right or all wrong."""
    right = np.asarray(right, dtype=bool)
    if right.all() or not right.any():
        return {name: None for name in scores}
    return {name: auroc(np.asarray(values)[right], np.asarray(values)[~right]) for name, values in scores.items()}


def paired_bootstrap(
    right: np.ndarray, first: np.ndarray, second: np.ndarray, resamples: int = 2000, seed: int = 0
) -> dict[str, float] | None:
    """The 95% interval of right-vs-wrong AUROC(first) − AUROC(second), resampling the inputs with
    replacement (the same rows for both scores, so the interval is of the difference itself). A
    resample without both right and wrong answers is skipped. None when the model is all right or
    all wrong."""
    right = np.asarray(right, dtype=bool)
    if right.all() or not right.any():
        return None
    rng = np.random.default_rng(seed)
    differences = []
    for _ in range(resamples):
        rows = rng.integers(0, len(right), len(right))
        picked = right[rows]
        if picked.all() or not picked.any():
            continue
        a, b = first[rows], second[rows]
        differences.append(auroc(a[picked], a[~picked]) - auroc(b[picked], b[~picked]))
    low, high = np.quantile(differences, [0.025, 0.975])
    point = auroc(first[right], first[~right]) - auroc(second[right], second[~right])
    return {"difference": float(point), "low": float(low), "high": float(high), "resamples": len(differences)}
