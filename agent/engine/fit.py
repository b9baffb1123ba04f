"""Fitting a bundle: activations of the training set into per-layer indexes, then calibration.

The training set is streamed in batches — a sample to fit the preprocessing, then all of it to
fill the indexes — so neither a 12,544-dim conv layer over 60,000 images nor a memory-mapped
training set (agent.engine.data_files) ever sits in memory whole. A probe pass on a few rows
checks every layer (it exists, is batch-first, and fits an index) before any of that starts. The
manifest is written last: a directory without one is an unfinished fit, never a valid bundle.
Every file is written readable by any user (0644 files, 0755 folders): the agent that serves the
bundle usually runs as another uid (10001 in the image).
"""

from __future__ import annotations

import json
import platform
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
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
from agent.engine.data_files import Dataset
from agent.engine.dknn import NonconformityScorer, open_index
from agent.engine.exemplars import plan_exemplars, write_exemplars
from agent.engine.index import AnnoyBuilder, NeighborIndex
from agent.engine.manifest import (
    CALIBRATION_FILE,
    INPUT_DTYPES,
    MANIFEST_FILE,
    MAX_INDEX_DIM,
    TRAIN_LABELS_FILE,
    ComputeDtype,
    ExemplarKind,
    ExemplarSpec,
    IndexSpec,
    InputSpec,
    LayerSpec,
    Manifest,
    ModelSpec,
    NonconformitySpec,
    ResidualSpec,
    SplitSpec,
    VocabularySpec,
    file_stem,
    tapped_layers,
)
from agent.engine.preprocess import Preprocessor, parse_spec
from agent.engine.program import Program
from agent.engine.residual import ResidualTerm
from agent.engine.taps import PROBE_BATCH, ActivationTap
from agent.engine.tuning import PROBE_SIZE, RecallTarget, TunedLayer, noisy_probe, tune_layer
from agent.engine.vocabulary import VOCABULARY_FILE, encode
from agent.errors import ConfigError, DataError, FitError

__all__ = ["Dataset", "FitOptions", "fit_bundle", "input_specs"]


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
    exemplars: ExemplarKind = "none"  # training rows kept for a reviewer (agent.engine.exemplars)


def fit_bundle(
    *,
    model: nn.Module | Program,
    model_spec: ModelSpec,
    layers: dict[str, str],
    train: Dataset,
    calibration: Dataset,
    out: Path,
    options: FitOptions = FitOptions(),
    value_range: tuple[float, float] | None = None,
    input_ranges: dict[str, tuple[float, float]] | None = None,
    inputs: tuple[InputSpec, ...] | None = None,
    vocabulary: tuple[str, ...] | None = None,
    force: bool = False,
) -> Manifest:
    """Writes a complete, verified bundle to `out`; `layers` maps layer name -> preprocessing.

    `model` is a factory's module (`model_spec.factory`: its state_dict is saved) or a checked
    program (`model_spec.program`: its archive is copied). `value_range` is recorded for float
    inputs; integer inputs accept `input_ranges[name]`, else the range of the data. `inputs` is what
    `input_specs` gave a caller that checked the data already (the CLI does, before its probe pass):
    checking means reading every training row, which is not worth doing twice. `vocabulary` (token id
    i -> token, agent.engine.vocabulary.read) is kept as `vocabulary.json` for a model with token ids.
    """
    if (model_spec.program is not None) != isinstance(model, Program):
        raise ConfigError("a program model needs a ModelSpec with `program`, a module one with `factory`")
    if inputs is None:
        inputs = input_specs(model, train, calibration, value_range, input_ranges)
    _check_labels(train, calibration, model_spec.num_classes, options.k)
    if vocabulary is not None and not any(spec.is_integer for spec in inputs):
        raise ConfigError("--vocabulary: the model takes no integer input (token ids), so a vocabulary means nothing")
    exemplars = plan_exemplars(options.exemplars, inputs, train.arrays_for([spec.name for spec in inputs]))
    model_spec = model_spec.model_copy(update={"compute_dtype": options.compute_dtype})
    out = Path(out)
    refuse_to_replace(out, force)
    manifest = write_staged(
        out,
        lambda staging: _fit_into(
            staging, model, model_spec, inputs, layers, train, calibration, options, exemplars, vocabulary
        ),
    )
    # The operator named this factory on the command line: it is trusted for this check.
    factory_modules = (model_spec.factory.partition(":")[0],) if model_spec.factory else ()
    verify_bundle(out, BundleTrust(factory_modules=factory_modules)).close()
    return manifest


def refuse_to_replace(out: Path, force: bool) -> None:
    if out.exists() and any(out.iterdir()) and not force:
        raise ConfigError(f"{out}: exists and is not empty (pass --force to replace it)")


def write_staged(out: Path, write: Callable[[Path], Manifest]) -> Manifest:
    """`write` fills a fresh directory beside `out`, which then replaces `out` in one rename: a bundle
    directory is never seen half-written, and a failed write leaves `out` as it was. Files are made
    readable by all (the agent's container runs as another user than the one who fits)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        manifest = write(staging)
        staging.chmod(0o755)
        for path in staging.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return manifest


def input_specs(
    model: nn.Module | Program,
    train: Dataset,
    calibration: Dataset,
    value_range: tuple[float, float] | None = None,
    input_ranges: dict[str, tuple[float, float]] | None = None,
) -> tuple[InputSpec, ...]:
    """The manifest's inputs from the data (names, shapes, dtypes, ranges), checked against each other
    and, for a program, against what the program takes; DataError names the first mismatch."""
    names = list(train.inputs)
    if isinstance(model, Program):
        expected = model.input_meta()
        if len(names) == 1 and len(expected) == 1:
            names = [expected[0][0]]  # one array is the one input, whatever the file called it
        elif sorted(names) != sorted(name for name, _, _ in expected):
            raise DataError(
                f"the program takes inputs {[name for name, _, _ in expected]}, the data has {list(train.inputs)}"
            )
        else:
            names = [name for name, _, _ in expected]
    arrays = _by_name(train, names)
    held_out = _by_name(calibration, names)
    specs = []
    for name in names:
        array, other = arrays[name], held_out[name]
        dtype = str(array.dtype)
        if dtype not in INPUT_DTYPES:
            raise DataError(f"input {name!r} is {dtype}; inputs may be {', '.join(INPUT_DTYPES)}")
        if other.dtype != array.dtype or other.shape[1:] != array.shape[1:]:
            raise DataError(
                f"input {name!r}: training {array.dtype}{list(array.shape[1:])} and calibration "
                f"{other.dtype}{list(other.shape[1:])} differ"
            )
        if array.ndim < 2:
            raise DataError(f"input {name!r} has shape {list(array.shape)}: rows of at least one value are expected")
        if dtype.startswith("float") and not _finite(array):
            raise DataError(f"input {name!r} contains NaN or infinity: the indexes would be meaningless")
        given = (input_ranges or {}).get(name)
        if dtype.startswith("float"):
            value_range_here = value_range
        elif dtype == "bool":
            value_range_here = None
        else:
            value_range_here = given or (float(min(array.min(), other.min())), float(max(array.max(), other.max())))
        specs.append(InputSpec(name=name, shape=tuple(array.shape[1:]), dtype=dtype, value_range=value_range_here))
    if isinstance(model, Program):
        for spec, (name, dtype, shape) in zip(specs, model.input_meta(), strict=True):
            if dtype != spec.dtype:
                raise DataError(f"input {name!r}: the program takes {dtype}, the data is {spec.dtype}")
            if shape[0] is not None:
                raise DataError(
                    f"the program's input {name!r} has a fixed batch size of {shape[0]}: export it with a dynamic "
                    f"batch, e.g. torch.export.export(model, args, dynamic_shapes={{{name!r}: {{0: "
                    "torch.export.Dim('batch')}})"
                )
            if (
                any(size is not None and size != got for size, got in zip(shape[1:], spec.shape, strict=False))
                or len(shape) != len(spec.shape) + 1
            ):
                raise DataError(f"input {name!r}: the program takes {list(shape)}, the data has {['N', *spec.shape]}")
    return tuple(specs)


def _by_name(data: Dataset, names: list[str]) -> dict[str, np.ndarray]:
    return dict(zip(names, data.arrays_for(names), strict=True))


def _finite(array: np.ndarray) -> bool:
    return all(np.isfinite(array[i : i + 4096]).all() for i in range(0, len(array), 4096))


def _check_labels(train: Dataset, calibration: Dataset, num_classes: int, k: int) -> None:
    for name, data in (("training", train), ("calibration", calibration)):
        y = data.y
        if y is None or y.ndim != 1 or len(y) != len(data):
            raise DataError(f"{name} labels must be 1-d with one label per input")
        if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= num_classes:
            raise DataError(
                f"{name} labels must be integers in 0..{num_classes - 1} (the model has {num_classes} outputs)"
            )
    if k > len(train):
        raise ConfigError(f"k={k} exceeds the {len(train)} training points")


def check_layers(tap: ActivationTap, layers: dict[str, str], probe: list[np.ndarray]) -> dict[str, int]:
    """Each tapped layer's width from one pass on a few rows, before anything is fitted: an unknown or
    misshapen layer, a PCA wider than its layer, or a vector too wide for an index fails here, in
    seconds. Returns the widths by layer."""
    activations = tap(probe)
    widths = {name: values.shape[1] for name, values in activations.layers.items()}
    for name, spec in layers.items():
        pca = [dim for step, dim in parse_spec(spec) if step == "pca"]
        dim = pca[0] if pca else widths[name]
        if pca and dim is not None and dim > widths[name]:
            raise ConfigError(f"layer {name} has {widths[name]} features: pca:{dim} cannot keep more than that")
        if dim is not None and dim > MAX_INDEX_DIM:
            raise ConfigError(
                f"layer {name} has {widths[name]} features; an index holds at most {MAX_INDEX_DIM}: add "
                f"preprocessing, e.g. {name}=pca:64"
            )
    return widths


def _clipped(spec: NonconformitySpec, widths: dict[str, int]) -> NonconformitySpec:
    """The residual term needs fewer principal directions than its layer has features: more than
    the layer's width are clipped to half of it (the manifest records what was used)."""
    residual = spec.residual
    if residual is None or residual.components < widths[residual.layer]:
        return spec
    components = max(1, widths[residual.layer] // 2)
    return spec.model_copy(update={"residual": residual.model_copy(update={"components": components})})


def _fit_into(
    root: Path,
    model: nn.Module | Program,
    model_spec: ModelSpec,
    inputs: tuple[InputSpec, ...],
    layers: dict[str, str],
    train: Dataset,
    calibration: Dataset,
    options: FitOptions,
    exemplars: ExemplarSpec | None,
    vocabulary: tuple[str, ...] | None = None,
) -> Manifest:
    (root / "layers").mkdir()
    nonconformity = _sized(options.nonconformity, len(train))
    names = [spec.name for spec in inputs]
    train_x = _by_name(train, names)
    tap = ActivationTap(model, tapped_layers(list(layers), nonconformity), model_spec.compute_dtype, model_spec.output)
    probe = [np.ascontiguousarray(array[:PROBE_BATCH]) for array in train_x.values()]
    logits = tap(probe).outputs.shape[1]
    if logits != model_spec.num_classes:
        raise ConfigError(f"the model gives {logits} logits; the bundle says {model_spec.num_classes} classes")
    nonconformity = _clipped(nonconformity, check_layers(tap, layers, probe))
    residual_spec = nonconformity.residual
    preprocessors = _fit_preprocessors(tap, layers, train, names, options)
    # Before the indexes: a residual term that cannot be fitted fails in seconds, not minutes.
    residual = _fit_residual(tap, residual_spec, train, names, options) if residual_spec else None
    builders = {name: AnnoyBuilder(pre.output_dim, options.seed) for name, pre in preprocessors.items()}
    steps = -(-len(train) // options.batch_size)
    for activations in _progress(tap.batches(list(train_x.values()), options.batch_size), steps, options, "index"):
        for name, builder in builders.items():
            builder.add(preprocessors[name].transform(activations.layers[name]))

    stems = _stems(list(preprocessors))
    index_files = {name: f"{stem}.ann" for name, stem in stems.items()}
    for name, builder in builders.items():
        builder.save(root / index_files[name], options.n_trees)
    held_out = [np.ascontiguousarray(array[:PROBE_SIZE]) for array in _by_name(calibration, names).values()]
    tuned = _tune_search_k(root, tap, preprocessors, index_files, held_out, inputs, options)
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
    if isinstance(model, Program):
        assert model_spec.program is not None
        (root / model_spec.program).write_bytes(model.archive)
    else:
        assert model_spec.weights is not None
        torch.save(model.state_dict(), root / model_spec.weights)
    assert train.y is not None and calibration.y is not None  # _check_labels
    np.save(root / TRAIN_LABELS_FILE, train.y.astype(np.int64))
    if exemplars is not None:  # in index order: the indexes hold training row i as item i
        write_exemplars(root, exemplars, list(train_x.values()))
    if vocabulary is not None:
        (root / VOCABULARY_FILE).write_bytes(encode(vocabulary))

    draft = Manifest(
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        model=model_spec,
        inputs=inputs,
        layers=tuple(layer_specs),
        k=options.k,
        index=IndexSpec(
            n_trees=options.n_trees, search_k=-1 if options.search_k is None else options.search_k, seed=options.seed
        ),
        train=SplitSpec(size=len(train), source=train.source, source_indices=train.source_indices),
        calibration=SplitSpec(
            size=len(calibration), source=calibration.source, source_indices=calibration.source_indices
        ),
        libraries=library_versions(),
        files={},
        nonconformity=nonconformity,
        exemplars=exemplars,
        vocabulary=VocabularySpec(file=VOCABULARY_FILE, size=len(vocabulary)) if vocabulary is not None else None,
    )
    tap.close()
    arrays = _calibrate(root, draft, model, preprocessors, residual, train, calibration, options)
    np.savez(root / CALIBRATION_FILE, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds badly

    files = {str(path.relative_to(root)): sha256_file(path) for path in sorted(root.rglob("*")) if path.is_file()}
    manifest = draft.model_copy(update={"files": files})
    (root / MANIFEST_FILE).write_text(json.dumps(manifest.document(), indent=2) + "\n")
    return manifest


def _stems(names: list[str]) -> dict[str, str]:
    """Index file names without suffix, one per layer, distinct even where two names share a stem."""
    stems: dict[str, str] = {}
    for name in names:
        stem, n = f"layers/{file_stem(name)}", 1
        while stem in stems.values():
            n += 1
            stem = f"layers/{file_stem(name)}-{n}"
        stems[name] = stem
    return stems


def _tune_search_k(
    root: Path,
    tap: ActivationTap,
    preprocessors: dict[str, Preprocessor],
    index_files: dict[str, str],
    held_out: list[np.ndarray],
    inputs: tuple[InputSpec, ...],
    options: FitOptions,
) -> dict[str, TunedLayer]:
    """Per layer, the cheapest search_k reaching the recall target (none when --search-k fixes it)."""
    if options.search_k is not None:
        return {}
    noisy = [noisy_inputs(array, spec, options.seed) for array, spec in zip(held_out, inputs, strict=True)]
    heldout, shifted = tap(held_out), tap(noisy)
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


def noisy_inputs(array: np.ndarray, spec: InputSpec, seed: int) -> np.ndarray:
    """The shifted probe of one input: noise on numbers (rounded for integers), booleans as they are."""
    if spec.dtype == "bool":
        return array
    noisy = noisy_probe(array.astype(np.float64), spec.value_range, seed)
    return (np.rint(noisy) if spec.is_integer else noisy).astype(array.dtype)


def _fit_preprocessors(
    tap: ActivationTap, layers: dict[str, str], train: Dataset, names: list[str], options: FitOptions
) -> dict[str, Preprocessor]:
    rng = np.random.default_rng(options.seed)
    sample_rows = np.sort(rng.choice(len(train), size=min(options.pca_sample, len(train)), replace=False))
    sample_x = [np.ascontiguousarray(array[sample_rows]) for array in _by_name(train, names).values()]
    batches = list(tap.batches(sample_x, options.batch_size))
    preprocessors = {}
    for name, spec in layers.items():
        sample = np.concatenate([batch.layers[name] for batch in batches])
        try:
            preprocessors[name] = Preprocessor(spec=spec, input_dim=sample.shape[1]).fit(sample, options.seed)
        except FitError as exc:
            raise FitError(f"layer {name}: {exc}") from None
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


def _fit_residual(
    tap: ActivationTap, spec: ResidualSpec, train: Dataset, names: list[str], options: FitOptions
) -> ResidualTerm:
    """The residual term from two disjoint seeded samples of the training set: the reference (its
    shares rank new inputs) and up to `pca_sample` other points for the principal directions."""
    arrays = list(_by_name(train, names).values())
    rows = np.random.default_rng([options.seed, 2]).permutation(len(train))
    reference_rows = np.sort(rows[: spec.reference_size])
    sample_rows = np.sort(rows[spec.reference_size : spec.reference_size + options.pca_sample])

    def layer_of(chosen: np.ndarray) -> np.ndarray:
        chosen_x = [np.ascontiguousarray(array[chosen]) for array in arrays]
        return np.concatenate([batch.layers[spec.layer] for batch in tap.batches(chosen_x, options.batch_size)])

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
    model: nn.Module | Program,
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
    assert train.y is not None and calibration.y is not None
    train_labels = train.y.astype(np.int64)
    names = [spec.name for spec in draft.inputs]
    train_x, calibration_x = _by_name(train, names), list(_by_name(calibration, names).values())
    arrays: dict[str, np.ndarray] = {}
    if draft.distance_layers:
        # The reference is measured before the distance term exists: by the labels-only α's scorer.
        labels_only = draft.model_copy(update={"nonconformity": NonconformitySpec()})
        scorer = NonconformityScorer(labels_only, model, preprocessors, indexes, train_labels, None, None)
        try:
            arrays["distance_reference"] = _distance_reference(scorer, draft, list(train_x.values()), options)
        finally:
            scorer.tap.close()
    if residual is not None:
        arrays["residual_reference"] = residual.reference_sorted
    distance_reference = np.sort(arrays["distance_reference"], axis=0) if draft.distance_layers else None
    scorer = NonconformityScorer(draft, model, preprocessors, indexes, train_labels, distance_reference, residual)
    try:
        arrays |= calibration_scores(scorer, calibration_x, calibration.y, options.batch_size)
    finally:
        scorer.tap.close()
    return arrays


def calibration_scores(
    scorer: NonconformityScorer, calibration_x: list[np.ndarray], labels: np.ndarray, batch_size: int
) -> dict[str, np.ndarray]:
    """`alpha` (α of the true labels) and `label_free` (s(x)) of a calibration set, each sorted, measured
    through `scorer`'s indexes: fit's just built, or the extended ones of `dknn-agent extend`."""
    alpha = np.concatenate(
        [
            scorer.alpha([np.ascontiguousarray(array[start : start + batch_size]) for array in calibration_x])
            for start in range(0, len(labels), batch_size)
        ]
    )
    return {"alpha": np.sort(alpha[np.arange(len(alpha)), labels]), "label_free": np.sort(alpha.min(axis=1))}


def _distance_reference(
    scorer: NonconformityScorer, draft: Manifest, train_x: list[np.ndarray], options: FitOptions
) -> np.ndarray:
    """The k-NN distance statistic (mean or farthest of the nearest m) per distance layer of a seeded
    sample of training points, each measured, like a new input, against the other training points
    (`own_distances`). It is fixed before calibration, which keeps α a fixed function of x and j and
    the p-values conformal."""
    rng = np.random.default_rng([options.seed, 1])
    size = draft.nonconformity.distance_reference_size
    rows = np.sort(rng.choice(len(train_x[0]), size=size, replace=False))
    per_batch = []
    for start in range(0, size, options.batch_size):
        batch_rows = rows[start : start + options.batch_size]
        activations = scorer.tap([np.ascontiguousarray(array[batch_rows]) for array in train_x])
        vectors = {
            name: scorer.preprocessors[name].transform(activations.layers[name]) for name in draft.distance_layers
        }
        per_batch.append(own_distances(scorer.indexes, draft, vectors, batch_rows))
    return np.concatenate(per_batch)


def own_distances(
    indexes: Mapping[str, NeighborIndex], manifest: Manifest, vectors: Mapping[str, np.ndarray], items: np.ndarray
) -> np.ndarray:
    """`(n, distance layers)`: the distance statistic of indexed items (`items`, with their index
    `vectors` per distance layer), each queried for k + 1 neighbours with itself dropped (where the
    search found it, else the farthest of the k + 1)."""
    per_layer = []
    for name in manifest.distance_layers:
        distances, ids = indexes[name].search(vectors[name], manifest.k + 1)
        itself = ids == items[:, None]
        drop = np.where(itself.any(axis=1), itself.argmax(axis=1), manifest.k)
        keep = np.ones_like(itself)
        keep[np.arange(len(keep)), drop] = False
        per_layer.append(distances[keep].reshape(len(keep), 1, manifest.k))
    spec = manifest.nonconformity
    return distance_statistic(np.concatenate(per_layer, axis=1), spec.distance_statistic, spec.distance_neighbors)


def _progress(iterable: Any, steps: int, options: FitOptions, what: str, unit: str = "batch") -> Any:
    return tqdm(iterable, total=steps, desc=what, unit=unit, disable=not options.progress)


def library_versions() -> dict[str, str]:
    return {
        "dknn_agent": agent.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "annoy": getattr(annoy, "__version__", "1.17"),
    }
