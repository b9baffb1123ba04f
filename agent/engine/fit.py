"""Fitting a bundle: activations of the training set into per-layer indexes, then calibration.

The training set is streamed twice in batches — once (a sample) to fit the preprocessing, once to
fill the indexes — so a 12,544-dim conv layer over 60,000 images never sits in memory. The
manifest is written last: a directory without one is an unfinished fit, never a valid bundle.
"""

from __future__ import annotations

import json
import platform
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import annoy
import numpy as np
import torch
from torch import nn
from tqdm import tqdm

import agent
from agent.engine.bundle import BundleTrust, sha256_file, verify_bundle
from agent.engine.conformal import distance_statistic
from agent.engine.dknn import DkNN, open_index
from agent.engine.index import AnnoyBuilder
from agent.engine.manifest import (
    CALIBRATION_FILE,
    MANIFEST_FILE,
    TRAIN_LABELS_FILE,
    WEIGHTS_FILE,
    ComputeDtype,
    IndexSpec,
    InputSpec,
    LayerSpec,
    Manifest,
    ModelSpec,
    NonconformitySpec,
    ResidualSpec,
    SplitSpec,
    tapped_layers,
)
from agent.engine.preprocess import Preprocessor
from agent.engine.residual import ResidualTerm
from agent.engine.taps import ActivationTap
from agent.engine.tuning import PROBE_SIZE, RecallTarget, TunedLayer, noisy_probe, tune_layer
from agent.errors import ConfigError, DataError


@dataclass(frozen=True)
class FitOptions:
    """How to fit: neighbours, index quality, batch sizes and the PCA sample."""

    k: int = 75
    n_trees: int = 10
    search_k: int | None = None  # None: chosen per layer from `recall_target` (agent.engine.tuning)
    recall_target: RecallTarget = RecallTarget()
    seed: int = 0
    batch_size: int = 512
    pca_sample: int = 10_000
    progress: bool = True
    nonconformity: NonconformitySpec = NonconformitySpec()
    compute_dtype: ComputeDtype = "float32"  # "bfloat16": the forward passes under torch.autocast (`ActivationTap`)


@dataclass(frozen=True)
class Dataset:
    """Inputs in the model's layout, integer labels, and where they came from."""

    x: np.ndarray
    y: np.ndarray
    source: str = ""
    source_indices: list[int] | None = field(default=None)


def fit_bundle(
    *,
    model: nn.Module,
    model_spec: ModelSpec,
    layers: dict[str, str],
    train: Dataset,
    calibration: Dataset,
    out: Path,
    options: FitOptions = FitOptions(),
    value_range: tuple[float, float] | None = None,
    force: bool = False,
) -> Manifest:
    """Writes a complete, verified bundle to `out`; `layers` maps layer name -> preprocessing."""
    _check_datasets(train, calibration, model_spec.num_classes, options.k)
    model_spec = model_spec.model_copy(update={"compute_dtype": options.compute_dtype})
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not force:
        raise ConfigError(f"{out}: exists and is not empty (pass --force to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        manifest = _fit_into(staging, model, model_spec, layers, train, calibration, options, value_range)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    # The operator named this factory on the command line: it is trusted for this check.
    factory_module = model_spec.factory.partition(":")[0]
    verify_bundle(out, BundleTrust(factory_modules=(factory_module,))).close()
    return manifest


def _fit_into(
    root: Path,
    model: nn.Module,
    model_spec: ModelSpec,
    layers: dict[str, str],
    train: Dataset,
    calibration: Dataset,
    options: FitOptions,
    value_range: tuple[float, float] | None,
) -> Manifest:
    (root / "layers").mkdir()
    nonconformity = _sized(options.nonconformity, len(train.y))
    residual_spec = nonconformity.residual
    tap = ActivationTap(model, tapped_layers(list(layers), nonconformity), model_spec.compute_dtype)
    preprocessors = _fit_preprocessors(tap, layers, train.x, options)
    # Before the indexes: a residual term that cannot be fitted fails in seconds, not minutes.
    residual = _fit_residual(tap, residual_spec, train.x, options) if residual_spec else None
    builders = {name: AnnoyBuilder(pre.output_dim, options.seed) for name, pre in preprocessors.items()}
    for activations in _progress(
        tap.batches(train.x, options.batch_size), -(-len(train.x) // options.batch_size), options, "index"
    ):
        for name, builder in builders.items():
            builder.add(preprocessors[name].transform(activations.layers[name]))

    stems = {name: f"layers/{name.replace('.', '_')}" for name in preprocessors}  # file names without suffix
    index_files = {name: f"{stem}.ann" for name, stem in stems.items()}
    for name, builder in builders.items():
        builder.save(root / index_files[name], options.n_trees)
    tuned = _tune_search_k(root, tap, preprocessors, index_files, calibration.x, options, value_range)
    layer_specs = []
    for name, pre in preprocessors.items():
        params_file = f"{stems[name]}.npz" if pre.has_params else None
        if params_file:
            np.savez(root / params_file, **pre.arrays())  # type: ignore[arg-type]  # numpy's stub types **kwds badly
        layer_specs.append(
            LayerSpec(
                name=name,
                input_dim=pre.input_dim,
                dim=pre.output_dim,
                preprocessing=pre.spec,
                index_file=index_files[name],
                params_file=params_file,
                search_k=tuned[name].search_k if name in tuned else None,
                recall=tuned[name].recall if name in tuned else None,
            )
        )
    if residual is not None:
        (root / residual.spec.params_file).parent.mkdir(parents=True, exist_ok=True)
        np.savez(root / residual.spec.params_file, **residual.arrays())  # type: ignore[arg-type]
    torch.save(model.state_dict(), root / WEIGHTS_FILE)
    np.save(root / TRAIN_LABELS_FILE, train.y.astype(np.int64))

    draft = Manifest(
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        model=model_spec,
        input=InputSpec(shape=tuple(train.x.shape[1:]), dtype=str(train.x.dtype), value_range=value_range),
        layers=tuple(layer_specs),
        k=options.k,
        index=IndexSpec(
            n_trees=options.n_trees, search_k=-1 if options.search_k is None else options.search_k, seed=options.seed
        ),
        train=SplitSpec(size=len(train.y), source=train.source, source_indices=train.source_indices),
        calibration=SplitSpec(
            size=len(calibration.y), source=calibration.source, source_indices=calibration.source_indices
        ),
        libraries=_library_versions(),
        files={},
        nonconformity=nonconformity,
    )
    tap.close()
    arrays = _calibrate(root, draft, model, preprocessors, residual, train, calibration, options)
    np.savez(root / CALIBRATION_FILE, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds badly

    files = {str(path.relative_to(root)): sha256_file(path) for path in sorted(root.rglob("*")) if path.is_file()}
    manifest = draft.model_copy(update={"files": files})
    (root / MANIFEST_FILE).write_text(json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n")
    return manifest


def _tune_search_k(
    root: Path,
    tap: ActivationTap,
    preprocessors: dict[str, Preprocessor],
    index_files: dict[str, str],
    heldout_x: np.ndarray,
    options: FitOptions,
    value_range: tuple[float, float] | None,
) -> dict[str, TunedLayer]:
    """Per layer, the cheapest search_k reaching the recall target (none when --search-k fixes it)."""
    if options.search_k is not None:
        return {}
    probe = heldout_x[:PROBE_SIZE]
    heldout, shifted = tap(probe), tap(noisy_probe(probe, value_range, options.seed))
    tuned = {}
    for name, pre in _progress(preprocessors.items(), len(preprocessors), options, "search_k", "layer"):
        tuned[name] = tune_layer(
            root / index_files[name],
            pre.output_dim,
            pre.transform(heldout.layers[name]),
            pre.transform(shifted.layers[name]),
            options.k,
            options.recall_target,
        )
    return tuned


def _fit_preprocessors(
    tap: ActivationTap, layers: dict[str, str], x: np.ndarray, options: FitOptions
) -> dict[str, Preprocessor]:
    rng = np.random.default_rng(options.seed)
    sample_rows = np.sort(rng.choice(len(x), size=min(options.pca_sample, len(x)), replace=False))
    batches = list(tap.batches(x[sample_rows], options.batch_size))
    preprocessors = {}
    for name, spec in layers.items():
        sample = np.concatenate([batch.layers[name] for batch in batches])
        preprocessors[name] = Preprocessor(spec=spec, input_dim=sample.shape[1]).fit(sample, options.seed)
    return preprocessors


def _sized(spec: NonconformitySpec, train_size: int) -> NonconformitySpec:
    """References cannot sample more training points than there are; the residual term's takes at
    most half, so that its principal directions are fitted on other points."""
    update: dict[str, Any] = {}
    if spec.distance_reference_size > train_size:
        update["distance_reference_size"] = train_size
    if spec.residual is not None and spec.residual.reference_size > train_size // 2:
        update["residual"] = spec.residual.model_copy(update={"reference_size": max(1, train_size // 2)})
    return spec.model_copy(update=update) if update else spec


def _fit_residual(tap: ActivationTap, spec: ResidualSpec, x: np.ndarray, options: FitOptions) -> ResidualTerm:
    """The residual term from two disjoint seeded samples of the training set: the reference (its
    shares rank new inputs) and up to `pca_sample` other points for the principal directions."""
    rows = np.random.default_rng([options.seed, 2]).permutation(len(x))
    reference_rows = np.sort(rows[: spec.reference_size])
    sample_rows = np.sort(rows[spec.reference_size : spec.reference_size + options.pca_sample])

    def layer_of(chosen: np.ndarray) -> np.ndarray:
        return np.concatenate([batch.layers[spec.layer] for batch in tap.batches(x[chosen], options.batch_size)])

    sample = layer_of(sample_rows)
    if spec.components >= min(sample.shape):
        raise ConfigError(
            f"residual term: {spec.components} components need more than that many features and training points; "
            f"{spec.layer} has {sample.shape[1]} features and {sample.shape[0]} points are left for fitting"
        )
    return ResidualTerm.fit(spec, sample, layer_of(reference_rows), options.seed)


def _calibrate(
    root: Path,
    draft: Manifest,
    model: nn.Module,
    preprocessors: dict[str, Preprocessor],
    residual: ResidualTerm | None,
    train: Dataset,
    calibration: Dataset,
    options: FitOptions,
) -> dict[str, np.ndarray]:
    """The calibration file's arrays, queried through the saved indexes: α of the true labels and
    s(x) of the calibration set, sorted, and the references of the distance and residual terms."""
    indexes = {
        layer.name: open_index(
            str(root / layer.index_file), layer.dim, draft.train.size, "annoy", draft.search_k(layer.name)
        )
        for layer in draft.layers
    }
    placeholder = np.zeros(1)  # p-values are not needed here, only α
    train_labels = train.y.astype(np.int64)
    arrays: dict[str, np.ndarray] = {}
    if draft.distance_layers:
        labels_only = draft.model_copy(update={"nonconformity": NonconformitySpec()})
        scorer = DkNN(labels_only, model, preprocessors, indexes, train_labels, placeholder, placeholder)
        try:
            arrays["distance_reference"] = _distance_reference(scorer, draft, train.x, options)
        finally:
            scorer.tap.close()
    if residual is not None:
        arrays["residual_reference"] = residual.reference_sorted
    distance_reference = np.sort(arrays["distance_reference"], axis=0) if draft.distance_layers else None
    scorer = DkNN(
        draft, model, preprocessors, indexes, train_labels, placeholder, placeholder, distance_reference, residual
    )
    try:
        alpha = np.concatenate(
            [
                scorer.score(calibration.x[start : start + options.batch_size]).alpha
                for start in range(0, len(calibration.x), options.batch_size)
            ]
        )
    finally:
        scorer.tap.close()
    arrays["alpha"] = np.sort(alpha[np.arange(len(alpha)), calibration.y])
    arrays["label_free"] = np.sort(alpha.min(axis=1))
    return arrays


def _distance_reference(scorer: DkNN, draft: Manifest, train_x: np.ndarray, options: FitOptions) -> np.ndarray:
    """The k-NN distance statistic (mean or farthest of the nearest m) per distance layer of a seeded sample of training points, each queried
    for k + 1 neighbours with itself dropped — so the reference, like a new input, is measured
    against the other training points, and is fixed before calibration (which keeps α a fixed
    function of x and j, and the p-values conformal)."""
    rng = np.random.default_rng([options.seed, 1])
    size = draft.nonconformity.distance_reference_size
    rows = np.sort(rng.choice(len(train_x), size=size, replace=False))
    per_batch = []
    for start in range(0, size, options.batch_size):
        batch_rows = rows[start : start + options.batch_size]
        activations = scorer.tap(train_x[batch_rows])
        per_layer = []
        for name in draft.distance_layers:
            vectors = scorer.preprocessors[name].transform(activations.layers[name])
            distances, ids = scorer.indexes[name].search(vectors, draft.k + 1)
            itself = ids == batch_rows[:, None]
            # Drop the point itself where it was found, else the farthest of the k + 1.
            drop = np.where(itself.any(axis=1), itself.argmax(axis=1), draft.k)
            keep = np.ones_like(itself)
            keep[np.arange(len(keep)), drop] = False
            per_layer.append(distances[keep].reshape(len(keep), 1, draft.k))
        spec = draft.nonconformity
        per_batch.append(
            distance_statistic(np.concatenate(per_layer, axis=1), spec.distance_statistic, spec.distance_neighbors)
        )
    return np.concatenate(per_batch)


def _check_datasets(train: Dataset, calibration: Dataset, num_classes: int, k: int) -> None:
    for name, data in (("training", train), ("calibration", calibration)):
        if data.x.dtype != np.float32:
            raise DataError(f"{name} inputs must be float32, got {data.x.dtype}")
        if data.y.ndim != 1 or len(data.y) != len(data.x):
            raise DataError(f"{name} labels must be 1-d with one label per input")
        if not all(np.isfinite(data.x[i : i + 4096]).all() for i in range(0, len(data.x), 4096)):
            raise DataError(f"{name} inputs contain NaN or infinity: the indexes would be meaningless")
        if not np.issubdtype(data.y.dtype, np.integer) or data.y.min() < 0 or data.y.max() >= num_classes:
            raise DataError(f"{name} labels must be integers in 0..{num_classes - 1}")
    if train.x.shape[1:] != calibration.x.shape[1:]:
        raise DataError(f"training inputs {train.x.shape[1:]} and calibration {calibration.x.shape[1:]} differ")
    if k > len(train.x):
        raise ConfigError(f"k={k} exceeds the {len(train.x)} training points")


def _progress(iterable: Any, steps: int, options: FitOptions, what: str, unit: str = "batch") -> Any:
    return tqdm(iterable, total=steps, desc=what, unit=unit, disable=not options.progress)


def _library_versions() -> dict[str, str]:
    return {
        "dknn_agent": agent.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "annoy": getattr(annoy, "__version__", "1.17"),
    }


def load_labelled_npz(path: Path) -> Dataset:
    """An `.npz` with float32 `x` and integer `y`, as a fit Dataset."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "x" not in archive.files or "y" not in archive.files:
                raise DataError(f"{path}: needs arrays 'x' and 'y', has {sorted(archive.files)}")
            x, y = archive["x"], archive["y"]
    except (ValueError, OSError) as exc:
        raise DataError(f"{path}: not a readable .npz archive ({exc})") from None
    if x.dtype != np.float32:
        raise DataError(f"{path}: 'x' is {x.dtype}, expected float32")
    if not np.issubdtype(y.dtype, np.integer) or y.shape != (len(x),):
        raise DataError(f"{path}: 'y' must be integers with one label per row of 'x'")
    return Dataset(x=x, y=y.astype(np.int64), source=str(path))
