"""MNIST from the IDX files (gzip) that ship beside the repo; nothing is downloaded at run time."""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agent.errors import ConfigError, DataError

_IDX_DTYPES: dict[int, str | type[np.generic]] = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}
MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}


def default_mnist_dir() -> Path | None:
    """`$DKNN_MNIST_DIR`, else the first `shared/data/mnist` found beside the checkout or the working
    directory, or beside any folder above them: the checkout may live at any depth."""
    if env := os.environ.get("DKNN_MNIST_DIR"):
        return Path(env)
    checkout = Path(__file__).resolve().parents[2]
    for start in (checkout, Path.cwd().resolve()):
        for folder in (start, *start.parents):
            candidate = folder / "shared" / "data" / "mnist"
            if (candidate / MNIST_FILES["test_labels"]).is_file():
                return candidate
    return None


def read_idx(path: Path) -> np.ndarray:
    """Parses one (optionally gzipped) IDX file into a numpy array of its declared type and shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read IDX file ({exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number)")
    ndim = raw[3]
    header_end = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    if len(raw) - header_end != int(np.prod(shape)) * dtype.itemsize:
        raise DataError(f"{path}: truncated or oversized payload for shape {shape}")
    return np.frombuffer(raw, dtype=dtype, offset=header_end).reshape(shape)


@dataclass(frozen=True)
class Mnist:
    """Images as float32 `(N, 1, 28, 28)` in [0, 1] and labels as int64."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_mnist(data_dir: Path | str | None = None) -> Mnist:
    root = Path(data_dir) if data_dir else default_mnist_dir()
    if root is None:
        raise ConfigError("no MNIST directory found: pass --data DIR or set DKNN_MNIST_DIR")
    missing = [name for name in MNIST_FILES.values() if not (root / name).is_file()]
    if missing:
        raise DataError(f"{root}: missing MNIST file(s) {', '.join(missing)}")
    arrays = {key: read_idx(root / name) for key, name in MNIST_FILES.items()}

    def images(raw: np.ndarray) -> np.ndarray:
        return (raw.astype(np.float32) / 255.0)[:, None, :, :]

    return Mnist(
        x_train=images(arrays["train_images"]),
        y_train=arrays["train_labels"].astype(np.int64),
        x_test=images(arrays["test_images"]),
        y_test=arrays["test_labels"].astype(np.int64),
    )
