"""The option sets several commands share, as typed models a command inherits from.

`ModelSource` (where the model comes from: fit, layers), `IndexOptions` (how a bundle is fitted:
fit, and the lab's train-reference) and `TrustOptions` (what a bundle may do: score, layers,
evaluate). Each turns its flags into the engine's own options object in one method, so the rules
for combining flags live in one place.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from agent.cli.flags import Arg
from agent.engine.conformal import DistanceStatistic
from agent.engine.fit import FitOptions
from agent.engine.manifest import ComputeDtype, ExemplarKind, NonconformitySpec, ResidualSpec
from agent.engine.preprocess import parse_spec
from agent.engine.tuning import RecallTarget
from agent.errors import ConfigError, DataError


def split_list(text: str) -> tuple[str, ...]:
    """`a, b,,c` -> ("a", "b", "c"): a comma-separated option, blanks and empty items dropped."""
    return tuple(filter(None, (part.strip() for part in text.split(","))))


def _comma_separated(value: Any) -> Any:
    return split_list(value) if isinstance(value, str) else value


CommaList = Annotated[tuple[str, ...], BeforeValidator(_comma_separated)]


def parse_layers(text: str) -> dict[str, str]:
    """`relu1=pca:128,relu2,logits=l2` -> {"relu1": "pca:128", "relu2": "none", "logits": "l2"}."""
    layers: dict[str, str] = {}
    for item in split_list(text):
        name, _, spec = item.partition("=")
        if name in layers:
            raise ConfigError(f"layer {name!r} given twice in --layers")
        layers[name] = spec or "none"
        parse_spec(layers[name])  # fail before any data is loaded
    if not layers:
        raise ConfigError("--layers needs at least one layer name")
    return layers


def _check_layers(text: str | None) -> str | None:
    if text is not None:
        parse_layers(text)  # fail before any data is loaded
    return text


# --layers: tap names, each optionally =PREPROCESSING; parse_layers reads it.
LayersOption = Annotated[str | None, AfterValidator(_check_layers)]


def _named_sets(items: list[str]) -> list[str]:
    names: set[str] = set()
    for item in items:
        name, sep, data = item.partition("=")
        if not sep or not name or not data or name == "clean" or name.startswith("reviewed") or name in names:
            raise ValueError(
                f"{item!r}: use NAME=DATA with a new name, other than clean and not starting with reviewed"
            )
        names.add(name)
    return items


# --ood NAME=DATA, repeatable: out-of-distribution sets for a report (`clean` and `reviewed*` name its own sets).
OodSets = Annotated[list[str], AfterValidator(_named_sets), Arg(repeat=True, metavar="NAME=DATA")]


def load_ood(items: list[str]) -> dict[str, Any]:
    """The --ood sets by name, memory-mapped (agent.engine.data_files)."""
    from agent.engine.data_files import load_dataset

    return {name: load_dataset(data, labelled=False) for name, _, data in (item.partition("=") for item in items)}


def parse_json_object(text: str, option: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{option}: not valid JSON ({exc.msg})") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{option}: expected a JSON object")
    return value


class OptionSet(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# --- where the model comes from ------------------------------------------------------------------

MODEL = "model (one of --model and --factory)"


class ModelSource(OptionSet):
    """A serialized program (read as data), or a factory plus weights (code the operator trusts)."""

    model: Annotated[Path | None, Arg(group=MODEL)] = Field(
        None,
        description="the model as a torch.export program (.pt2, from torch.export.save; export it with a dynamic "
        "batch dimension): read as data, no code to trust (docs/security.md)",
    )
    factory: Annotated[str | None, Arg(group=MODEL)] = Field(
        None, description="or: importable model factory, package.module:function (code you trust)"
    )
    factory_kwargs: Annotated[str, Arg(group=MODEL)] = Field(
        "{}", description="JSON object of keyword arguments for the factory"
    )
    weights: Annotated[Path | None, Arg(group=MODEL)] = Field(
        None, description="the factory model's state_dict (torch.save)"
    )
    output: Annotated[str | None, Arg(group=MODEL, metavar="SELECTOR")] = Field(
        None,
        description="where the logits are in the model's output, when it is a tuple, dict or ModelOutput: [0], "
        "[logits] or logits (default: the output is the logits)",
    )

    @field_validator("factory_kwargs")
    @classmethod
    def _json_object(cls, text: str) -> str:
        parse_json_object(text, "--factory-kwargs")
        return text

    def factory_arguments(self) -> dict[str, Any]:
        return parse_json_object(self.factory_kwargs, "--factory-kwargs")

    def load_model(self, program: Path | None = None) -> Any:
        """The model --model (or `program`) / --factory name: a checked Program, or the factory's module."""
        from agent.engine.bundle import load_state_dict
        from agent.engine.model_factory import build_model
        from agent.engine.program import load_program

        path = program or self.model
        if (path is None) == (self.factory is None):
            raise ConfigError("name the model with exactly one of --model FILE.pt2 and --factory MODULE:FUNCTION")
        if path is not None:
            if self.weights is not None or self.factory_kwargs != "{}":
                raise ConfigError("--weights and --factory-kwargs go with --factory (a program carries its weights)")
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise DataError(f"{path}: cannot read the program ({exc.strerror or exc})") from None
            return load_program(data, path)
        assert self.factory is not None
        module = build_model(self.factory, self.factory_arguments())
        if self.weights is None:
            raise ConfigError("--factory needs --weights (the state_dict to load into the factory's model)")
        try:
            module.load_state_dict(load_state_dict(self.weights))
        except RuntimeError as exc:
            raise ConfigError(
                f"{self.weights}: weights do not fit {self.factory}: {str(exc).splitlines()[0]}"
            ) from None
        return module.eval()


# --- what a bundle may do ------------------------------------------------------------------------


class TrustOptions(OptionSet):
    """What a bundle may do (docs/security.md): the factory modules it may name, its exact digest."""

    trust_factory: Annotated[list[str] | None, Arg(group="trust", repeat=True, metavar="MODULE")] = Field(
        None,
        description="trust model factories in this module or package (repeatable; trusted by default: none; "
        "bundles carrying a serialized program need none)",
    )
    bundle_digest: Annotated[str | None, Arg(group="trust", metavar="sha256:HEX")] = Field(
        None, description="refuse the bundle unless its digest is this one (dknn-agent info prints it)"
    )

    def bundle_trust(self) -> Any:
        from agent.engine.bundle import BundleTrust
        from agent.engine.model_factory import DEFAULT_FACTORY_MODULES

        return BundleTrust(
            factory_modules=(*DEFAULT_FACTORY_MODULES, *(self.trust_factory or ())), digest=self.bundle_digest
        )


# --- how a bundle is fitted ----------------------------------------------------------------------

FITTING = "bundle fitting"
# What each --residual-* option means when absent: the schema's defaults (the MNIST study's choice).
DEFAULT_RESIDUAL = {name: field.default for name, field in ResidualSpec.model_fields.items() if name != "layer"}
_RECALL = RecallTarget()
Fitting = Arg(group=FITTING)
Count = Annotated[int | None, Field(ge=1)]  # absent: the preset's
Quantile = Annotated[float | None, Field(ge=0, lt=1)]


class IndexOptions(OptionSet):
    """Neighbours, index quality and the nonconformity: the preset's, with what the flags change."""

    seed: int = Field(0, description="seed for PCA sampling and Annoy (default: 0)")
    k: Annotated[int, Fitting] = Field(75, ge=1, description="neighbours per layer (default: 75, the paper's)")
    n_trees: Annotated[int, Fitting] = Field(
        10,
        ge=1,
        description="Annoy trees per layer; more = better recall at a given --search-k, bigger files (default: 10)",
    )
    search_k: Annotated[int | None, Fitting] = Field(
        None,
        ge=-1,
        description="Annoy nodes inspected per query, for every layer; -1 = n_trees*k (default: chosen per layer "
        "by the recall targets)",
    )
    recall_target: Annotated[float, Fitting] = Field(
        _RECALL.heldout,
        ge=0,
        le=1,
        description="per layer, the smallest search_k whose recall@k against exact search on held-out inputs "
        f"reaches this (default: {_RECALL.heldout})",
    )
    shifted_recall_target: Annotated[float, Fitting] = Field(
        _RECALL.shifted,
        ge=0,
        le=1,
        description=f"... and on the same inputs with noise added (default: {_RECALL.shifted})",
    )
    batch_size: Annotated[int, Fitting] = Field(512, ge=1, description="inputs per forward pass (default: 512)")
    nonconformity: Annotated[Literal["labels", "labels+distance"] | None, Fitting] = Field(
        None,
        description="labels: the DkNN paper's count of disagreeing neighbours; labels+distance: plus, per layer, up "
        "to --distance-weight for neighbours farther than the training points' own (docs/design.md §2.2). Absent, "
        "this and every option below take the preset's value (fit: --preset; train-reference: the adopted "
        "configuration); given, each replaces just that part",
    )
    distance_weight: Annotated[int | None, Fitting] = Field(
        None,
        ge=1,
        description="labels+distance: what the farthest inputs add per layer, in disagreeing neighbours "
        "(recommended: 600; with an explicit --nonconformity labels+distance: k)",
    )
    distance_reference: Annotated[int | None, Fitting] = Field(
        None, ge=1, description="labels+distance: training points sampled for the distance reference (default: 5000)"
    )
    distance_statistic: Annotated[DistanceStatistic | None, Fitting] = Field(
        None,
        description="labels+distance: a layer's distance is the mean of the nearest --distance-neighbors' or the "
        "farthest of them (default: mean)",
    )
    distance_neighbors: Annotated[int | None, Arg(group=FITTING, metavar="M")] = Field(
        None,
        ge=1,
        description="labels+distance: how many of the k nearest neighbours the distance statistic reads; a few see "
        "a far input better than all 75 (recommended: 5; with an explicit --nonconformity: k)",
    )
    distance_tail: Annotated[float | None, Fitting] = Field(
        None,
        ge=0,
        lt=1,
        description="labels+distance: only distance ranks above this quantile of the reference count "
        "(recommended: 0.5; with an explicit --nonconformity: 0)",
    )
    residual_layer: Annotated[str | None, Arg(group=FITTING, metavar="LAYER")] = Field(
        None,
        description="the residual term's layer: up to --residual-weight for inputs whose activation at LAYER "
        "(indexed or not) lies further off the training data's principal directions than the training points' own "
        "(docs/design.md §2.2; recommended: the activation before the last hidden layer)",
    )
    no_residual: Annotated[bool, Fitting] = Field(False, description="leave the residual term out")
    residual_components: Annotated[Count, Arg(group=FITTING, metavar="D")] = Field(
        None,
        description="residual term: principal directions the training data spans at the layer; clipped to half "
        f"the layer's width (default: {DEFAULT_RESIDUAL['components']})",
    )
    residual_weight: Annotated[Count, Fitting] = Field(
        None,
        description="residual term: what the farthest-off inputs add, in disagreeing neighbours (default: "
        f"{DEFAULT_RESIDUAL['weight']})",
    )
    residual_tail: Annotated[Quantile, Fitting] = Field(
        None,
        description="residual term: only ranks above this quantile of the reference count; high, so that inputs "
        f"from other populations of the same classes are left alone (default: {DEFAULT_RESIDUAL['tail']})",
    )
    residual_reference: Annotated[Count, Fitting] = Field(
        None,
        description=f"residual term: training points in its reference (default: {DEFAULT_RESIDUAL['reference_size']})",
    )
    label_layers: Annotated[CommaList | None, Fitting] = Field(
        None, description="layers whose neighbours vote (default: every layer)"
    )
    distance_layers: Annotated[CommaList | None, Fitting] = Field(
        None, description="labels+distance: layers whose distances count (default: every layer)"
    )
    compute_dtype: Annotated[ComputeDtype, Fitting] = Field(
        "float32",
        description="precision of the model's forward passes, at fit time and whenever the bundle scores: bfloat16 "
        "(torch.autocast) is about twice as fast on CPUs with native bfloat16 (AVX512-BF16, AMX) and slower "
        "elsewhere; measure quality before adopting it (default: float32)",
    )
    exemplars: Annotated[ExemplarKind, Fitting] = Field(
        "none",
        description="keep the training rows in the bundle, so a reviewer sees the examples behind a quarantined "
        "input's neighbour ids: inputs (every input as stored), thumbnails (image inputs, float (C, H, W) with C 1 or "
        "3, as uint8 of at most 32x32) or none; at most 2 GiB (default: none)",
    )
    force: Annotated[bool, Fitting] = Field(False, description="replace an existing bundle directory")
    quiet: Annotated[bool, Fitting] = Field(False, description="no progress bars")

    @pydantic.model_validator(mode="after")
    def _residual_flags_agree(self) -> IndexOptions:
        given = (self.residual_components, self.residual_weight, self.residual_tail, self.residual_reference)
        if self.no_residual and (self.residual_layer is not None or any(value is not None for value in given)):
            raise ValueError("--no-residual leaves the residual term out: drop the --residual-* options")
        if self.distance_neighbors is not None and self.distance_neighbors > self.k:
            raise ValueError(f"--distance-neighbors must be in [1, k = {self.k}]")
        return self

    def fit_options(self, preset: NonconformitySpec) -> FitOptions:
        """The engine's fitting options: these flags, and `preset`'s nonconformity with what they change."""
        return FitOptions(
            k=self.k,
            n_trees=self.n_trees,
            search_k=self.search_k,
            recall_target=RecallTarget(heldout=self.recall_target, shifted=self.shifted_recall_target),
            seed=self.seed,
            batch_size=self.batch_size,
            progress=not self.quiet,
            nonconformity=self.nonconformity_spec(preset),
            compute_dtype=self.compute_dtype,
            exemplars=self.exemplars,
        )

    def nonconformity_spec(self, preset: NonconformitySpec) -> NonconformitySpec:
        """`preset` with every nonconformity flag that was given applied on top. An explicit
        --nonconformity other than the preset's starts that kind from its own defaults (labels+distance:
        weight k, all k neighbours, no tail) rather than the preset's values."""
        kind = self.nonconformity or preset.kind
        label_layers = self.label_layers if self.label_layers is not None else preset.label_layers
        residual = self.residual_spec(preset.residual)
        distance_flags = (
            self.distance_weight,
            self.distance_reference,
            self.distance_statistic,
            self.distance_neighbors,
        )
        distance_given = self.distance_layers is not None or self.distance_tail is not None
        distance_given = distance_given or any(value is not None for value in distance_flags)
        if kind == "labels":
            if distance_given:
                raise ConfigError("--distance-* options need --nonconformity labels+distance")
            return NonconformitySpec(label_layers=label_layers, residual=residual)
        base = (
            preset
            if preset.kind == kind
            else NonconformitySpec(kind="labels+distance", distance_weight=self.k, distance_reference_size=5000)
        )
        neighbors = self.distance_neighbors if self.distance_neighbors is not None else base.distance_neighbors
        if neighbors is not None and neighbors > self.k:
            raise ConfigError(f"--distance-neighbors must be in [1, k = {self.k}]")
        return NonconformitySpec(
            kind="labels+distance",
            label_layers=label_layers,
            distance_layers=self.distance_layers if self.distance_layers is not None else base.distance_layers,
            distance_weight=self.distance_weight if self.distance_weight is not None else base.distance_weight,
            distance_reference_size=(
                self.distance_reference if self.distance_reference is not None else base.distance_reference_size
            ),
            distance_statistic=self.distance_statistic or base.distance_statistic,
            distance_tail=self.distance_tail if self.distance_tail is not None else base.distance_tail,
            distance_neighbors=neighbors,
            residual=residual,
        )

    def residual_spec(self, preset: ResidualSpec | None) -> ResidualSpec | None:
        """The residual term: the preset's (or --residual-layer's) with the --residual-* flags given; None
        with --no-residual."""
        given = {
            "components": self.residual_components,
            "weight": self.residual_weight,
            "tail": self.residual_tail,
            "reference_size": self.residual_reference,
        }
        given = {name: value for name, value in given.items() if value is not None}
        if self.no_residual:
            return None
        layer = self.residual_layer or (preset.layer if preset else None)
        if layer is None:
            if given:
                raise ConfigError("--residual-* options need --residual-layer")
            return None
        base = preset.model_dump() if preset is not None else {}
        base.update(layer=layer, **given)
        try:
            return ResidualSpec(**base)
        except pydantic.ValidationError as exc:
            first = exc.errors(include_url=False, include_input=False)[0]
            where = "-".join(str(part) for part in first["loc"])
            raise ConfigError(f"--residual-{where.replace('_', '-')}: {first['msg']}") from None
