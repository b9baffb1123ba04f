"""Reading a model's inputs and labels from `.npy` / `.npz` files, memory-mapped wherever possible.

A data set is named on the command line in one of two ways:

- `train.npz`: an archive whose `y` array holds the labels (when labels are needed) and whose other
  arrays are the model's inputs, by name (`x` for a model with one input; `input_ids` and
  `attention_mask` for one with two). `np.savez` stores arrays uncompressed, and those are
  memory-mapped straight out of the archive; `np.savez_compressed` members are read whole.
- `input_ids=ids.npy,attention_mask=mask.npy,y=labels.npy`: one `.npy` file per array, each
  memory-mapped. A single `.npy` path is the only input of a model with one.

Memory-mapped, a 20 GB training set costs only the rows a batch reads: fitting streams it batch by
batch. Nothing is ever unpickled (`allow_pickle=False`; object arrays are refused).
"""

from __future__ import annotations

import struct
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from agent.errors import DataError

LABELS = "y"
_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")  # a zip member's local file header (30 bytes)


@dataclass(frozen=True)
class Dataset:
    """A model's inputs (one array per input, rows aligned), optional labels, and where they came from."""

    x: np.ndarray | dict[str, np.ndarray]
    y: np.ndarray | None = None
    source: str = ""
    source_indices: list[int] | None = field(default=None)

    @property
    def inputs(self) -> dict[str, np.ndarray]:
        """The inputs by name (`input` for a bare array)."""
        return dict(self.x) if isinstance(self.x, dict) else {"input": self.x}

    @property
    def arrays(self) -> list[np.ndarray]:
        return list(self.inputs.values())

    def arrays_for(self, names: Sequence[str]) -> list[np.ndarray]:
        """The arrays of the model inputs `names`, in that order (one array is the one input, whatever its name)."""
        if len(names) == 1 and len(self.inputs) == 1:
            return self.arrays
        missing = sorted(set(names) - set(self.inputs))
        if missing:
            raise DataError(f"{self.source or 'the data'} has no input(s) {missing}; it has {sorted(self.inputs)}")
        return [self.inputs[name] for name in names]

    def __len__(self) -> int:
        return len(self.arrays[0])


def load_dataset(text: str, *, labelled: bool) -> Dataset:
    """The data set named by `text` (see the module docstring); DataError names what is wrong."""
    if "=" in text:
        arrays = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            name, _, file = item.partition("=")
            if not name or not file:
                raise DataError(f"{item!r}: name each file as NAME=FILE.npy")
            if name in arrays:
                raise DataError(f"{name!r} is named twice in {text!r}")
            arrays[name] = _npy(Path(file))
    else:
        path = Path(text)
        arrays = _npz(path) if path.suffix == ".npz" else {"x": _npy(path)}
    labels = arrays.pop(LABELS, None)
    if labelled and labels is None:
        raise DataError(f"{text}: needs a '{LABELS}' array of labels beside the inputs, has {sorted(arrays)}")
    if not arrays:
        raise DataError(f"{text}: holds no input array")
    lengths = {name: len(array) if array.ndim else 0 for name, array in arrays.items()}
    if labels is not None:
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"{text}: '{LABELS}' must be a 1-d integer array, got {labels.dtype}{list(labels.shape)}")
        lengths[LABELS] = len(labels)
    if len(set(lengths.values())) != 1 or 0 in lengths.values():
        raise DataError(f"{text}: the arrays must have the same number of rows (at least one): {lengths}")
    x: np.ndarray | dict[str, np.ndarray] = arrays["x"] if list(arrays) == ["x"] else arrays
    return Dataset(x, None if labels is None else np.asarray(labels, dtype=np.int64), source=text)


def _npy(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise DataError(f"{path}: not a readable .npy array ({exc})") from None


def _npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an .npz archive: stored (uncompressed) members memory-mapped, others read."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        with zipfile.ZipFile(path) as archive, path.open("rb") as raw:
            return {
                info.filename.removesuffix(".npy"): _member(path, archive, raw, info)
                for info in archive.infolist()
                if info.filename.endswith(".npy")
            }
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npz archive ({exc})") from None


def _member(path: Path, archive: zipfile.ZipFile, raw: BinaryIO, info: zipfile.ZipInfo) -> np.ndarray:
    if info.compress_type != zipfile.ZIP_STORED:
        with archive.open(info) as member:
            return np.lib.format.read_array(member, allow_pickle=False)
    raw.seek(info.header_offset)
    header = _LOCAL_HEADER.unpack(raw.read(_LOCAL_HEADER.size))
    if header[0] != b"PK\x03\x04":
        raise ValueError(f"member {info.filename} has no local header")
    raw.seek(info.header_offset + _LOCAL_HEADER.size + header[9] + header[10])
    major, _ = np.lib.format.read_magic(raw)
    read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read_header(raw)
    if dtype.hasobject:
        raise ValueError(f"member {info.filename} holds Python objects")
    return np.memmap(path, dtype=dtype, mode="r", offset=raw.tell(), shape=shape, order="F" if fortran else "C")
