"""The bundle manifest: one validated JSON document describing everything in the bundle.

A manifest is untrusted input like any event (docs/security.md): every number has a bound that
keeps the agent's memory, its metrics and its start-up time sane, and every string a length. The
bounds are far above anything a real model needs (a classifier with 10,000 classes, k = 1,000,
a 64-layer tap, 10^8 input values), and far below what would hurt: `num_classes = 10^6` alone
made /metrics 106 MB before these bounds existed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from agent.engine.conformal import DistanceStatistic
from agent.engine.provenance import ReviewSpec
from agent.engine.vocabulary import MAX_TOKENS

SCHEMA_VERSION = 2  # 2: named inputs of any numeric dtype, models as serialized programs
READABLE_SCHEMA_VERSIONS = (1, 2)  # version 1 manifests are read as version 2 (`Manifest._upgrade`)
MANIFEST_FILE = "manifest.json"
WEIGHTS_FILE = "model.pt"
PROGRAM_FILE = "model.pt2"
TRAIN_LABELS_FILE = "train_labels.npy"
CALIBRATION_FILE = "calibration.npz"

MAX_MANIFEST_BYTES = 16 * 1024 * 1024  # source_indices of a large calibration set fit easily
MAX_CLASSES = 10_000
MAX_K = 1_000
MAX_LAYERS = 64
MAX_INPUTS = 16
MAX_INPUT_VALUES = 100_000_000  # one input, all dimensions multiplied
MAX_INDEX_DIM = 65_536
MAX_FEATURES = 100_000_000
MAX_POINTS = 1_000_000_000

Name = Annotated[str, StringConstraints(min_length=1, max_length=256)]
RelativePath = Annotated[str, StringConstraints(min_length=1, max_length=1024)]
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
# The precisions a model's forward passes can run in (`ModelSpec.compute_dtype`).
ComputeDtype = Literal["float32", "bfloat16"]
COMPUTE_DTYPES: tuple[ComputeDtype, ...] = get_args(ComputeDtype)
# The dtypes a model input may have: numbers and booleans (token ids, masks, features, pixels).
InputDtype = Literal["float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool"]
INPUT_DTYPES: tuple[InputDtype, ...] = get_args(InputDtype)
FLOAT_DTYPES = ("float16", "float32", "float64")
# Bytes per value of each input dtype (numpy's itemsize, without importing numpy here).
_ITEM_BYTES = {"float16": 2, "float32": 4, "float64": 8, "int8": 1, "int16": 2, "int32": 4, "int64": 8, "uint8": 1}
# What a bundle keeps of its training rows for a reviewer (`ExemplarSpec`): nothing, the inputs as
# stored, or small uint8 images.
ExemplarKind = Literal["none", "inputs", "thumbnails"]
EXEMPLAR_KINDS: tuple[ExemplarKind, ...] = get_args(ExemplarKind)
MAX_EXEMPLAR_BYTES = 2 * 1024**3  # all exemplar files together: a bundle is copied to every replica
THUMBNAIL_SIDE = 32  # a thumbnail's height and width are at most this
THUMBNAIL_CHANNELS = (1, 3)  # grey or RGB: what a reviewer's screen can show
# Factory arguments are plain JSON scalars: a nested object could only smuggle structure in.
FactoryArgument = Annotated[str, StringConstraints(max_length=256)] | bool | int | float | None


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class ModelSpec(_Frozen):
    """Where the model comes from: a serialized program in the bundle (`program`, a `torch.export`
    archive, read without running any Python it could carry: agent.engine.program), or a factory
    (`package.module:function`, imported from a module the operator trusts) plus a state_dict."""

    name: str = Field(min_length=1, max_length=128)
    version: str = Field(min_length=1, max_length=64)
    program: RelativePath | None = Field(None, description="the model as a torch.export program (.pt2)")
    factory: str | None = Field(
        None, pattern=r"^[\w.]+:\w+$", max_length=256, description="importable `package.module:function`"
    )
    factory_kwargs: dict[Annotated[str, StringConstraints(pattern=r"^\w{1,64}$")], FactoryArgument] = Field(
        default_factory=dict, max_length=32
    )
    weights: RelativePath | None = Field(None, description="the factory model's state_dict")
    output: str | None = Field(
        None,
        max_length=256,
        description="selector of the logits in the model's output (`[0]`, `[logits]`); None: the output is the logits",
    )
    num_classes: int = Field(ge=2, le=MAX_CLASSES)
    compute_dtype: ComputeDtype = Field(
        "float32",
        description="precision of the forward passes that fit, calibrate and score (torch.autocast for "
        "bfloat16): one precision for all three keeps the p-values conformal",
    )

    @model_validator(mode="before")
    @classmethod
    def _default_weights(cls, data: Any) -> Any:
        """A factory's weights are `model.pt` unless the manifest says otherwise."""
        if isinstance(data, dict) and data.get("factory") is not None and data.get("weights") is None:
            return dict(data, weights=WEIGHTS_FILE)
        return data

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        if (self.program is None) == (self.factory is None):
            raise ValueError("a model comes from exactly one of program and factory")
        if (self.factory is None) != (self.weights is None):
            raise ValueError("weights go with a factory (a program carries its own)")
        if self.program is not None and self.factory_kwargs:
            raise ValueError("factory_kwargs need a factory")
        return self

    @property
    def files(self) -> tuple[str, ...]:
        """The bundle files that hold the model."""
        return tuple(path for path in (self.program, self.weights) if path is not None)


class InputSpec(_Frozen):
    """One named input of the model: what an event must carry for it, without the batch dimension."""

    name: str = Field("input", pattern=r"^[A-Za-z_][\w.-]{0,63}$")
    shape: tuple[Annotated[int, Field(ge=1, le=MAX_INPUT_VALUES)], ...] = Field(
        max_length=8, description="one input, without the batch dimension"
    )
    dtype: InputDtype = "float32"
    value_range: tuple[float, float] | None = Field(
        None,
        description="floats: the training data's range, informational (shifted inputs are what the agent must "
        "see); integers: the values the model accepts (token ids beyond an embedding would fail the forward "
        "pass), so events outside it are dead-lettered",
    )

    @field_validator("shape")
    @classmethod
    def _bounded_size(cls, shape: tuple[int, ...]) -> tuple[int, ...]:
        if math.prod(shape) > MAX_INPUT_VALUES:
            raise ValueError(f"an input of shape {list(shape)} has more than {MAX_INPUT_VALUES} values")
        return shape

    @model_validator(mode="after")
    def _integers_have_a_range(self) -> InputSpec:
        if self.value_range is not None and self.value_range[0] > self.value_range[1]:
            raise ValueError(f"value_range {list(self.value_range)} is empty")
        if self.is_integer and self.value_range is None:
            raise ValueError(f"input {self.name!r} is {self.dtype}: it needs the value_range the model accepts")
        return self

    @property
    def is_integer(self) -> bool:
        return self.dtype not in FLOAT_DTYPES and self.dtype != "bool"

    @property
    def size(self) -> int:
        return math.prod(self.shape)


class ExemplarFile(_Frozen):
    """One input's exemplars: a `.npy` of shape `(train.size, *shape)`, row i the training row that
    the indexes hold as item i."""

    input: str = Field(pattern=r"^[A-Za-z_][\w.-]{0,63}$", description="the model input it shows")
    file: RelativePath
    shape: tuple[Annotated[int, Field(ge=1, le=MAX_INPUT_VALUES)], ...] = Field(
        max_length=8, description="one row, without the row dimension"
    )
    dtype: InputDtype
    value_range: tuple[float, float] | None = Field(
        None, description="thumbnails: the training data's range, mapped onto 0..255; inputs: None"
    )

    @property
    def row_bytes(self) -> int:
        return math.prod(self.shape) * _ITEM_BYTES.get(self.dtype, 1)  # bool: 1


class ExemplarSpec(_Frozen):
    """The training rows a reviewer is shown beside a quarantined input (absent: the bundle has none).

    `inputs`: every model input exactly as it was indexed; `thumbnails`: image inputs as uint8
    `(C, h, w)`, C in 1 or 3, h and w at most 32, scaled from the training data's own range. Bounded
    to `MAX_EXEMPLAR_BYTES` in all (`Manifest`), since every replica maps them."""

    kind: Literal["inputs", "thumbnails"]
    files: tuple[ExemplarFile, ...] = Field(min_length=1, max_length=MAX_INPUTS)

    @model_validator(mode="after")
    def _thumbnails_are_small_images(self) -> ExemplarSpec:
        if self.kind != "thumbnails":
            return self
        for one in self.files:
            shape = one.shape
            small = len(shape) == 3 and shape[0] in THUMBNAIL_CHANNELS and max(shape[1:]) <= THUMBNAIL_SIDE
            if not small or one.dtype != "uint8":
                raise ValueError(f"the thumbnails of {one.input!r} are not uint8 images of at most 32x32")
        return self


class MeasuredRecall(_Frozen):
    """Recall@k of a layer's index against exact search, measured at fit time at the chosen search_k."""

    heldout: float = Field(ge=0.0, le=1.0, description="on held-out inputs (the calibration set)")
    shifted: float = Field(ge=0.0, le=1.0, description="on the same inputs with noise added")


class LayerSpec(_Frozen):
    name: Name
    input_dim: int = Field(ge=1, le=MAX_FEATURES, description="flattened activation size")
    dim: int = Field(ge=1, le=MAX_INDEX_DIM, description="size after preprocessing: what the index stores")
    preprocessing: str = Field("none", max_length=64)
    index_file: RelativePath
    params_file: RelativePath | None = None
    search_k: int | None = Field(
        None, ge=-1, le=100_000_000, description="this layer's Annoy search_k; None: the index's"
    )
    recall: MeasuredRecall | None = None  # absent where search_k was not tuned


class IndexSpec(_Frozen):
    kind: str = Field("annoy", pattern="^annoy$")
    metric: str = Field("euclidean", pattern="^euclidean$")
    n_trees: int = Field(ge=1, le=10_000)
    search_k: int = Field(ge=-1, le=100_000_000, description="-1: Annoy's default, n_trees * k")
    seed: int = Field(0, ge=0, le=2**31 - 1)


class SplitSpec(_Frozen):
    size: int = Field(ge=1, le=MAX_POINTS)
    source: str = Field("", max_length=256)
    source_indices: list[Annotated[int, Field(ge=0, le=MAX_POINTS)]] | None = Field(
        default=None,
        max_length=10_000_000,
        description="rows of the source data set used; the rest is free for evaluation",
    )


class ResidualSpec(_Frozen):
    """The residual term of α (docs/design.md §2.2): floor(w · t(r(x))), where r(x) is the fraction
    of a reference sample of training points whose residual share at `layer` is below x's. The
    residual share is the part of the centred activation's squared length that falls outside the
    layer's top `components` principal directions of the training data (kept in `params_file`,
    the reference in the calibration file); the reference points were not among those the directions were fitted on.
    t(r) = max(0, r − q) / (1 − q) as for distances. Like the distance term it is the same for
    every j, and it needs no index: one projection per input. It sees what the neighbours cannot —
    an activation pattern the training data never made (uniform noise, photographs), where the
    late layers still map the input close to some digit."""

    layer: Name
    # The defaults are what the MNIST study adopted (docs/quality-history.md); fit writes every field.
    components: int = Field(64, ge=1, le=MAX_INDEX_DIM)
    weight: int = Field(600, ge=1, le=MAX_K)
    tail: float = Field(0.995, ge=0.0, lt=1.0, description="q: only ranks above it count")
    reference_size: int = Field(5000, ge=1, le=1_000_000)

    @property
    def params_file(self) -> str:
        """Where the bundle keeps the layer's mean and principal directions."""
        return f"residual/{file_stem(self.layer)}.npz"


class NonconformitySpec(_Frozen):
    """How α(x, j) is computed (docs/design.md §2.2); the calibration in the bundle was made with it.

    - `labels`: the DkNN paper's — neighbours, over the voting layers, whose label is not j;
    - `labels+distance`: the same plus, per distance layer, floor(w · t(r_l(x))), where r_l(x) is the
      fraction of a reference sample of training points (each queried without itself) whose k-NN
      distance statistic (over the nearest m ≤ k neighbours: their mean, or the m-th) at that
      layer is below x's, and
      t(r) = max(0, r − q) / (1 − q) keeps only the tail above q. The term is the same for every j:
      it moves credibility, never the prediction. Integers either way, so α keeps at most
      L·(k + w) + 1 values.

    Either kind may add the `residual` term (`ResidualSpec`); None leaves it out.
    """

    kind: Literal["labels", "labels+distance"] = "labels"
    label_layers: tuple[Name, ...] | None = Field(None, max_length=MAX_LAYERS, description="None: every layer")
    distance_layers: tuple[Name, ...] | None = Field(None, max_length=MAX_LAYERS, description="None: every layer")
    distance_weight: int = Field(0, ge=0, le=MAX_K)
    distance_reference_size: int = Field(0, ge=0, le=1_000_000)
    distance_statistic: DistanceStatistic = "mean"
    distance_tail: float = Field(0.0, ge=0.0, lt=1.0, description="q: only ranks above it count")
    distance_neighbors: int | None = Field(None, ge=1, le=MAX_K, description="m: the nearest m count; None: all k")
    residual: ResidualSpec | None = None

    @model_validator(mode="after")
    def _consistent(self) -> NonconformitySpec:
        uses_distance = self.kind == "labels+distance"
        if uses_distance != (self.distance_weight > 0) or uses_distance != (self.distance_reference_size > 0):
            raise ValueError("distance_weight and distance_reference_size are positive exactly for labels+distance")
        if self.label_layers is not None and not self.label_layers:
            raise ValueError("label_layers must name at least one layer (or be null: every layer)")
        return self


class VocabularySpec(_Frozen):
    """The token table of a text model (`fit --vocabulary`): `file` holds a JSON array of `size`
    strings, token id i at index i (agent.engine.vocabulary), so a reviewer reads tokens, not ids."""

    file: RelativePath
    size: int = Field(ge=1, le=MAX_TOKENS, description="tokens in the file")


class Manifest(_Frozen):
    schema_version: int = Field(SCHEMA_VERSION, ge=1, le=1_000)
    created_at: str = Field(max_length=64)
    model: ModelSpec
    inputs: tuple[InputSpec, ...] = Field(min_length=1, max_length=MAX_INPUTS)
    layers: tuple[LayerSpec, ...] = Field(min_length=1, max_length=MAX_LAYERS)
    k: int = Field(ge=1, le=MAX_K)
    index: IndexSpec
    train: SplitSpec
    calibration: SplitSpec
    libraries: dict[
        Annotated[str, StringConstraints(max_length=64)], Annotated[str, StringConstraints(max_length=128)]
    ] = Field(max_length=32)
    files: dict[RelativePath, Sha256] = Field(max_length=1024, description="relative path -> sha256 hex digest")
    nonconformity: NonconformitySpec = NonconformitySpec()  # absent in bundles made before it: the paper's
    exemplars: ExemplarSpec | None = None  # absent (older bundles, `fit --exemplars none`): no exemplars
    reviews: ReviewSpec | None = None  # absent: as fitted; else the reviewed points `extend` added (provenance.py)
    vocabulary: VocabularySpec | None = None  # absent: no token table (float models, `fit` without --vocabulary)

    @model_validator(mode="before")
    @classmethod
    def _upgrade(cls, data: Any) -> Any:
        """Version 1 had one unnamed float input (`input`) and always a factory: read it as version 2."""
        if isinstance(data, dict) and data.get("schema_version") == 1:
            data = dict(data, schema_version=SCHEMA_VERSION)
            if "input" in data and "inputs" not in data:
                single = data.pop("input")
                data["inputs"] = [dict(single, name="input")] if isinstance(single, dict) else single
        return data

    @field_validator("inputs")
    @classmethod
    def _distinct_inputs(cls, inputs: tuple[InputSpec, ...]) -> tuple[InputSpec, ...]:
        names = [spec.name for spec in inputs]
        if len(set(names)) != len(names):
            raise ValueError("input names must be distinct")
        return inputs

    @field_validator("layers")
    @classmethod
    def _distinct_layers(cls, layers: tuple[LayerSpec, ...]) -> tuple[LayerSpec, ...]:
        names = [layer.name for layer in layers]
        if len(set(names)) != len(names):
            raise ValueError("layer names must be distinct")
        return layers

    @model_validator(mode="after")
    def _known_nonconformity_layers(self) -> Manifest:
        names = set(self.layer_names)
        for chosen in (self.nonconformity.label_layers, self.nonconformity.distance_layers):
            unknown = sorted(set(chosen or ()) - names)
            if unknown:
                raise ValueError(f"nonconformity names layers that are not tapped: {unknown}")
        if (self.nonconformity.distance_neighbors or 0) > self.k:
            raise ValueError(f"distance_neighbors {self.nonconformity.distance_neighbors} exceeds k = {self.k}")
        return self

    @model_validator(mode="after")
    def _exemplars_fit_the_inputs(self) -> Manifest:
        """One exemplar file per input, in the inputs' order; `inputs` keeps each as it is; all of them
        within `MAX_EXEMPLAR_BYTES` (a manifest cannot make the agent map more)."""
        if self.exemplars is None:
            return self
        files = self.exemplars.files
        if [one.input for one in files] != [spec.name for spec in self.inputs]:
            raise ValueError("exemplars need one file per model input, in the inputs' order")
        if len({one.file for one in files}) != len(files):
            raise ValueError("exemplar files must be distinct")
        if self.exemplars.kind == "inputs":
            for one, spec in zip(files, self.inputs, strict=True):
                if (one.shape, one.dtype) != (spec.shape, spec.dtype):
                    raise ValueError(f"the exemplars of input {spec.name!r} are not its rows as stored")
        if self.exemplar_bytes > MAX_EXEMPLAR_BYTES:
            raise ValueError(
                f"exemplars of {self.exemplar_bytes} bytes exceed the {MAX_EXEMPLAR_BYTES} a bundle may hold"
            )
        return self

    @model_validator(mode="after")
    def _vocabulary_needs_token_ids(self) -> Manifest:
        """A token table only means something to a model that takes integer inputs (token ids)."""
        if self.vocabulary is not None and not any(spec.is_integer for spec in self.inputs):
            raise ValueError("a vocabulary needs a model with an integer input (token ids); this one has none")
        return self

    @model_validator(mode="after")
    def _reviewed_points_follow_the_training_set(self) -> Manifest:
        """An extended bundle's indexes hold its base's training points, then one item per reviewed point."""
        if self.reviews is not None and self.train.size != self.reviews.base.train_size + len(self.reviews.points):
            raise ValueError(
                f"train.size {self.train.size} is not the base's {self.reviews.base.train_size} training points plus "
                f"{len(self.reviews.points)} reviewed ones"
            )
        if self.reviews is not None and any(point.label >= self.model.num_classes for point in self.reviews.points):
            raise ValueError(f"a reviewed point's label is not one of the model's {self.model.num_classes} classes")
        return self

    @property
    def input(self) -> InputSpec:
        """The model's only input (most classifiers have one); a ValueError for a model with several."""
        if len(self.inputs) != 1:
            raise ValueError(f"the model has {len(self.inputs)} inputs: {[spec.name for spec in self.inputs]}")
        return self.inputs[0]

    @property
    def layer_names(self) -> tuple[str, ...]:
        return tuple(layer.name for layer in self.layers)

    @property
    def tapped_layers(self) -> tuple[str, ...]:
        return tapped_layers(self.layer_names, self.nonconformity)

    @property
    def label_layers(self) -> tuple[str, ...]:
        """The layers whose neighbours vote, in tap order."""
        chosen = self.nonconformity.label_layers
        return tuple(name for name in self.layer_names if chosen is None or name in chosen)

    @property
    def distance_layers(self) -> tuple[str, ...]:
        """The layers whose neighbour distances count, in tap order (none for the paper's DkNN)."""
        if self.nonconformity.kind == "labels":
            return ()
        chosen = self.nonconformity.distance_layers
        return tuple(name for name in self.layer_names if chosen is None or name in chosen)

    @property
    def exemplar_bytes(self) -> int:
        """What the exemplar files hold, headers aside (0 without exemplars)."""
        files = self.exemplars.files if self.exemplars is not None else ()
        return self.train.size * sum(one.row_bytes for one in files)

    def document(self) -> dict[str, Any]:
        """The manifest as JSON, as `manifest.json` holds it. A bundle without exemplars, reviews or a
        vocabulary leaves those keys out, so agents from before the fields (strict: `extra="forbid"`) still
        read it and its digest stays what it was."""
        document = self.model_dump(mode="json")
        for optional in ("exemplars", "reviews", "vocabulary"):  # absent rather than null: older agents refuse the key
            if document[optional] is None:
                del document[optional]
        return document

    def layer(self, name: str) -> LayerSpec:
        return next(spec for spec in self.layers if spec.name == name)

    def search_k(self, name: str) -> int:
        """The Annoy search_k a layer is queried with: its own where fitting tuned it, else the index's."""
        own = self.layer(name).search_k
        return self.index.search_k if own is None else own

    def describe(self) -> list[tuple[str, str]]:
        """The manifest for a reader, as (heading, line) pairs: the model, its inputs, the index, the data,
        how α is computed and each layer (`dknn-agent info` prints them)."""
        model = self.model
        source = (
            f"the serialized program {model.program}" if model.program is not None else f"the factory {model.factory}"
        )
        output = f", logits at {model.output}" if model.output else ""
        lines = [("model", f"{model.name} {model.version} from {source}, {model.num_classes} classes{output}")]
        lines += [
            ("input", f"{one.name}: {one.dtype} {list(one.shape)} range {one.value_range}") for one in self.inputs
        ]
        tuned = all(layer.search_k is not None for layer in self.layers)
        search_k = "per layer" if tuned else f"search_k={self.index.search_k}"
        lines.append(("neighbours", f"k={self.k}, {self.index.kind} n_trees={self.index.n_trees} {search_k}"))
        lines.append(("train", f"{self.train.size} points ({self.train.source})"))
        lines.append(("calibrate", f"{self.calibration.size} points ({self.calibration.source})"))
        spec = self.nonconformity
        m = spec.distance_neighbors or self.k
        nearest = (
            f"distance to neighbour {m}" if spec.distance_statistic == "kth" else f"mean distance of the nearest {m}"
        )
        tail = f" above the reference's {spec.distance_tail:g} quantile" if spec.distance_tail else ""
        distance = (
            f", + up to {spec.distance_weight} per distance layer ({', '.join(self.distance_layers)}) for the "
            f"{nearest}{tail} (reference of {spec.distance_reference_size} training points)"
            if self.distance_layers
            else ""
        )
        lines.append(("alpha", f"{spec.kind}: disagreeing neighbours in {', '.join(self.label_layers)}{distance}"))
        if spec.residual is not None:
            term = spec.residual
            lines.append(
                (
                    "residual",
                    f"+ up to {term.weight} for a {term.layer} activation further off its {term.components} "
                    f"principal directions than the reference's {term.tail:g} quantile (reference of "
                    f"{term.reference_size} training points)",
                )
            )
        if self.exemplars is not None:
            shown = ", ".join(f"{one.input} {one.dtype} {list(one.shape)}" for one in self.exemplars.files)
            size = f"{self.exemplar_bytes / 1e6:.1f} MB"
            lines.append(
                ("exemplars", f"{self.exemplars.kind} of the {self.train.size} training rows: {shown}, {size}")
            )
        if self.vocabulary is not None:
            lines.append(("vocabulary", f"{self.vocabulary.size} tokens ({self.vocabulary.file})"))
        if self.reviews is not None:
            reviews = self.reviews
            verdicts = ", ".join(
                f"{sum(point.verdict == verdict for point in reviews.points)} {verdict}"
                for verdict in ("model_right", "model_wrong")
            )
            lines.append(
                (
                    "reviews",
                    f"{len(reviews.points)} reviewed inputs in the indexes after the {reviews.base.train_size} training "
                    f"points ({verdicts}), {len(reviews.out_of_scope)} out of scope; base {reviews.base.version} "
                    f"{reviews.base.digest}",
                )
            )
        for layer in self.layers:
            recall = (
                f"  search_k={layer.search_k} recall@k {layer.recall.heldout:.3f} held-out, "
                f"{layer.recall.shifted:.3f} noisy"
                if layer.recall is not None
                else ""
            )
            lines.append(
                ("layer", f"{layer.name:<12} {layer.input_dim:>6} -> {layer.dim:<5} {layer.preprocessing:<10}{recall}")
            )
        return lines


def file_stem(layer: str) -> str:
    """A layer's name as a file name: tap names hold `.`, `#`, `:` and `[...]` (agent.engine.taps)."""
    return re.sub(r"[^\w-]", "_", layer)


def tapped_layers(indexed: Sequence[str], nonconformity: NonconformitySpec) -> tuple[str, ...]:
    """Every layer a forward pass must capture: the indexed ones, then the residual term's."""
    residual = nonconformity.residual
    if residual is None or residual.layer in indexed:
        return tuple(indexed)
    return (*indexed, residual.layer)
