"""Does entangling help? The reference model trained with and without the SNNL term, seed by seed.

For every seed the study trains two MNIST reference bundles with the same budget (epochs, data
augmentation, calibration split, index settings) that differ only in the SNNL term, runs the
extended quality benchmark on each (annoy backend) and compares what the SNNL paper says should
improve: how well DkNN credibility separates clean inputs from out-of-distribution and adversarial
ones (AUROC, FPR at 95% TPR), next to the cost in clean accuracy. It also reports the SNNL each
trained model actually reaches on clean evaluation points, so a reader can see the term did
entangle the representations rather than being ignored.

With ``adopted`` the second condition is the configuration the project adopted for its reference
bundle instead (README "Measured quality"): SNNL and blur augmentation in training, fitted over relu3
and logits with the distance-aware nonconformity and the residual term at relu2. The baseline is
then the previous reference, the plain model fitted the paper's way, and the report adds what
issue #10 asked of natural data:
covariate-shift accuracy, right-versus-wrong AUROC, the share of far-OOD inputs quarantined at 1%
of clean traffic, and conformal validity.

Bundles are cached under the work directory, one directory per training configuration and fit
(named by its manifest version), and reused when the manifest matches; ``--retrain`` rebuilds them.
So the baselines are trained once and shared by studies of different SNNL settings.
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
from agent.engine.fit import FitOptions
from agent.engine.manifest import Manifest
from agent.engine.taps import ActivationTap
from agent.errors import BundleError
from dknn_lab.bench.quality import QualityOptions, run_quality
from dknn_lab.bench.reports import save_report
from dknn_lab.datasets import Mnist, load_mnist
from dknn_lab.natural_sets import COVARIATE_SHIFT, SET_KINDS
from dknn_lab.reference import (
    PAPER_LAYERS,
    REFERENCE_LAYERS,
    REFERENCE_NONCONFORMITY,
    calibration_split,
    reference_version,
    train_reference_mnist,
)
from dknn_lab.snnl import snnl_of_layers
from dknn_lab.training import TrainOptions

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
    adopted: bool = False  # the second condition is the adopted reference configuration (training and fit)


@dataclass(frozen=True)
class Fit:
    """How a condition's bundle is fitted: its layers and nonconformity."""

    layers: dict[str, str]
    options: FitOptions
    suffix: str  # added to the bundle's directory name, so two fits of one model never share it


PAPER_FIT = Fit(PAPER_LAYERS, FitOptions(), "")
ADOPTED_FIT = Fit(REFERENCE_LAYERS, FitOptions(nonconformity=REFERENCE_NONCONFORMITY), "-adopted-fit")


def condition_options(options: StudyOptions, condition: str, seed: int) -> TrainOptions:
    """The same training budget for both conditions. The baseline is the plain model: no SNNL and no
    blur; without `adopted` the study trains without blur, so only the SNNL weight differs."""
    if condition == "snnl":
        return replace(options.training, seed=seed)
    return replace(options.training, seed=seed, snnl_weight=0.0, blur_sigma=0.0)


def condition_fit(options: StudyOptions, condition: str) -> Fit:
    return ADOPTED_FIT if options.adopted and condition == "snnl" else PAPER_FIT


def ensure_bundle(path: Path, training: TrainOptions, fit: Fit, options: StudyOptions, mnist: Mnist) -> None:
    """Train and fit unless `path` already holds a bundle of exactly this training configuration and
    fit; a bundle of the same model fitted another way is refitted, not retrained."""
    cached = None if options.retrain else _cached_manifest(path)
    same_model = cached is not None and cached.model.version == reference_version(training)
    if same_model and _fitted_as(cached, fit):
        return
    train_reference_mnist(
        path,
        train_options=training,
        force=True,
        data=mnist,
        layers=fit.layers,
        fit_options=fit.options,
        refit=path if same_model else None,
    )


def _cached_manifest(path: Path) -> Manifest | None:
    if not (path / "manifest.json").is_file():
        return None
    try:
        return read_manifest(path)[0]
    except BundleError:
        return None


def _fitted_as(manifest: Manifest | None, fit: Fit) -> bool:
    return (
        manifest is not None
        and list(manifest.layer_names) == list(fit.layers)
        and manifest.nonconformity == fit.options.nonconformity
    )


def measured_snnl(bundle: Path, mnist: Mnist, training: TrainOptions) -> dict[str, float]:
    """SNNL per hidden layer on a fixed sample of clean evaluation points, with the study's distance
    and temperature: higher means more entangled classes. The layers are tapped here, since the
    bundle need not index them."""
    scorer = DkNN.from_bundle(bundle)
    rows = calibration_split(scorer.manifest, len(mnist.x_test)).evaluation
    rows = np.sort(np.random.default_rng(0).choice(rows, size=SNNL_PROBE_SIZE, replace=False))
    tap = ActivationTap(scorer.tap.model, training.snnl_layers)
    try:
        layers = next(iter(tap.batches(mnist.x_test[rows], SNNL_PROBE_SIZE))).layers
    finally:
        tap.close()
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
        "validity": body["validity"],
        "sets": {
            name: {
                "auroc_credibility": per_detector["dknn_credibility"]["auroc"],
                "fpr95_credibility": per_detector["dknn_credibility"]["fpr_at_95_tpr"],
                "tpr1_credibility": per_detector["dknn_credibility"]["tpr_at_1_fpr"],
                "auroc_softmax": per_detector["softmax"]["auroc"],
                "auroc_deep_knn": per_detector["deep_knn"]["auroc"],
                "mean_credibility": body["sets"][name]["mean_credibility"],
                "model_accuracy": body["sets"][name].get("model_accuracy"),
            }
            for name, per_detector in quality["detectors"]["sets"].items()
        },
        "covariate": {
            name: {
                "model_accuracy": body["sets"][name]["model_accuracy"],
                "dknn_accuracy": body["sets"][name]["dknn_accuracy"],
                "right_vs_wrong_credibility": separation["credibility"],
                "right_vs_wrong_softmax": separation["softmax"],
            }
            for name, separation in body["right_vs_wrong"].items()
            if SET_KINDS.get(name) == COVARIATE_SHIFT
        },
    }


def run_study(options: StudyOptions) -> dict:
    if not options.seeds:
        raise ValueError("the study needs at least one seed")
    mnist = load_mnist(options.data_dir)
    runs: dict[str, dict[str, dict]] = {condition: {} for condition in CONDITIONS}
    for seed in options.seeds:
        for condition in CONDITIONS:
            training, fit = condition_options(options, condition, seed), condition_fit(options, condition)
            bundle = options.work_dir / (reference_version(training) + fit.suffix)  # one per configuration
            print(f"== {condition}, seed {seed}: {bundle}", flush=True)
            ensure_bundle(bundle, training, fit, options, mnist)
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
        "adopted": options.adopted,
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

    def pick(*path: str) -> Callable[[dict[str, Any]], float]:
        def value(run: dict[str, Any]) -> float:
            for key in path:
                run = run[key]
            return float(run)  # type: ignore[arg-type]

        return value

    first = runs["baseline"][str(seeds[0])]
    return {
        "model_accuracy": paired(pick("model_accuracy")),
        "dknn_accuracy": paired(pick("dknn_accuracy")),
        "mean_credibility_correct": paired(pick("mean_credibility_correct")),
        "sets": {
            name: {
                "auroc_credibility": paired(pick("sets", name, "auroc_credibility")),
                "fpr95_credibility": paired(pick("sets", name, "fpr95_credibility"), higher_is_better=False),
                "tpr1_credibility": paired(pick("sets", name, "tpr1_credibility")),
                "mean_credibility": paired(pick("sets", name, "mean_credibility"), higher_is_better=False),
                "auroc_softmax": paired(pick("sets", name, "auroc_softmax")),
                "auroc_deep_knn": paired(pick("sets", name, "auroc_deep_knn")),
            }
            for name in first["sets"]
        },
        "covariate": {
            name: {metric: paired(pick("covariate", name, metric)) for metric in metrics}
            for name, metrics in first["covariate"].items()
        },
    }


def markdown(result: dict) -> str:
    seeds = result["seeds"]
    training = result["training"]
    comparison = result["comparison"]
    n = len(seeds)
    adopted = result.get("adopted", False)
    base, cand = ("previous", "adopted") if adopted else ("baseline", "SNNL")
    snnl = (
        f"loss = CE − {training['snnl_weight']:g} × Σ SNNL over {', '.join(training['snnl_layers'])} "
        f"({training['snnl_distance']} distance, T = {training['snnl_temperature']:g}"
        f"{', learned' if training['snnl_learn_temperature'] else ''})"
    )
    if adopted:
        title = "# The adopted reference configuration against the previous reference, seed by seed"
        conditions = (
            f"previous: the plain model (cross-entropy) fitted the DkNN paper's way (relu1, relu2, relu3 and logits "
            f"vote; labels only); adopted: {snnl} and blur augmentation σ ≤ {training['blur_sigma']:g} px, fitted over "
            "relu3 and logits with the distance-aware nonconformity and the residual term at relu2 (docs/design.md §2.2)"
        )
    else:
        title = "# Does entangling help? MNIST reference model with and without SNNL"
        conditions = f"SNNL condition: {snnl}"
    lines = [
        title,
        "",
        f"Seeds {', '.join(map(str, seeds))}; {training['epochs']} epochs each, shift augmentation "
        f"{training['shift_px']} px; {conditions}. "
        f"Evaluation: {'all 9,250' if result['limit'] is None else result['limit']} evaluation points per seed, "
        f"annoy backend. Mean ± standard deviation over seeds; Δ = mean paired difference ({cand} − {base}); "
        f"'{cand} ahead' counts the seeds (of {n}) where {cand} did better.",
        "",
        f"| metric | {base} | {cand} | Δ | {cand} ahead |",
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
        "DkNN credibility, clean evaluation points against each set (softmax max-probability and deep-kNN AUROC on "
        "the same model for reference; TPR@1% = share flagged at the threshold that flags 1% of clean points):",
        "",
        f"| set | metric | {base} | {cand} | Δ | {cand} ahead |",
        "|---|---|---|---|---|---|",
    ]
    for name, metrics in comparison["sets"].items():
        for label, key in (
            ("AUROC credibility", "auroc_credibility"),
            ("FPR@95%TPR credibility", "fpr95_credibility"),
            ("TPR@1%FPR credibility", "tpr1_credibility"),
            ("mean credibility", "mean_credibility"),
            ("AUROC softmax", "auroc_softmax"),
            ("AUROC deep-kNN", "auroc_deep_knn"),
        ):
            lines.append(_row(f"{name} | {label}", metrics[key], 1, n))
    lines += [
        "",
        "Covariate shift (digits from other populations): accuracy, and AUROC at telling the model's right answers "
        "from its wrong ones:",
        "",
        f"| set | metric | {base} | {cand} | Δ | {cand} ahead |",
        "|---|---|---|---|---|---|",
    ]
    for name, metrics in comparison["covariate"].items():
        for label, key, scale in (
            ("model accuracy", "model_accuracy", 100),
            ("DkNN accuracy", "dknn_accuracy", 100),
            ("right vs wrong: credibility", "right_vs_wrong_credibility", 1),
            ("right vs wrong: softmax", "right_vs_wrong_softmax", 1),
        ):
            lines.append(_row(f"{name} | {label}", metrics[key], scale, n))
    taus = list(next(iter(result["runs"]["baseline"].values()))["validity"])
    layers = list(next(iter(result["runs"]["baseline"].values()))["snnl"])
    lines += [
        "",
        "Validity: share of clean points whose true-label p-value is ≤ τ (conformal wants ≲ τ), and SNNL measured on "
        f"{SNNL_PROBE_SIZE} clean evaluation points (same distance and temperature; higher = more entangled):",
        "",
        "| condition | seed | " + " | ".join(f"τ = {tau}" for tau in taus) + " | " + " | ".join(layers) + " |",
        "|---|---|" + "---|" * (len(taus) + len(layers)),
    ]
    for condition, by_seed in result["runs"].items():
        for seed, run in by_seed.items():
            cells = [f"{run['validity'][tau]:.3f}" for tau in taus] + [f"{run['snnl'][layer]:.3f}" for layer in layers]
            lines.append(f"| {base if condition == 'baseline' else cand} | {seed} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _row(label: str, stats: dict, scale: float, n: int) -> str:
    def fmt(mean: float, sd: float) -> str:
        return f"{scale * mean:.3f} ± {scale * sd:.3f}" if n > 1 else f"{scale * mean:.3f}"

    return (
        f"| {label} | {fmt(stats['baseline_mean'], stats['baseline_sd'])} | {fmt(stats['snnl_mean'], stats['snnl_sd'])} "
        f"| {scale * stats['difference']:+.3f} | {stats['snnl_better_seeds']}/{n} |"
    )
