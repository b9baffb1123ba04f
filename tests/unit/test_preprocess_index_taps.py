"""Preprocessing chains, the two neighbour backends and activation taps on small inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from annoy import AnnoyIndex

from agent.engine.index import AnnoyBackend, AnnoyBuilder, ExactBackend
from agent.engine.preprocess import Preprocessor, parse_spec
from agent.engine.taps import ActivationTap
from agent.errors import BundleError, ConfigError
from dknn_lab.models.tiny import build_model


@pytest.mark.parametrize("spec", ["pca", "pca:0", "pca:x", "l3", "l2:4", "pca:2+pca:3"])
def test_bad_preprocessing_specs_are_config_errors(spec: str) -> None:
    with pytest.raises(ConfigError):
        parse_spec(spec)


def test_pca_then_l2_roundtrip_through_arrays() -> None:
    rng = np.random.default_rng(0)
    data = (rng.normal(size=(500, 3)) @ rng.normal(size=(3, 20))).astype(np.float32)  # rank 3 in 20 dims
    pre = Preprocessor("pca:3+l2", input_dim=20).fit(data)
    out = pre.transform(data)
    assert out.shape == (500, 3) and pre.output_dim == 3
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    # rank-3 data: distances after PCA (before l2) equal the original distances
    pca_only = Preprocessor("pca:3", input_dim=20).fit(data)
    projected = pca_only.transform(data)
    np.testing.assert_allclose(
        np.linalg.norm(projected[0] - projected[1]), np.linalg.norm(data[0] - data[1]), rtol=1e-3
    )

    restored = Preprocessor.from_arrays("pca:3+l2", 20, pre.arrays())
    np.testing.assert_allclose(restored.transform(data), out, atol=1e-6)
    with pytest.raises(BundleError, match="shapes"):
        Preprocessor.from_arrays("pca:4", 20, pre.arrays())


def test_exact_backend_matches_numpy_brute_force() -> None:
    rng = np.random.default_rng(1)
    items, queries = rng.normal(size=(300, 5)).astype(np.float32), rng.normal(size=(17, 5)).astype(np.float32)
    distances, ids = ExactBackend(items).search(queries, k=7)
    all_distances = np.sqrt(((queries[:, None, :] - items[None, :, :]) ** 2).sum(-1))
    expected = np.argsort(all_distances, axis=1)[:, :7]
    np.testing.assert_array_equal(ids, expected)
    np.testing.assert_allclose(distances, np.take_along_axis(all_distances, expected, axis=1), rtol=1e-4, atol=1e-4)


def test_annoy_backend_recall_and_item_vectors(tmp_path) -> None:
    rng = np.random.default_rng(2)
    items = rng.normal(size=(400, 6)).astype(np.float32)
    builder = AnnoyBuilder(dim=6, seed=0)
    builder.add(items[:150])
    builder.add(items[150:])
    builder.save(tmp_path / "layer.ann", n_trees=20)
    annoy = AnnoyBackend(tmp_path / "layer.ann", dim=6, search_k=5000, threads=2)
    assert annoy.n_items == 400
    np.testing.assert_allclose(annoy.item_vectors(), items, atol=1e-6)
    queries = rng.normal(size=(30, 6)).astype(np.float32)
    (found_distances, found), (exact_distances, exact) = (
        annoy.search(queries, 10),
        ExactBackend(items).search(queries, 10),
    )
    recall = np.mean([len(np.intersect1d(a, b)) / 10 for a, b in zip(found, exact, strict=True)])
    assert recall >= 0.95
    # Both report Euclidean distances: where they found the same nearest item, the same distance.
    same = found[:, 0] == exact[:, 0]
    np.testing.assert_allclose(found_distances[same, 0], exact_distances[same, 0], rtol=1e-4, atol=1e-4)


def _small_index(tmp_path, n: int = 500, dim: int = 8) -> tuple[Path, np.ndarray]:
    items = np.random.default_rng(3).normal(size=(n, dim)).astype(np.float32)
    builder = AnnoyBuilder(dim=dim, seed=0)
    builder.add(items)
    builder.save(tmp_path / "layer.ann", n_trees=5)
    return tmp_path / "layer.ann", items


@pytest.mark.parametrize("search_k", [20, 200, -1])
def test_batched_search_answers_exactly_what_annoys_binding_answers(tmp_path, search_k: int) -> None:
    """The compiled batch query is Annoy's own search: same ids, same distances, same order."""
    path, items = _small_index(tmp_path)
    binding = AnnoyIndex(8, "euclidean")
    binding.load(str(path))
    queries = np.random.default_rng(4).normal(size=(33, 8)).astype(np.float32)
    distances, ids = AnnoyBackend(path, dim=8, search_k=search_k, threads=3).search(queries, 12)
    assert distances.dtype == np.float32 and ids.dtype == np.int64 and ids.shape == (33, 12)
    for row, query in enumerate(queries):
        expected_ids, expected_distances = binding.get_nns_by_vector(query.tolist(), 12, search_k, True)
        have = len(expected_ids)
        np.testing.assert_array_equal(ids[row, :have], expected_ids)
        np.testing.assert_allclose(distances[row, :have], expected_distances, rtol=1e-6)
        assert (ids[row, have:] == -1).all() and np.isinf(distances[row, have:]).all()


def test_batched_search_takes_any_float_layout_and_rejects_a_wrong_width(tmp_path) -> None:
    path, items = _small_index(tmp_path)
    backend = AnnoyBackend(path, dim=8, search_k=-1, threads=2)
    reference = backend.search(items[:10], 5)
    as_float64_view = np.asfortranarray(items[:10].astype(np.float64))
    for got, expected in zip(backend.search(as_float64_view, 5), reference, strict=True):
        np.testing.assert_array_equal(got, expected)
    assert backend.search(items[:0], 5)[1].shape == (0, 5)
    with pytest.raises(ValueError, match=r"shape \(n, 8\)"):
        backend.search(items[:10, :7], 5)


def test_an_unreadable_index_file_is_a_bundle_error(tmp_path) -> None:
    with pytest.raises(BundleError, match="cannot open the Annoy index"):
        AnnoyBackend(tmp_path / "absent.ann", dim=8)
    (tmp_path / "short.ann").write_bytes(b"\0" * 10)
    with pytest.raises(BundleError, match="cannot open the Annoy index"):
        AnnoyBackend(tmp_path / "short.ann", dim=8)


def test_tap_captures_named_layers_flattened() -> None:
    model = build_model(in_features=8, hidden=16, num_classes=3)
    tap = ActivationTap(model, ["relu1", "logits"])
    acts = tap(np.zeros((5, 8), dtype=np.float32))
    assert acts.layers["relu1"].shape == (5, 16) and acts.layers["logits"].shape == (5, 3)
    np.testing.assert_allclose(acts.layers["logits"], acts.outputs)
    tap.close()
    assert not any(module._forward_hooks for module in model.modules())


def test_tap_rejects_unknown_layer_naming_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="relu1"):
        ActivationTap(build_model(), ["conv9"])


def test_tap_runs_without_gradients() -> None:
    tap = ActivationTap(build_model(), ["relu2"])
    with torch.enable_grad():
        acts = tap(np.ones((2, 8), dtype=np.float32))
    assert acts.layers["relu2"].dtype == np.float32


def test_pca_after_l2_is_fitted_on_normalised_vectors() -> None:
    rng = np.random.default_rng(3)
    data = (rng.normal(size=(400, 10)) * rng.uniform(1, 50, size=(400, 1))).astype(np.float32)
    out = Preprocessor("l2+pca:4", input_dim=10).fit(data).transform(data)
    # PCA centres what it was fitted on, so its output over the fitting data has mean ~0
    np.testing.assert_allclose(out.mean(axis=0), 0.0, atol=1e-4)


def test_random_shift_translates_and_keeps_shape() -> None:
    from dknn_lab.training import random_shift

    images = torch.zeros(64, 1, 7, 7)
    images[:, 0, 3, 3] = 1.0
    shifted = random_shift(images, 2)
    assert shifted.shape == images.shape and torch.equal(shifted.sum(dim=(1, 2, 3)), torch.ones(64))
    positions = {tuple(torch.nonzero(image[0])[0].tolist()) for image in shifted}
    assert len(positions) > 5 and all(1 <= r <= 5 and 1 <= c <= 5 for r, c in positions)
    assert torch.equal(random_shift(images, 0), images)


def test_random_blur_matches_a_gaussian_per_image_and_keeps_each_peak() -> None:
    from scipy.ndimage import gaussian_filter

    from dknn_lab.training import random_blur

    torch.manual_seed(0)
    images = torch.zeros(32, 1, 15, 15)
    images[:, 0, 7, 7] = torch.linspace(0.5, 1.0, 32)  # one bright pixel: its blur is the kernel itself
    blurred = random_blur(images, 1.5)
    assert blurred.shape == images.shape
    torch.testing.assert_close(blurred.amax(dim=(1, 2, 3)), images.amax(dim=(1, 2, 3)))
    widths = []
    for image, original in zip(blurred, images, strict=True):
        profile = image[0, 7] / original.max()
        # the σ that scipy's Gaussian needs to give the same centre-to-neighbour ratio
        sigma = float(np.sqrt(-0.5 / np.log(max(float(profile[8]), 1e-30))))
        reference = gaussian_filter(original[0].numpy(), sigma, mode="constant", truncate=4.5)
        np.testing.assert_allclose(image[0].numpy(), reference * (original.max().item() / reference.max()), atol=2e-3)
        widths.append(sigma)
    assert 0.0 <= min(widths) < 0.6 and 1.0 < max(widths) <= 1.5  # σ drawn over [0, 1.5]
    nearly_sharp = random_blur(images, 1e-4)
    torch.testing.assert_close(nearly_sharp, images)
