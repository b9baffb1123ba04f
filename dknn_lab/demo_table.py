"""What DkNN credibility looks like on clean and shifted MNIST, as one table (`dknn-agent demo`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from agent.engine.dknn import DkNN
from dknn_lab.bench.perturbations import EvalSet, shifted_sets
from dknn_lab.bench.quality import score_set
from dknn_lab.datasets import load_mnist
from dknn_lab.reference import calibration_split


def print_demo_table(artifacts: Path, data_dir: Path | None, count: int, threshold: float) -> None:
    """Scores `count` evaluation digits and their noisy, rotated and FGSM versions; prints one row each."""
    mnist = load_mnist(data_dir)
    scorer = DkNN.from_bundle(artifacts)
    evaluation = calibration_split(scorer.manifest, len(mnist.x_test)).evaluation
    rows = np.sort(np.random.default_rng(0).choice(evaluation, size=min(count, len(evaluation)), replace=False))
    clean = EvalSet("clean", mnist.x_test[rows], mnist.y_test[rows])
    print(
        f"bundle {artifacts}: {scorer.manifest.model.name} {scorer.manifest.model.version}, "
        f"k={scorer.k}, layers {', '.join(scorer.manifest.layer_names)}\n"
    )
    print(f"{'set':<10}{'n':>6}{'model acc':>11}{'DkNN acc':>10}{'mean cred':>11}{'quarantined':>13}")
    for data in [clean, *shifted_sets(scorer.tap.model, clean, 0.25, seed=0)]:
        scores = score_set(scorer, data, 256, data.name)
        quarantined = float((scores.credibility < threshold).mean())
        model_acc = dknn_acc = "–"
        if data.y is not None:
            model_acc = f"{100 * (scores.model_prediction == data.y).mean():.1f}%"
            dknn_acc = f"{100 * (scores.prediction == data.y).mean():.1f}%"
        print(
            f"{data.name:<10}{len(data.x):>6}{model_acc:>11}{dknn_acc:>10}"
            f"{scores.credibility.mean():>11.3f}{100 * quarantined:>12.1f}%"
        )
    print(
        f"\nquarantined = credibility < {threshold}; on clean traffic conformal validity keeps this near "
        f"or below {threshold:.0%}."
    )
