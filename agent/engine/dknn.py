"""The DkNN scorer: model taps + per-layer preprocessing + k-NN indexes + conformal calibration.

Scoring a batch is one forward pass, one index query per layer per input, and numpy for the
nonconformity and p-values (docs/design.md §2); see `agent.engine.conformal` for the exact conventions.
Two classes, because fit needs the first without the second: `NonconformityScorer` measures α and
needs no calibration; `DkNN` is built from a complete `VerifiedBundle` and adds its calibration.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from threadpoolctl import ThreadpoolController
from torch import nn

from agent.engine import conformal
from agent.engine.bundle import BundleTrust, VerifiedBundle, verify_bundle
from agent.engine.index import BACKENDS, AnnoyBackend, ExactBackend, IndexBackend, NeighborIndex
from agent.engine.manifest import Manifest
from agent.engine.preprocess import Preprocessor
from agent.engine.residual import ResidualTerm
from agent.engine.taps import PROBE_BATCH, Activations, ActivationTap, TappableModel
from agent.errors import BundleError, ConfigError, DknnError, InputError, first_line

Inputs = np.ndarray | Sequence[np.ndarray]  # one array per model input; a bare array for a single-input model


@dataclass(frozen=True)
class ScoreBatch:
    """Everything DkNN says about a batch of n inputs over L layers and C classes."""

    prediction: np.ndarray  # (n,) DkNN label
    credibility: np.ndarray  # (n,)
    confidence: np.ndarray  # (n,)
    p_values: np.ndarray  # (n, C)
    alpha: np.ndarray  # (n, C) nonconformity per candidate label
    label_free_score: np.ndarray  # (n,) s(x) = min_j alpha
    model_prediction: np.ndarray  # (n,) argmax of the model's own output
    model_outputs: np.ndarray  # (n, C) raw outputs (logits)
    neighbor_ids: np.ndarray  # (n, L, k) training row ids, nearest first, -1 = missing
    neighbor_labels: np.ndarray  # (n, L, k)
    neighbor_distances: np.ndarray  # (n, L, k) Euclidean, in each layer's index space; +inf = missing

    def __len__(self) -> int:
        return len(self.prediction)


StageTimer = Callable[[str], AbstractContextManager]


def _untimed(_stage: str) -> AbstractContextManager:
    return nullcontext()


class NonconformityScorer:
    """α(x, j) for every candidate label of a batch: the model's taps, each layer's preprocessing and
    index, the training labels and the nonconformity's references — everything `DkNN` needs but the
    calibration scores.

    Why it stands apart: `fit` measures the calibration set's α with it, against the indexes it has
    just built, before any calibration exists to build a `DkNN` from. Thread-compatible, not
    thread-safe (one tap per model).
    """

    def __init__(
        self,
        manifest: Manifest,
        model: nn.Module | TappableModel,
        preprocessors: Mapping[str, Preprocessor],
        indexes: Mapping[str, NeighborIndex],
        train_labels: np.ndarray,
        distance_reference: np.ndarray | None,
        residual: ResidualTerm | None,
        reviewed_distances: conformal.ReviewedDistances | None = None,
    ) -> None:
        if bool(manifest.distance_layers) != (distance_reference is not None):
            raise BundleError("the manifest's nonconformity and the distance reference disagree")
        if reviewed_distances is not None and distance_reference is None:
            raise BundleError("a reviewed points' distance reference without a distance term")
        if (manifest.nonconformity.residual is None) != (residual is None):
            raise BundleError("the manifest's nonconformity and the residual term disagree")
        self.manifest = manifest
        self.tap = ActivationTap(
            model, manifest.tapped_layers, manifest.model.compute_dtype, output=manifest.model.output
        )
        self.preprocessors = dict(preprocessors)
        self.indexes = dict(indexes)
        self.train_labels = train_labels
        self.k = manifest.k
        self.num_classes = manifest.model.num_classes
        self.distance_reference = distance_reference
        self.reviewed_distances = reviewed_distances
        self.residual = residual
        names = manifest.layer_names
        self._label_rows = [names.index(name) for name in manifest.label_layers]
        self._distance_rows = [names.index(name) for name in manifest.distance_layers]
        self._blas = ThreadpoolController()

    def as_inputs(self, x: Inputs) -> list[np.ndarray]:
        """One array per model input, in the manifest's order; a bare array is the only input's batch."""
        arrays = [x] if isinstance(x, np.ndarray) else list(x)
        if len(arrays) != len(self.manifest.inputs):
            names = [spec.name for spec in self.manifest.inputs]
            raise InputError(f"expected {len(names)} input array(s) ({', '.join(names)}), got {len(arrays)}")
        return arrays

    def check_layout(self, x: Inputs) -> None:
        """Raises InputError unless each array's dtype and shape fit its input (the values are not read)."""
        arrays = self.as_inputs(x)
        for spec, array in zip(self.manifest.inputs, arrays, strict=True):
            label = f"input {spec.name!r}: " if len(arrays) > 1 else "input "
            if np.dtype(array.dtype) != np.dtype(spec.dtype):
                raise InputError(f"{label}dtype {np.dtype(array.dtype)}, expected {spec.dtype}")
            if array.ndim != len(spec.shape) + 1 or tuple(array.shape[1:]) != tuple(spec.shape):
                raise InputError(f"{label}shape {tuple(array.shape)}, expected {('N', *spec.shape)}")
            if len(array) != len(arrays[0]):
                raise InputError(f"{label}has {len(array)} rows, the first input {len(arrays[0])}")

    def check_input(self, x: Inputs) -> list[np.ndarray]:
        """The arrays of a batch, once they fit the bundle: dtype, shape, finite floats, integers in range."""
        arrays = self.as_inputs(x)
        if not all(isinstance(array, np.ndarray) for array in arrays):
            raise InputError(f"expected numpy arrays, got {[type(array).__name__ for array in arrays]}")
        self.check_layout(arrays)
        for spec, array in zip(self.manifest.inputs, arrays, strict=True):
            if spec.dtype.startswith("float") and not np.isfinite(array).all():
                raise InputError(f"input {spec.name!r} contains NaN or infinity")
            if spec.is_integer and spec.value_range is not None and array.size:
                low, high = spec.value_range
                if array.min() < low or array.max() > high:
                    raise InputError(f"input {spec.name!r} holds values outside [{low:g}, {high:g}]")
        return arrays

    def check_model(self, where: Path) -> None:
        """One forward pass on a probe batch: the model must take the manifest's inputs, give one
        logit per class, and every tapped layer must be as wide as the bundle says, or every event
        would fail later, one by one."""
        probe = [
            np.full((PROBE_BATCH, *spec.shape), spec.value_range[0] if spec.is_integer and spec.value_range else 0,
                    dtype=spec.dtype)
            for spec in self.manifest.inputs
        ]  # fmt: skip
        try:
            activations = self.tap(probe)
        except DknnError as exc:
            raise BundleError(f"{where}: {exc}") from None
        except Exception as exc:  # whatever the model raises, it does not fit the manifest
            shapes = [list(spec.shape) for spec in self.manifest.inputs]
            raise BundleError(
                f"{where}: the model does not accept inputs {shapes}: {type(exc).__name__}: {first_line(exc)}"
            ) from None
        if activations.outputs.shape[1] != self.num_classes:
            raise BundleError(
                f"{where}: the model outputs {activations.outputs.shape[1]} logits, manifest says {self.num_classes}"
            )
        widths = {layer.name: layer.input_dim for layer in self.manifest.layers}
        if self.residual is not None:
            widths[self.residual.spec.layer] = self.residual.input_dim
        for name, width in widths.items():
            if activations.layers[name].shape[1] != width:
                raise BundleError(
                    f"{where}: layer {name} has {activations.layers[name].shape[1]} features, the bundle was "
                    f"fitted for {width}"
                )

    def neighbors(self, activations: Activations) -> tuple[np.ndarray, np.ndarray]:
        """`(n, L, k)` distances and training row ids, nearest first, for each tapped layer.

        numpy's BLAS runs single-threaded here: its idle threads busy-wait after each PCA
        projection and took the cores from the index threads, halving the k-NN rate on 2 cores
        (docs/results/perf-mnist-cnn.md)."""
        with self.single_threaded_blas():
            per_layer = [
                self.indexes[name].search(self.preprocessors[name].transform(activations.layers[name]), self.k)
                for name in self.manifest.layer_names
            ]
        return np.stack([d for d, _ in per_layer], axis=1), np.stack([i for _, i in per_layer], axis=1)

    def single_threaded_blas(self) -> AbstractContextManager:
        return self._blas.limit(limits=1, user_api="blas")

    def nonconformity(
        self,
        neighbor_ids: np.ndarray,
        neighbor_labels: np.ndarray,
        neighbor_distances: np.ndarray,
        activations: Activations,
    ) -> np.ndarray:
        """α(x, j) for every candidate label, `(n, C)` int64, as the manifest's nonconformity says,
        from `(n, L, k)` neighbour ids, their labels (`label_neighbors`) and distances."""
        alpha = conformal.nonconformity(neighbor_labels[:, self._label_rows], self.num_classes)
        if self.distance_reference is not None:
            spec = self.manifest.nonconformity
            rows = self._distance_rows
            distance = conformal.distance_statistic(
                neighbor_distances[:, rows], spec.distance_statistic, spec.distance_neighbors
            )
            if self.reviewed_distances is None:
                penalty = conformal.distance_penalty(
                    distance, self.distance_reference, spec.distance_weight, spec.distance_tail
                )
            else:
                vouched = self.reviewed_distances.vouched(
                    neighbor_ids[:, rows, 0], neighbor_labels[:, rows, 0], activations.model_prediction
                )
                penalty = conformal.vouched_penalty(
                    distance,
                    vouched,
                    self.distance_reference,
                    self.reviewed_distances.reference_sorted,
                    spec.distance_weight,
                    spec.distance_tail,
                )
            alpha = alpha + penalty[:, None]
        if self.residual is not None:
            with self.single_threaded_blas():  # one small product per batch; see `neighbors` on BLAS threads
                penalty = self.residual.penalty(activations.layers[self.residual.spec.layer])
            alpha = alpha + penalty[:, None]
        return alpha

    def label_neighbors(self, neighbor_ids: np.ndarray) -> np.ndarray:
        return np.where(neighbor_ids >= 0, self.train_labels[np.maximum(neighbor_ids, 0)], -1)

    def search(
        self, arrays: list[np.ndarray], stage: StageTimer = _untimed
    ) -> tuple[Activations, np.ndarray, np.ndarray]:
        """The forward pass of checked inputs and their neighbours: activations, `(n, L, k)` distances
        and training row ids. `stage` times the activations and knn phases."""
        with stage("activations"):
            activations = self.tap(arrays)
        with stage("knn"):
            distances, ids = self.neighbors(activations)
        return activations, distances, ids

    def alpha(self, x: Inputs) -> np.ndarray:
        """α(x, j) of one batch (validated first), `(n, C)`: what calibration ranks, and `DkNN` turns into p-values."""
        activations, distances, ids = self.search(self.check_input(x))
        return self.nonconformity(ids, self.label_neighbors(ids), distances, activations)


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ConfigError(f"unknown index backend {backend!r}; choose one of {', '.join(BACKENDS)}")


class DkNN(NonconformityScorer):
    """Scores inputs against one verified bundle: α as `NonconformityScorer` measures it, p-values
    against the bundle's calibration scores."""

    def __init__(
        self,
        bundle: VerifiedBundle,
        backend: IndexBackend = "annoy",
        search_k: int | None = None,
        threads: int | None = None,
    ) -> None:
        """Builds the bundle's model, opens its indexes and checks the model on a probe batch.

        `backend`, `search_k` (None: each layer's tuned value) and `threads` are this process's
        choices, not the bundle's. The bundle may be closed afterwards: Annoy holds its own mapping
        of each verified file.
        """
        _check_backend(backend)
        manifest = bundle.manifest
        model = bundle.build_model()
        indexes = {
            layer.name: open_index(
                bundle.index_path(layer.name),
                layer.dim,
                manifest.train.size,
                backend,
                manifest.search_k(layer.name) if search_k is None else search_k,
                threads,
            )
            for layer in manifest.layers
        }
        super().__init__(
            manifest,
            model,
            bundle.preprocessors,
            indexes,
            bundle.train_labels,
            bundle.distance_reference,
            bundle.residual,
            bundle.reviewed_distances,
        )
        self.calibration_alpha = bundle.calibration_alpha  # both sorted by verify_bundle
        self.calibration_label_free = bundle.calibration_label_free
        self.digest = bundle.digest
        self.check_model(bundle.root)

    @classmethod
    def from_bundle(
        cls,
        root: str | Path,
        backend: IndexBackend = "annoy",
        search_k: int | None = None,
        threads: int | None = None,
        trust: BundleTrust | None = None,
    ) -> DkNN:
        """Verifies the bundle at `root` (`agent.engine.bundle`) and scores with it; its files are closed again."""
        _check_backend(backend)  # before hashing a whole bundle for nothing
        bundle = verify_bundle(root, trust)
        try:
            return cls(bundle, backend, search_k, threads)
        finally:
            bundle.close()

    def score(self, x: Inputs, stage: StageTimer = _untimed) -> ScoreBatch:
        """Scores one batch (validated first): an array, or one per model input; the caller chooses
        the batch size. `stage` times the activations / knn / score phases (the agent passes its
        Prometheus histogram)."""
        activations, distances, ids = self.search(self.check_input(x), stage)
        with stage("score"):
            labels = self.label_neighbors(ids)
            alpha = self.nonconformity(ids, labels, distances, activations)
            p = conformal.p_values(alpha, self.calibration_alpha)
            verdicts = conformal.summarise(alpha, p)
        return ScoreBatch(
            prediction=verdicts.prediction,
            credibility=verdicts.credibility,
            confidence=verdicts.confidence,
            p_values=p,
            alpha=alpha,
            label_free_score=verdicts.label_free_score,
            model_prediction=activations.model_prediction,
            model_outputs=activations.outputs,
            neighbor_ids=ids,
            neighbor_labels=labels,
            neighbor_distances=distances,
        )


def open_index(
    path: str, dim: int, n_items: int, backend: IndexBackend, search_k: int = -1, threads: int | None = None
) -> NeighborIndex:
    """Opens one layer's Annoy file as the requested backend (exact reads the vectors out)."""
    annoy = AnnoyBackend(Path(path), dim, search_k=search_k, threads=threads)
    if annoy.n_items != n_items:
        raise BundleError(f"{path}: {annoy.n_items} items, manifest says {n_items}")
    if backend == "exact":
        return ExactBackend(annoy.item_vectors())
    return annoy
