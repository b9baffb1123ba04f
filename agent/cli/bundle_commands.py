"""The bundle commands: `train-reference`, `fit`, `score`, `info` — arguments next to their handlers."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import pydantic

from agent.cli.options import parse_json_object, parse_layers, split_list
from agent.engine.bundle import BundleTrust
from agent.engine.fit import FitOptions
from agent.engine.index import BACKENDS
from agent.engine.manifest import COMPUTE_DTYPES, NonconformitySpec, ResidualSpec
from agent.engine.recommend import PRESETS
from agent.engine.tuning import RecallTarget
from agent.errors import BundleError, ConfigError, DataError, DknnError

# What each --residual-* option means when absent: the schema's defaults (the MNIST study's choice).
DEFAULT_RESIDUAL = {name: field.default for name, field in ResidualSpec.model_fields.items() if name != "layer"}


def register(commands: argparse._SubParsersAction) -> None:
    _register_layers(commands)
    _register_fit(commands)
    _register_score(commands)
    _register_info(commands)


def add_index_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("bundle fitting")
    group.add_argument("--k", type=int, default=75, help="neighbours per layer (default: 75, the paper's)")
    group.add_argument(
        "--n-trees",
        type=int,
        default=10,
        help="Annoy trees per layer; more = better recall at a given --search-k, bigger files (default: 10)",
    )
    group.add_argument(
        "--search-k",
        type=int,
        default=None,
        help="Annoy nodes inspected per query, for every layer; -1 = n_trees*k (default: chosen per layer by "
        "the recall targets)",
    )
    defaults = RecallTarget()
    group.add_argument(
        "--recall-target",
        type=float,
        default=defaults.heldout,
        help="per layer, the smallest search_k whose recall@k against exact search on held-out inputs reaches "
        f"this (default: {defaults.heldout})",
    )
    group.add_argument(
        "--shifted-recall-target",
        type=float,
        default=defaults.shifted,
        help=f"... and on the same inputs with noise added (default: {defaults.shifted})",
    )
    group.add_argument("--batch-size", type=int, default=512, help="inputs per forward pass (default: 512)")
    group.add_argument(
        "--nonconformity",
        choices=("labels", "labels+distance"),
        default=None,
        help="labels: the DkNN paper's count of disagreeing neighbours; labels+distance: plus, per layer, up to "
        "--distance-weight for neighbours farther than the training points' own (docs/design.md §2.2). "
        "Absent, this and every option below take the preset's value (fit: --preset; train-reference: the "
        "adopted configuration); given, each replaces just that part",
    )
    group.add_argument(
        "--distance-weight",
        type=int,
        default=None,
        help="labels+distance: what the farthest inputs add per layer, in disagreeing neighbours "
        "(recommended: 600; with an explicit --nonconformity labels+distance: k)",
    )
    group.add_argument(
        "--distance-reference",
        type=int,
        default=None,
        help="labels+distance: training points sampled for the distance reference (default: 5000)",
    )
    group.add_argument(
        "--distance-statistic",
        choices=("mean", "kth"),
        default=None,
        help="labels+distance: a layer's distance is the mean of the nearest --distance-neighbors' or the farthest "
        "of them (default: mean)",
    )
    group.add_argument(
        "--distance-neighbors",
        type=int,
        default=None,
        metavar="M",
        help="labels+distance: how many of the k nearest neighbours the distance statistic reads; a few see a "
        "far input better than all 75 (recommended: 5; with an explicit --nonconformity: k)",
    )
    group.add_argument(
        "--distance-tail",
        type=float,
        default=None,
        help="labels+distance: only distance ranks above this quantile of the reference count "
        "(recommended: 0.5; with an explicit --nonconformity: 0)",
    )
    group.add_argument(
        "--residual-layer",
        default=None,
        metavar="LAYER",
        help="the residual term's layer: up to --residual-weight for inputs whose activation at LAYER (indexed or "
        "not) lies further off the training data's principal directions than the training points' own "
        "(docs/design.md §2.2; recommended: the activation before the last hidden layer)",
    )
    group.add_argument("--no-residual", action="store_true", help="leave the residual term out")
    group.add_argument(
        "--residual-components",
        type=int,
        default=None,
        metavar="D",
        help="residual term: principal directions the training data spans at the layer; clipped to half the "
        f"layer's width (default: {DEFAULT_RESIDUAL['components']})",
    )
    group.add_argument(
        "--residual-weight",
        type=int,
        default=None,
        help=f"residual term: what the farthest-off inputs add, in disagreeing neighbours (default: "
        f"{DEFAULT_RESIDUAL['weight']})",
    )
    group.add_argument(
        "--residual-tail",
        type=float,
        default=None,
        help="residual term: only ranks above this quantile of the reference count; high, so that inputs from "
        f"other populations of the same classes are left alone (default: {DEFAULT_RESIDUAL['tail']})",
    )
    group.add_argument(
        "--residual-reference",
        type=int,
        default=None,
        help=f"residual term: training points sampled for its reference (default: {DEFAULT_RESIDUAL['reference_size']})",
    )
    group.add_argument("--label-layers", default=None, help="layers whose neighbours vote (default: every layer)")
    group.add_argument(
        "--distance-layers", default=None, help="labels+distance: layers whose distances count (default: every layer)"
    )
    group.add_argument(
        "--compute-dtype",
        choices=COMPUTE_DTYPES,
        default="float32",
        help="precision of the model's forward passes, at fit time and whenever the bundle scores: bfloat16 "
        "(torch.autocast) is about twice as fast on CPUs with native bfloat16 (AVX512-BF16, AMX) and slower "
        "elsewhere; measure quality before adopting it (default: float32)",
    )
    group.add_argument("--force", action="store_true", help="replace an existing bundle directory")
    group.add_argument("--quiet", action="store_true", help="no progress bars")


def fit_options(args: argparse.Namespace, preset: NonconformitySpec) -> FitOptions:
    """The fitting options: the index flags, and the nonconformity of `preset` with whatever the
    nonconformity flags change (`nonconformity_spec`)."""
    for name in ("k", "n_trees", "batch_size"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
    if args.search_k is not None and args.search_k < -1:
        raise ConfigError("--search-k must be -1 (Annoy's default) or positive")
    for name in ("recall_target", "shifted_recall_target"):
        if not 0 <= getattr(args, name) <= 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be in [0, 1]")
    return FitOptions(
        k=args.k,
        n_trees=args.n_trees,
        search_k=args.search_k,
        recall_target=RecallTarget(heldout=args.recall_target, shifted=args.shifted_recall_target),
        seed=args.seed,
        batch_size=args.batch_size,
        progress=not args.quiet,
        nonconformity=nonconformity_spec(args, preset),
        compute_dtype=args.compute_dtype,
    )


def nonconformity_spec(args: argparse.Namespace, preset: NonconformitySpec) -> NonconformitySpec:
    """`preset` with every nonconformity flag that was given applied on top. An explicit
    --nonconformity other than the preset's starts that kind from its own defaults (labels+distance:
    weight k, all k neighbours, no tail) rather than the preset's values."""
    kind = args.nonconformity or preset.kind
    label_layers = split_list(args.label_layers) if args.label_layers is not None else preset.label_layers
    residual = residual_spec(args, preset.residual)
    distance_flags = ("distance_weight", "distance_reference", "distance_statistic", "distance_neighbors")
    distance_given = args.distance_layers is not None or args.distance_tail is not None
    distance_given = distance_given or any(getattr(args, name) is not None for name in distance_flags)
    if kind == "labels":
        if distance_given:
            raise ConfigError("--distance-* options need --nonconformity labels+distance")
        return NonconformitySpec(label_layers=label_layers, residual=residual)
    base = (
        preset
        if preset.kind == kind
        else NonconformitySpec(kind="labels+distance", distance_weight=args.k, distance_reference_size=5000)
    )
    distance_layers = split_list(args.distance_layers) if args.distance_layers is not None else base.distance_layers
    weight = args.distance_weight if args.distance_weight is not None else base.distance_weight
    reference = args.distance_reference if args.distance_reference is not None else base.distance_reference_size
    tail = args.distance_tail if args.distance_tail is not None else base.distance_tail
    neighbors = args.distance_neighbors if args.distance_neighbors is not None else base.distance_neighbors
    if weight < 1 or reference < 1:
        raise ConfigError("--distance-weight and --distance-reference must be at least 1")
    if not 0 <= tail < 1:
        raise ConfigError("--distance-tail must be in [0, 1)")
    if neighbors is not None and not 1 <= neighbors <= args.k:
        raise ConfigError(f"--distance-neighbors must be in [1, k = {args.k}]")
    return NonconformitySpec(
        kind="labels+distance",
        label_layers=label_layers,
        distance_layers=distance_layers,
        distance_weight=weight,
        distance_reference_size=reference,
        distance_statistic=args.distance_statistic or base.distance_statistic,
        distance_tail=tail,
        distance_neighbors=neighbors,
        residual=residual,
    )


def residual_spec(args: argparse.Namespace, preset: ResidualSpec | None) -> ResidualSpec | None:
    """The residual term: the preset's (or --residual-layer's) with the --residual-* flags given; None with
    --no-residual."""
    given = {
        "components": args.residual_components,
        "weight": args.residual_weight,
        "tail": args.residual_tail,
        "reference_size": args.residual_reference,
    }
    given = {name: value for name, value in given.items() if value is not None}
    if args.no_residual:
        if given or args.residual_layer is not None:
            raise ConfigError("--no-residual leaves the residual term out: drop the --residual-* options")
        return None
    layer = args.residual_layer or (preset.layer if preset else None)
    if layer is None:
        if given:
            raise ConfigError("--residual-* options need --residual-layer")
        return None
    base = preset.model_dump() if preset is not None else {}
    base.update(layer=layer, **given)
    if given.get("components", 1) < 1 or given.get("weight", 1) < 1 or given.get("reference_size", 1) < 1:
        raise ConfigError("--residual-components, --residual-weight and --residual-reference must be at least 1")
    if not 0 <= given.get("tail", 0) < 1:
        raise ConfigError("--residual-tail must be in [0, 1)")
    try:
        return ResidualSpec(**base)
    except pydantic.ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = "-".join(str(part) for part in first["loc"])
        raise ConfigError(f"--residual-{where.replace('_', '-')}: {first['msg']}") from None


# --- layers --------------------------------------------------------------------------------------


def _register_layers(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "layers",
        help="list a model's tappable layers and the ones fit would choose",
        description="Run the model once on a few inputs and list every value a bundle can tap: module calls by "
        "their named_modules() path (a module called twice gets #1 for its second call), parts of tuple or "
        "dict outputs as [i] / [key], and, in a serialized program, functional operations as MODULE:OP "
        "(--all). Marks the layers `fit --preset recommended` (and paper) would index and where the residual "
        "term would look.",
        epilog="examples:\n  dknn-agent layers model.pt2\n"
        "  dknn-agent layers --factory mypkg.models:build --weights model.pt --data train.npz\n"
        "  dknn-agent layers bundle/",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "source", nargs="?", type=Path, default=None, help="a .pt2 program or a bundle directory (or use --factory)"
    )
    add_model_options(parser, required=False)
    parser.add_argument(
        "--data",
        default=None,
        metavar="DATA",
        help="inputs to run the model on (the first rows; needed for a factory, or for a program whose inputs "
        "have dynamic sizes besides the batch)",
    )
    parser.add_argument("--all", action="store_true", help="also list operations and values that cannot be tapped")
    parser.add_argument("--json", action="store_true", help="print the list as JSON")
    add_trust_options(parser)
    parser.set_defaults(handler=_layers)


def _layers(args: argparse.Namespace) -> int:
    import numpy as np

    from agent.engine.data_files import load_dataset
    from agent.engine.recommend import suggest

    model, output, manifest_inputs = _layers_model(args)
    probe: list[np.ndarray]
    if args.data is not None:
        data = load_dataset(args.data, labelled=False)
        names = [name for name, _, _ in manifest_inputs] if manifest_inputs else list(data.inputs)
        probe = [array[:PROBE_ROWS] for array in data.arrays_for(names)]
    elif manifest_inputs is not None:
        probe = []
        for name, dtype, shape in manifest_inputs:
            if any(size is None for size in shape[1:]):
                raise ConfigError(f"input {name!r} has dynamic sizes {list(shape)}: give inputs with --data")
            probe.append(np.zeros((PROBE_ROWS, *[int(size) for size in shape[1:] if size is not None]), dtype=dtype))
    else:
        raise ConfigError("a factory's inputs are unknown: give a few with --data")
    points, num_classes = probe_model(model, probe, output)
    suggestion = suggest(points, num_classes)
    recommended, paper = suggestion.layers("recommended"), suggestion.layers("paper")
    residual = suggestion.residual_spec()

    def role(name: str) -> str:
        marks = []
        if name in recommended:
            marks.append(f"recommended {recommended[name]}")
        if residual is not None and name == residual.layer:
            marks.append(f"residual ({residual.components} components)")
        if name in paper:
            marks.append("paper")
        return ", ".join(marks)

    shown = [point for point in points if args.all or (point.tappable and (":" not in point.name or role(point.name)))]
    if args.json:
        rows = [
            {
                "name": point.name,
                "kind": point.kind,
                "shape": list(point.shape),
                "features": point.width,
                "dtype": point.dtype,
                "tappable": point.tappable,
                "suggested": role(point.name) or None,
            }
            for point in shown
        ]
        print(json.dumps({"classes": num_classes, "layers": rows}, indent=2))
        return 0
    width = max([len(point.name) for point in shown] + [5])
    print(f"{'layer':<{width}}  {'kind':<18} {'shape':<18} {'features':>9}  suggested")
    for point in shown:
        mark = role(point.name) if point.tappable else "(not batch-first or not floating: cannot be tapped)"
        size = "x".join(str(dim) for dim in point.shape) or "scalar"
        print(f"{point.name:<{width}}  {point.kind[:18]:<18} {size[:18]:<18} {point.width:>9,}  {mark}")
    print(
        f"\n{num_classes} classes. fit without --layers indexes: "
        + ", ".join(f"{k}={v}" for k, v in recommended.items())
    )
    return 0


def _layers_model(
    args: argparse.Namespace,
) -> tuple[Any, str | None, list[tuple[str, str, tuple[int | None, ...]]] | None]:
    """The model, its output selector, and its inputs as (name, dtype, shape) where known."""
    from agent.engine.program import Program

    if args.source is not None and (args.model is not None or args.factory is not None):
        raise ConfigError("give the model once: a path, or --model, or --factory")
    if args.source is not None and args.source.is_dir():
        from agent.engine.bundle import verify_bundle

        bundle = verify_bundle(args.source, bundle_trust(args))
        bundle.close()
        inputs = [(spec.name, spec.dtype, (None, *spec.shape)) for spec in bundle.manifest.inputs]
        return bundle.build_model(), args.output or bundle.manifest.model.output, list(inputs)
    if args.source is not None:
        args.model = args.source
    model = load_model_source(args)
    return model, args.output, model.input_meta() if isinstance(model, Program) else None


# --- fit -----------------------------------------------------------------------------------------


def add_model_options(parser: argparse.ArgumentParser, *, required: bool) -> None:
    """Where the model comes from: a serialized program, or a factory plus weights."""
    group = parser.add_argument_group("model (one of --model and --factory)")
    group.add_argument(
        "--model",
        type=Path,
        default=None,
        help="the model as a torch.export program (.pt2, from torch.export.save; export it with a dynamic "
        "batch dimension): read as data, no code to trust (docs/security.md)",
    )
    group.add_argument(
        "--factory", default=None, help="or: importable model factory, package.module:function (code you trust)"
    )
    group.add_argument("--factory-kwargs", default="{}", help="JSON object of keyword arguments for the factory")
    group.add_argument("--weights", type=Path, default=None, help="the factory model's state_dict (torch.save)")
    group.add_argument(
        "--output",
        default=None,
        metavar="SELECTOR",
        help="where the logits are in the model's output, when it is a tuple, dict or ModelOutput: [0], [logits] "
        "or logits (default: the output is the logits)",
    )
    parser.set_defaults(model_required=required)


def load_model_source(args: argparse.Namespace) -> Any:
    """The model the --model / --factory options name: a checked Program, or the factory's module."""
    from agent.engine.bundle import load_state_dict
    from agent.engine.model_factory import build_model
    from agent.engine.program import load_program

    if (args.model is None) == (args.factory is None):
        raise ConfigError("name the model with exactly one of --model FILE.pt2 and --factory MODULE:FUNCTION")
    if args.model is not None:
        if args.weights is not None or args.factory_kwargs != "{}":
            raise ConfigError("--weights and --factory-kwargs go with --factory (a program carries its weights)")
        try:
            data = args.model.read_bytes()
        except OSError as exc:
            raise DataError(f"{args.model}: cannot read the program ({exc.strerror or exc})") from None
        return load_program(data, args.model)
    module = build_model(args.factory, parse_json_object(args.factory_kwargs, "--factory-kwargs"))
    if args.weights is None:
        raise ConfigError("--factory needs --weights (the state_dict to load into the factory's model)")
    try:
        module.load_state_dict(load_state_dict(args.weights))
    except RuntimeError as exc:
        raise ConfigError(f"{args.weights}: weights do not fit {args.factory}: {str(exc).splitlines()[0]}") from None
    return module.eval()


def _register_fit(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "fit",
        help="fit a bundle for your own model",
        description="Build a bundle from a trained model: per-layer Annoy indexes of the training set's "
        "activations and calibration scores from a held-out labelled set.\n\n"
        "Without --layers it picks them the way the MNIST reference was tuned (--preset recommended): the "
        "last hidden layer (unit rows, 32 principal directions) and the logits, each voting with its k "
        "neighbours and adding distance, plus a residual term at the activation before the last hidden "
        "layer. `dknn-agent layers MODEL` shows the choice before you fit. --preset paper fits the DkNN "
        "paper's label vote over the hidden activations and the logits instead.\n\n"
        "Data (--train, --calibration): an .npz whose 'y' holds integer labels and whose other arrays are "
        "the model's inputs by name ('x' for a single input), or NAME=FILE.npy,...,y=FILE.npy; uncompressed "
        "archives and .npy files are memory-mapped.",
        epilog="examples:\n"
        "  dknn-agent fit --model model.pt2 --train train.npz --calibration calibration.npz --out bundle/\n"
        "  dknn-agent fit --factory mypkg.models:build --weights model.pt --layers features.3=pca:64,classifier \\\n"
        "    --train train.npz --calibration calibration.npz --out bundle/ --model-name my-model",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_options(parser, required=True)
    parser.add_argument("--train", required=True, metavar="DATA", help="training inputs and labels")
    parser.add_argument("--calibration", required=True, metavar="DATA", help="inputs and labels held out from training")
    parser.add_argument("--out", type=Path, required=True, help="bundle directory to write")
    parser.add_argument(
        "--preset",
        choices=PRESETS,
        default="recommended",
        help="the configuration options leave unsaid (default: recommended)",
    )
    parser.add_argument(
        "--layers",
        default=None,
        help="comma-separated tap names (dknn-agent layers lists them), each optionally =PREPROCESSING (none, l2, "
        "pca:D, or a +chain such as l2+pca:32) (default: the preset's)",
    )
    parser.add_argument(
        "--input-range",
        action="append",
        default=None,
        metavar="NAME=LOW:HIGH",
        help="the values an integer input accepts (token ids up to the vocabulary size); events outside are "
        "dead-lettered (default: the range seen in the data)",
    )
    parser.add_argument(
        "--model-name", default="model", help="name recorded in the manifest and matched against events"
    )
    parser.add_argument("--model-version", default="1", help="version recorded in the manifest")
    parser.add_argument("--seed", type=int, default=0, help="seed for PCA sampling and Annoy (default: 0)")
    add_index_options(parser)
    parser.set_defaults(handler=_fit)


def parse_ranges(items: list[str] | None) -> dict[str, tuple[float, float]]:
    ranges: dict[str, tuple[float, float]] = {}
    for item in items or ():
        name, _, bounds = item.partition("=")
        low, _, high = bounds.partition(":")
        try:
            ranges[name] = (float(low), float(high))
        except ValueError:
            raise ConfigError(f"--input-range {item!r}: use NAME=LOW:HIGH, e.g. input_ids=0:30521") from None
        if not name or ranges[name][0] > ranges[name][1]:
            raise ConfigError(f"--input-range {item!r}: use NAME=LOW:HIGH with LOW <= HIGH")
    return ranges


def _fit(args: argparse.Namespace) -> int:
    from agent.engine.data_files import load_dataset
    from agent.engine.fit import fit_bundle, input_specs
    from agent.engine.manifest import PROGRAM_FILE, ModelSpec
    from agent.engine.program import Program
    from agent.engine.recommend import recommended_nonconformity, suggest

    model = load_model_source(args)
    train = load_dataset(args.train, labelled=True)
    calibration = load_dataset(args.calibration, labelled=True)
    inputs = input_specs(model, train, calibration, input_ranges=parse_ranges(args.input_range))  # reads all rows
    probe = [array[:PROBE_ROWS] for array in train.arrays_for([spec.name for spec in inputs])]
    points, num_classes = probe_model(model, probe, args.output)
    suggestion = suggest(points, num_classes)
    preset = NonconformitySpec() if args.preset == "paper" else recommended_nonconformity(suggestion.residual_spec())
    layers = parse_layers(args.layers) if args.layers is not None else suggestion.layers(args.preset)
    is_program = isinstance(model, Program)
    spec = ModelSpec(
        name=args.model_name,
        version=args.model_version,
        program=PROGRAM_FILE if is_program else None,
        factory=None if is_program else args.factory,
        factory_kwargs={} if is_program else parse_json_object(args.factory_kwargs, "--factory-kwargs"),
        output=args.output,
        num_classes=num_classes,
    )
    manifest = fit_bundle(
        model=model,
        model_spec=spec,
        layers=layers,
        train=train,
        calibration=calibration,
        out=args.out,
        options=fit_options(args, preset),
        inputs=inputs,
        force=args.force,
    )
    residual = manifest.nonconformity.residual
    print(
        f"wrote {args.out}: layers {', '.join(f'{layer.name}={layer.preprocessing}' for layer in manifest.layers)}; "
        f"{manifest.nonconformity.kind}" + (f", residual term at {residual.layer}" if residual else "")
    )
    return 0


PROBE_ROWS = 3  # rows of a probe pass (agent.engine.taps.PROBE_BATCH)


def probe_model(model: Any, probe: list[Any], output: str | None) -> tuple[list[Any], int]:
    """The model's tap points and its number of classes, from one pass on a few rows."""
    import torch

    from agent.engine.taps import as_tappable, as_tensors

    tappable = as_tappable(model)
    tensors = as_tensors(probe)
    try:
        points = tappable.tap_points(tensors, output)
    except DknnError:
        raise
    except Exception as exc:  # the model's own error on these inputs
        raise DataError(f"the model fails on the data's first rows: {type(exc).__name__}: {exc}") from None
    with torch.no_grad():
        out = tappable.classifier(output)(*tensors)
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        raise ConfigError("the model's output is not (batch, classes) logits: name them with --output")
    return points, int(out.shape[1])


# --- score ---------------------------------------------------------------------------------------


def _register_score(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "score",
        help="score a batch of inputs from files",
        description="Score every input of a data set (an .npy array in the model's input layout, e.g. "
        "(N, 1, 28, 28) float32 for MNIST; an .npz of named inputs; or NAME=FILE.npy,...) and write one JSON "
        "object per input: index, prediction, credibility, confidence, model_prediction, p_values.",
    )
    parser.add_argument("--artifacts", type=Path, required=True, help="bundle directory")
    parser.add_argument("--input", required=True, metavar="DATA", help="the inputs (labels, if any, are ignored)")
    parser.add_argument("--output", type=Path, default=None, help="JSONL file to write (default: stdout)")
    parser.add_argument(
        "--index", choices=BACKENDS, default="annoy", help="neighbour backend (default: annoy; exact = brute force)"
    )
    parser.add_argument("--batch-size", type=int, default=256, help="inputs per forward pass (default: 256)")
    parser.add_argument("--search-k", type=int, default=None, help="override the bundle's Annoy search_k")
    add_trust_options(parser)
    parser.set_defaults(handler=_score)


def add_trust_options(parser: argparse.ArgumentParser) -> None:
    """What a bundle may do (docs/security.md): the factory modules it may name, its exact digest."""
    from agent.engine.model_factory import DEFAULT_FACTORY_MODULES

    group = parser.add_argument_group("trust")
    group.add_argument(
        "--trust-factory",
        action="append",
        default=None,
        metavar="MODULE",
        help="trust model factories in this module or package (repeatable; trusted by default: "
        f"{', '.join(DEFAULT_FACTORY_MODULES) or 'none'}; bundles carrying a serialized program need none)",
    )
    group.add_argument(
        "--bundle-digest",
        default=None,
        metavar="sha256:HEX",
        help="refuse the bundle unless its digest is this one (dknn-agent info prints it)",
    )


def bundle_trust(args: argparse.Namespace) -> BundleTrust:
    from agent.engine.model_factory import DEFAULT_FACTORY_MODULES

    return BundleTrust(
        factory_modules=(*DEFAULT_FACTORY_MODULES, *(args.trust_factory or ())), digest=args.bundle_digest
    )


def _score(args: argparse.Namespace) -> int:
    from agent.engine.batch_scoring import write_jsonl
    from agent.engine.data_files import load_dataset
    from agent.engine.dknn import DkNN

    if args.batch_size < 1:
        raise ConfigError("--batch-size must be at least 1")
    data = load_dataset(args.input, labelled=False)
    scorer = DkNN.from_bundle(args.artifacts, backend=args.index, search_k=args.search_k, trust=bundle_trust(args))
    scorer.check_layout(data.arrays_for([spec.name for spec in scorer.manifest.inputs]))
    if args.output is None:
        write_jsonl(scorer, data, args.batch_size, sys.stdout)
        return 0
    if args.output.is_dir():
        raise DataError(f"--output {args.output} is a directory; name the JSONL file to write")
    partial = args.output.with_name(args.output.name + ".partial")
    try:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        with partial.open("w") as sink:
            count = write_jsonl(scorer, data, args.batch_size, sink)
        partial.replace(args.output)
    except OSError as exc:
        raise DataError(f"cannot write {args.output}: {exc.strerror or exc}") from None
    print(f"scored {count} inputs -> {args.output}", file=sys.stderr)
    return 0


# --- info ----------------------------------------------------------------------------------------


def _register_info(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "info",
        help="verify a bundle and describe it",
        description="Verify every hash and dimension of a bundle, then print its manifest summary.",
    )
    parser.add_argument("artifacts", type=Path, help="bundle directory")
    parser.add_argument("--json", action="store_true", help="print the full manifest as JSON")
    parser.set_defaults(handler=_info)


def _info(args: argparse.Namespace) -> int:
    from agent.engine.bundle import verify_bundle
    from agent.engine.model_factory import DEFAULT_FACTORY_MODULES, check_factory_allowed

    bundle = verify_bundle(args.artifacts, importing=False)  # info never imports the factory
    bundle.close()
    manifest = bundle.manifest
    if args.json:
        print(json.dumps(manifest.model_dump(mode="json"), indent=2))
        return 0
    model = manifest.model
    if model.program is not None:
        source, trusted = f"the serialized program {model.program}", "none needed: the program is read as data"
    else:
        source = f"the factory {model.factory}"
        try:
            check_factory_allowed(model.factory or "", DEFAULT_FACTORY_MODULES)
            trusted = "trusted by default"
        except BundleError:
            trusted = "pass --trust-factory / set DKNN_TRUSTED_FACTORIES to run it"
    output = f", logits at {model.output}" if model.output else ""
    print(f"bundle     {args.artifacts} (verified: {len(manifest.files)} files)")
    print(f"digest     {bundle.digest}  (pin it: --bundle-digest / DKNN_BUNDLE_DIGEST)")
    print(f"model      {model.name} {model.version} from {source}, {model.num_classes} classes{output}")
    print(f"trust      {trusted}; forward pass in {model.compute_dtype}")
    for one in manifest.inputs:
        print(f"input      {one.name}: {one.dtype} {list(one.shape)} range {one.value_range}")
    tuned = all(layer.search_k is not None for layer in manifest.layers)
    search_k = "per layer" if tuned else f"search_k={manifest.index.search_k}"
    print(f"neighbours k={manifest.k}, {manifest.index.kind} n_trees={manifest.index.n_trees} {search_k}")
    print(f"train      {manifest.train.size} points ({manifest.train.source})")
    print(f"calibrate  {manifest.calibration.size} points ({manifest.calibration.source})")
    spec = manifest.nonconformity
    m = spec.distance_neighbors or manifest.k
    nearest = f"distance to neighbour {m}" if spec.distance_statistic == "kth" else f"mean distance of the nearest {m}"
    tail = f" above the reference's {spec.distance_tail:g} quantile" if spec.distance_tail else ""
    distance = (
        f", + up to {spec.distance_weight} per distance layer ({', '.join(manifest.distance_layers)}) for the "
        f"{nearest}{tail} (reference of {spec.distance_reference_size} training points)"
        if manifest.distance_layers
        else ""
    )
    print(f"alpha      {spec.kind}: disagreeing neighbours in {', '.join(manifest.label_layers)}{distance}")
    if spec.residual is not None:
        term = spec.residual
        print(
            f"residual   + up to {term.weight} for a {term.layer} activation further off its {term.components} "
            f"principal directions than the reference's {term.tail:g} quantile (reference of "
            f"{term.reference_size} training points)"
        )
    for layer in manifest.layers:
        recall = (
            f"  search_k={layer.search_k} recall@k {layer.recall.heldout:.3f} held-out, {layer.recall.shifted:.3f} noisy"
            if layer.recall is not None
            else ""
        )
        print(f"layer      {layer.name:<12} {layer.input_dim:>6} -> {layer.dim:<5} {layer.preprocessing:<10}{recall}")
    return 0
