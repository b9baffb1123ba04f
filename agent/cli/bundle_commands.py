"""The bundle commands: `train-reference`, `fit`, `score`, `info` — arguments next to their handlers."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import pydantic

from agent.cli.options import given_training_options, parse_json_object, parse_layers, split_list
from agent.engine.bundle import BundleTrust
from agent.engine.fit import FitOptions
from agent.engine.index import BACKENDS
from agent.engine.manifest import COMPUTE_DTYPES, NonconformitySpec, ResidualSpec
from agent.engine.tuning import RecallTarget
from agent.errors import BundleError, ConfigError, DataError

if TYPE_CHECKING:
    from agent.research.training import TrainOptions

# What each --residual-* option means when absent: the schema's defaults (the MNIST study's choice).
DEFAULT_RESIDUAL = {name: field.default for name, field in ResidualSpec.model_fields.items() if name != "layer"}


def register(commands: argparse._SubParsersAction) -> None:
    _register_train_reference(commands)
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
        default="labels",
        help="labels: the DkNN paper's count of disagreeing neighbours (fit's default); labels+distance: plus, "
        "per layer, up to --distance-weight for neighbours farther than the training points' own "
        "(docs/design.md §2.2; train-reference's default, with the adopted settings, when absent)",
    )
    group.add_argument(
        "--distance-weight",
        type=int,
        default=None,
        help="labels+distance: what the farthest inputs add per layer, in disagreeing neighbours (default: k)",
    )
    group.add_argument(
        "--distance-reference",
        type=int,
        default=5000,
        help="labels+distance: training points sampled for the distance reference (default: 5000)",
    )
    group.add_argument(
        "--distance-statistic",
        choices=("mean", "kth"),
        default="mean",
        help="labels+distance: a layer's distance is the mean of the nearest --distance-neighbors' or the farthest "
        "of them (default: mean)",
    )
    group.add_argument(
        "--distance-neighbors",
        type=int,
        default=None,
        metavar="M",
        help="labels+distance: how many of the k nearest neighbours the distance statistic reads; a few see a "
        "far input better than all 75 (default: k)",
    )
    group.add_argument(
        "--distance-tail",
        type=float,
        default=0.0,
        help="labels+distance: only distance ranks above this quantile of the reference count (default: 0)",
    )
    group.add_argument(
        "--residual-layer",
        default=None,
        metavar="LAYER",
        help="add the residual term: up to --residual-weight for inputs whose activation at LAYER (indexed or not) "
        "lies further off the training data's principal directions than the training points' own "
        "(docs/design.md §2.2; default: no residual term, train-reference: relu2)",
    )
    group.add_argument(
        "--residual-components",
        type=int,
        default=DEFAULT_RESIDUAL["components"],
        metavar="D",
        help="residual term: principal directions the training data spans at the layer (default: %(default)s)",
    )
    group.add_argument(
        "--residual-weight",
        type=int,
        default=DEFAULT_RESIDUAL["weight"],
        help="residual term: what the farthest-off inputs add, in disagreeing neighbours (default: %(default)s)",
    )
    group.add_argument(
        "--residual-tail",
        type=float,
        default=DEFAULT_RESIDUAL["tail"],
        help="residual term: only ranks above this quantile of the reference count; high, so that digits from "
        "other populations are left alone (default: %(default)s)",
    )
    group.add_argument(
        "--residual-reference",
        type=int,
        default=DEFAULT_RESIDUAL["reference_size"],
        help="residual term: training points sampled for its reference (default: %(default)s)",
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


def fit_options(args: argparse.Namespace, default_nonconformity: NonconformitySpec | None = None) -> FitOptions:
    """The fitting options; `default_nonconformity` is what an absent --nonconformity means (train-reference:
    the adopted one), and only then may --nonconformity be absent."""
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
        nonconformity=nonconformity_spec(args, default_nonconformity),
        compute_dtype=args.compute_dtype,
    )


def nonconformity_spec(args: argparse.Namespace, default: NonconformitySpec | None = None) -> NonconformitySpec:
    """The --nonconformity options as the manifest's spec; distance options without distance are an error."""
    label_layers = split_list(args.label_layers) if args.label_layers is not None else None
    distance_layers = split_list(args.distance_layers) if args.distance_layers is not None else None
    distance_given = (
        args.distance_weight is not None
        or distance_layers is not None
        or args.distance_tail
        or args.distance_neighbors is not None
    )
    residual = residual_spec(args)
    residual_given = residual is not None or _residual_options_changed(args)
    if args.nonconformity is None:  # train-reference without --nonconformity: the adopted one
        if default is None or label_layers is not None or distance_given or residual_given:
            raise ConfigError("--label-layers, --distance-* and --residual-* options need an explicit --nonconformity")
        return default
    if residual is None and residual_given:
        raise ConfigError("--residual-* options need --residual-layer")
    if args.nonconformity == "labels":
        if distance_given:
            raise ConfigError("--distance-* options need --nonconformity labels+distance")
        return NonconformitySpec(label_layers=label_layers, residual=residual)
    weight = args.k if args.distance_weight is None else args.distance_weight
    if weight < 1 or args.distance_reference < 1:
        raise ConfigError("--distance-weight and --distance-reference must be at least 1")
    if not 0 <= args.distance_tail < 1:
        raise ConfigError("--distance-tail must be in [0, 1)")
    if args.distance_neighbors is not None and not 1 <= args.distance_neighbors <= args.k:
        raise ConfigError(f"--distance-neighbors must be in [1, k = {args.k}]")
    return NonconformitySpec(
        kind="labels+distance",
        label_layers=label_layers,
        distance_layers=distance_layers,
        distance_weight=weight,
        distance_reference_size=args.distance_reference,
        distance_statistic=args.distance_statistic,
        distance_tail=args.distance_tail,
        distance_neighbors=args.distance_neighbors,
        residual=residual,
    )


def residual_spec(args: argparse.Namespace) -> ResidualSpec | None:
    """The --residual-* options as the manifest's residual term; None without --residual-layer."""
    if args.residual_layer is None:
        return None
    if args.residual_components < 1 or args.residual_weight < 1 or args.residual_reference < 1:
        raise ConfigError("--residual-components, --residual-weight and --residual-reference must be at least 1")
    if not 0 <= args.residual_tail < 1:
        raise ConfigError("--residual-tail must be in [0, 1)")
    try:
        return ResidualSpec(
            layer=args.residual_layer,
            components=args.residual_components,
            weight=args.residual_weight,
            tail=args.residual_tail,
            reference_size=args.residual_reference,
        )
    except pydantic.ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = "-".join(str(part) for part in first["loc"])
        raise ConfigError(f"--residual-{where.replace('_', '-')}: {first['msg']}") from None


def _residual_options_changed(args: argparse.Namespace) -> bool:
    return any(
        getattr(args, f"residual_{name}") != DEFAULT_RESIDUAL[field]
        for name, field in (
            ("components", "components"),
            ("weight", "weight"),
            ("tail", "tail"),
            ("reference", "reference_size"),
        )
    )


# --- train-reference -----------------------------------------------------------------------------


def _register_train_reference(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "train-reference",
        help="train a reference model and fit its bundle",
        description="Train the DkNN paper's MNIST CNN with the configuration the project adopted\n"
        '(SNNL w=1 and blur augmentation; README "Measured quality"), then fit a bundle over its\n'
        "relu3 and logits layers: k=75, the distance-aware nonconformity (docs/design.md §2.2), 750\n"
        "calibration points held out from the MNIST test set (recorded in the manifest; the other\n"
        "9,250 are the evaluation split).\n\n"
        "--paper-dknn fits the paper's DkNN instead (relu1, relu2, relu3 and logits vote; neighbour\n"
        "labels only); --snnl-weight 0 --blur-sigma 0 trains the plain model.",
        epilog="compare the two on one model:\n"
        "  dknn-agent train-reference mnist --refit artifacts/mnist-cnn --paper-dknn --out artifacts/mnist-cnn-paper",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("dataset", choices=["mnist"], help="which reference model to train")
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="directory of the MNIST IDX .gz files (default: $DKNN_MNIST_DIR, else ../shared/data/mnist)",
    )
    parser.add_argument("--out", type=Path, required=True, help="bundle directory to write")
    parser.add_argument("--epochs", type=int, default=10, help="training epochs (default: 10)")
    parser.add_argument(
        "--train-size",
        type=int,
        default=None,
        metavar="N",
        help="train and index a seeded random N of the 60,000 training images (quick checks; default: all)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for training, split and index (default: 0)")
    parser.add_argument(
        "--shift-px",
        type=int,
        default=None,
        help="augment training with random translations of up to N pixels (default: 2; 0 = off)",
    )
    parser.add_argument(
        "--blur-sigma",
        type=float,
        default=None,
        metavar="S",
        help="augment training with a Gaussian blur of σ drawn from [0, S] pixels per image; SNNL-trained "
        "models need it on soft digits (bench sharpness; default: 1.5; 0 = off)",
    )
    parser.add_argument(
        "--snnl-weight",
        type=float,
        default=None,
        help="train with CE − W × Σ SNNL over --snnl-layers; W > 0 entangles classes (default: 1; 0 = off)",
    )
    parser.add_argument("--snnl-temperature", type=float, default=None, help="SNNL temperature (default: 100)")
    parser.add_argument(
        "--snnl-learn-temperature",
        action="store_true",
        help="let the temperature follow argmin_T SNNL per batch instead of staying fixed",
    )
    parser.add_argument(
        "--snnl-distance",
        choices=["euclidean", "cosine"],
        default=None,
        help="pairwise distance inside the SNNL: squared Euclidean (the paper's) or cosine, "
        "which is scale invariant (default: euclidean)",
    )
    parser.add_argument("--snnl-layers", default=None, help="layers the SNNL term acts on (default: relu1,relu2,relu3)")
    parser.add_argument(
        "--layers",
        default=None,
        help="layers and their preprocessing, as for fit (default: relu3=l2+pca:32,logits; with --paper-dknn: "
        "relu1=pca:32,relu2=pca:32,relu3=pca:32,logits)",
    )
    parser.add_argument(
        "--paper-dknn",
        action="store_true",
        help="fit the DkNN paper's way: every layer votes, neighbour labels only (docs/design.md §2.2)",
    )
    parser.add_argument(
        "--refit",
        type=Path,
        default=None,
        metavar="BUNDLE",
        help="do not train: fit a new bundle around this reference bundle's model (same version and calibration "
        "split), e.g. to compare --nonconformity choices on one model",
    )
    parser.add_argument(
        "--index-size",
        type=int,
        default=None,
        metavar="N",
        help="index N points: the training images plus seeded rotated, scaled and shifted copies of them "
        "(the scale benchmark's 1,000,000-point reference; default: the training images only)",
    )
    add_index_options(parser)
    parser.set_defaults(handler=_train_reference, nonconformity=None)  # absent: the adopted nonconformity


def reference_training(args: argparse.Namespace) -> TrainOptions:
    """The adopted training (`REFERENCE_TRAINING`) with whatever the options change."""
    from agent.research.reference import REFERENCE_TRAINING

    return replace(
        REFERENCE_TRAINING,
        epochs=args.epochs,
        seed=args.seed,
        progress=not args.quiet,
        snnl_learn_temperature=args.snnl_learn_temperature,
        **given_training_options(args),
    )


def _train_reference(args: argparse.Namespace) -> int:
    from agent.research.reference import (
        PAPER_LAYERS,
        REFERENCE_LAYERS,
        REFERENCE_NONCONFORMITY,
        train_reference_mnist,
    )

    training = reference_training(args)
    if training.epochs < 1 or training.shift_px < 0 or not 0 <= training.blur_sigma <= 5:
        raise ConfigError("--epochs must be at least 1, --shift-px at least 0 and --blur-sigma in [0, 5]")
    if args.train_size is not None and args.train_size < args.k:
        raise ConfigError(f"--train-size must be at least --k ({args.k}): every layer needs k neighbours")
    if args.index_size is not None and args.index_size < 1:
        raise ConfigError("--index-size must be positive")
    if args.paper_dknn and args.nonconformity is not None:
        raise ConfigError("--paper-dknn fixes the nonconformity; leave out --nonconformity")
    default_layers = PAPER_LAYERS if args.paper_dknn else REFERENCE_LAYERS
    manifest = train_reference_mnist(
        out=args.out,
        data_dir=args.data,
        train_size=args.train_size,
        train_options=training,
        fit_options=fit_options(args, NonconformitySpec() if args.paper_dknn else REFERENCE_NONCONFORMITY),
        force=args.force,
        refit=args.refit,
        layers=parse_layers(args.layers) if args.layers is not None else default_layers,
        index_size=args.index_size,
    )
    print(
        f"wrote {args.out} ({manifest.model.name} {manifest.model.version}, layers {', '.join(manifest.layer_names)})"
    )
    return 0


# --- fit -----------------------------------------------------------------------------------------


def _register_fit(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "fit",
        help="fit a bundle for your own model",
        description="Build a bundle from a trained model: per-layer Annoy indexes of the training set's "
        "activations and calibration scores from a held-out labelled set.",
        epilog="example:\n  dknn-agent fit --factory agent.research.models.tiny:build_model --weights model.pt \\\n"
        "    --layers relu1,relu2,logits --train train.npz --calibration cal.npz --out bundle/",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--factory", required=True, help="importable model factory, package.module:function")
    parser.add_argument("--factory-kwargs", default="{}", help="JSON object of keyword arguments for the factory")
    parser.add_argument("--weights", type=Path, required=True, help="state_dict saved with torch.save")
    parser.add_argument(
        "--layers",
        required=True,
        help="comma-separated named_modules() paths, each optionally "
        "=PREPROCESSING (none, l2, pca:D, or a +chain such as pca:64+l2)",
    )
    parser.add_argument("--train", type=Path, required=True, help=".npz with float32 'x' and integer 'y'")
    parser.add_argument(
        "--calibration", type=Path, required=True, help=".npz with float32 'x' and integer 'y' held out from training"
    )
    parser.add_argument("--out", type=Path, required=True, help="bundle directory to write")
    parser.add_argument(
        "--model-name", default="model", help="name recorded in the manifest and matched against events"
    )
    parser.add_argument("--model-version", default="1", help="version recorded in the manifest")
    parser.add_argument("--seed", type=int, default=0, help="seed for PCA sampling and Annoy (default: 0)")
    add_index_options(parser)
    parser.set_defaults(handler=_fit)


def _fit(args: argparse.Namespace) -> int:
    import torch

    from agent.engine.bundle import load_state_dict
    from agent.engine.fit import fit_bundle, load_labelled_npz
    from agent.engine.manifest import ModelSpec
    from agent.engine.model_factory import build_model

    layers = parse_layers(args.layers)
    kwargs = parse_json_object(args.factory_kwargs, "--factory-kwargs")
    model = build_model(args.factory, kwargs)
    try:
        model.load_state_dict(load_state_dict(args.weights))
    except RuntimeError as exc:
        raise ConfigError(f"{args.weights}: weights do not fit {args.factory}: {str(exc).splitlines()[0]}") from None
    train, calibration = load_labelled_npz(args.train), load_labelled_npz(args.calibration)
    with torch.no_grad():
        num_classes = int(model.eval()(torch.as_tensor(train.x[:1])).shape[1])
    spec = ModelSpec(
        name=args.model_name,
        version=args.model_version,
        factory=args.factory,
        factory_kwargs=kwargs,
        num_classes=num_classes,
    )
    fit_bundle(
        model=model,
        model_spec=spec,
        layers=layers,
        train=train,
        calibration=calibration,
        out=args.out,
        options=fit_options(args),
        force=args.force,
    )
    print(f"wrote {args.out}")
    return 0


# --- score ---------------------------------------------------------------------------------------


def _register_score(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "score",
        help="score a .npy batch of inputs",
        description="Score every input of a .npy array (float32, the model's input layout, e.g. "
        "(N, 1, 28, 28) in [0, 1] for MNIST) and write one JSON object per input: index, prediction, "
        "credibility, confidence, model_prediction, p_values.",
    )
    parser.add_argument("--artifacts", type=Path, required=True, help="bundle directory")
    parser.add_argument("--input", type=Path, required=True, help=".npy file of inputs")
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
        help="also trust model factories in this module or package (repeatable; trusted "
        f"by default: {', '.join(DEFAULT_FACTORY_MODULES)})",
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
    from agent.engine.batch_scoring import load_inputs, write_jsonl
    from agent.engine.dknn import DkNN

    if args.batch_size < 1:
        raise ConfigError("--batch-size must be at least 1")
    x = load_inputs(args.input)
    scorer = DkNN.from_bundle(args.artifacts, backend=args.index, search_k=args.search_k, trust=bundle_trust(args))
    scorer.check_layout(x.shape, x.dtype)
    if args.output is None:
        write_jsonl(scorer, x, args.batch_size, sys.stdout)
        return 0
    if args.output.is_dir():
        raise DataError(f"--output {args.output} is a directory; name the JSONL file to write")
    partial = args.output.with_name(args.output.name + ".partial")
    try:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        with partial.open("w") as sink:
            count = write_jsonl(scorer, x, args.batch_size, sink)
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
    try:
        check_factory_allowed(manifest.model.factory, DEFAULT_FACTORY_MODULES)
        trusted = "trusted by default"
    except BundleError:
        trusted = "NOT trusted by default: pass --trust-factory / set DKNN_TRUSTED_FACTORIES to run it"
    print(f"bundle     {args.artifacts} (verified: {len(manifest.files)} files)")
    print(f"digest     {bundle.digest}  (pin it: --bundle-digest / DKNN_BUNDLE_DIGEST)")
    print(
        f"model      {manifest.model.name} {manifest.model.version} via {manifest.model.factory}, "
        f"{manifest.model.num_classes} classes"
    )
    print(f"factory    {trusted}")
    print(
        f"input      {manifest.input.dtype} {list(manifest.input.shape)} range {manifest.input.value_range}, "
        f"forward pass in {manifest.model.compute_dtype}"
    )
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
