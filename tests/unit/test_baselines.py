"""OOD baselines (max softmax, Mahalanobis, deep k-NN) against direct numpy computations."""

from __future__ import annotations

import numpy as np
import pytest

from agent.errors import ConfigError, InputError
from agent.evaluation.metrics import softmax_max
from dknn_lab.baselines import DeepKnnScorer, MahalanobisScorer


def test_softmax_max_matches_direct_computation() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=3.0, size=(50, 10)).astype(np.float32)
    z = logits.astype(np.float64)
    direct = (np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)).max(axis=1)
    np.testing.assert_allclose(softmax_max(logits), direct, rtol=1e-12)


def test_softmax_max_is_stable_for_huge_logits() -> None:
    logits = np.array([[1e30, 0.0, -1e30], [1e4, 1e4, 1e4], [-1e4, -1e4 + np.log(3.0), -1e4]])
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # underflow to 0 is fine
        out = softmax_max(logits)
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out, [1.0, 1.0 / 3.0, 0.6], rtol=1e-9)


def _two_gaussians(rng: np.random.Generator, n: int = 2000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    cov = np.array([[2.0, 0.8, 0.0], [0.8, 1.0, 0.3], [0.0, 0.3, 0.5]])
    means = np.array([[0.0, 0.0, 0.0], [4.0, -2.0, 1.0]])
    labels = rng.integers(0, 2, size=n)
    x = means[labels] + rng.multivariate_normal(np.zeros(3), cov, size=n)
    return x.astype(np.float32), labels, cov


def test_mahalanobis_score_equals_direct_formula_with_fitted_params() -> None:
    rng = np.random.default_rng(1)
    x, y, true_cov = _two_gaussians(rng)
    scorer = MahalanobisScorer(chunk_size=7).fit(x, y, num_classes=2)  # small chunk: cover the loop
    # the tied estimate recovers the shared covariance it was drawn from
    np.testing.assert_allclose(scorer.covariance_, true_cov, atol=0.15)
    np.testing.assert_allclose(scorer.precision_ @ scorer.covariance_, np.eye(3), atol=1e-9)

    queries = rng.normal(scale=3.0, size=(40, 3)).astype(np.float32)
    prec = np.linalg.inv(scorer.covariance_)
    diffs = queries.astype(np.float64)[:, None, :] - scorer.means_[None, :, :]
    direct = -np.einsum("ncd,de,nce->nc", diffs, prec, diffs).min(axis=1)
    np.testing.assert_allclose(scorer.score(queries), direct, rtol=1e-8, atol=1e-8)


def test_mahalanobis_far_points_score_lower() -> None:
    rng = np.random.default_rng(2)
    x, y, _ = _two_gaussians(rng)
    scorer = MahalanobisScorer().fit(x, y, num_classes=2)
    inside = scorer.score(x[:200])
    far = scorer.score(x[:200] + np.float32(25.0))
    assert far.max() < inside.min()
    assert np.all(inside <= 0.0)


def test_mahalanobis_handles_rank_deficient_features_and_unseen_classes() -> None:
    rng = np.random.default_rng(3)
    base = rng.normal(size=(300, 2))
    x = np.concatenate([base, base.sum(axis=1, keepdims=True), np.zeros((300, 1))], axis=1)
    y = (base[:, 0] > 0).astype(np.int64) * 2  # class 1 never appears
    scorer = MahalanobisScorer().fit(x.astype(np.float32), y, num_classes=3)
    assert list(scorer.classes_) == [0, 2]
    assert np.all(np.isfinite(scorer.score(x)))
    with pytest.raises(InputError):
        scorer.score(np.zeros((2, 3), dtype=np.float32))


def _brute_kth(train: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    t = train / np.linalg.norm(train, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    d = np.linalg.norm(q[:, None, :] - t[None, :, :], axis=2)
    return np.sort(d, axis=1)[:, k - 1]


def test_deep_knn_matches_brute_force_on_normalised_features() -> None:
    rng = np.random.default_rng(4)
    train = rng.normal(size=(300, 16)).astype(np.float64)
    queries = rng.normal(size=(37, 16))
    k = 5
    scorer = DeepKnnScorer(k=k, chunk_elements=300 * 8).fit(train.astype(np.float32))  # 8-row chunks
    expected = _brute_kth(train, queries, k)
    np.testing.assert_allclose(scorer.kth_distance(queries.astype(np.float32)), expected, atol=1e-5)
    np.testing.assert_allclose(scorer.score(queries.astype(np.float32)), -expected, atol=1e-5)


def test_deep_knn_is_invariant_to_rescaling_inputs() -> None:
    rng = np.random.default_rng(5)
    train = rng.normal(size=(200, 8)).astype(np.float32)
    queries = rng.normal(size=(20, 8)).astype(np.float32)
    scales = rng.uniform(0.01, 100.0, size=(20, 1)).astype(np.float32)
    scorer = DeepKnnScorer(k=3).fit(train)
    np.testing.assert_allclose(scorer.score(queries * scales), scorer.score(queries), atol=1e-5)
    # rescaling the training set does not change anything either
    rescaled = DeepKnnScorer(k=3).fit(train * rng.uniform(0.1, 10.0, size=(200, 1)).astype(np.float32))
    np.testing.assert_allclose(rescaled.score(queries), scorer.score(queries), atol=1e-5)


def test_deep_knn_far_direction_scores_lower() -> None:
    rng = np.random.default_rng(6)
    # in-distribution: a tight cone around e_0; out: a cone around e_1
    train = np.zeros((500, 8), dtype=np.float32)
    train[:, 0] = 1.0
    train += rng.normal(scale=0.1, size=train.shape).astype(np.float32)
    inside = train[:50] + rng.normal(scale=0.05, size=(50, 8)).astype(np.float32)
    outside = np.roll(inside, 1, axis=1)
    scorer = DeepKnnScorer(k=10).fit(train)
    assert scorer.score(outside).max() < scorer.score(inside).min()


def test_deep_knn_rejects_bad_settings() -> None:
    with pytest.raises(ConfigError):
        DeepKnnScorer(k=0)
    with pytest.raises(ConfigError):
        DeepKnnScorer(k=50).fit(np.ones((10, 4), dtype=np.float32))
    with pytest.raises(ConfigError):
        DeepKnnScorer().kth_distance(np.ones((1, 4), dtype=np.float32))
