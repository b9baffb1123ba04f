"""Nearest-neighbour backends behind one small interface.

- `annoy`: the production backend. One file per layer, memory-mapped on load so replicas on one
  node share the page cache. A batch is cut into one contiguous slice per thread and each thread
  loops over its slice: Annoy releases the GIL inside every query, so the threads search in
  parallel, and a slice costs one task instead of one future per vector.
- `exact`: brute force with a torch matmul, chunked. The reference for tests and quality checks;
  it reads the item vectors back out of the same Annoy file, so both backends see one bundle.

Both return, nearest first, `(n, k)` Euclidean distances (float32) and neighbour ids (int64).
Annoy may return fewer than k ids when `search_k` is small; missing slots are id -1 (which counts
as disagreeing with every label) and distance +inf.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch
from annoy import AnnoyIndex

METRIC: Literal["euclidean"] = "euclidean"
BACKENDS = ("annoy", "exact")
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
    """An Annoy file opened read-only with mmap."""

    def __init__(self, path: Path, dim: int, search_k: int = -1, threads: int | None = None) -> None:
        self.dim = dim
        self.search_k = search_k
        self._index = AnnoyIndex(dim, METRIC)
        self._index.load(str(path), prefault=False)
        self.n_items = self._index.get_n_items()
        self._threads = threads or os.cpu_count() or 1
        self._pool = ThreadPoolExecutor(max_workers=self._threads)

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        rows = np.asarray(vectors, dtype=np.float32).tolist()  # Annoy converts lists fastest
        found: list[tuple[list[int], list[float]]] = [([], [])] * len(rows)

        def search_slice(start: int, stop: int) -> None:
            query, search_k = self._index.get_nns_by_vector, self.search_k
            for i in range(start, stop):
                found[i] = query(rows[i], k, search_k, True)

        bounds = np.linspace(0, len(rows), self._threads + 1).astype(int).tolist()
        slices = [(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]
        if len(slices) == 1:
            search_slice(*slices[0])
        else:
            for task in [self._pool.submit(search_slice, a, b) for a, b in slices]:
                task.result()
        if all(len(ids) == k for ids, _ in found):  # the usual case: one conversion for the batch
            return (
                np.array([d for _, d in found], dtype=np.float32).reshape(len(rows), k),
                np.array([i for i, _ in found], dtype=np.int64).reshape(len(rows), k),
            )
        ids = np.full((len(rows), k), MISSING, dtype=np.int64)
        distances = np.full((len(rows), k), np.inf, dtype=np.float32)
        for row, (found_ids, found_distances) in enumerate(found):
            ids[row, : len(found_ids)] = found_ids
            distances[row, : len(found_ids)] = found_distances
        return distances, ids

    def item_vectors(self) -> np.ndarray:
        """All stored vectors `(n_items, dim)`; used to build the exact backend from one file."""
        return np.array([self._index.get_item_vector(i) for i in range(self.n_items)], dtype=np.float32).reshape(
            self.n_items, self.dim
        )


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
