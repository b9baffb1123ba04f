"""Exemplars: the training rows behind a neighbour id, kept in the bundle for a reviewer.

A quarantine record names, per layer, the training rows that judged an input (`neighbors.ids`).
An id means nothing to a person; the row does. So a bundle may keep the rows themselves, one
`.npy` per model input under `exemplars/`, row i being Annoy item i (fit adds the training rows to
every index in order, so item i is training row i, whatever subset or augmentation the training
set was). Two kinds, chosen at fit time (`--exemplars`):

- `inputs`: each input exactly as stored (dtype and shape of the model input);
- `thumbnails`: image inputs (float `(C, H, W)`, C = 1 or 3) as uint8, scaled from the training
  data's own range and area-downsampled to at most 32×32 — MNIST stays 28×28, 784 bytes a row.

Off by default for `fit`: a user's training set may be large or private. Bounded to
`MAX_EXEMPLAR_BYTES` in all, checked before anything is fitted. The files are plain `.npy` (never
pickled), hashed in the manifest like every bundle file, and memory-mapped when a bundle is
opened, so an agent that never shows them pays one hash at start and no memory.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional

from agent.engine.manifest import (
    FLOAT_DTYPES,
    MAX_EXEMPLAR_BYTES,
    THUMBNAIL_CHANNELS,
    THUMBNAIL_SIDE,
    ExemplarFile,
    ExemplarKind,
    ExemplarSpec,
    InputSpec,
    file_stem,
)
from agent.errors import BundleError, ConfigError, InputError

EXEMPLARS_DIR = "exemplars"
MAX_ROWS_PER_CALL = 65_536  # ids one `rows` call takes: every neighbour of a record, many times over
_CHUNK = 4096  # rows read at a time from a (possibly memory-mapped) training set
_HEADERS = {1: np.lib.format.read_array_header_1_0, 2: np.lib.format.read_array_header_2_0}


@dataclass(frozen=True)
class Exemplars:
    """A verified bundle's exemplars, memory-mapped read-only: `rows(ids)` for the ids a record names."""

    spec: ExemplarSpec
    arrays: Mapping[str, np.ndarray]  # input name -> (train.size, *shape)

    @property
    def kind(self) -> str:
        return self.spec.kind

    def rows(self, ids: Sequence[int] | np.ndarray) -> dict[str, np.ndarray]:
        """Each input's rows for these training row ids, in their order. The ids usually come from a
        record read off a topic, so they are checked: -1 (a missing neighbour) or anything outside
        the training set is an InputError, not numpy's wrap-around."""
        wanted = np.asarray(ids)
        if wanted.ndim != 1 or not (wanted.size == 0 or np.issubdtype(wanted.dtype, np.integer)):
            raise InputError(f"exemplar ids must be a 1-d sequence of integers, got {wanted.dtype}{list(wanted.shape)}")
        if len(wanted) > MAX_ROWS_PER_CALL:
            raise InputError(f"{len(wanted)} exemplar ids in one call, at most {MAX_ROWS_PER_CALL}")
        size = len(next(iter(self.arrays.values())))
        outside = (wanted < 0) | (wanted >= size)
        if outside.any():
            raise InputError(f"training row id {int(wanted[outside][0])} is outside 0..{size - 1}")
        chosen = wanted.astype(np.int64)
        return {name: np.asarray(array[chosen]) for name, array in self.arrays.items()}


# -- at fit time -----------------------------------------------------------------------------------


def plan_exemplars(
    kind: ExemplarKind, inputs: Sequence[InputSpec], arrays: Sequence[np.ndarray]
) -> ExemplarSpec | None:
    """What `kind` stores for these training arrays, checked before anything is fitted: thumbnails
    only of image inputs, and no more than `MAX_EXEMPLAR_BYTES` in all (ConfigError otherwise)."""
    if kind == "none":
        return None
    files = []
    for spec, array in zip(inputs, arrays, strict=True):
        where = f"{EXEMPLARS_DIR}/{file_stem(spec.name)}.npy"
        if kind == "inputs":
            files.append(ExemplarFile(input=spec.name, file=where, shape=spec.shape, dtype=spec.dtype))
            continue
        if spec.dtype not in FLOAT_DTYPES or len(spec.shape) != 3 or spec.shape[0] not in THUMBNAIL_CHANNELS:
            raise ConfigError(
                f"--exemplars thumbnails needs image inputs, float (C, H, W) with C 1 or 3; input {spec.name!r} is "
                f"{spec.dtype} {list(spec.shape)}: use --exemplars inputs (its rows as stored) or none"
            )
        shape = (spec.shape[0], *thumbnail_size(spec.shape[1], spec.shape[2]))
        low, high = data_range(array)
        files.append(ExemplarFile(input=spec.name, file=where, shape=shape, dtype="uint8", value_range=(low, high)))
    planned = ExemplarSpec(kind=kind, files=tuple(files))
    total = len(arrays[0]) * sum(one.row_bytes for one in planned.files)
    if total > MAX_EXEMPLAR_BYTES:
        smaller = "thumbnails (image inputs) or none" if kind == "inputs" else "none"
        raise ConfigError(
            f"--exemplars {kind} would store {total / 2**30:.1f} GiB for {len(arrays[0])} training rows, more than "
            f"the {MAX_EXEMPLAR_BYTES / 2**30:.0f} GiB a bundle may hold: use --exemplars {smaller}"
        )
    return planned


def thumbnail_size(height: int, width: int) -> tuple[int, int]:
    """At most `THUMBNAIL_SIDE` on the longer side, the aspect ratio kept; smaller images stay as they are."""
    longest = max(height, width)
    if longest <= THUMBNAIL_SIDE:
        return height, width
    scale = THUMBNAIL_SIDE / longest
    return max(1, min(THUMBNAIL_SIDE, round(height * scale))), max(1, min(THUMBNAIL_SIDE, round(width * scale)))


def data_range(array: np.ndarray) -> tuple[float, float]:
    """The smallest and largest value, read in chunks (the array may be a memory-mapped file)."""
    lows, highs = zip(
        *((float(chunk.min()), float(chunk.max())) for chunk in _chunks(array)),
        strict=True,
    )
    return min(lows), max(highs)


def thumbnails(batch: np.ndarray, value_range: tuple[float, float], shape: tuple[int, ...]) -> np.ndarray:
    """`(n, C, H, W)` floats as uint8 `(n, *shape)`: area-averaged down, then `value_range` onto 0..255."""
    pixels = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
    if tuple(pixels.shape[1:]) != tuple(shape):
        pixels = functional.interpolate(pixels, size=tuple(shape[1:]), mode="area")
    low, high = value_range
    scale = 255.0 / (high - low) if high > low else 0.0
    return np.clip(np.rint((pixels.numpy() - low) * scale), 0, 255).astype(np.uint8)


def write_exemplars(root: Path, spec: ExemplarSpec, arrays: Sequence[np.ndarray]) -> None:
    """Each input's file, streamed in chunks: row i of the file is row i of the training arrays."""
    (root / EXEMPLARS_DIR).mkdir(exist_ok=True)
    for one, array in zip(spec.files, arrays, strict=True):
        out = np.lib.format.open_memmap(root / one.file, mode="w+", dtype=one.dtype, shape=(len(array), *one.shape))
        start = 0
        for chunk in _chunks(array):
            out[start : start + len(chunk)] = _rendered(chunk, spec.kind, one)
            start += len(chunk)
        out.flush()
        del out


def _rendered(chunk: np.ndarray, kind: str, one: ExemplarFile) -> np.ndarray:
    if kind == "inputs":
        return chunk
    assert one.value_range is not None  # plan_exemplars gives every thumbnail file its range
    return thumbnails(chunk, one.value_range, one.shape)


def _chunks(array: np.ndarray) -> Iterator[np.ndarray]:
    for start in range(0, len(array), _CHUNK):
        yield np.asarray(array[start : start + _CHUNK])


# -- when a bundle is opened -----------------------------------------------------------------------


def map_exemplar_file(fd: int, path: Path, spec: ExemplarFile, rows: int) -> np.ndarray:
    """The verified file behind `fd` memory-mapped read-only, after its header is checked against the
    manifest: dtype, C order, `(rows, *shape)` and a size that holds exactly those. The mapping is of
    the descriptor that was hashed, so a file swapped after verification is never read."""
    expected_shape = (rows, *spec.shape)
    with open(fd, "rb", closefd=False) as handle:
        try:
            version = np.lib.format.read_magic(handle)
            read_header = _HEADERS.get(version[0])
            if read_header is None:
                raise ValueError(f"npy format version {version} is not read here")
            shape, fortran, dtype = read_header(handle)
        except (ValueError, OSError, EOFError, SyntaxError) as exc:
            raise BundleError(f"{path}: not a readable .npy header ({exc})") from None
        if fortran or dtype != np.dtype(spec.dtype) or tuple(shape) != expected_shape:
            raise BundleError(
                f"{path}: holds {dtype}{list(shape)}{' (Fortran order)' if fortran else ''}, the manifest says "
                f"{spec.dtype}{list(expected_shape)}"
            )
        offset = handle.tell()
        size = handle.seek(0, 2)
        if size != offset + rows * spec.row_bytes:
            raise BundleError(f"{path}: {size} bytes do not hold exactly {spec.dtype}{list(expected_shape)}")
        return np.memmap(handle, dtype=dtype, mode="r", offset=offset, shape=expected_shape)
