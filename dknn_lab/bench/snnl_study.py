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
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from agent.engine.bundle import read_manifest
from agent.engine.dknn import DkNN
from agent.engine.fit import FitOptions
from agent.engine.manifest import Manifest
from agent.engine.taps import ActivationTap
from agent.errors import BundleError
from dknn_lab.bench.quality import QualityOptions, QualityResult, run_quality
from dknn_lab.bench.reports import encoded, now, save_report, table
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


@dataclass(frozen=True)
class SetSummary:
    """DkNN credibility (and the baselines beside it), clean evaluation points against one set."""

    auroc_credibility: float
    fpr95_credibility: float
    tpr1_credibility: float
    auroc_softmax: float
    auroc_deep_knn: float
    mean_credibility: float
    model_accuracy: float | None  # None: a set without labels


@dataclass(frozen=True)
class CovariateSummary:
    """Digits from another population: accuracy, and right-versus-wrong AUROC."""

    model_accuracy: float | None
    dknn_accuracy: float | None
    right_vs_wrong_credibility: float | None
    right_vs_wrong_softmax: float | None


@dataclass(frozen=True)
class RunSummary:
    """One trained model's numbers: what the comparison needs from its extended quality run."""

    model_accuracy: float
    dknn_accuracy: float
    mean_credibility_correct: float | None
    validity: dict[str, float]  # τ as written ("0.05") -> share
    sets: dict[str, SetSummary]
    covariate: dict[str, CovariateSummary]
    bundle_version: str
    snnl: dict[str, float]  # layer -> SNNL measured on clean evaluation points


@dataclass(frozen=True)
class Paired:
    """One metric over the seeds: each condition's mean and standard deviation, the mean paired
    difference (snnl − baseline) and on how many seeds SNNL came out ahead."""

    baseline_mean: float
    baseline_sd: float
    snnl_mean: float
    snnl_sd: float
    difference: float
    snnl_better_seeds: int


@dataclass(frozen=True)
class SetComparison:
    auroc_credibility: Paired
    fpr95_credibility: Paired
    tpr1_credibility: Paired
    mean_credibility: Paired
    auroc_softmax: Paired
    auroc_deep_knn: Paired


@dataclass(frozen=True)
class CovariateComparison:
    model_accuracy: Paired
    dknn_accuracy: Paired
    right_vs_wrong_credibility: Paired
    right_vs_wrong_softmax: Paired


@dataclass(frozen=True)
class Comparison:
    model_accuracy: Paired
    dknn_accuracy: Paired
    mean_credibility_correct: Paired
    sets: dict[str, SetComparison]
    covariate: dict[str, CovariateComparison]


def _recorded_training(training: TrainOptions) -> dict[str, object]:
    """The training options a study reports: the same for every run, so without the seed (and the
    progress bar)."""
    return {key: value for key, value in vars(training).items() if key not in ("seed", "progress")}


@dataclass(frozen=True)
class StudyResult:
    benchmark: str = field(default="snnl-study", init=False)
    adopted: bool
    created_at: str = field(default_factory=now, init=False)
    seeds: tuple[int, ...]
    limit: int | None
    training: TrainOptions = field(metadata=encoded(_recorded_training))
    runs: dict[str, dict[str, RunSummary]]  # condition -> seed -> run
    comparison: Comparison


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


def summarise_run(quality: QualityResult, snnl: dict[str, float]) -> RunSummary:
    """The numbers the comparison needs from one extended quality run."""
    body = quality.backends["annoy"]
    clean = body.sets["clean"].labelled
    detectors = quality.detectors
    assert clean is not None and detectors is not None  # the study runs the extended benchmark on labelled digits
    return RunSummary(
        model_accuracy=clean.model_accuracy,
        dknn_accuracy=clean.dknn_accuracy,
        mean_credibility_correct=clean.mean_credibility_correct,
        validity=body.validity,
        sets={
            name: SetSummary(
                auroc_credibility=per_detector["dknn_credibility"].auroc,
                fpr95_credibility=per_detector["dknn_credibility"].fpr_at_95_tpr,
                tpr1_credibility=per_detector["dknn_credibility"].tpr_at_1_fpr,
                auroc_softmax=per_detector["softmax"].auroc,
                auroc_deep_knn=per_detector["deep_knn"].auroc,
                mean_credibility=body.sets[name].mean_credibility,
                model_accuracy=body.sets[name].model_accuracy,
            )
            for name, per_detector in detectors.sets.items()
        },
        covariate={
            name: CovariateSummary(
                model_accuracy=body.sets[name].model_accuracy,
                dknn_accuracy=body.sets[name].dknn_accuracy,
                right_vs_wrong_credibility=separation.credibility,
                right_vs_wrong_softmax=separation.softmax,
            )
            for name, separation in body.right_vs_wrong.items()
            if SET_KINDS.get(name) == COVARIATE_SHIFT
        },
        bundle_version=quality.bundle.version,
        snnl=snnl,
    )


def run_study(options: StudyOptions) -> StudyResult:
    if not options.seeds:
        raise ValueError("the study needs at least one seed")
    mnist = load_mnist(options.data_dir)
    runs: dict[str, dict[str, RunSummary]] = {condition: {} for condition in CONDITIONS}
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
            runs[condition][str(seed)] = summarise_run(quality, measured_snnl(bundle, mnist, options.training))
    result = StudyResult(
        adopted=options.adopted,
        seeds=tuple(options.seeds),
        limit=options.limit,
        training=options.training,
        runs=runs,
        comparison=compare(runs, options.seeds),
    )
    save_report(result, markdown(result), options.out_dir, options.name)
    return result


def compare(runs: dict[str, dict[str, RunSummary]], seeds: tuple[int, ...]) -> Comparison:
    """Per metric: mean and standard deviation over seeds of each condition, the mean paired
    difference (snnl − baseline) and on how many seeds SNNL came out ahead. A metric a run could
    not measure (None) is NaN in its means."""
    base = [runs["baseline"][str(seed)] for seed in seeds]
    cand = [runs["snnl"][str(seed)] for seed in seeds]

    def paired(pick: Callable[[RunSummary], float | None], higher_is_better: bool = True) -> Paired:
        before = np.array([pick(run) for run in base], dtype=float)
        after = np.array([pick(run) for run in cand], dtype=float)
        better = (after > before) if higher_is_better else (after < before)
        return Paired(
            baseline_mean=float(before.mean()),
            baseline_sd=float(before.std(ddof=1)) if len(before) > 1 else 0.0,
            snnl_mean=float(after.mean()),
            snnl_sd=float(after.std(ddof=1)) if len(after) > 1 else 0.0,
            difference=float((after - before).mean()),
            snnl_better_seeds=int(better.sum()),
        )

    def on_set(name: str) -> SetComparison:
        def metric(pick: Callable[[SetSummary], float | None], higher_is_better: bool = True) -> Paired:
            return paired(lambda run: pick(run.sets[name]), higher_is_better)

        return SetComparison(
            auroc_credibility=metric(lambda summary: summary.auroc_credibility),
            fpr95_credibility=metric(lambda summary: summary.fpr95_credibility, higher_is_better=False),
            tpr1_credibility=metric(lambda summary: summary.tpr1_credibility),
            mean_credibility=metric(lambda summary: summary.mean_credibility, higher_is_better=False),
            auroc_softmax=metric(lambda summary: summary.auroc_softmax),
            auroc_deep_knn=metric(lambda summary: summary.auroc_deep_knn),
        )

    def on_covariate(name: str) -> CovariateComparison:
        def metric(pick: Callable[[CovariateSummary], float | None]) -> Paired:
            return paired(lambda run: pick(run.covariate[name]))

        return CovariateComparison(
            model_accuracy=metric(lambda summary: summary.model_accuracy),
            dknn_accuracy=metric(lambda summary: summary.dknn_accuracy),
            right_vs_wrong_credibility=metric(lambda summary: summary.right_vs_wrong_credibility),
            right_vs_wrong_softmax=metric(lambda summary: summary.right_vs_wrong_softmax),
        )

    return Comparison(
        model_accuracy=paired(lambda run: run.model_accuracy),
        dknn_accuracy=paired(lambda run: run.dknn_accuracy),
        mean_credibility_correct=paired(lambda run: run.mean_credibility_correct),
        sets={name: on_set(name) for name in base[0].sets},
        covariate={name: on_covariate(name) for name in base[0].covariate},
    )


def markdown(result: StudyResult) -> str:
    training, comparison = result.training, result.comparison
    n = len(result.seeds)
    base, cand = ("previous", "adopted") if result.adopted else ("baseline", "SNNL")
    snnl = (
        f"loss = CE − {training.snnl_weight:g} × Σ SNNL over {', '.join(training.snnl_layers)} "
        f"({training.snnl_distance} distance, T = {training.snnl_temperature:g}"
        f"{', learned' if training.snnl_learn_temperature else ''})"
    )
    if result.adopted:
        title = "# The adopted reference configuration against the previous reference, seed by seed"
        conditions = (
            f"previous: the plain model (cross-entropy) fitted the DkNN paper's way (relu1, relu2, relu3 and logits "
            f"vote; labels only); adopted: {snnl} and blur augmentation σ ≤ {training.blur_sigma:g} px, fitted over "
            "relu3 and logits with the distance-aware nonconformity and the residual term at relu2 (docs/design.md §2.2)"
        )
    else:
        title = "# Does entangling help? MNIST reference model with and without SNNL"
        conditions = f"SNNL condition: {snnl}"
    versus = [base, cand, "Δ", f"{cand} ahead"]
    first = next(iter(result.runs["baseline"].values()))
    taus, layers = list(first.validity), list(first.snnl)
    lines = [
        title,
        "",
        f"Seeds {', '.join(map(str, result.seeds))}; {training.epochs} epochs each, shift augmentation "
        f"{training.shift_px} px; {conditions}. "
        f"Evaluation: {'all 9,250' if result.limit is None else result.limit} evaluation points per seed, "
        f"annoy backend. Mean ± standard deviation over seeds; Δ = mean paired difference ({cand} − {base}); "
        f"'{cand} ahead' counts the seeds (of {n}) where {cand} did better.",
        "",
        *table(
            ["metric", *versus],
            [
                ["model accuracy", *_paired_cells(comparison.model_accuracy, 100, n)],
                ["DkNN accuracy", *_paired_cells(comparison.dknn_accuracy, 100, n)],
                ["mean credibility, correct", *_paired_cells(comparison.mean_credibility_correct, 1, n)],
            ],
        ),
        "",
        "DkNN credibility, clean evaluation points against each set (softmax max-probability and deep-kNN AUROC on "
        "the same model for reference; TPR@1% = share flagged at the threshold that flags 1% of clean points):",
        "",
        *table(
            ["set", "metric", *versus],
            [
                [name, label, *_paired_cells(stats, 1, n)]
                for name, metrics in comparison.sets.items()
                for label, stats in (
                    ("AUROC credibility", metrics.auroc_credibility),
                    ("FPR@95%TPR credibility", metrics.fpr95_credibility),
                    ("TPR@1%FPR credibility", metrics.tpr1_credibility),
                    ("mean credibility", metrics.mean_credibility),
                    ("AUROC softmax", metrics.auroc_softmax),
                    ("AUROC deep-kNN", metrics.auroc_deep_knn),
                )
            ],
        ),
        "",
        "Covariate shift (digits from other populations): accuracy, and AUROC at telling the model's right answers "
        "from its wrong ones:",
        "",
        *table(
            ["set", "metric", *versus],
            [
                [name, label, *_paired_cells(stats, scale, n)]
                for name, covariate in comparison.covariate.items()
                for label, stats, scale in (
                    ("model accuracy", covariate.model_accuracy, 100),
                    ("DkNN accuracy", covariate.dknn_accuracy, 100),
                    ("right vs wrong: credibility", covariate.right_vs_wrong_credibility, 1),
                    ("right vs wrong: softmax", covariate.right_vs_wrong_softmax, 1),
                )
            ],
        ),
        "",
        "Validity: share of clean points whose true-label p-value is ≤ τ (conformal wants ≲ τ), and SNNL measured on "
        f"{SNNL_PROBE_SIZE} clean evaluation points (same distance and temperature; higher = more entangled):",
        "",
        *table(
            ["condition", "seed", *(f"τ = {tau}" for tau in taus), *layers],
            [
                [
                    base if condition == "baseline" else cand,
                    seed,
                    *(f"{run.validity[tau]:.3f}" for tau in taus),
                    *(f"{run.snnl[layer]:.3f}" for layer in layers),
                ]
                for condition, by_seed in result.runs.items()
                for seed, run in by_seed.items()
            ],
        ),
    ]
    return "\n".join(lines) + "\n"


def _paired_cells(stats: Paired, scale: float, n: int) -> list[str]:
    """Both conditions (mean ± sd over seeds when there are several), Δ and the seeds won."""

    def spread(mean: float, sd: float) -> str:
        return f"{scale * mean:.3f} ± {scale * sd:.3f}" if n > 1 else f"{scale * mean:.3f}"

    return [
        spread(stats.baseline_mean, stats.baseline_sd),
        spread(stats.snnl_mean, stats.snnl_sd),
        f"{scale * stats.difference:+.3f}",
        f"{stats.snnl_better_seeds}/{n}",
    ]
