"""Baseline detectors beside DkNN credibility, scored on the same model and the same inputs.

Softmax max-probability and the energy score (Liu et al. 2020) read the model's logits; Mahalanobis
distance (Lee et al. 2018) and the deep-kNN distance (Sun et al. 2022) the penultimate tapped layer; all scores are "higher = more in-distribution", so one
AUROC and one FPR at 95% TPR (in-distribution as the positive class) cover every detector.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from agent.engine.dknn import DkNN
from dknn_lab.baselines import DeepKnnScorer, MahalanobisScorer


@dataclass(frozen=True)
class Detectors:
    layer: str
    mahalanobis: MahalanobisScorer
    deep_knn: DeepKnnScorer


def features(scorer: DkNN, x: np.ndarray, layer: str, batch_size: int) -> np.ndarray:
    return np.concatenate([batch.layers[layer] for batch in scorer.tap.batches(x, batch_size)])


def fit_detectors(scorer: DkNN, x_train: np.ndarray, y_train: np.ndarray, batch_size: int) -> Detectors:
    layer = scorer.manifest.layer_names[-2]  # the last hidden layer before the logits
    train = features(scorer, x_train, layer, batch_size)
    return Detectors(
        layer=layer,
        mahalanobis=MahalanobisScorer().fit(train, y_train, scorer.num_classes),
        deep_knn=DeepKnnScorer(k=50).fit(train),
    )


def detector_scores(
    detectors: Detectors,
    scorer: DkNN,
    x: np.ndarray,
    credibility: np.ndarray,
    from_logits: dict[str, np.ndarray],
    batch_size: int,
) -> dict[str, np.ndarray]:
    """Every detector's scores for `x`; `from_logits` (softmax, energy) come already computed."""
    feats = features(scorer, x, detectors.layer, batch_size)
    return {
        "dknn_credibility": credibility,
        **from_logits,
        "mahalanobis": detectors.mahalanobis.score(feats),
        "deep_knn": detectors.deep_knn.score(feats),
    }
