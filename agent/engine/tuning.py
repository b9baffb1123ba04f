"""Choosing each layer's Annoy `search_k` at fit time from a recall target.

Annoy's query cost grows linearly with `search_k` (the nodes it inspects), and its default,
n_trees · k, is set for recall near 1 — far more than DkNN needs, because a layer's vote counts
the *labels* of its neighbours: a near-miss neighbour of the same class votes the same way. So
the fit measures recall@k against exact search on two probes and keeps, per layer, the smallest
`search_k` on a doubling ladder that reaches the targets:

- held-out inputs (the calibration set), the traffic a healthy model sees;
- the same inputs with Gaussian noise of a quarter of the input range, because out-of-distribution
  queries are where approximate search loses recall first, and they are the ones this agent is
  for. Their target is lower: their neighbours are far away and mostly of no one class anyway.

A rung also has to return all k neighbours for every probe: Annoy returns fewer when `search_k`
is small, and a missing neighbour votes against every label.

Each layer's choice and the recall it measured are written into the manifest (`LayerSpec`), so
`dknn-agent info` and the benchmarks show what the bundle trades.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agent.engine.index import AnnoyBackend, ExactBackend, recall_at_k
from agent.engine.manifest import MeasuredRecall

LADDER_FACTORS = (2, 4, 8, 16, 32, 64)  # search_k = factor · k, cheapest first
PROBE_SIZE = 500
NOISE_FRACTION = 0.25  # of the input's value range


@dataclass(frozen=True)
class RecallTarget:
    """Mean recall@k each probe must reach; the largest rung is kept where none does."""

    heldout: float = 0.7
    shifted: float = 0.5


@dataclass(frozen=True)
class TunedLayer:
    search_k: int
    recall: MeasuredRecall


def noisy_probe(x: np.ndarray, value_range: tuple[float, float] | None, seed: int) -> np.ndarray:
    """`x` plus N(0, (range/4)²) per value, clipped to the range (the data's own min/max when unknown)."""
    low, high = value_range if value_range is not None else (float(x.min()), float(x.max()))
    noise = np.random.default_rng([seed, 2]).normal(0.0, NOISE_FRACTION * (high - low), size=x.shape)
    return np.clip(x + noise, low, high).astype(x.dtype)


def tune_layer(
    index_path: Path, dim: int, heldout: np.ndarray, shifted: np.ndarray, k: int, target: RecallTarget
) -> TunedLayer:
    """The cheapest rung of the ladder whose recall@k on both probes (index-space vectors) reaches `target`."""
    annoy = AnnoyBackend(index_path, dim)
    exact = ExactBackend(annoy.item_vectors())
    truth = {"heldout": exact.search(heldout, k)[1], "shifted": exact.search(shifted, k)[1]}
    probes = {"heldout": heldout, "shifted": shifted}
    measured = MeasuredRecall(heldout=0.0, shifted=0.0)
    search_k = LADDER_FACTORS[-1] * k
    for factor in LADDER_FACTORS:
        annoy.search_k = factor * k
        found = {name: annoy.search(vectors, k)[1] for name, vectors in probes.items()}
        recall = {name: recall_at_k(ids, truth[name]) for name, ids in found.items()}
        measured = MeasuredRecall(heldout=round(recall["heldout"], 4), shifted=round(recall["shifted"], 4))
        search_k = annoy.search_k
        complete = all((ids >= 0).all() for ids in found.values())  # a missing neighbour votes against every label
        if complete and recall["heldout"] >= target.heldout and recall["shifted"] >= target.shifted:
            break
    return TunedLayer(search_k=search_k, recall=measured)


def measure_recall(
    index_path: Path, dim: int, heldout: np.ndarray, shifted: np.ndarray, k: int, search_k: int
) -> MeasuredRecall:
    """Recall@k of both probes at a given `search_k`: what `dknn-agent extend` records for the search_k
    it keeps, measured on the extended index's own trees."""
    annoy = AnnoyBackend(index_path, dim, search_k=search_k)
    exact = ExactBackend(annoy.item_vectors())
    recall = {
        name: recall_at_k(annoy.search(vectors, k)[1], exact.search(vectors, k)[1])
        for name, vectors in (("heldout", heldout), ("shifted", shifted))
    }
    return MeasuredRecall(heldout=round(recall["heldout"], 4), shifted=round(recall["shifted"], 4))
