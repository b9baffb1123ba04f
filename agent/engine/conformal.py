"""The conformal arithmetic of DkNN, vectorised over a batch (docs/design.md §2).

Conventions, used everywhere (fit, score, tests):

- nonconformity  α(x, j) = Σ_l |{ i ∈ kNN_l(x) : y_i ≠ j }| over the voting layers; a missing
  neighbour (-1) disagrees with every label, so α ranges over 0 … L·k; the distance-aware kind
  adds Σ_l floor(w · r_l(x)) over the distance layers (`distance_penalty`), the same for every j
  (an extended bundle ranks some inputs among its reviewed points instead: `vouched_penalty`);
- p-value        p_j(x) = |{ a ∈ A : a ≥ α(x, j) }| / |A| — ties count as "at least as strange",
  no +1 smoothing (the DkNN paper's form); A holds calibration α of the true labels;
- prediction     argmin_j α(x, j), which is always an argmax of p (p is non-increasing in α) and
  breaks p-value ties by the finer-grained α; ties in α go to the lowest label;
- credibility    max_j p_j; confidence 1 − (second largest p_j);
- label-free     s(x) = min_j α(x, j), the nonconformity of the predicted label (§2.6).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

DistanceStatistic = Literal["mean", "kth"]  # what sums up a layer's neighbour distances


def neighbor_label_counts(neighbor_labels: np.ndarray, num_classes: int) -> np.ndarray:
    """`(n, L, k)` labels (-1 = missing) -> `(n, L, C)` votes per class and layer."""
    n, num_layers, _ = neighbor_labels.shape
    slots = np.where(neighbor_labels < 0, num_classes, neighbor_labels)  # extra bin for missing
    rows = np.arange(n * num_layers)[:, None] * (num_classes + 1)
    flat = (rows + slots.reshape(n * num_layers, -1)).ravel()
    counts = np.bincount(flat, minlength=n * num_layers * (num_classes + 1))
    return counts.reshape(n, num_layers, num_classes + 1)[:, :, :num_classes]


def nonconformity(neighbor_labels: np.ndarray, num_classes: int) -> np.ndarray:
    """α for every candidate label: `(n, L, k)` neighbour labels -> `(n, C)` int64."""
    _, num_layers, k = neighbor_labels.shape
    votes = neighbor_label_counts(neighbor_labels, num_classes).sum(axis=1)
    return (num_layers * k - votes).astype(np.int64)


def distance_statistic(
    neighbor_distances: np.ndarray, statistic: DistanceStatistic, neighbors: int | None = None
) -> np.ndarray:
    """`(n, L, k)` Euclidean distances, nearest first (+inf = missing) -> `(n, L)`: over the nearest
    `neighbors` (None: all k), their mean or the farthest of them."""
    nearest = neighbor_distances[:, :, : neighbors or neighbor_distances.shape[2]]
    if statistic == "kth":
        return nearest[:, :, -1].astype(np.float64)
    return nearest.astype(np.float64).mean(axis=2)


def distance_penalty(distance: np.ndarray, reference_sorted: np.ndarray, weight: int, tail: float = 0.0) -> np.ndarray:
    """Σ_l floor(weight · t(r_l)) as `(n,)` int64: `layer_penalties` summed over the layers."""
    return layer_penalties(distance, reference_sorted, weight, tail).sum(axis=1)


def layer_penalties(distance: np.ndarray, reference_sorted: np.ndarray, weight: int, tail: float = 0.0) -> np.ndarray:
    """floor(weight · t(r_l)) per input and layer as `(n, L)` int64, where r_l is the fraction of the
    layer's reference distances (`(m, L)`, each column ascending) strictly below x's and t(r) =
    max(0, r − tail) / (1 − tail): 0 for an input no farther than the reference's `tail` quantile,
    `weight` for one farther than all of it (a missing neighbour, +inf, is farther than all)."""
    m, num_layers = reference_sorted.shape
    below = np.stack(
        [np.searchsorted(reference_sorted[:, layer], distance[:, layer], side="left") for layer in range(num_layers)],
        axis=1,
    ).reshape(len(distance), num_layers)
    if tail == 0.0:
        return ((weight * below) // m).astype(np.int64)  # exact integer arithmetic
    share = np.clip((below / m - tail) / (1.0 - tail), 0.0, 1.0)
    return np.floor(weight * share).astype(np.int64)


REVIEWED_DISTANCE_REFERENCE = "reviewed_distance_reference"  # its array in an extended bundle's calibration.npz


@dataclass(frozen=True)
class ReviewedDistances:
    """An extended bundle's reviewed points as the distance term sees them (§3.3): the index items
    from `first_item` on are reviewed inputs; `reference_sorted` `(m, L)` holds each one's own
    distance statistic per distance layer (itself left out), each column ascending."""

    first_item: int
    reference_sorted: np.ndarray

    def vouched(self, nearest_ids: np.ndarray, nearest_labels: np.ndarray, model_prediction: np.ndarray) -> np.ndarray:
        """`(n, L)` bool: whether each layer's nearest neighbour is a reviewed point whose label is the
        model's answer for the input. A reviewer vouched for that answer on inputs like it, and only
        for that: an input the model answers otherwise keeps the training points' reference."""
        return (nearest_ids >= self.first_item) & (nearest_labels == model_prediction[:, None])


def vouched_penalty(
    distance: np.ndarray,
    vouched: np.ndarray,
    reference_sorted: np.ndarray,
    reviewed_sorted: np.ndarray,
    weight: int,
    tail: float = 0.0,
) -> np.ndarray:
    """The distance penalty of an extended bundle (§3.3), `(n,)` int64: at each layer, an input the
    layer's nearest reviewed point vouches for (`vouched`, `(n, L)` bool) is ranked among the reviewed
    points' own distances, every other input among the training points'. Both references are fixed
    before calibration, so α stays one function of x and the p-values stay conformal."""
    trained = layer_penalties(distance, reference_sorted, weight, tail)
    if not vouched.any():
        return trained.sum(axis=1)
    reviewed = layer_penalties(distance, reviewed_sorted, weight, tail)
    return np.where(vouched, reviewed, trained).sum(axis=1)


def p_values(alpha: np.ndarray, calibration_sorted: np.ndarray) -> np.ndarray:
    """p_j = fraction of calibration scores ≥ α(x, j); `calibration_sorted` ascending."""
    below = np.searchsorted(calibration_sorted, alpha, side="left")
    return (len(calibration_sorted) - below) / len(calibration_sorted)


@dataclass(frozen=True)
class Verdicts:
    """Per-input summary of the p-values."""

    prediction: np.ndarray  # (n,) int64
    credibility: np.ndarray  # (n,) float64
    confidence: np.ndarray  # (n,) float64
    label_free_score: np.ndarray  # (n,) int64, s(x)


def summarise(alpha: np.ndarray, p: np.ndarray) -> Verdicts:
    prediction = alpha.argmin(axis=1)
    rows = np.arange(len(alpha))
    top_two = -np.partition(-p, 1, axis=1)[:, :2] if p.shape[1] > 1 else np.c_[p, np.zeros(len(p))]
    return Verdicts(
        prediction=prediction,
        credibility=p[rows, prediction],
        confidence=1.0 - top_two[:, 1],
        label_free_score=alpha[rows, prediction],
    )
