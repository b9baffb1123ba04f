"""The scale benchmark's larger reference: training images plus seeded, label-keeping variants."""

from __future__ import annotations

import numpy as np

from dknn_lab.augment import with_variants


def _digits() -> tuple[np.ndarray, np.ndarray]:
    """Six images, each one soft blob at its own place, far enough apart that a small warp of one
    stays closest to it."""
    rows, cols = np.mgrid[0:28, 0:28]
    centres = [(7, 7), (7, 20), (14, 14), (20, 7), (20, 20), (14, 4)]
    x = np.stack([np.exp(-((rows - r) ** 2 + (cols - c) ** 2) / 8.0) for r, c in centres])[:, None]
    return x.astype(np.float32), np.arange(6)


def test_variants_follow_the_originals_keep_labels_and_range() -> None:
    x, y = _digits()
    big_x, big_y = with_variants(x, y, 40, seed=0, progress=False)
    assert big_x.shape == (40, 1, 28, 28) and big_x.dtype == np.float32 and big_y.shape == (40,)
    np.testing.assert_array_equal(big_x[:6], x)
    np.testing.assert_array_equal(big_y[:6], y)
    assert big_x.min() >= 0.0 and big_x.max() <= 1.0
    # each variant is a warp of the image its label came from: closest to it among the originals
    for variant, label in zip(big_x[6:], big_y[6:], strict=True):
        distances = ((x - variant) ** 2).reshape(6, -1).sum(axis=1)
        assert distances.argmin() == label
    assert not any(np.array_equal(variant, x[label]) for variant, label in zip(big_x[6:], big_y[6:], strict=True))


def test_variants_are_seeded_and_a_small_size_changes_nothing() -> None:
    x, y = _digits()
    first, second = with_variants(x, y, 20, seed=3, progress=False), with_variants(x, y, 20, seed=3, progress=False)
    np.testing.assert_array_equal(first[0], second[0])
    same_x, same_y = with_variants(x, y, 4, seed=0, progress=False)
    assert same_x is x and same_y is y
