"""The quality benchmark of the MNIST reference bundle.

Scores the evaluation split and its shifted versions with the annoy and the exact backend of the
same bundle, then reports accuracy, credibility, AUROC (credibility vs softmax max-probability),
conformal validity and Annoy recall@k per layer. Prints a table; saves JSON and Markdown.

`--extended` adds the natural sets (`dknn_lab.natural_sets`, docs/data.md), reported apart
from the synthetic ones because they are what a deployed model mostly meets:

- far out-of-distribution (not digits): every detector's AUROC, and the share flagged at the
  thresholds that flag 1% and 5% of clean traffic (TPR at 1%/5% FPR) — what a review queue sized
  for 1% of traffic would catch;
- covariate shift (digits from another population): DkNN accuracy against the model's own, and how
  well credibility separates the model's right answers from its wrong ones, against the softmax.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agent.engine.dknn import DkNN
from agent.engine.index import BACKENDS, IndexBackend, recall_at_k
from agent.engine.manifest import Manifest, NonconformitySpec
from agent.errors import ConfigError
from agent.evaluation import metrics as measures
from agent.evaluation.metrics import VALIDITY_TAUS, fpr_at_95_tpr, tpr_at_fpr
from agent.evaluation.plots import credibility_histograms, reliability_diagram
from agent.evaluation.scoring import SetScores
from agent.evaluation.scoring import score_set as score_inputs
from dknn_lab.bench.detectors import detector_scores, fit_detectors
from dknn_lab.bench.perturbations import EvalSet, gaussian_noise, inverted, iterative_attack_sets, shifted_sets
from dknn_lab.bench.reports import (
    ABSENT_WHEN_NONE,
    INLINE,
    encoded,
    now,
    num,
    pct,
    save_report,
    table,
)
from dknn_lab.datasets import Mnist, load_mnist
from dknn_lab.natural_sets import COVARIATE_SHIFT, FAR_OOD, SET_KINDS, natural_sets
from dknn_lab.reference import calibration_split


@dataclass(frozen=True)
class QualityOptions:
    artifacts: Path
    data_dir: Path | None = None
    out_dir: Path = Path("docs/results")
    limit: int | None = None
    epsilon: float = 0.25
    seed: int = 0
    batch_size: int = 512
    extended: bool = False  # + Gaussian noise, inverted digits, BIM, PGD, baseline detectors, plots
    backends: tuple[IndexBackend, ...] = BACKENDS  # recall@k needs both; the SNNL study scores annoy only


@dataclass(frozen=True)
class BundleInfo:
    """The bundle measured, as its manifest describes it."""

    path: str
    model: str
    version: str
    k: int
    layers: dict[str, str]  # layer -> preprocessing spec
    n_trees: int
    search_k: dict[str, int]
    calibration_size: int
    nonconformity: NonconformitySpec = field(metadata=encoded(lambda spec: spec.model_dump(mode="json")))

    @classmethod
    def of(cls, path: Path, manifest: Manifest) -> BundleInfo:
        return cls(
            path=str(path),
            model=manifest.model.name,
            version=manifest.model.version,
            k=manifest.k,
            layers={layer.name: layer.preprocessing for layer in manifest.layers},
            n_trees=manifest.index.n_trees,
            search_k={name: manifest.search_k(name) for name in manifest.layer_names},
            calibration_size=manifest.calibration.size,
            nonconformity=manifest.nonconformity,
        )


@dataclass(frozen=True)
class Labelled:
    """What a set's labels add to its metrics."""

    dknn_accuracy: float
    model_accuracy: float
    mean_credibility_correct: float | None  # None: DkNN got none of the set right


@dataclass(frozen=True)
class SetMetrics:
    n: int
    mean_credibility: float
    labelled: Labelled | None = field(metadata=INLINE)  # None: a set without labels (noise)

    @property
    def dknn_accuracy(self) -> float | None:
        return None if self.labelled is None else self.labelled.dknn_accuracy

    @property
    def model_accuracy(self) -> float | None:
        return None if self.labelled is None else self.labelled.model_accuracy

    @property
    def mean_credibility_correct(self) -> float | None:
        return None if self.labelled is None else self.labelled.mean_credibility_correct


@dataclass(frozen=True)
class RightVsWrong:
    """AUROC at telling the model's right answers from its wrong ones (`right_vs_wrong`)."""

    credibility: float | None
    model_answer_p: float | None
    softmax: float | None


@dataclass(frozen=True)
class BackendQuality:
    """One backend's numbers; every dict is keyed by set name (validity: by τ as written, "0.05")."""

    sets: dict[str, SetMetrics]
    auroc_credibility: dict[str, float]
    auroc_softmax: dict[str, float]
    auroc_credibility_model_wrong: dict[str, float]
    auroc_softmax_model_wrong: dict[str, float]
    validity: dict[str, float]
    right_vs_wrong: dict[str, RightVsWrong]  # the covariate-shift sets only


@dataclass(frozen=True)
class DetectorScores:
    """One detector, clean evaluation points against one set."""

    auroc: float
    fpr_at_95_tpr: float
    tpr_at_1_fpr: float
    tpr_at_5_fpr: float


@dataclass(frozen=True)
class DetectorComparison:
    layer: str  # the baselines' layer
    sets: dict[str, dict[str, DetectorScores]]  # set -> detector -> scores
    backend: str  # the DkNN backend whose credibility is compared


@dataclass(frozen=True)
class QualityResult:
    benchmark: str = field(default="quality", init=False)
    created_at: str = field(default_factory=now, init=False)
    bundle: BundleInfo
    epsilon: float
    backends: dict[str, BackendQuality]
    recall_at_k: dict[str, dict[str, float]] | None = field(metadata=ABSENT_WHEN_NONE)  # set -> layer; both backends
    extended: bool
    detectors: DetectorComparison | None = field(metadata=ABSENT_WHEN_NONE)  # extended runs only

    @property
    def stem(self) -> str:
        """The file name of the report and its plots: the bundle's model, version and fit."""
        suffix = f"-{self.bundle.version}-extended" if self.extended else ""
        spec = self.bundle.nonconformity
        if spec.kind != "labels":  # refitted bundles share the model's version
            suffix += f"-distance-w{spec.distance_weight}"
        if spec.residual is not None:
            suffix += f"-residual-{spec.residual.layer}"
        return f"quality-{self.bundle.model}{suffix}"


def score_set(scorer: DkNN, data: EvalSet, batch_size: int, label: str) -> SetScores:
    return score_inputs(scorer, data.x, batch_size, label)


def auroc(in_distribution: np.ndarray, shifted: np.ndarray) -> float:
    """AUROC of a score meant to be high in distribution and low under shift."""
    return measures.auroc(in_distribution, shifted)


def recall_per_layer(approximate: np.ndarray, exact: np.ndarray) -> list[float]:
    """Per layer of `(n, L, k)` ids: the fraction of exact k-NN ids the approximate search also returned."""
    return [recall_at_k(approximate[:, layer], exact[:, layer]) for layer in range(exact.shape[1])]


def right_vs_wrong(data: EvalSet, scores: SetScores) -> RightVsWrong:
    """AUROC at telling the model's right answers (positives) from its wrong ones, within one
    labelled set, of: credibility (the p-value of DkNN's own prediction, the acceptance measure);
    the p-value of the model's answer (what the training data says of the answer actually served,
    like for like with the softmax, which also speaks of the model's answer); and the softmax.
    None when the model is all right or all wrong."""
    separation = measures.right_vs_wrong(
        scores.model_prediction == data.y,
        {
            "credibility": scores.credibility,
            "model_answer_p": scores.p_of(scores.model_prediction),
            "softmax": scores.softmax_max,
        },
    )
    return RightVsWrong(**separation)


def model_wrong_aurocs(shifted: list[EvalSet], by_set: dict[str, SetScores], score: str) -> dict[str, float]:
    """AUROC against only the inputs the model misclassifies: the adversarial-detection literature's
    convention, since a perturbed input the model still gets right is not an adversarial example."""
    clean = getattr(by_set["clean"], score)
    out = {}
    for data in shifted:
        if data.y is None:
            continue
        wrong = by_set[data.name].model_prediction != data.y
        if wrong.any():
            out[data.name] = auroc(clean, getattr(by_set[data.name], score)[wrong])
    return out


def set_metrics(data: EvalSet, scores: SetScores) -> SetMetrics:
    labelled = None
    if data.y is not None:
        correct = scores.prediction == data.y
        labelled = Labelled(
            dknn_accuracy=float(correct.mean()),
            model_accuracy=float((scores.model_prediction == data.y).mean()),
            mean_credibility_correct=float(scores.credibility[correct].mean()) if correct.any() else None,
        )
    return SetMetrics(n=len(data.x), mean_credibility=float(scores.credibility.mean()), labelled=labelled)


def validity(data: EvalSet, scores: SetScores) -> dict[str, float]:
    """Fraction of points whose true-label p-value is ≤ τ; conformal validity wants ≲ τ."""
    if data.y is None:
        raise ConfigError(f"validity needs labels; set {data.name!r} has none")
    return measures.validity(scores.p_of(data.y))


def run_quality(options: QualityOptions) -> QualityResult:
    if not options.backends or not set(options.backends) <= set(BACKENDS):
        raise ConfigError(f"backends must be a non-empty subset of {', '.join(BACKENDS)}; got {options.backends}")
    mnist = load_mnist(options.data_dir)
    backends = {name: DkNN.from_bundle(options.artifacts, backend=name) for name in options.backends}
    first = next(iter(backends.values()))
    manifest = first.manifest
    if manifest.calibration.source != "mnist:t10k" or not manifest.calibration.source_indices:
        raise ConfigError(f"{options.artifacts}: not an MNIST reference bundle (calibration source unknown)")
    rows = calibration_split(manifest, len(mnist.x_test)).evaluation
    if options.limit is not None and options.limit < len(rows):  # a random subset: MNIST's halves differ
        rows = np.sort(np.random.default_rng(options.seed).choice(rows, size=options.limit, replace=False))
    clean = EvalSet("clean", mnist.x_test[rows], mnist.y_test[rows])
    model = first.tap.model
    sets = [clean, *shifted_sets(model, clean, options.epsilon, options.seed)]
    if options.extended:
        sets += [
            gaussian_noise(len(clean.x), clean.x.shape[1:], options.seed),
            inverted(clean),
            *iterative_attack_sets(model, clean, options.epsilon, options.seed),
            *natural_sets(),
        ]

    scores: dict[str, dict[str, SetScores]] = {
        backend: {data.name: score_set(scorer, data, options.batch_size, f"{backend}:{data.name}") for data in sets}
        for backend, scorer in backends.items()
    }
    recall = None
    if len(backends) == 2:
        recall = {
            data.name: dict(
                zip(
                    manifest.layer_names,
                    recall_per_layer(scores["annoy"][data.name].neighbor_ids, scores["exact"][data.name].neighbor_ids),
                    strict=True,
                )
            )
            for data in sets
        }
    detectors = None
    if options.extended:
        name = next(iter(backends))
        detectors = compare_detectors(backends[name], name, mnist, sets, scores[name], options.batch_size)
    result = QualityResult(
        bundle=BundleInfo.of(options.artifacts, manifest),
        epsilon=options.epsilon,
        backends={backend: backend_quality(sets, by_set) for backend, by_set in scores.items()},
        recall_at_k=recall,
        extended=options.extended,
        detectors=detectors,
    )
    if detectors is not None:
        draw_figures(result, sets, scores[detectors.backend], options.out_dir)
    write_results(result, options.out_dir)
    return result


def backend_quality(sets: list[EvalSet], by_set: dict[str, SetScores]) -> BackendQuality:
    """One backend's metrics; `sets[0]` is the clean evaluation set the others are compared with."""
    clean, shifted = by_set[sets[0].name], sets[1:]
    return BackendQuality(
        sets={data.name: set_metrics(data, by_set[data.name]) for data in sets},
        auroc_credibility={data.name: auroc(clean.credibility, by_set[data.name].credibility) for data in shifted},
        auroc_softmax={data.name: auroc(clean.softmax_max, by_set[data.name].softmax_max) for data in shifted},
        auroc_credibility_model_wrong=model_wrong_aurocs(shifted, by_set, "credibility"),
        auroc_softmax_model_wrong=model_wrong_aurocs(shifted, by_set, "softmax_max"),
        validity=validity(sets[0], clean),
        right_vs_wrong={
            data.name: right_vs_wrong(data, by_set[data.name])
            for data in sets
            if SET_KINDS.get(data.name) == COVARIATE_SHIFT
        },
    )


def compare_detectors(
    scorer: DkNN, backend: str, mnist: Mnist, sets: list[EvalSet], by_set: dict[str, SetScores], batch_size: int
) -> DetectorComparison:
    """AUROC and FPR at 95% TPR of every detector, clean evaluation points against each set."""
    detectors = fit_detectors(scorer, mnist.x_train, mnist.y_train, batch_size)
    per_set = {
        data.name: detector_scores(
            detectors,
            scorer,
            data.x,
            by_set[data.name].credibility,
            {"softmax": by_set[data.name].softmax_max, "energy": by_set[data.name].energy},
            batch_size,
        )
        for data in sets
    }
    clean = per_set["clean"]
    return DetectorComparison(
        layer=detectors.layer,
        sets={
            data.name: {
                name: DetectorScores(
                    auroc=auroc(clean[name], values),
                    fpr_at_95_tpr=fpr_at_95_tpr(clean[name], values),
                    tpr_at_1_fpr=tpr_at_fpr(clean[name], values, 0.01),
                    tpr_at_5_fpr=tpr_at_fpr(clean[name], values, 0.05),
                )
                for name, values in per_set[data.name].items()
            }
            for data in sets[1:]
        },
        backend=backend,
    )


def draw_figures(result: QualityResult, sets: list[EvalSet], by_set: dict[str, SetScores], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    clean = by_set["clean"]
    title = f"{result.bundle.model} {result.bundle.version}"
    reliability_diagram(
        clean.credibility, clean.prediction == sets[0].y, out_dir / f"{result.stem}-reliability.png", title
    )
    credibility_histograms(
        {data.name: by_set[data.name].credibility for data in sets}, out_dir / f"{result.stem}-credibility.png", title
    )


def _nonconformity_words(spec: NonconformitySpec) -> str:
    """`labels+distance (distance weight 600) + residual at relu2 (64 directions, weight 600, tail 0.995)`."""
    words: str = spec.kind
    if spec.kind != "labels":
        words += f" (distance weight {spec.distance_weight})"
    residual = spec.residual
    if residual is not None:
        words += (
            f" + residual at {residual.layer} ({residual.components} directions, weight {residual.weight}, "
            f"tail {residual.tail:g})"
        )
    return words


def markdown(result: QualityResult) -> str:
    bundle = result.bundle
    lines = [
        f"# Quality: {bundle.model} {bundle.version}",
        "",
        f"k={bundle.k}, layers {bundle.layers}, Annoy n_trees={bundle.n_trees} search_k={bundle.search_k}, "
        f"{bundle.calibration_size} calibration points, FGSM ε={result.epsilon}, "
        f"nonconformity {_nonconformity_words(bundle.nonconformity)}.",
        "",
        *natural_markdown(result),
        "## Every set",
        "",
        "AUROC: clean evaluation points against the set, by DkNN credibility and by softmax max-probability; "
        "'model wrong' uses only the set's inputs the model misclassifies.",
        "",
        *table(
            [
                "backend",
                "set",
                "n",
                "model acc",
                "DkNN acc",
                "mean cred",
                "mean cred (correct)",
                "AUROC cred",
                "AUROC softmax",
                "AUROC cred, model wrong",
                "AUROC softmax, model wrong",
            ],
            [
                [
                    backend,
                    name,
                    metrics.n,
                    pct(metrics.model_accuracy),
                    pct(metrics.dknn_accuracy),
                    num(metrics.mean_credibility),
                    num(metrics.mean_credibility_correct),
                    num(body.auroc_credibility.get(name)),
                    num(body.auroc_softmax.get(name)),
                    num(body.auroc_credibility_model_wrong.get(name)),
                    num(body.auroc_softmax_model_wrong.get(name)),
                ]
                for backend, body in result.backends.items()
                for name, metrics in body.sets.items()
            ],
        ),
        "",
        "Validity (fraction of clean evaluation points with true-label p ≤ τ):",
        "",
        *table(
            ["backend", *(f"τ={tau}" for tau in VALIDITY_TAUS)],
            [
                [backend, *(num(body.validity[str(tau)]) for tau in VALIDITY_TAUS)]
                for backend, body in result.backends.items()
            ],
        ),
    ]
    if result.recall_at_k is not None:
        layers = list(bundle.layers)
        lines += [
            "",
            f"Annoy recall@{bundle.k} against exact search, per layer:",
            "",
            *table(
                ["set", *layers],
                [
                    [name, *(num(per_layer[layer]) for layer in layers)]
                    for name, per_layer in result.recall_at_k.items()
                ],
            ),
        ]
    if result.detectors is not None:
        detectors = result.detectors
        names = _detector_names(detectors)
        lines += [
            "",
            f"Detectors ({detectors.backend} backend; baselines on layer {detectors.layer}): "
            "AUROC / FPR at 95% TPR, clean evaluation points as positives:",
            "",
            *table(
                ["set", *names],
                [
                    [set_name, *(f"{num(per[n].auroc)} / {num(per[n].fpr_at_95_tpr)}" for n in names)]
                    for set_name, per in detectors.sets.items()
                ],
            ),
            "",
            f"![reliability]({result.stem}-reliability.png) ![credibility]({result.stem}-credibility.png)",
        ]
    return "\n".join(lines) + "\n"


def natural_markdown(result: QualityResult) -> list[str]:
    """The natural sets first: what a deployed model mostly meets (docs/data.md)."""
    detectors = result.detectors
    if detectors is None:
        return []
    names = _detector_names(detectors)
    body = result.backends[detectors.backend]
    far = [name for name in detectors.sets if SET_KINDS.get(name) == FAR_OOD]
    return [
        "## Natural sets: far out-of-distribution (not digits)",
        "",
        f"AUROC and the share flagged at the thresholds that flag 1% / 5% of clean traffic "
        f"({detectors.backend} backend):",
        "",
        *table(
            ["set", *names],
            [
                [
                    set_name,
                    *(
                        f"{num(d.auroc)} ({pct(d.tpr_at_1_fpr)} / {pct(d.tpr_at_5_fpr)})"
                        for d in (detectors.sets[set_name][n] for n in names)
                    ),
                ]
                for set_name in far
            ],
        ),
        "",
        "## Natural sets: covariate shift (digits from another population)",
        "",
        *table(
            [
                "set",
                "n",
                "model acc",
                "DkNN acc",
                "mean cred",
                "right vs wrong answers: AUROC cred",
                "AUROC p-value of the model's answer",
                "AUROC softmax",
            ],
            [
                [
                    set_name,
                    body.sets[set_name].n,
                    pct(body.sets[set_name].model_accuracy),
                    pct(body.sets[set_name].dknn_accuracy),
                    num(body.sets[set_name].mean_credibility),
                    num(separation.credibility),
                    num(separation.model_answer_p),
                    num(separation.softmax),
                ]
                for set_name, separation in body.right_vs_wrong.items()
            ],
        ),
        "",
    ]


def _detector_names(detectors: DetectorComparison) -> list[str]:
    """The detectors compared, in the order they were scored (the same for every set)."""
    return list(next(iter(detectors.sets.values()), {}))


def write_results(result: QualityResult, out_dir: Path) -> None:
    save_report(result, markdown(result), out_dir, result.stem)
