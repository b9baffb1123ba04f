"""`dknn-agent demo`: what DkNN credibility looks like on clean and shifted MNIST, in one table."""

from __future__ import annotations

import argparse
from pathlib import Path


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
    demo.add_argument("--threshold", type=float, default=0.1, help="quarantine below this credibility (default: 0.1)")
    demo.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace) -> int:
    import numpy as np

    from agent.bench.quality import score_set
    from agent.bench.shifts import EvalSet, shifted_sets
    from agent.datasets import load_mnist
    from agent.dknn import DkNN
    from agent.reference import calibration_split

    mnist = load_mnist(args.data)
    scorer = DkNN.from_bundle(args.artifacts)
    evaluation = calibration_split(scorer.manifest, len(mnist.x_test)).evaluation
    rows = np.sort(np.random.default_rng(0).choice(evaluation, size=min(args.count, len(evaluation)), replace=False))
    clean = EvalSet("clean", mnist.x_test[rows], mnist.y_test[rows])
    print(f"bundle {args.artifacts}: {scorer.manifest.model.name} {scorer.manifest.model.version}, "
          f"k={scorer.k}, layers {', '.join(scorer.manifest.layer_names)}\n")
    print(f"{'set':<10}{'n':>6}{'model acc':>11}{'DkNN acc':>10}{'mean cred':>11}{'quarantined':>13}")
    for data in [clean, *shifted_sets(scorer.tap.model, clean, 0.25, seed=0)]:
        scores = score_set(scorer, data, 256, data.name)
        quarantined = float((scores.credibility < args.threshold).mean())
        model_acc = dknn_acc = "–"
        if data.y is not None:
            model_acc = f"{100 * (scores.model_prediction == data.y).mean():.1f}%"
            dknn_acc = f"{100 * (scores.prediction == data.y).mean():.1f}%"
        print(f"{data.name:<10}{len(data.x):>6}{model_acc:>11}{dknn_acc:>10}"
              f"{scores.credibility.mean():>11.3f}{100 * quarantined:>12.1f}%")
    print(f"\nquarantined = credibility < {args.threshold}; on clean traffic conformal validity keeps this near "
          f"or below {args.threshold:.0%}.")
    return 0
