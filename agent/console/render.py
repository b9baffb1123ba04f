"""Inputs as a reviewer reads them: an image, a chart, tokens (docs/design.md §5.5).

What an input is comes from its bundle's input spec, not from the event: image-shaped arrays
(`(H, W)`, `(1|3, H, W)`, `(H, W, 1|3)`) become a PNG in a data URI, integer sequences become tokens
(through the bundle's vocabulary where it has one, else the ids), anything else a compact chart.

Nothing here produces markup: an image is base64 of bytes encoded here, a chart is numbers the
template places into SVG attributes, a token is a string the template escapes like any other. So
an event cannot smuggle markup onto the page through its input, whatever it holds.

Why a PNG encoder of its own (`png`): the console needs 8-bit grey and RGB only, which are twenty
lines over zlib; Pillow would be a dependency of the product image for that alone.
"""

from __future__ import annotations

import base64
import struct
import zlib
from dataclasses import dataclass
from typing import Final

import numpy as np

MAX_IMAGE_SIDE: Final = 512  # larger images are shown at this size (every n-th pixel)
MAX_CHART_VALUES: Final = 2048
MAX_BARS: Final = 64  # up to this many values a chart draws bars, beyond it a line
MAX_TOKENS: Final = 512
CHART_WIDTH: Final = 600
CHART_HEIGHT: Final = 120


@dataclass(frozen=True)
class Image:
    data_uri: str  # data:image/png;base64,...
    width: int  # as displayed, in CSS pixels
    height: int


@dataclass(frozen=True)
class Chart:
    """An SVG chart of numbers only: bars (`bars`: x, y, width, height each) or a polyline (`points`)."""

    width: int
    height: int
    bars: tuple[tuple[float, float, float, float], ...]
    points: str  # "x,y x,y ...", built from floats; empty when drawn as bars
    low: float
    high: float
    count: int  # values in the input
    shown: int  # values drawn


@dataclass(frozen=True)
class Tokens:
    tokens: tuple[str, ...]  # data: escaped by the template
    from_vocabulary: bool
    count: int
    shown: int


Rendered = Image | Chart | Tokens


@dataclass(frozen=True)
class Bar:
    """One class's p-value as a bar (`percent` of the full width)."""

    label: int
    p: float
    percent: float
    prediction: bool  # the DkNN prediction
    model: bool  # the model's own answer


def image_layout(shape: tuple[int, ...]) -> str | None:
    """ "hw", "chw" or "hwc" for image-shaped inputs (sides of at least 4), None otherwise."""
    if len(shape) == 2 and min(shape) >= 4:
        return "hw"
    if len(shape) == 3 and shape[0] in (1, 3) and min(shape[1:]) >= 4:
        return "chw"
    if len(shape) == 3 and shape[2] in (1, 3) and min(shape[:2]) >= 4:
        return "hwc"
    return None


def render_array(
    array: np.ndarray,
    *,
    value_range: tuple[float, float] | None = None,
    vocabulary: tuple[str, ...] | None = None,
    display: int = 112,
) -> Rendered:
    """One input (no batch dimension) as the reviewer sees it; `value_range` maps onto black..white
    (default: the array's own range), `display` is the image's longer side on the page."""
    layout = image_layout(tuple(array.shape))
    if layout is not None:
        return _image(array, layout, value_range, display)
    if array.ndim == 1 and np.issubdtype(array.dtype, np.integer):
        return tokens(array, vocabulary)
    return chart(array)


def tokens(array: np.ndarray, vocabulary: tuple[str, ...] | None) -> Tokens:
    """Token ids as words through `vocabulary` (an id outside it shows as `<id>`), else as ids."""
    ids = [int(v) for v in np.asarray(array).ravel()[:MAX_TOKENS]]
    if vocabulary:
        shown = tuple(vocabulary[i] if 0 <= i < len(vocabulary) else f"<{i}>" for i in ids)
    else:
        shown = tuple(str(i) for i in ids)
    return Tokens(tokens=shown, from_vocabulary=bool(vocabulary), count=int(np.asarray(array).size), shown=len(ids))


def chart(array: np.ndarray) -> Chart:
    """Any array, flattened, as bars (short) or a line (long); non-finite values drawn as 0."""
    values = np.nan_to_num(np.asarray(array, dtype=np.float64).ravel(), nan=0.0, posinf=0.0, neginf=0.0)
    count = int(values.size)
    values = values[:MAX_CHART_VALUES]
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    low, high = min(low, 0.0), max(high, 0.0)  # the zero line is always in the picture
    span = high - low or 1.0
    width, height = CHART_WIDTH, CHART_HEIGHT
    ys = height - (values - low) / span * height
    zero = height - (0.0 - low) / span * height
    if 0 < values.size <= MAX_BARS:
        step = width / values.size
        bars = tuple(
            (round(i * step, 2), round(min(y, zero), 2), round(max(step - 1, 1), 2), round(abs(zero - y), 2))
            for i, y in enumerate(ys.tolist())
        )
        return Chart(width, height, bars, "", low, high, count, int(values.size))
    step = width / max(values.size - 1, 1)
    points = " ".join(f"{i * step:.1f},{y:.1f}" for i, y in enumerate(ys.tolist()))
    return Chart(width, height, (), points, low, high, count, int(values.size))


def _image(array: np.ndarray, layout: str, value_range: tuple[float, float] | None, display: int) -> Image:
    pixels = np.asarray(array)
    if layout == "chw":
        pixels = np.moveaxis(pixels, 0, -1)
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    stride = max(1, -(-max(pixels.shape[:2]) // MAX_IMAGE_SIDE))
    pixels = pixels[::stride, ::stride]
    grey = to_uint8(pixels, value_range)
    height, width = grey.shape[:2]
    scale = max(1, display // max(height, width))
    uri = "data:image/png;base64," + base64.b64encode(png(grey)).decode("ascii")
    return Image(uri, width * scale, height * scale)


def to_uint8(pixels: np.ndarray, value_range: tuple[float, float] | None) -> np.ndarray:
    """`value_range` (else the pixels' own range) onto 0..255; uint8 pixels stay as they are."""
    if pixels.dtype == np.uint8 and value_range is None:
        return pixels
    values = np.nan_to_num(np.asarray(pixels, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = value_range if value_range is not None else (float(values.min()), float(values.max()))
    scale = 255.0 / (high - low) if high > low else 0.0
    return np.clip(np.rint((values - low) * scale), 0, 255).astype(np.uint8)


def png(pixels: np.ndarray) -> bytes:
    """8-bit greyscale `(H, W)` or RGB `(H, W, 3)` uint8 as a PNG file (no filtering, zlib level 6)."""
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    height, width = pixels.shape[:2]
    colour = 0 if pixels.ndim == 2 else 2
    rows = pixels.reshape(height, -1)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def p_value_bars(p_values: list[float], prediction: int | None, model_prediction: int | None) -> list[Bar]:
    """Every class's p-value as a bar, the DkNN prediction and the model's answer marked."""
    return [
        Bar(label, p, round(100 * min(max(p, 0.0), 1.0), 2), label == prediction, label == model_prediction)
        for label, p in enumerate(p_values)
    ]
