"""Fit-time choice of each layer's Annoy search_k (agent.engine.tuning) and how the bundle uses it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.engine.dknn import DkNN
from agent.engine.index import AnnoyBackend, AnnoyBuilder, ExactBackend, recall_at_k
from agent.engine.tuning import LADDER_FACTORS, RecallTarget, noisy_probe, tune_layer
from tests.conftest import TinyProblem, fit_tiny


@pytest.fixture(scope="module")
def clustered_index(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(0)
    items = (rng.normal(size=(20, 16)) * 5)[rng.integers(0, 20, 3000)] + rng.normal(size=(3000, 16))
    builder = AnnoyBuilder(dim=16, seed=0)
    builder.add(items.astype(np.float32))
    path = tmp_path_factory.mktemp("tuning") / "layer.ann"
    builder.save(path, n_trees=4)
    return path, items.astype(np.float32)


def test_the_cheapest_rung_that_reaches_the_target_is_chosen(clustered_index: tuple[Path, np.ndarray]) -> None:
    path, items = clustered_index
    rng = np.random.default_rng(1)
    heldout = items[:200] + rng.normal(scale=0.3, size=(200, 16)).astype(np.float32)
    shifted = heldout + rng.normal(scale=3.0, size=heldout.shape).astype(np.float32)
    k = 10
    loose = tune_layer(path, 16, heldout, shifted, k, RecallTarget(heldout=0.5, shifted=0.3))
    strict = tune_layer(path, 16, heldout, shifted, k, RecallTarget(heldout=0.95, shifted=0.9))
    assert loose.search_k < strict.search_k
    assert strict.recall.heldout >= 0.95 and strict.recall.shifted >= 0.9
    # the recall reported is the recall at the chosen search_k, measured again here
    annoy = AnnoyBackend(path, 16, search_k=strict.search_k)
    truth = ExactBackend(items).search(heldout, k)[1]
    assert recall_at_k(annoy.search(heldout, k)[1], truth) == pytest.approx(strict.recall.heldout, abs=1e-4)


def test_an_unreachable_target_keeps_the_largest_rung(clustered_index: tuple[Path, np.ndarray]) -> None:
    path, items = clustered_index
    tuned = tune_layer(path, 16, items[:50], items[50:100], 10, RecallTarget(heldout=1.01, shifted=0.0))
    assert tuned.search_k == LADDER_FACTORS[-1] * 10


def test_noisy_probe_stays_in_the_value_range() -> None:
    x = np.random.default_rng(0).uniform(0, 1, size=(50, 1, 4, 4)).astype(np.float32)
    noisy = noisy_probe(x, (0.0, 1.0), seed=0)
    assert noisy.dtype == np.float32 and noisy.shape == x.shape
    assert noisy.min() >= 0.0 and noisy.max() <= 1.0 and not np.allclose(noisy, x)


def test_the_fit_writes_each_layers_search_k_and_the_scorer_uses_it(tiny_bundle: Path) -> None:
    scorer = DkNN.from_bundle(tiny_bundle)
    for layer in scorer.manifest.layers:
        assert layer.search_k is not None and layer.recall is not None
        assert layer.search_k in {factor * scorer.k for factor in LADDER_FACTORS}
        assert scorer.indexes[layer.name].search_k == layer.search_k  # type: ignore[attr-defined]
    override = DkNN.from_bundle(tiny_bundle, search_k=777)
    assert {index.search_k for index in override.indexes.values()} == {777}  # type: ignore[attr-defined]


def test_a_fixed_search_k_skips_tuning(tiny_problem: TinyProblem, tmp_path: Path) -> None:
    manifest = DkNN.from_bundle(fit_tiny(tiny_problem, tmp_path / "fixed", search_k=123)).manifest
    assert manifest.index.search_k == 123
    assert all(layer.search_k is None and layer.recall is None for layer in manifest.layers)
    assert {manifest.search_k(name) for name in manifest.layer_names} == {123}


def test_threads_do_not_change_what_annoy_finds(clustered_index: tuple[Path, np.ndarray]) -> None:
    path, items = clustered_index
    queries = items[::37] + 0.1
    one, two = AnnoyBackend(path, 16, search_k=80, threads=1), AnnoyBackend(path, 16, search_k=80, threads=2)
    for got, expected in zip(two.search(queries, 10), one.search(queries, 10), strict=True):
        np.testing.assert_array_equal(got, expected)


def test_missing_neighbours_pad_with_minus_one_and_infinity(clustered_index: tuple[Path, np.ndarray]) -> None:
    path, items = clustered_index
    distances, ids = AnnoyBackend(path, 16, search_k=1, threads=2).search(items[:8], 500)
    assert (ids == -1).any() and np.isinf(distances[ids == -1]).all() and (ids[:, 0] >= 0).all()
