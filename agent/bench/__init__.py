"""Benchmarks that print numbers and save them as JSON + Markdown (`dknn-agent bench ...`)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(commands: argparse._SubParsersAction) -> None:
    bench = commands.add_parser("bench", help="quality and performance benchmarks",
                                description="Benchmarks print their numbers and save them as JSON and Markdown.")
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
    quality.add_argument("--limit", type=int, default=None, help="score a seeded random subset of N evaluation points (default: all 9,250)")
    quality.add_argument("--epsilon", type=float, default=0.25, help="FGSM step (default: 0.25)")
    quality.add_argument("--seed", type=int, default=0, help="seed for the noise inputs (default: 0)")
    quality.add_argument("--batch-size", type=int, default=512)
    quality.set_defaults(handler=_quality)


def _quality(args: argparse.Namespace) -> int:
    from agent.bench.quality import QualityOptions, run_quality

    run_quality(QualityOptions(artifacts=args.artifacts, data_dir=args.data, out_dir=args.out, limit=args.limit,
                               epsilon=args.epsilon, seed=args.seed, batch_size=args.batch_size))
    return 0
