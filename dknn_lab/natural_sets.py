"""Natural evaluation sets in MNIST framing: inputs made by another process than the training set.

Synthetic shifts (noise, rotations, attacks) are easy to flag; what a deployed model mostly meets is
data from another source. Two kinds (issue #10, provenance and licences in docs/data.md):

- far out-of-distribution (`FAR_OOD`), not digits at all, to be flagged: `glyphs` (letters rendered
  from the fonts inside matplotlib's wheel) and `photo_patches` (crops of scikit-learn's two sample
  photographs);
- covariate shift (`COVARIATE_SHIFT`), digits from another population, labels 0-9, to be answered:
  `sklearn_digits` (scikit-learn's copy of the UCI optical digits) and `font_digits` (digits
  rendered from the same fonts).

Every set goes through one framing helper, `mnist_frame`, so that the only difference from MNIST is
the source, not the geometry. Sets are deterministic (seeded, sorted sources) and cached as `.npz`
under `$XDG_CACHE_HOME/dknn-agent/natural` (default `~/.cache/...`), keyed by `FORMAT_VERSION` and
the versions of the packages that ship or render the sources; nothing is downloaded.

Sets are returned as the benchmark's `EvalSet`; its kind is `SET_KINDS[name]`, or ask
`natural_sets_by_kind()` for a mapping kind -> sets.
"""

from __future__ import annotations

import hashlib
import logging
import os
import zipfile
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from agent.errors import DataError
from dknn_lab.evalset import EvalSet

log = logging.getLogger(__name__)

# Bump when any builder's output changes: old cache files are then ignored, never reused.
FORMAT_VERSION = "1"

FAR_OOD = "far_ood"
COVARIATE_SHIFT = "covariate_shift"
SET_KINDS: dict[str, str] = {
    "glyphs": FAR_OOD,
    "photo_patches": FAR_OOD,
    "sklearn_digits": COVARIATE_SHIFT,
    "font_digits": COVARIATE_SHIFT,
}
DEFAULT_SIZES: dict[str, int] = {"glyphs": 4095, "photo_patches": 1000, "sklearn_digits": 1797, "font_digits": 2100}

FRAME = 28
BOX = 20
# Centre of mass of MNIST's training digits in (row, column) pixel-index coordinates: 14.00, 14.01
# (each digit within 13.5-14.5, i.e. an integer shift onto pixel 14). We centre on the same point.
CENTRE = 14.0

# Per-image statistics of the 60,000 MNIST training digits (measured once; the unit test re-measures
# them where the MNIST files are present): mean intensity and the share of pixels above 0.5.
MNIST_STATS: dict[str, tuple[float, float, float]] = {
    # name: (1st percentile, mean, 99th percentile)
    "mean_intensity": (0.049, 0.131, 0.246),
    "ink_fraction": (0.048, 0.132, 0.247),
}

# Text fonts inside matplotlib's wheel (mpl-data/fonts/ttf). Left out: the *Display subsets (no
# Latin letters), STIXNonUni* and STIXSiz* (private-use and size variants of symbols), cmex10, cmsy10,
# cmmi10 (maths extension, symbols, maths italic with old-style digits) and LastResortHE (one
# placeholder box for every character).
FONT_FILES: tuple[str, ...] = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
    "DejaVuSansMono-Oblique.ttf",
    "DejaVuSansMono-BoldOblique.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf",
    "DejaVuSerif-BoldItalic.ttf",
    "STIXGeneral.ttf",
    "STIXGeneralBol.ttf",
    "STIXGeneralItalic.ttf",
    "STIXGeneralBolIta.ttf",
    "cmr10.ttf",
    "cmb10.ttf",
    "cmti10.ttf",
    "cmss10.ttf",
    "cmtt10.ttf",
)

# notMNIST's A-J without B (reads as 8), D (0), G (6) and I (1), plus capitals from K-Z that no
# reader takes for a digit. Left out on purpose: L (a 4 or 7 stroke), O and Q (0), S (5), T (7),
# U (0/4), V (7), Y (4), Z (2); every lower-case letter (a 9, b 6, g/q 9, l/i/j 1, o 0, s 5, z 2,
# and x-height shapes that MNIST framing blows up to full size).
GLYPH_LETTERS = "ACEFHJKMNPRWX"
DIGITS = "0123456789"
DIGIT_LIKE = frozenset("BDGILOQSTUVYZabdegijloqstz")

# Rendering variations, drawn per item from a seeded generator.
FONT_SIZES = (28, 40, 56)
STROKE_LEVELS = (0, 1, 2)  # extra outline, in pixels at a 56 px font size (scaled with size): regular to heavy
MAX_ROTATION = 10.0  # degrees, either way
PHOTO_FILES = ("china.jpg", "flower.jpg")
PHOTO_CROP = (32, 160)  # side of the square crop in source pixels, before framing
PHOTO_MIN_STD = 16.0  # grey levels (of 255): crops flatter than this are drawn again


# --- framing -------------------------------------------------------------------------------------


def mnist_frame(image: np.ndarray) -> np.ndarray:
    """A 2-D image with ink high (any non-negative scale) framed as MNIST frames a digit.

    LeCun's recipe: the ink's bounding box is scaled to fit a 20x20 box keeping its aspect ratio,
    with anti-aliasing (Pillow's bicubic filter widens its support when it shrinks); intensities
    are scaled so the darkest ink is 1.0 (MNIST's digits all peak at ~1.0); the box is then placed
    in a 28x28 black frame by an integer shift that puts its centre of mass on `CENTRE`. Returns
    float32 `(28, 28)` in [0, 1].
    """
    array = np.asarray(image, dtype=np.float32)
    if array.ndim != 2 or not np.isfinite(array).all() or array.max(initial=0.0) <= 0.0:
        raise DataError("mnist_frame needs a finite 2-D image with some ink (values > 0)")
    box = _fit_box(crop_to_ink(np.clip(array, 0.0, None)))
    return _centre_by_mass(box)


def crop_to_ink(array: np.ndarray) -> np.ndarray:
    """The smallest box holding every non-zero pixel of a 2-D image."""
    rows = np.flatnonzero(array.any(axis=1))
    cols = np.flatnonzero(array.any(axis=0))
    return array[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def _fit_box(array: np.ndarray) -> np.ndarray:
    """Scales so the longer side is `BOX` pixels; intensities rescaled to peak at 1 after the resize."""
    height, width = array.shape
    scale = BOX / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resized = np.asarray(Image.fromarray(array / array.max()).resize(size, Image.Resampling.BICUBIC))
    resized = np.clip(resized, 0.0, None)  # bicubic overshoots below zero beside strong edges
    return (resized / resized.max()).astype(np.float32)


def _centre_by_mass(box: np.ndarray) -> np.ndarray:
    rows, cols = np.indices(box.shape)
    total = float(box.sum())
    top = round(CENTRE - float((rows * box).sum()) / total)
    left = round(CENTRE - float((cols * box).sum()) / total)
    frame = np.zeros((FRAME, FRAME), dtype=np.float32)
    src_top, src_left = max(0, -top), max(0, -left)
    dst_top, dst_left = max(0, top), max(0, left)
    height = min(box.shape[0] - src_top, FRAME - dst_top)
    width = min(box.shape[1] - src_left, FRAME - dst_left)
    frame[dst_top : dst_top + height, dst_left : dst_left + width] = box[
        src_top : src_top + height, src_left : src_left + width
    ]
    return frame


def framing_stats(x: np.ndarray) -> dict[str, float]:
    """Mean per-image statistics of `(n, 1, 28, 28)` or `(n, 28, 28)` images, as in `MNIST_STATS`,
    plus the mean centre of mass (row, column): the numbers that say a set is framed like MNIST."""
    images = np.asarray(x, dtype=np.float64).reshape(len(x), FRAME, FRAME)
    rows, cols = np.indices((FRAME, FRAME))
    mass = images.sum(axis=(1, 2))
    return {
        "mean_intensity": float(images.mean()),
        "ink_fraction": float((images > 0.5).mean()),
        "centre_row": float(((images * rows).sum(axis=(1, 2)) / mass).mean()),
        "centre_col": float(((images * cols).sum(axis=(1, 2)) / mass).mean()),
    }


# --- sources -------------------------------------------------------------------------------------


def font_dir() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def font_paths() -> list[Path]:
    """The fonts of `FONT_FILES` that this matplotlib ships, in `FONT_FILES` order (never listing order)."""
    root = font_dir()
    paths = [root / name for name in FONT_FILES if (root / name).is_file()]
    if not paths:
        raise DataError(f"{root}: none of the fonts in FONT_FILES found; is matplotlib installed?")
    return paths


def render_glyph(font_path: Path, char: str, size: int, stroke_level: int, angle: float) -> np.ndarray:
    """One character, white on black, outlined by `stroke_level` px per 56 px of size (a heavier
    weight; MNIST's mean intensity is matched with no outline, so heavy ones are kept rarer) and
    turned `angle` degrees counter-clockwise; framed by `mnist_frame`."""
    font = ImageFont.truetype(str(font_path), size)
    stroke = stroke_level * size // 56
    canvas = Image.new("L", (3 * size, 3 * size), 0)
    ImageDraw.Draw(canvas).text(
        (1.5 * size, 1.5 * size), char, font=font, fill=255, anchor="mm", stroke_width=stroke, stroke_fill=255
    )
    turned = canvas.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=0)
    array = np.asarray(turned, dtype=np.float32) / 255.0
    if array.max() <= 0.0:
        raise DataError(f"{font_path.name} draws nothing for {char!r}")
    return mnist_frame(array)


def _render_chars(chars: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` renders cycling over every (font, character) pair so each pair appears equally often;
    size, weight and rotation drawn per item from `seed`. Returns images and character indices."""
    pairs = [(font, index) for font in font_paths() for index in range(len(chars))]
    rng = np.random.default_rng(seed)
    sizes = rng.choice(FONT_SIZES, size=n)
    strokes = rng.choice(STROKE_LEVELS, size=n)
    angles = rng.uniform(-MAX_ROTATION, MAX_ROTATION, size=n)
    x = np.empty((n, 1, FRAME, FRAME), dtype=np.float32)
    which = np.empty(n, dtype=np.int64)
    for i in range(n):
        font, index = pairs[i % len(pairs)]
        x[i, 0] = render_glyph(font, chars[index], int(sizes[i]), int(strokes[i]), float(angles[i]))
        which[i] = index
    return x, which


def _build_glyphs(n: int, seed: int) -> EvalSet:
    x, _ = _render_chars(GLYPH_LETTERS, n, seed)
    return EvalSet("glyphs", x, None)


def _build_font_digits(n: int, seed: int) -> EvalSet:
    x, which = _render_chars(DIGITS, n, seed)
    return EvalSet("font_digits", x, which)


def _build_sklearn_digits(n: int, seed: int) -> EvalSet:
    """The first `n` of scikit-learn's 1,797 8x8 digits (values 0-16, ink high), each framed by
    `mnist_frame`; it upsamples them bicubically. `seed` is unused: the order is the file's."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.asarray(digits.images[:n], dtype=np.float32) / 16.0
    x = np.stack([mnist_frame(image) for image in images])[:, None]
    return EvalSet("sklearn_digits", x, np.asarray(digits.target[:n], dtype=np.int64))


def _build_photo_patches(n: int, seed: int) -> EvalSet:
    """Square grayscale crops (32-160 px a side) of scikit-learn's two sample photographs, alternating
    photographs, position and size from `seed`, framed like a digit: a 20x20 photo on a black border."""
    from sklearn.datasets import load_sample_image

    photos = [
        np.asarray(Image.fromarray(load_sample_image(name)).convert("L"), dtype=np.float32) for name in PHOTO_FILES
    ]
    rng = np.random.default_rng(seed)
    x = np.empty((n, 1, FRAME, FRAME), dtype=np.float32)
    for i in range(n):
        x[i, 0] = mnist_frame(_textured_crop(photos[i % len(photos)], rng) + 1.0)  # +1: keep black edges
    return EvalSet("photo_patches", x, None)


def _textured_crop(photo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random square crop with some texture: flat crops (sky, a wall; std < `PHOTO_MIN_STD` grey
    levels) become plain squares after framing, too easy to tell apart, so they are drawn again."""
    while True:
        side = int(rng.integers(PHOTO_CROP[0], PHOTO_CROP[1] + 1))
        top = int(rng.integers(0, photo.shape[0] - side + 1))
        left = int(rng.integers(0, photo.shape[1] - side + 1))
        crop = photo[top : top + side, left : left + side]
        if float(crop.std()) >= PHOTO_MIN_STD:
            return crop


BUILDERS: dict[str, Callable[[int, int], EvalSet]] = {
    "glyphs": _build_glyphs,
    "photo_patches": _build_photo_patches,
    "sklearn_digits": _build_sklearn_digits,
    "font_digits": _build_font_digits,
}


# --- cache ---------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/dknn-agent/natural`, else `~/.cache/dknn-agent/natural`. (A `DKNN_*`
    variable would trip the agent's strict check for unknown setting variables.)"""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dknn-agent" / "natural"


def source_versions() -> dict[str, str]:
    """The packages whose files or code decide the sets' bytes: a new version means a new cache key."""
    return {name: metadata.version(name) for name in ("matplotlib", "pillow", "scikit-learn", "numpy")}


def cache_key(name: str, n: int, seed: int) -> str:
    versions = ",".join(f"{k}={v}" for k, v in sorted(source_versions().items()))
    text = f"{FORMAT_VERSION}|{name}|n={n}|seed={seed}|{versions}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _cache_path(cache_dir: Path, name: str, n: int, seed: int) -> Path:
    return cache_dir / f"{name}-n{n}-seed{seed}-{cache_key(name, n, seed)}.npz"


def _load_cached(path: Path, name: str, n: int) -> EvalSet | None:
    """The cached set, or None when it is missing or unreadable (truncated, corrupted, wrong shape)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            x = np.array(data["x"])
            y = np.array(data["y"]) if bool(data["has_labels"]) else None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        log.warning("%s: unreadable cache file (%s); rebuilding", path, exc)
        return None
    if x.shape != (n, 1, FRAME, FRAME) or x.dtype != np.float32 or (y is not None and y.shape != (n,)):
        log.warning("%s: cache file has the wrong shape; rebuilding", path)
        return None
    return EvalSet(name, x, y)


def _save(path: Path, evalset: EvalSet) -> None:
    """Writes beside the target, then renames: a crash never leaves a half-written cache file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    with partial.open("wb") as handle:
        np.savez(
            handle,
            x=evalset.x,
            y=evalset.y if evalset.y is not None else np.zeros(0, dtype=np.int64),
            has_labels=np.array(evalset.y is not None),
        )
    os.replace(partial, path)


# --- public API ----------------------------------------------------------------------------------


def natural_set(name: str, n: int | None = None, *, seed: int = 0, cache_dir: Path | str | None = None) -> EvalSet:
    """One set by name (see `SET_KINDS`), `n` items (default `DEFAULT_SIZES[name]`; sklearn_digits
    has at most 1,797), from the cache when a valid file is there, else built and cached."""
    if name not in BUILDERS:
        raise DataError(f"unknown natural set {name!r}; known: {', '.join(sorted(BUILDERS))}")
    count = DEFAULT_SIZES[name] if n is None else n
    if count < 1:
        raise DataError(f"{name}: n must be at least 1, got {count}")
    if name == "sklearn_digits" and count > DEFAULT_SIZES[name]:
        raise DataError(f"sklearn_digits has {DEFAULT_SIZES[name]} images; asked for {count}")
    path = _cache_path(Path(cache_dir) if cache_dir is not None else default_cache_dir(), name, count, seed)
    cached = _load_cached(path, name, count)
    if cached is not None:
        return cached
    built = BUILDERS[name](count, seed)
    _save(path, built)
    return built


def glyphs(n: int | None = None, *, seed: int = 0, cache_dir: Path | str | None = None) -> EvalSet:
    return natural_set("glyphs", n, seed=seed, cache_dir=cache_dir)


def photo_patches(n: int | None = None, *, seed: int = 0, cache_dir: Path | str | None = None) -> EvalSet:
    return natural_set("photo_patches", n, seed=seed, cache_dir=cache_dir)


def sklearn_digits(n: int | None = None, *, seed: int = 0, cache_dir: Path | str | None = None) -> EvalSet:
    return natural_set("sklearn_digits", n, seed=seed, cache_dir=cache_dir)


def font_digits(n: int | None = None, *, seed: int = 0, cache_dir: Path | str | None = None) -> EvalSet:
    return natural_set("font_digits", n, seed=seed, cache_dir=cache_dir)


def natural_sets(
    kind: str | None = None,
    *,
    sizes: dict[str, int] | None = None,
    seed: int = 0,
    cache_dir: Path | str | None = None,
) -> list[EvalSet]:
    """Every natural set of `kind` (`FAR_OOD`, `COVARIATE_SHIFT`, or None for all), in `SET_KINDS`
    order; `sizes` overrides `DEFAULT_SIZES` per name (small values make fast tests)."""
    if kind is not None and kind not in (FAR_OOD, COVARIATE_SHIFT):
        raise DataError(f"unknown kind {kind!r}; use {FAR_OOD!r} or {COVARIATE_SHIFT!r}")
    chosen = [name for name, set_kind in SET_KINDS.items() if kind is None or set_kind == kind]
    sizes = sizes or {}
    return [natural_set(name, sizes.get(name), seed=seed, cache_dir=cache_dir) for name in chosen]


def natural_sets_by_kind(
    *, sizes: dict[str, int] | None = None, seed: int = 0, cache_dir: Path | str | None = None
) -> dict[str, list[EvalSet]]:
    """The same sets as a mapping kind -> sets, for benchmarks that report the two kinds apart."""
    return {
        kind: natural_sets(kind, sizes=sizes, seed=seed, cache_dir=cache_dir) for kind in (FAR_OOD, COVARIATE_SHIFT)
    }


def set_digest(evalset: EvalSet) -> str:
    """sha256 of a set's arrays (not of the `.npz`, whose zip headers carry timestamps): a results
    file can record exactly which set it scored."""
    digest = hashlib.sha256(evalset.name.encode())
    digest.update(np.ascontiguousarray(evalset.x).tobytes())
    if evalset.y is not None:
        digest.update(np.ascontiguousarray(evalset.y, dtype=np.int64).tobytes())
    return digest.hexdigest()


def save_sample_grid(sets: Sequence[EvalSet], out: Path | str, per_set: int = 12) -> Path:
    """A PNG with one row per set: `per_set` images spread evenly over the set (the builders cycle
    through fonts and photographs in order, so the first few would all share one), labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    label_width = 1.6
    figure, axes = plt.subplots(
        len(sets), per_set, figsize=(label_width + per_set * 0.8, len(sets) * 0.95), squeeze=False
    )
    for row, evalset in enumerate(sets):
        picks = np.unique(np.linspace(0, len(evalset.x) - 1, per_set).round().astype(int))
        for col in range(per_set):
            axis = axes[row][col]
            axis.set_axis_off()
            if col < len(picks):
                axis.imshow(evalset.x[picks[col], 0], cmap="gray", vmin=0.0, vmax=1.0)
                if evalset.y is not None:
                    axis.set_title(str(int(evalset.y[picks[col]])), fontsize=7, pad=1)
        axes[row][0].text(
            -0.15,
            0.5,
            f"{evalset.name}\n{SET_KINDS.get(evalset.name, '')}",
            transform=axes[row][0].transAxes,
            ha="right",
            va="center",
            fontsize=8,
        )
    figure.subplots_adjust(
        left=label_width / (label_width + per_set * 0.8), right=0.99, top=0.95, bottom=0.02, wspace=0.08, hspace=0.3
    )
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_path, dpi=110, metadata={"Software": None})  # no version stamp: same bytes per run
    plt.close(figure)
    return out_path


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m dknn_lab.natural_sets [--samples PNG]`: builds (or loads) every set at its
    default size, prints its kind, size, framing statistics and digest, and draws the sample grid."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m dknn_lab.natural_sets", description=main.__doc__)
    parser.add_argument("--samples", type=Path, help="write the sample grid PNG here")
    parser.add_argument("--cache-dir", type=Path, help="default: $XDG_CACHE_HOME/dknn-agent/natural")
    args = parser.parse_args(argv)
    sets = natural_sets(cache_dir=args.cache_dir)
    for evalset in sets:
        stats = " ".join(f"{key}={value:.3f}" for key, value in framing_stats(evalset.x).items())
        print(f"{evalset.name:15} {SET_KINDS[evalset.name]:16} n={len(evalset.x):5} {stats} {set_digest(evalset)[:16]}")
    if args.samples is not None:
        print(f"wrote {save_sample_grid(sets, args.samples)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
