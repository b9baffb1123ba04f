"""Does entangling help? The reference model trained with and without the SNNL term, seed by seed.

For every seed the study trains two MNIST reference bundles with the same budget (epochs, data
augmentation, calibration split, index settings) that differ only in the SNNL term, runs the
extended quality benchmark on each (annoy backend) and compares what the SNNL paper says should
improve: how well DkNN credibility separates clean inputs from out-of-distribution and adversarial
ones (AUROC, FPR at 95% TPR), next to the cost in clean accuracy. It also reports the SNNL each
trained model actually reaches on clean evaluation points, so a reader can see the term did
entangle the representations rather than being ignored.

Bundles are cached under the work directory, one directory per training configuration (named by
its manifest version), and reused when the manifest matches; ``--retrain`` rebuilds them. So the
baselines are trained once and shared by studies of different SNNL settings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agent.engine.bundle import read_manifest
from agent.engine.dknn import DkNN
from agent.errors import BundleError
from agent.research.bench.quality import QualityOptions, run_quality
from agent.research.bench.reports import save_report
from agent.research.datasets import Mnist, load_mnist
from agent.research.reference import calibration_split, reference_version, train_reference_mnist
from agent.research.snnl import snnl_of_layers
from agent.research.training import TrainOptions

CONDITIONS = ("baseline", "snnl")
SNNL_PROBE_SIZE = 1000  # clean evaluation points the per-layer SNNL is measured on


@dataclass(frozen=True)
class StudyOptions:
    seeds: tuple[int, ...] = (0, 1, 2)
    training: TrainOptions = TrainOptions(
        shift_px=2,
        snnl_weight=1.0,
        snnl_temperature=0.1,
        snnl_distance="cosine",
        snnl_layers=("relu1", "relu2", "relu3"),
    )
    work_dir: Path = Path("artifacts/snnl-study")
    out_dir: Path = Path("docs/results")
    data_dir: Path | None = None
    limit: int | None = None
    retrain: bool = False
    name: str = "snnl-study"  # OUT/NAME.{json,md} and OUT/NAME/ for the per-model results


def condition_options(options: StudyOptions, condition: str, seed: int) -> TrainOptions:
    """The same training budget for both conditions; only the SNNL weight differs."""
    weight = options.training.snnl_weight if condition == "snnl" else 0.0
    return replace(options.training, seed=seed, snnl_weight=weight)


def ensure_bundle(path: Path, training: TrainOptions, options: StudyOptions, mnist: Mnist) -> None:
    """Train and fit unless `path` already holds a bundle of exactly this training configuration."""
    if not options.retrain and (path / "manifest.json").is_file():
        try:
            if read_manifest(path)[0].model.version == reference_version(training):
                return
        except BundleError:
            pass
    train_reference_mnist(path, train_options=training, force=True, data=mnist)


def measured_snnl(bundle: Path, mnist: Mnist, training: TrainOptions) -> dict[str, float]:
    """SNNL per hidden layer on a fixed sample of clean evaluation points, with the study's distance
    and temperature: higher means more entangled classes."""
    scorer = DkNN.from_bundle(bundle)
    rows = calibration_split(scorer.manifest, len(mnist.x_test)).evaluation
    rows = np.sort(np.random.default_rng(0).choice(rows, size=SNNL_PROBE_SIZE, replace=False))
    layers = next(iter(scorer.tap.batches(mnist.x_test[rows], SNNL_PROBE_SIZE))).layers
    labels = torch.as_tensor(mnist.y_test[rows], dtype=torch.long)
    probe_layers = {name: torch.as_tensor(layers[name]) for name in training.snnl_layers}
    values = snnl_of_layers(probe_layers, labels, training.snnl_temperature, distance=training.snnl_distance)
    return {name: float(value) for name, value in values.items()}


def summarise_run(quality: dict) -> dict:
    """The numbers the comparison needs from one extended quality run."""
    body = quality["backends"]["annoy"]
    clean = body["sets"]["clean"]
    return {
        "model_accuracy": clean["model_accuracy"],
        "dknn_accuracy": clean["dknn_accuracy"],
        "mean_credibility_correct": clean["mean_credibility_correct"],
        "sets": {
            name: {
                "auroc_credibility": per_detector["dknn_credibility"]["auroc"],
                "fpr95_credibility": per_detector["dknn_credibility"]["fpr_at_95_tpr"],
                "auroc_softmax": per_detector["softmax"]["auroc"],
                "mean_credibility": body["sets"][name]["mean_credibility"],
                "model_accuracy": body["sets"][name].get("model_accuracy"),
            }
            for name, per_detector in quality["detectors"]["sets"].items()
        },
    }


def run_study(options: StudyOptions) -> dict:
    if not options.seeds:
        raise ValueError("the study needs at least one seed")
    mnist = load_mnist(options.data_dir)
    runs: dict[str, dict[str, dict]] = {condition: {} for condition in CONDITIONS}
    for seed in options.seeds:
        for condition in CONDITIONS:
            training = condition_options(options, condition, seed)
            bundle = options.work_dir / reference_version(training)  # one directory per configuration
            print(f"== {condition}, seed {seed}: {bundle}", flush=True)
            ensure_bundle(bundle, training, options, mnist)
            quality = run_quality(
                QualityOptions(
                    artifacts=bundle,
                    data_dir=options.data_dir,
                    out_dir=options.out_dir / options.name,
                    limit=options.limit,
                    seed=seed,
                    extended=True,
                    backends=("annoy",),
                )
            )
            runs[condition][str(seed)] = summarise_run(quality) | {
                "bundle_version": quality["bundle"]["version"],
                "snnl": measured_snnl(bundle, mnist, options.training),
            }
    result = {
        "benchmark": "snnl-study",
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "seeds": list(options.seeds),
        "limit": options.limit,
        "training": {key: value for key, value in options.training.__dict__.items() if key not in ("seed", "progress")},
        "runs": runs,
        "comparison": compare(runs, options.seeds),
    }
    save_report(result, markdown(result), options.out_dir, options.name)
    return result


def compare(runs: dict[str, dict[str, dict]], seeds: tuple[int, ...]) -> dict:
    """Per set: mean and standard deviation over seeds of each condition, the mean paired difference
    (snnl − baseline) and on how many seeds SNNL came out ahead."""

    def series(condition: str, pick: Callable[[dict[str, Any]], float]) -> np.ndarray:
        return np.array([pick(runs[condition][str(seed)]) for seed in seeds], dtype=float)

    def paired(pick: Callable[[dict[str, Any]], float], higher_is_better: bool = True) -> dict[str, Any]:
        base, snnl = series("baseline", pick), series("snnl", pick)
        better = (snnl > base) if higher_is_better else (snnl < base)
        return {
            "baseline_mean": float(base.mean()),
            "baseline_sd": float(base.std(ddof=1)) if len(base) > 1 else 0.0,
            "snnl_mean": float(snnl.mean()),
            "snnl_sd": float(snnl.std(ddof=1)) if len(snnl) > 1 else 0.0,
            "difference": float((snnl - base).mean()),
            "snnl_better_seeds": int(better.sum()),
        }

    def per_set(name: str, metric: str) -> Callable[[dict[str, Any]], float]:
        return lambda run: float(run["sets"][name][metric])

    sets = list(runs["baseline"][str(seeds[0])]["sets"])
    return {
        "model_accuracy": paired(lambda run: run["model_accuracy"]),
        "dknn_accuracy": paired(lambda run: run["dknn_accuracy"]),
        "mean_credibility_correct": paired(lambda run: run["mean_credibility_correct"]),
        "sets": {
            name: {
                "auroc_credibility": paired(per_set(name, "auroc_credibility")),
                "fpr95_credibility": paired(per_set(name, "fpr95_credibility"), higher_is_better=False),
                "mean_credibility": paired(per_set(name, "mean_credibility"), higher_is_better=False),
                "auroc_softmax": paired(per_set(name, "auroc_softmax")),
            }
            for name in sets
        },
    }


def markdown(result: dict) -> str:
    seeds = result["seeds"]
    training = result["training"]
    comparison = result["comparison"]
    n = len(seeds)
    lines = [
        "# Does entangling help? MNIST reference model with and without SNNL",
        "",
        f"Seeds {', '.join(map(str, seeds))}; {training['epochs']} epochs each, shift augmentation "
        f"{training['shift_px']} px; SNNL condition: loss = CE − {training['snnl_weight']:g} × Σ SNNL over "
        f"{', '.join(training['snnl_layers'])} ({training['snnl_distance']} distance, T = {training['snnl_temperature']:g}"
        f"{', learned' if training['snnl_learn_temperature'] else ''}). "
        f"Evaluation: {'all 9,250' if result['limit'] is None else result['limit']} evaluation points per seed, "
        "annoy backend. Mean ± standard deviation over seeds; Δ = mean paired difference (SNNL − baseline); "
        f"'SNNL ahead' counts the seeds (of {n}) where SNNL did better.",
        "",
        "| metric | baseline | SNNL | Δ | SNNL ahead |",
        "|---|---|---|---|---|",
    ]
    for label, key, scale in (
        ("model accuracy", "model_accuracy", 100),
        ("DkNN accuracy", "dknn_accuracy", 100),
        ("mean credibility, correct", "mean_credibility_correct", 1),
    ):
        lines.append(_row(label, comparison[key], scale, n))
    lines += [
        "",
        "DkNN credibility, clean evaluation points against each set (softmax max-probability AUROC for reference):",
        "",
        "| set | metric | baseline | SNNL | Δ | SNNL ahead |",
        "|---|---|---|---|---|---|",
    ]
    for name, metrics in comparison["sets"].items():
        for label, key in (
            ("AUROC credibility", "auroc_credibility"),
            ("FPR@95%TPR credibility", "fpr95_credibility"),
            ("mean credibility", "mean_credibility"),
            ("AUROC softmax", "auroc_softmax"),
        ):
            lines.append(_row(f"{name} | {label}", metrics[key], 1, n))
    layers = list(next(iter(result["runs"]["baseline"].values()))["snnl"])
    lines += [
        "",
        f"SNNL measured on {SNNL_PROBE_SIZE} clean evaluation points (same distance and temperature; "
        "higher = more entangled):",
        "",
        "| condition | seed | " + " | ".join(layers) + " |",
        "|---|---|" + "---|" * len(layers),
    ]
    for condition, by_seed in result["runs"].items():
        for seed, run in by_seed.items():
            lines.append(
                f"| {condition} | {seed} | " + " | ".join(f"{run['snnl'][layer]:.3f}" for layer in layers) + " |"
            )
    return "\n".join(lines) + "\n"


def _row(label: str, stats: dict, scale: float, n: int) -> str:
    def fmt(mean: float, sd: float) -> str:
        return f"{scale * mean:.3f} ± {scale * sd:.3f}" if n > 1 else f"{scale * mean:.3f}"

    return (
        f"| {label} | {fmt(stats['baseline_mean'], stats['baseline_sd'])} | {fmt(stats['snnl_mean'], stats['snnl_sd'])} "
        f"| {scale * stats['difference']:+.3f} | {stats['snnl_better_seeds']}/{n} |"
    )
