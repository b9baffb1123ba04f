"""The IDX reader on hand-made files and on the shared MNIST copy."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from agent.errors import DataError
from dknn_lab.datasets import default_mnist_dir, load_mnist, read_idx


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def test_read_idx_roundtrip(tmp_path: Path) -> None:
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", array)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), array)


def test_read_idx_rejects_bad_magic_and_truncation(tmp_path: Path) -> None:
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(DataError, match="bad magic"):
        read_idx(tmp_path / "bad")
    write_idx(tmp_path / "a.gz", np.zeros((4, 4)))
    raw = gzip.decompress((tmp_path / "a.gz").read_bytes())[:-3]
    (tmp_path / "short").write_bytes(raw)
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "short")


def test_missing_mnist_dir_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="missing MNIST file"):
        load_mnist(tmp_path)


def test_shared_mnist_matches_the_published_split() -> None:
    root = default_mnist_dir()
    assert root is not None, "the shared MNIST copy is expected beside the repository"
    mnist = load_mnist(root)
    assert mnist.x_train.shape == (60_000, 1, 28, 28) and mnist.x_test.shape == (10_000, 1, 28, 28)
    assert mnist.x_train.dtype == np.float32 and mnist.x_test.min() >= 0.0 and mnist.x_test.max() <= 1.0
    counts = np.bincount(mnist.y_test, minlength=10).tolist()
    assert counts == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
