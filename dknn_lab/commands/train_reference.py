"""`dknn-agent train-reference`: train the MNIST reference model and fit its bundle (the lab's)."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from agent.cli.bundle_commands import add_index_options, fit_options
from agent.cli.options import given_training_options, parse_layers
from agent.engine.manifest import NonconformitySpec
from agent.errors import ConfigError
from dknn_lab.training import TrainOptions


def register(commands: argparse._SubParsersAction) -> None:
    _register_train_reference(commands)


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
    from dknn_lab.reference import REFERENCE_TRAINING

    return replace(
        REFERENCE_TRAINING,
        epochs=args.epochs,
        seed=args.seed,
        progress=not args.quiet,
        snnl_learn_temperature=args.snnl_learn_temperature,
        **given_training_options(args),
    )


def _train_reference(args: argparse.Namespace) -> int:
    from dknn_lab.reference import (
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
