"""`dknn-agent bench ...`: benchmarks that print their numbers and save them as JSON + Markdown."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from agent.cli.options import given_training_options, parse_seeds
from agent.errors import ConfigError


def register(commands: argparse._SubParsersAction) -> None:
    bench = commands.add_parser(
        "bench",
        help="quality and performance benchmarks",
        description="Benchmarks print their numbers and save them as JSON and Markdown.",
    )
    kinds = bench.add_subparsers(dest="bench", required=True, metavar="BENCHMARK")
    quality = kinds.add_parser(
        "quality",
        help="DkNN accuracy, credibility, AUROC, validity and Annoy recall on MNIST",
        description="Score the evaluation split of a bundle's calibration source (MNIST test minus the "
        "calibration rows) and shifted versions of it (uniform noise, digits rotated 90°, FGSM ε=0.25 "
        "against the bundle's model) with both the annoy and exact backends.",
    )
    quality.add_argument("--artifacts", type=Path, required=True, help="MNIST reference bundle")
    quality.add_argument("--data", type=Path, default=None, help="MNIST IDX directory (default: the shared copy)")
    quality.add_argument("--out", type=Path, default=Path("docs/results"), help="where to write JSON + Markdown")
    quality.add_argument(
        "--limit",
        type=int,
        default=None,
        help="score a seeded random subset of N evaluation points (default: all 9,250)",
    )
    quality.add_argument("--epsilon", type=float, default=0.25, help="FGSM step (default: 0.25)")
    quality.add_argument("--seed", type=int, default=0, help="seed for the noise inputs (default: 0)")
    quality.add_argument("--batch-size", type=int, default=512)
    quality.add_argument(
        "--extended",
        action="store_true",
        help="also Gaussian noise, inverted digits, BIM and PGD; softmax, Mahalanobis and deep-kNN "
        "baselines with AUROC and FPR@95%%TPR; a reliability diagram and credibility histograms (PNG)",
    )
    quality.set_defaults(handler=_quality)

    study = kinds.add_parser(
        "snnl",
        help="does entangling help? reference models with and without SNNL, compared seed by seed",
        description="For each seed, train the MNIST reference model twice with the same budget — plain "
        "cross-entropy, and cross-entropy − W × SNNL — fit both bundles, run the extended quality benchmark "
        "on each (annoy backend) and compare DkNN credibility's AUROC and FPR@95%TPR on every shifted and "
        "adversarial set. Bundles are cached in --work-dir, one per training configuration, and reused. "
        "Per-model tables and plots go to OUT/NAME/, the comparison to OUT/NAME.{json,md}. "
        "--adopted compares the reference configuration the project adopted (train-reference's defaults: SNNL, "
        "blur augmentation, the distance-aware fit over relu3 and logits) with the previous one (the plain model, "
        "the paper's DkNN), natural sets included.",
    )
    study.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds (default: 0,1,2)")
    study.add_argument("--epochs", type=int, default=10, help="training epochs for both conditions (default: 10)")
    study.add_argument("--snnl-weight", type=float, default=None, help="W in CE − W × Σ SNNL (default: 1)")
    study.add_argument("--snnl-temperature", type=float, default=None, help="SNNL temperature (default: 0.1)")
    study.add_argument(
        "--snnl-distance",
        choices=["euclidean", "cosine"],
        default=None,
        help="distance inside the SNNL (default: cosine, scale invariant)",
    )
    study.add_argument("--snnl-layers", default=None, help="layers the SNNL term acts on (default: relu1,relu2,relu3)")
    study.add_argument(
        "--adopted",
        action="store_true",
        help="the adopted reference configuration against the previous reference (no --snnl-* options)",
    )
    study.add_argument("--work-dir", type=Path, default=Path("artifacts/snnl-study"), help="where the bundles are kept")
    study.add_argument("--data", type=Path, default=None, help="MNIST IDX directory (default: the shared copy)")
    study.add_argument("--out", type=Path, default=Path("docs/results"))
    study.add_argument("--limit", type=int, default=None, help="evaluation points per model (default: all 9,250)")
    study.add_argument("--retrain", action="store_true", help="ignore cached bundles")
    study.add_argument(
        "--name",
        default=None,
        help="results name: OUT/NAME.{json,md} and OUT/NAME/ (default: snnl-study; with --adopted: adopted-study)",
    )
    study.set_defaults(handler=_snnl_study)

    shift = kinds.add_parser(
        "shift",
        help="drift signals: false-alarm run lengths, detection delay, resolution",
        description="Score the evaluation split and shifted versions of it (rotated, uniform and Gaussian noise, "
        "inverted, FGSM) once, then run the agent's drift monitor on streams drawn from those scores: mean run "
        "length to a false alarm at thresholds of 1e3/1e4/1e5 events against the guarantee, detection delay at the "
        "default threshold after a long clean stretch for 5/20/50/100%% shifted traffic, and how fast the "
        "shifted state clears after the shift ends. Saves OUT/shift-MODEL.{json,md} and OUT/shift-delays.png.",
    )
    shift.add_argument("--artifacts", type=Path, required=True, help="MNIST reference bundle")
    shift.add_argument("--data", type=Path, default=None, help="MNIST IDX directory (default: the shared copy)")
    shift.add_argument("--out", type=Path, default=Path("docs/results"), help="where to write the report")
    shift.add_argument("--onsets", type=int, default=200, help="shift onsets per kind and share (default: 200)")
    shift.add_argument("--prefix", type=int, default=20_000, help="clean events before each onset (default: 20000)")
    shift.add_argument(
        "--arl-runs",
        default="300,200,100",
        help="clean runs per false-alarm threshold 1e3,1e4,1e5 (default: 300,200,100)",
    )
    shift.add_argument("--seed", type=int, default=0)
    shift.add_argument(
        "--save-scores",
        type=Path,
        default=None,
        metavar="NPZ",
        help="also save the per-input scores the streams draw from (make bench-shift-peer replays them "
        "through alibi-detect's detectors)",
    )
    shift.add_argument("--scores-only", action="store_true", help="stop after --save-scores (a minute, not 15)")
    shift.set_defaults(handler=_shift)

    stream = kinds.add_parser(
        "stream",
        help="events/s and p50/p99 event latency through a real Kafka broker",
        description="Publish MNIST events to a fresh topic, drain them with one in-process agent (throughput), "
        "then publish at a steady --latency-rate and measure each event's latency from its timestamp to its score "
        "record. The broker, the publisher and the agent share this machine's cores.",
    )
    stream.add_argument("--artifacts", type=Path, required=True, help="bundle to score with")
    stream.add_argument(
        "--bootstrap-servers", required=True, help="Kafka broker (deploy/local/kafka.sh start prints one)"
    )
    stream.add_argument("--count", type=int, default=5000, help="events for the throughput phase (default: 5000)")
    stream.add_argument("--latency-count", type=int, default=2000, help="events for the latency phase (default: 2000)")
    stream.add_argument(
        "--latency-rate", type=float, default=1000.0, help="events/s in the latency phase (default: 1000)"
    )
    stream.add_argument("--batch-size", type=int, default=256, help="the agent's events per batch (default: 256)")
    stream.add_argument("--out", type=Path, default=Path("docs/results"))
    stream.set_defaults(handler=_stream)

    perf = kinds.add_parser(
        "perf",
        help="scoring inputs/s against the model's own forward pass, stage by stage, Annoy against exact",
        description="In one run on MNIST evaluation inputs: the model's plain forward pass (the floor), each "
        "stage of the scoring path timed alone (decode, activations, preprocessing and k-NN per layer, the residual term, conformal, "
        "output encoding), DkNN scoring with Annoy and with exact search, and the quality Annoy trades: accuracy, "
        "credibility AUROC against FGSM, noise and rotated digits, recall@k per layer on clean and shifted inputs.",
    )
    perf.add_argument("--artifacts", type=Path, required=True, help="MNIST reference bundle")
    perf.add_argument("--data", type=Path, default=None, help="MNIST IDX directory (default: the shared copy)")
    perf.add_argument("--count", type=int, default=4096, help="clean evaluation inputs (default: 4096)")
    perf.add_argument(
        "--exact-count", type=int, default=1024, help="inputs for the exact backend's rate (default: 1024)"
    )
    perf.add_argument("--batch-size", type=int, default=256, help="inputs per forward pass (default: 256)")
    perf.add_argument("--seed", type=int, default=0, help="seed for the input sample and the noise (default: 0)")
    perf.add_argument("--out", type=Path, default=Path("docs/results"), help="where to write JSON + Markdown")
    perf.set_defaults(handler=_perf)

    sharpness = kinds.add_parser(
        "sharpness",
        help="each model's accuracy as MNIST digits are blurred or pass through 8x8: why SNNL models fail on UCI digits",
        description="The model's own accuracy (forward passes only, seconds per bundle) on MNIST evaluation digits "
        "blurred (Gaussian σ 0.5, 1, 1.5) and passed through 16x16, 12x12 and 8x8 the way scikit-learn's 8x8 digits "
        "reach the model, with thicker strokes as a control and the two covariate-shift sets beside them. Give "
        "several bundles to compare their models on the same inputs.",
    )
    sharpness.add_argument(
        "--artifacts", type=Path, action="append", required=True, help="a bundle; repeat to compare models"
    )
    sharpness.add_argument("--count", type=int, default=2000, help="MNIST evaluation digits (default: 2000)")
    sharpness.add_argument("--data", type=Path, default=None, help="MNIST IDX directory (default: the shared copy)")
    sharpness.add_argument(
        "--out", type=Path, default=Path("docs/results/natural-study"), help="where to write JSON + Markdown"
    )
    sharpness.set_defaults(handler=_sharpness)


def _sharpness(args: argparse.Namespace) -> int:
    from dknn_lab.bench.sharpness import SharpnessOptions, run_sharpness

    run_sharpness(SharpnessOptions(bundles=args.artifacts, count=args.count, data_dir=args.data, out_dir=args.out))
    return 0


def _quality(args: argparse.Namespace) -> int:
    from dknn_lab.bench.quality import QualityOptions, run_quality

    run_quality(
        QualityOptions(
            artifacts=args.artifacts,
            data_dir=args.data,
            out_dir=args.out,
            limit=args.limit,
            epsilon=args.epsilon,
            seed=args.seed,
            batch_size=args.batch_size,
            extended=args.extended,
        )
    )
    return 0


def _snnl_study(args: argparse.Namespace) -> int:
    from dknn_lab.bench.snnl_study import StudyOptions, run_study
    from dknn_lab.reference import REFERENCE_TRAINING

    seeds = parse_seeds(args.seeds)
    given = given_training_options(args)
    if args.adopted and given:
        raise ConfigError("--adopted trains the adopted configuration; leave out the --snnl-* options")
    base = REFERENCE_TRAINING if args.adopted else StudyOptions().training
    training = replace(base, epochs=args.epochs, **given)
    if training.epochs < 1 or training.snnl_weight <= 0 or training.snnl_temperature <= 0 or not training.snnl_layers:
        raise ConfigError("--epochs ≥ 1, --snnl-weight > 0, --snnl-temperature > 0 and at least one --snnl-layers")
    run_study(
        StudyOptions(
            seeds=seeds,
            training=training,
            work_dir=args.work_dir,
            out_dir=args.out,
            data_dir=args.data,
            limit=args.limit,
            retrain=args.retrain,
            name=args.name or ("adopted-study" if args.adopted else "snnl-study"),
            adopted=args.adopted,
        )
    )
    return 0


def _stream(args: argparse.Namespace) -> int:
    from dknn_lab.bench.stream import StreamOptions, run_stream

    run_stream(
        StreamOptions(
            artifacts=args.artifacts,
            bootstrap_servers=args.bootstrap_servers,
            count=args.count,
            latency_count=args.latency_count,
            latency_rate=args.latency_rate,
            batch_size=args.batch_size,
            out_dir=args.out,
        )
    )
    return 0


def _perf(args: argparse.Namespace) -> int:
    from dknn_lab.bench.perf import PerfOptions, run_perf

    run_perf(
        PerfOptions(
            artifacts=args.artifacts,
            count=args.count,
            exact_count=args.exact_count,
            batch_size=args.batch_size,
            seed=args.seed,
            data_dir=args.data,
            out_dir=args.out,
        )
    )
    return 0


def _shift(args: argparse.Namespace) -> int:
    from dknn_lab.bench.shift import ShiftOptions, run_shift

    runs = parse_seeds(args.arl_runs)
    if len(runs) != 3 or min(runs) < 1 or args.onsets < 1 or args.prefix < 0:
        raise ConfigError("--arl-runs needs three positive counts; --onsets ≥ 1; --prefix ≥ 0")
    if args.scores_only and args.save_scores is None:
        raise ConfigError("--scores-only needs --save-scores NPZ")
    run_shift(
        ShiftOptions(
            artifacts=args.artifacts,
            data_dir=args.data,
            out_dir=args.out,
            onsets=args.onsets,
            prefix=args.prefix,
            arl_runs=runs,
            seed=args.seed,
            save_scores=args.save_scores,
            scores_only=args.scores_only,
        )
    )
    return 0
