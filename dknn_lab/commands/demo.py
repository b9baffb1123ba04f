"""`dknn-agent demo`: what DkNN credibility looks like on clean and shifted MNIST, in one table."""

from __future__ import annotations

import argparse
from pathlib import Path

from agent.errors import ConfigError
from agent.runtime.routing import DEFAULT_THRESHOLD


def register(commands: argparse._SubParsersAction) -> None:
    demo = commands.add_parser(
        "demo",
        help="score clean and shifted MNIST with a reference bundle and print a table",
        description="Score MNIST evaluation digits and three kinds of shifted input (uniform noise, digits "
        "rotated 90°, FGSM ε=0.25) with a reference bundle, and show accuracy and credibility for each.",
    )
    demo.add_argument("--artifacts", type=Path, required=True, help="MNIST reference bundle (make demo trains one)")
    demo.add_argument("--data", type=Path, default=None, help="MNIST IDX directory (default: the shared copy)")
    demo.add_argument("--count", type=int, default=1000, help="evaluation digits to score (default: 1000)")
    demo.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        help=f"quarantine below this credibility (default: {DEFAULT_THRESHOLD})",
    )
    demo.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace) -> int:
    from dknn_lab.demo_table import print_demo_table

    if args.count < 1 or not 0 < args.threshold < 1:
        raise ConfigError("--count must be at least 1 and --threshold between 0 and 1")
    print_demo_table(args.artifacts, args.data, args.count, args.threshold)
    return 0
