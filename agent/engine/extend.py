"""Extending a bundle with reviewed inputs (`dknn-agent extend`, issue #24).

A person who reviewed quarantined events knows things the training set does not: that a digit
drawn sideways is still a 3, that the model was right after all. An extended bundle B2 puts those
inputs into the per-layer indexes under their reviewed labels, so the next input like them finds
neighbours that vouch for a label instead of none. What changes and what does not:

- **indexes**: every layer's Annoy index is rebuilt from B's item vectors (read back out of B's
  own `.ann` file: B's training data is not needed) followed by the reviewed inputs' vectors (one
  forward pass, each layer's preprocessing as fitted), with B's trees, seed and per-layer search_k;
  the recall at that search_k is measured again on the new trees and recorded;
- **labels**: `train_labels.npy` gains the reviewed labels (model_right: the model's answer, which
  must still be the bundle's model's answer; model_wrong: the given label);
- **calibration**: the same calibration points, scored again against B2's indexes (fit's
  `calibration_scores` through a `NonconformityScorer`), so α is one function of x and j for
  calibration and new inputs alike and the p-values stay conformal. The calibration inputs are
  not in a bundle, so the caller gives them; scored against B's indexes first, they must reproduce
  B's own calibration scores, which proves they are the set B was calibrated on;
- **kept as in B**: the model, the preprocessing, the distance reference (each sampled training
  point's distance to the *training* points) and the residual term (mean, principal directions,
  reference). Both describe the training data, which has not changed; a reviewed input is judged by
  them as any input is. Hence the distance term shrinks for inputs near reviewed ones (their
  neighbours are closer), while the residual term does not move at all;
- **provenance**: the manifest's `reviews` (agent.engine.provenance) names, per point, the review
  that put it there; the model version becomes `<base version>+reviews.<points>`.

Extending an extended bundle starts again from its base's training points (items 0 … base size −
1) and merges: its reviewed points stay unless a later review of the same event replaces them, so
the result is the same as extending the fitted bundle with every review at once (the latest review
per event wins). Out-of-scope reviews add no point; they are listed, and a later out-of-scope
review takes an earlier point out.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from agent.engine.bundle import BundleTrust, VerifiedBundle, sha256_file, verify_bundle
from agent.engine.conformal import REVIEWED_DISTANCE_REFERENCE, ReviewedDistances
from agent.engine.data_files import Dataset
from agent.engine.dknn import NonconformityScorer, open_index
from agent.engine.exemplars import thumbnails
from agent.engine.fit import (
    calibration_scores,
    library_versions,
    noisy_inputs,
    own_distances,
    refuse_to_replace,
    write_staged,
)
from agent.engine.index import AnnoyBackend, AnnoyBuilder
from agent.engine.manifest import CALIBRATION_FILE, MANIFEST_FILE, TRAIN_LABELS_FILE, LayerSpec, Manifest, SplitSpec
from agent.engine.provenance import MAX_SOURCES, BaseBundle, ReviewedEvent, ReviewedPoint, ReviewSpec
from agent.engine.taps import ActivationTap, TappableModel
from agent.engine.tuning import PROBE_SIZE, measure_recall
from agent.errors import BundleError, ConfigError, DataError, InputError

MAX_VERSION = 64  # ModelSpec.version
CALIBRATION_TOLERANCE = 0.01  # share of B's sorted calibration scores the given set may miss by (float noise)


@dataclass(frozen=True)
class NewPoint:
    """A reviewed input to add: one array per model input (no batch dimension), what the quarantine
    record said the model answered, and the review (its `source` indexes the `sources` given)."""

    inputs: tuple[np.ndarray, ...]
    model_answer: int
    review: ReviewedPoint


@dataclass(frozen=True)
class Reviews:
    """What the reviews of one source say: inputs to add and events out of scope, one review per event."""

    source: str
    points: Sequence[NewPoint]
    out_of_scope: Sequence[ReviewedEvent] = ()


@dataclass(frozen=True)
class Extension:
    """What `extend_bundle` did: the new manifest, the points it added, and what it left out."""

    manifest: Manifest
    added: tuple[ReviewedPoint, ...]  # this run's points, as the manifest lists them
    kept: int  # reviewed points carried over from an extended base
    replaced: int  # base points or out-of-scope events a later review of the same event replaced
    model_changed: tuple[ReviewedPoint, ...]  # model_right reviews of an answer this model does not give


def extend_bundle(
    *,
    base: Path,
    reviews: Reviews,
    calibration: Dataset,
    out: Path,
    trust: BundleTrust | None = None,
    model_version: str | None = None,
    batch_size: int = 512,
    force: bool = False,
) -> Extension:
    """Writes B2 to `out` (staged beside it, renamed into place, verified like a loader would) and
    returns what it holds. ConfigError without a point to add; DataError for a calibration set that
    is not B's."""
    out = Path(out)
    refuse_to_replace(out, force)
    bundle = verify_bundle(base, trust)
    try:
        model = bundle.build_model()
        names = [spec.name for spec in bundle.manifest.inputs]
        calibration_x = _calibration_inputs(bundle.manifest, calibration, names)
        assert calibration.y is not None  # _calibration_inputs
        _check_calibration(bundle, model, calibration_x, calibration.y, batch_size)
        plan = _merge(bundle, reviews, model, batch_size)
        labels = calibration.y
        manifest = write_staged(
            out, lambda staging: _write(staging, bundle, model, plan, calibration_x, labels, model_version, batch_size)
        )
    finally:
        bundle.close()
    verify_bundle(out, trust).close()
    return Extension(
        manifest=manifest,
        added=plan.added,
        kept=plan.kept,
        replaced=plan.replaced,
        model_changed=plan.model_changed,
    )


def _calibration_inputs(manifest: Manifest, calibration: Dataset, names: list[str]) -> list[np.ndarray]:
    """The calibration arrays in the manifest's input order, after the cheap checks: labels, size, layout."""
    y = calibration.y
    if y is None or y.ndim != 1 or len(y) != len(calibration):
        raise DataError("--calibration needs one integer label per input ('y'): the calibration scores are of them")
    if len(calibration) != manifest.calibration.size:
        raise DataError(
            f"--calibration has {len(calibration)} inputs; the bundle was calibrated on {manifest.calibration.size} "
            f"({manifest.calibration.source or 'source not recorded'})"
        )
    arrays = calibration.arrays_for(names)
    for spec, array in zip(manifest.inputs, arrays, strict=True):
        if str(array.dtype) != spec.dtype or tuple(array.shape[1:]) != spec.shape:
            raise DataError(
                f"--calibration input {spec.name!r} is {array.dtype}{list(array.shape[1:])}, the bundle takes "
                f"{spec.dtype}{list(spec.shape)}"
            )
    return arrays


def _base_indexes(bundle: VerifiedBundle) -> dict[str, AnnoyBackend]:
    manifest = bundle.manifest
    return {
        layer.name: AnnoyBackend(Path(bundle.index_path(layer.name)), layer.dim, manifest.search_k(layer.name))
        for layer in manifest.layers
    }


def _check_calibration(
    bundle: VerifiedBundle, model: TappableModel, calibration_x: list[np.ndarray], labels: np.ndarray, batch_size: int
) -> None:
    """The given calibration set, scored against B's own indexes, must give B's calibration scores."""
    manifest = bundle.manifest
    scorer = NonconformityScorer(
        manifest,
        model,
        bundle.preprocessors,
        _base_indexes(bundle),
        bundle.train_labels,
        bundle.distance_reference,
        bundle.residual,
        bundle.reviewed_distances,
    )
    try:
        scores = calibration_scores(scorer, calibration_x, labels, batch_size)
    finally:
        scorer.tap.close()
    differ = float((scores["alpha"] != bundle.calibration_alpha).mean())
    if differ > CALIBRATION_TOLERANCE:
        raise DataError(
            f"--calibration does not reproduce the bundle's calibration scores ({differ:.0%} differ): it is not the set "
            f"the bundle was calibrated on ({manifest.calibration.source or 'source not recorded'})"
        )


@dataclass(frozen=True)
class _Plan:
    """What B2's indexes hold: B's items it keeps (its training points, then its reviewed points still
    standing), then the new points' vectors; the labels of all of them; the provenance."""

    base_items: np.ndarray  # B's items B2 keeps: its training points, then the reviewed points still standing
    vectors: dict[str, np.ndarray]  # layer -> (new points, dim): the added inputs, preprocessed
    labels: np.ndarray  # B2's train labels
    spec: ReviewSpec
    added: tuple[ReviewedPoint, ...]
    kept: int
    replaced: int
    model_changed: tuple[ReviewedPoint, ...]
    new_inputs: list[np.ndarray]  # per model input, the added points' rows (for exemplars)
    base_version: str


def _merge(bundle: VerifiedBundle, reviews: Reviews, model: TappableModel, batch_size: int) -> _Plan:
    """The latest review per event across B's reviewed points and out-of-scope events and the new
    reviews (`_later`), after one forward pass over the new inputs for their vectors and the model's
    answers."""
    manifest = bundle.manifest
    previous = manifest.reviews
    base = (
        previous.base
        if previous
        else BaseBundle(version=manifest.model.version, digest=bundle.digest, train_size=manifest.train.size)
    )
    sources = [*previous.sources] if previous else []
    if reviews.source not in sources:
        sources.append(reviews.source)
    if len(sources) > MAX_SOURCES:
        raise ConfigError(f"the bundle already lists {MAX_SOURCES} review sources: extend its base with all reviews")
    source = sources.index(reviews.source)
    new = [point.review.model_copy(update={"source": source}) for point in reviews.points]
    arrays = _stack(manifest, [point.inputs for point in reviews.points])
    vectors, answers = _vectors(bundle, model, arrays, batch_size)
    # A model_right review vouches for an answer: one this model does not give is not its answer.
    changed = [
        review.verdict == "model_right" and int(answer) != point.model_answer
        for review, point, answer in zip(new, reviews.points, answers, strict=True)
    ]

    # Candidates per event: (review, B's item holding it, index among the new points).
    winners: dict[str, tuple[ReviewedEvent, int | None, int | None]] = {}
    if previous is not None:
        for row, point in enumerate(previous.points, start=base.train_size):
            winners[point.event_id] = (point, row, None)
        for event in previous.out_of_scope:
            winners[event.event_id] = (event, None, None)
    from_base = dict(winners)
    fresh: list[tuple[ReviewedEvent, int | None, int | None]] = [
        (review, None, index) for index, review in enumerate(new) if not changed[index]
    ]
    fresh += [(event.model_copy(update={"source": source}), None, None) for event in reviews.out_of_scope]
    for candidate in fresh:
        current = winners.get(candidate[0].event_id)
        if current is None or _later(candidate[0], current[0]):
            winners[candidate[0].event_id] = candidate
    replaced = sum(winners[event_id] is not candidate for event_id, candidate in from_base.items())

    standing = [entry for entry in winners.values() if entry[1] is not None]  # B's points, in B's order
    added = [entry for entry in winners.values() if entry[2] is not None]  # this run's, in source order
    points = [ReviewedPoint.model_validate(entry[0].model_dump()) for entry in (*standing, *added)]
    out_of_scope = [entry[0] for entry in winners.values() if entry[1] is None and entry[2] is None]
    if not points:
        raise ConfigError("no reviewed input to add: every usable review is out_of_scope or was left out")
    spec = ReviewSpec(base=base, sources=tuple(sources), points=tuple(points), out_of_scope=tuple(out_of_scope))
    chosen = [entry[2] for entry in added if entry[2] is not None]
    base_items = np.concatenate([np.arange(base.train_size), [entry[1] for entry in standing]]).astype(np.int64)
    labels = np.concatenate(
        [bundle.train_labels[base_items], [points[len(standing) + i].label for i in range(len(chosen))]]
    )
    return _Plan(
        base_items=base_items,
        vectors={name: layer[chosen] for name, layer in vectors.items()},
        labels=labels.astype(np.int64),
        spec=spec,
        added=tuple(points[len(standing) :]),
        kept=len(standing),
        replaced=replaced,
        model_changed=tuple(review for review, bad in zip(new, changed, strict=True) if bad),
        new_inputs=[array[chosen] for array in arrays],
        base_version=base.version,
    )


def _later(new: ReviewedEvent, current: ReviewedEvent) -> bool:
    """Whether `new` replaces `current`, a review of the same event: a later reviewed_at, or the same
    instant at a later position in the same source. Across sources a tie keeps what the bundle has,
    so reading the same reviews again changes nothing."""
    new_time, current_time = _instant(new.reviewed_at), _instant(current.reviewed_at)
    if new_time != current_time:
        return new_time > current_time
    return new.source == current.source and (new.partition, new.offset) > (current.partition, current.offset)


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text.upper().replace("Z", "+00:00")).astimezone(UTC)


def _stack(manifest: Manifest, rows: Sequence[tuple[np.ndarray, ...]]) -> list[np.ndarray]:
    """One `(n, *shape)` array per model input from the points' rows, each row checked against its input."""
    arrays = []
    for position, spec in enumerate(manifest.inputs):
        for row in rows:
            if len(row) != len(manifest.inputs):
                raise InputError(f"a reviewed point has {len(row)} input(s), the model takes {len(manifest.inputs)}")
            array = row[position]
            if str(array.dtype) != spec.dtype or tuple(array.shape) != spec.shape:
                raise InputError(
                    f"a reviewed input {spec.name!r} is {array.dtype}{list(array.shape)}, the model takes "
                    f"{spec.dtype}{list(spec.shape)}"
                )
        arrays.append(np.stack([row[position] for row in rows]) if rows else np.empty((0, *spec.shape), spec.dtype))
    return arrays


def _vectors(
    bundle: VerifiedBundle, model: TappableModel, arrays: list[np.ndarray], batch_size: int
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Each layer's index vectors of the new inputs (the layer's preprocessing as fitted) and the model's answers."""
    manifest = bundle.manifest
    vectors: dict[str, list[np.ndarray]] = {layer.name: [] for layer in manifest.layers}
    answers: list[np.ndarray] = []
    tap = ActivationTap(model, manifest.tapped_layers, manifest.model.compute_dtype, manifest.model.output)
    try:
        for activations in tap.batches(arrays, batch_size):
            for name in vectors:
                vectors[name].append(bundle.preprocessors[name].transform(activations.layers[name]))
            answers.append(activations.model_prediction)
    finally:
        tap.close()
    out = {
        layer.name: np.concatenate(vectors[layer.name]) if answers else np.empty((0, layer.dim), np.float32)
        for layer in manifest.layers
    }
    return out, np.concatenate(answers) if answers else np.empty(0, np.int64)


def version_of(base_version: str, points: int, given: str | None = None) -> str:
    """B2's model version: `given`, else `<base version>+reviews.<points>`, the base's end cut (marked
    `~`) where the whole would pass the manifest's 64 characters."""
    if given is not None:
        if not 1 <= len(given) <= MAX_VERSION:
            raise ConfigError(f"--model-version must have 1 to {MAX_VERSION} characters")
        return given
    suffix = f"+reviews.{points}"
    if len(base_version) + len(suffix) <= MAX_VERSION:
        return base_version + suffix
    return base_version[: MAX_VERSION - len(suffix) - 1] + "~" + suffix


def _write(
    root: Path,
    bundle: VerifiedBundle,
    model: TappableModel,
    plan: _Plan,
    calibration_x: list[np.ndarray],
    calibration_y: np.ndarray,
    model_version: str | None,
    batch_size: int,
) -> Manifest:
    """B2's files into `root`: B's model and parameters as they are, new indexes, labels, exemplars
    and calibration, the manifest last."""
    manifest = bundle.manifest
    regenerated = {TRAIN_LABELS_FILE, CALIBRATION_FILE, *(layer.index_file for layer in manifest.layers)}
    exemplars = manifest.exemplars
    regenerated |= {one.file for one in exemplars.files} if exemplars is not None else set()
    for relative, digest in manifest.files.items():
        if relative not in regenerated:
            _copy_verified(bundle.root, root, relative, digest)
    size = len(plan.labels)
    first_reviewed = plan.spec.base.train_size
    reviewed_vectors = {}  # layer -> the reviewed points' vectors (items first_reviewed … size − 1)
    for layer in manifest.layers:
        old = AnnoyBackend(Path(bundle.index_path(layer.name)), layer.dim).item_vectors()[plan.base_items]
        reviewed_vectors[layer.name] = np.concatenate([old[first_reviewed:], plan.vectors[layer.name]])
        builder = AnnoyBuilder(layer.dim, manifest.index.seed)
        builder.add(old)
        builder.add(plan.vectors[layer.name])
        (root / layer.index_file).parent.mkdir(parents=True, exist_ok=True)
        builder.save(root / layer.index_file, manifest.index.n_trees)
    np.save(root / TRAIN_LABELS_FILE, plan.labels)
    if exemplars is not None and bundle.exemplars is not None:
        _write_exemplars(root, bundle, plan)
    layers = _remeasured(root, bundle, model, calibration_x)
    draft = manifest.model_copy(
        update={
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "model": manifest.model.model_copy(
                update={"version": version_of(plan.base_version, len(plan.spec.points), model_version)}
            ),
            "layers": layers,
            "train": SplitSpec(size=size, source=manifest.train.source, source_indices=manifest.train.source_indices),
            "libraries": library_versions(),
            "files": {},
            "reviews": plan.spec,
        }
    )
    indexes = {
        layer.name: open_index(str(root / layer.index_file), layer.dim, size, "annoy", draft.search_k(layer.name))
        for layer in draft.layers
    }
    reviewed: ReviewedDistances | None = None
    if bundle.distance_reference is not None:
        items = np.arange(first_reviewed, size)
        reference = own_distances(indexes, draft, reviewed_vectors, items)
        reviewed = ReviewedDistances(first_item=first_reviewed, reference_sorted=np.sort(reference, axis=0))
    scorer = NonconformityScorer(
        draft, model, bundle.preprocessors, indexes, plan.labels, bundle.distance_reference, bundle.residual, reviewed
    )
    try:
        arrays = calibration_scores(scorer, calibration_x, calibration_y, batch_size)
    finally:
        scorer.tap.close()
    if bundle.distance_reference is not None and reviewed is not None:
        arrays["distance_reference"] = bundle.distance_reference  # as in B: the training points' own distances
        arrays[REVIEWED_DISTANCE_REFERENCE] = reviewed.reference_sorted
    if bundle.residual is not None:
        arrays["residual_reference"] = bundle.residual.reference_sorted
    np.savez(root / CALIBRATION_FILE, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds badly
    files = {str(path.relative_to(root)): sha256_file(path) for path in sorted(root.rglob("*")) if path.is_file()}
    final = Manifest.model_validate({**draft.document(), "files": files})  # every validator, on the real thing
    (root / MANIFEST_FILE).write_text(json.dumps(final.document(), indent=2) + "\n")
    return final


def _copy_verified(source: Path, target: Path, relative: str, digest: str) -> None:
    """A file of B as it is; its hash is checked again, on the copy, against B's manifest."""
    (target / relative).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source / relative, target / relative, follow_symlinks=False)
    if sha256_file(target / relative) != digest:
        raise BundleError(f"{source / relative}: changed since the bundle was verified")


def _write_exemplars(root: Path, bundle: VerifiedBundle, plan: _Plan) -> None:
    """B's exemplar rows B2 keeps, then the new points' rows rendered as B renders them."""
    spec = bundle.manifest.exemplars
    assert spec is not None and bundle.exemplars is not None
    for one, new in zip(spec.files, plan.new_inputs, strict=True):
        kept = bundle.exemplars.arrays[one.input]
        rows = len(plan.base_items) + len(new)
        (root / one.file).parent.mkdir(parents=True, exist_ok=True)
        out = np.lib.format.open_memmap(root / one.file, mode="w+", dtype=one.dtype, shape=(rows, *one.shape))
        for start in range(0, len(plan.base_items), 4096):
            items = plan.base_items[start : start + 4096]
            out[start : start + len(items)] = kept[items]
        if len(new) and spec.kind == "inputs":
            out[len(plan.base_items) :] = new
        elif len(new):
            assert one.value_range is not None  # every thumbnail file has the range it was scaled from
            out[len(plan.base_items) :] = thumbnails(new, one.value_range, one.shape)
        out.flush()
        del out


def _remeasured(
    root: Path, bundle: VerifiedBundle, model: TappableModel, calibration_x: list[np.ndarray]
) -> tuple[LayerSpec, ...]:
    """B's layers with their search_k, and the recall that search_k reaches on the new trees (where B
    measured one: held-out calibration inputs and the same with noise, as fit probes)."""
    manifest = bundle.manifest
    if all(layer.recall is None for layer in manifest.layers):
        return manifest.layers
    held_out = [np.ascontiguousarray(array[:PROBE_SIZE]) for array in calibration_x]
    noisy = [
        noisy_inputs(array, spec, manifest.index.seed) for array, spec in zip(held_out, manifest.inputs, strict=True)
    ]
    tap = ActivationTap(model, manifest.tapped_layers, manifest.model.compute_dtype, manifest.model.output)
    try:
        clean, shifted = tap(held_out), tap(noisy)
    finally:
        tap.close()
    layers = []
    for layer in manifest.layers:
        if layer.recall is not None:
            pre = bundle.preprocessors[layer.name]
            recall = measure_recall(
                root / layer.index_file,
                layer.dim,
                pre.transform(clean.layers[layer.name]),
                pre.transform(shifted.layers[layer.name]),
                manifest.k,
                manifest.search_k(layer.name),
            )
            layer = layer.model_copy(update={"recall": recall})
        layers.append(layer)
    return tuple(layers)
