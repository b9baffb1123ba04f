"""Natural evaluation sets: MNIST framing, determinism, labels, the cache, the letters left out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.errors import DataError
from dknn_lab import natural_sets as ns
from dknn_lab.datasets import default_mnist_dir, load_mnist

SMALL = {"glyphs": 52, "photo_patches": 12, "sklearn_digits": 120, "font_digits": 80}


@pytest.fixture(scope="module")
def built() -> dict[str, ns.EvalSet]:
    """Each set built once, without the cache, at a test size."""
    return {name: ns.BUILDERS[name](SMALL[name], 0) for name in ns.SET_KINDS}


def test_shapes_dtypes_and_range(built: dict[str, ns.EvalSet]) -> None:
    for name, evalset in built.items():
        assert evalset.name == name
        assert evalset.x.shape == (SMALL[name], 1, 28, 28) and evalset.x.dtype == np.float32
        assert evalset.x.min() >= 0.0 and evalset.x.max() <= 1.0
        assert np.allclose(evalset.x.max(axis=(1, 2, 3)), 1.0)  # every image peaks at full ink, as MNIST's


def test_labels_by_kind(built: dict[str, ns.EvalSet]) -> None:
    for name, evalset in built.items():
        if ns.SET_KINDS[name] == ns.FAR_OOD:
            assert evalset.y is None
        else:
            assert evalset.y is not None and evalset.y.dtype == np.int64
            assert set(evalset.y.tolist()) == set(range(10))
    assert np.array_equal(np.bincount(built["font_digits"].y), np.full(10, SMALL["font_digits"] // 10))  # type: ignore[arg-type]


def test_builders_are_deterministic(built: dict[str, ns.EvalSet]) -> None:
    for name, evalset in built.items():
        again = ns.BUILDERS[name](SMALL[name], 0)
        assert ns.set_digest(again) == ns.set_digest(evalset), name
    assert ns.set_digest(ns.BUILDERS["glyphs"](SMALL["glyphs"], 1)) != ns.set_digest(built["glyphs"])


@pytest.mark.parametrize("name", ["sklearn_digits", "font_digits"])
def test_digit_sets_are_framed_like_mnist(built: dict[str, ns.EvalSet], name: str) -> None:
    stats = ns.framing_stats(built[name].x)
    for key in ("mean_intensity", "ink_fraction"):
        low, mnist_mean, high = ns.MNIST_STATS[key]
        assert low < stats[key] < high and abs(stats[key] - mnist_mean) < 0.04, (key, stats[key])
    assert abs(stats["centre_row"] - ns.CENTRE) < 0.3 and abs(stats["centre_col"] - ns.CENTRE) < 0.3


@pytest.mark.skipif(default_mnist_dir() is None, reason="MNIST IDX files not found")
def test_framing_leaves_real_mnist_digits_alone() -> None:
    """MNIST's own digits, framed again, come back unchanged: the helper is LeCun's framing."""
    train = load_mnist().x_train
    x = train[:1000, 0]
    again = np.stack([ns.mnist_frame(image) for image in x])
    unchanged = np.abs(again - x).max(axis=(1, 2)) < 0.05
    assert unchanged.mean() > 0.99
    stats = ns.framing_stats(train)
    for key in ("mean_intensity", "ink_fraction"):
        assert abs(stats[key] - ns.MNIST_STATS[key][1]) < 0.002
    assert abs(stats["centre_row"] - ns.CENTRE) < 0.02 and abs(stats["centre_col"] - ns.CENTRE) < 0.02


def test_frame_centres_an_off_centre_blob_and_rejects_blank_images() -> None:
    image = np.zeros((60, 90), dtype=np.float32)
    image[5:15, 70:90] = 1.0  # a 10x20 bar in a corner
    framed = ns.mnist_frame(image)
    rows, cols = np.nonzero(framed > 0.5)
    assert cols.max() - cols.min() + 1 == 20 and rows.max() - rows.min() + 1 == 10
    assert ns.framing_stats(framed[None])["centre_col"] == pytest.approx(ns.CENTRE, abs=0.5)
    with pytest.raises(DataError):
        ns.mnist_frame(np.zeros((28, 28)))


def test_no_digit_like_letters_in_glyphs() -> None:
    assert not set(ns.GLYPH_LETTERS) & ns.DIGIT_LIKE
    assert not set(ns.GLYPH_LETTERS) & set(ns.DIGITS)
    assert {"B", "D", "G", "I"} <= ns.DIGIT_LIKE  # the notMNIST letters that read as 8, 0, 6, 1
    assert len(ns.font_paths()) >= 10


def test_cache_round_trip_and_corrupted_file_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = ns.font_digits(20, cache_dir=tmp_path)
    (path,) = tmp_path.glob("font_digits-n20-seed0-*.npz")

    def refuse(n: int, seed: int) -> ns.EvalSet:
        raise AssertionError("rebuilt although a valid cache file was there")

    monkeypatch.setitem(ns.BUILDERS, "font_digits", refuse)
    cached = ns.font_digits(20, cache_dir=tmp_path)
    assert ns.set_digest(cached) == ns.set_digest(first)
    monkeypatch.undo()

    for damage in (b"not a zip file", path.read_bytes()[:200]):
        path.write_bytes(damage)
        rebuilt = ns.font_digits(20, cache_dir=tmp_path)
        assert ns.set_digest(rebuilt) == ns.set_digest(first)
    assert ns.set_digest(ns.natural_set("font_digits", 20, cache_dir=tmp_path)) == ns.set_digest(first)


def test_cache_without_labels_and_the_key_changes_with_versions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    glyphs = ns.glyphs(13, cache_dir=tmp_path)
    assert ns.glyphs(13, cache_dir=tmp_path).y is None and glyphs.y is None
    key = ns.cache_key("glyphs", 13, 0)
    monkeypatch.setattr(ns, "source_versions", lambda: {"matplotlib": "0.0"})
    assert ns.cache_key("glyphs", 13, 0) != key


def test_natural_sets_by_kind(tmp_path: Path) -> None:
    sizes = {"glyphs": 5, "photo_patches": 3, "sklearn_digits": 7, "font_digits": 4}
    by_kind = ns.natural_sets_by_kind(sizes=sizes, cache_dir=tmp_path)
    assert [s.name for s in by_kind[ns.FAR_OOD]] == ["glyphs", "photo_patches"]
    assert [s.name for s in by_kind[ns.COVARIATE_SHIFT]] == ["sklearn_digits", "font_digits"]
    assert [s.name for s in ns.natural_sets(sizes=sizes, cache_dir=tmp_path)] == list(ns.SET_KINDS)
    with pytest.raises(DataError):
        ns.natural_sets("nonsense", cache_dir=tmp_path)
    with pytest.raises(DataError):
        ns.sklearn_digits(5000, cache_dir=tmp_path)


def test_sample_grid_is_written(built: dict[str, ns.EvalSet], tmp_path: Path) -> None:
    out = ns.save_sample_grid(list(built.values()), tmp_path / "grid.png", per_set=4)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
