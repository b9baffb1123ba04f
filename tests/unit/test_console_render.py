"""The review console's renderers (agent/console/render.py): inputs by kind, never markup."""

from __future__ import annotations

import base64
import struct
import zlib

import numpy as np
import pytest

from agent.console.render import Chart, Image, Tokens, chart, image_layout, p_value_bars, png, render_array


def decode_png(data: bytes) -> np.ndarray:
    """The pixels of an unfiltered 8-bit grey or RGB PNG, as `png` writes them."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, at = {}, 8
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        tag, body = data[at + 4 : at + 8], data[at + 8 : at + 8 + length]
        assert struct.unpack(">I", data[at + 8 + length : at + 12 + length])[0] == zlib.crc32(tag + body)
        chunks[tag] = body
        at += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert depth == 8 and b"IEND" in chunks
    channels = 1 if colour == 0 else 3
    raw = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), dtype=np.uint8).reshape(height, 1 + width * channels)
    assert (raw[:, 0] == 0).all()  # no filter
    pixels = raw[:, 1:].reshape(height, width, channels)
    return pixels[..., 0] if channels == 1 else pixels


def pixels_of(image: Image) -> np.ndarray:
    prefix = "data:image/png;base64,"
    assert image.data_uri.startswith(prefix)
    return decode_png(base64.b64decode(image.data_uri[len(prefix) :]))


@pytest.mark.parametrize(
    ("shape", "layout"),
    [((1, 28, 28), "chw"), ((28, 28), "hw"), ((3, 32, 32), "chw"), ((32, 32, 3), "hwc"), ((28, 28, 1), "hwc")],
)
def test_image_shaped_inputs_become_a_png_of_their_pixels(shape: tuple[int, ...], layout: str) -> None:
    rng = np.random.default_rng(0)
    array = rng.uniform(-1.0, 1.0, size=shape).astype(np.float32)
    assert image_layout(shape) == layout
    shown = render_array(array, value_range=(-1.0, 1.0))
    assert isinstance(shown, Image)
    pixels = pixels_of(shown)
    expected = np.moveaxis(array, 0, -1) if layout == "chw" else array
    expected = expected[..., 0] if expected.ndim == 3 and expected.shape[-1] == 1 else expected
    assert pixels.shape == expected.shape
    assert np.abs(pixels.astype(int) - np.rint((expected + 1) * 127.5)).max() <= 1
    assert shown.width == shown.height >= 84  # square inputs, scaled up whole pixels at a time


def test_thumbnails_stay_as_stored_and_large_images_are_strided() -> None:
    thumbnail = np.arange(28 * 28, dtype=np.uint8).reshape(1, 28, 28)
    assert (pixels_of(render_array(thumbnail, value_range=(0.0, 255.0))) == thumbnail[0]).all()  # type: ignore[arg-type]
    big = render_array(np.zeros((3, 2000, 1000), dtype=np.float32))
    assert isinstance(big, Image) and pixels_of(big).shape == (500, 250, 3)


def test_vectors_become_a_chart_of_numbers() -> None:
    short = render_array(np.array([1.0, -2.0, float("nan"), 4.0], dtype=np.float32))
    assert isinstance(short, Chart) and len(short.bars) == 4 and short.points == ""
    assert (short.low, short.high, short.count) == (-2.0, 4.0, 4)
    assert all(isinstance(value, float) for bar in short.bars for value in bar)
    long = chart(np.sin(np.arange(5000)))
    assert long.bars == () and long.shown == 2048 and long.count == 5000
    assert set(long.points) <= set("0123456789., -")  # numbers only: nothing to escape, nothing to inject
    assert isinstance(render_array(np.zeros((2, 3), dtype=np.float32)), Chart)  # not image-shaped


def test_token_ids_read_through_the_vocabulary() -> None:
    vocabulary = ("<pad>", "the", "<script>", "cat")
    shown = render_array(np.array([1, 3, 2, 99], dtype=np.int64), vocabulary=vocabulary)
    assert isinstance(shown, Tokens) and shown.from_vocabulary
    assert shown.tokens == ("the", "cat", "<script>", "<99>")  # kept as data: the template escapes it


def test_token_ids_without_a_vocabulary_show_as_ids() -> None:
    shown = render_array(np.arange(600, dtype=np.int32))
    assert isinstance(shown, Tokens) and not shown.from_vocabulary
    assert shown.tokens[:3] == ("0", "1", "2") and (shown.shown, shown.count) == (512, 600)


def test_p_value_bars_mark_both_answers() -> None:
    bars = p_value_bars([0.02, 0.5, 1.5], prediction=1, model_prediction=2)
    assert [bar.percent for bar in bars] == [2.0, 50.0, 100.0]
    assert [(bar.prediction, bar.model) for bar in bars] == [(False, False), (True, False), (False, True)]


def test_png_is_a_valid_file() -> None:
    rgb = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    assert (decode_png(png(rgb)) == rgb).all()
