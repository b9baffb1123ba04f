"""Nearest-neighbour backends behind one small interface.

- `annoy`: the production backend. One file per layer, written by Annoy's Python binding and
  searched by Annoy's C++ index through `agent.engine._annoy_batch`: a whole batch crosses into
  C++ once, the GIL is released for all of it, and the threads split it into contiguous slices.
  The file is memory-mapped, so replicas on one node share the page cache.
- `exact`: brute force with a torch matmul, chunked. The reference for tests and quality checks;
  it reads the item vectors back out of the same Annoy file, so both backends see one bundle.

Both return, nearest first, `(n, k)` Euclidean distances (float32) and neighbour ids (int64).
Annoy may return fewer than k ids when `search_k` is small; missing slots are id -1 (which counts
as disagreeing with every label) and distance +inf.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, Protocol, get_args

import numpy as np
import torch
from annoy import AnnoyIndex

from agent.engine._annoy_batch import BatchIndex
from agent.errors import BundleError

METRIC: Literal["euclidean"] = "euclidean"
IndexBackend = Literal["annoy", "exact"]
BACKENDS: tuple[IndexBackend, ...] = get_args(IndexBackend)
MISSING = -1
EXACT_CHUNK_ELEMENTS = 64 * 1024 * 1024  # float32 values in one chunk's distance matrix


class NeighborIndex(Protocol):
    dim: int
    n_items: int

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """`(distances, ids)` of the k nearest items for each row of `vectors`, nearest first;
        ids pad with -1 and distances with +inf."""
        ...


class AnnoyBuilder:
    """Collects vectors batch by batch (so activations never sit in memory all at once)."""

    def __init__(self, dim: int, seed: int) -> None:
        self.dim = dim
        self.n_items = 0
        self._index = AnnoyIndex(dim, METRIC)
        self._index.set_seed(seed)

    def add(self, batch: np.ndarray) -> None:
        for row in batch:
            self._index.add_item(self.n_items, row)
            self.n_items += 1

    def save(self, path: Path, n_trees: int) -> None:
        """Builds `n_trees` trees on every core and writes the index file."""
        self._index.build(n_trees, n_jobs=-1)
        self._index.save(str(path))
        self._index.unload()


class AnnoyBackend:
    """An Annoy file opened read-only with mmap; `threads` index threads share each batch."""

    def __init__(self, path: Path, dim: int, search_k: int = -1, threads: int | None = None) -> None:
        self.dim = dim
        self.search_k = search_k
        try:
            self._index = BatchIndex(str(path), dim)
        except RuntimeError as exc:
            raise BundleError(f"cannot open the Annoy index {exc}") from None
        self.n_items = self._index.n_items
        self._threads = threads or os.cpu_count() or 1

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self._index.search(vectors, k, self.search_k, self._threads)

    def item_vectors(self) -> np.ndarray:
        """All stored vectors `(n_items, dim)`; used to build the exact backend from one file."""
        return self._index.item_vectors()


class ExactBackend:
    """Brute-force Euclidean k-NN; queries run in chunks so one chunk's distance matrix stays
    near `chunk_elements` float32 values (256 MB by default)."""

    def __init__(self, items: np.ndarray, chunk_elements: int = EXACT_CHUNK_ELEMENTS) -> None:
        self._items = torch.as_tensor(np.ascontiguousarray(items, dtype=np.float32))
        self._sq_norms = (self._items * self._items).sum(dim=1)
        self.n_items, self.dim = self._items.shape
        self.chunk_elements = chunk_elements

    @torch.no_grad()
    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k_eff = min(k, self.n_items)
        chunk = max(1, self.chunk_elements // max(self.n_items, 1))
        ids = np.full((len(vectors), k), MISSING, dtype=np.int64)
        distances = np.full((len(vectors), k), np.inf, dtype=np.float32)
        for start in range(0, len(vectors), chunk):
            q = torch.as_tensor(np.asarray(vectors[start : start + chunk], dtype=np.float32))
            dist = (q * q).sum(dim=1, keepdim=True) + self._sq_norms[None, :] - 2.0 * (q @ self._items.T)
            found = torch.topk(dist, k_eff, dim=1, largest=False, sorted=True)
            ids[start : start + len(q), :k_eff] = found.indices.numpy()
            distances[start : start + len(q), :k_eff] = found.values.clamp_min(0.0).sqrt().numpy()
        return distances, ids


def recall_at_k(approximate_ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """The fraction of the exact k-NN ids (`(n, k)`, -1 = missing) the approximate search also returned."""
    n, k = exact_ids.shape
    hits = sum(len(np.intersect1d(approximate_ids[i], exact_ids[i])) for i in range(n))
    return hits / (n * k)
