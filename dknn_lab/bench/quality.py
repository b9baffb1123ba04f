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

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from agent.engine.dknn import DkNN
from agent.engine.index import BACKENDS, IndexBackend, recall_at_k
from agent.errors import ConfigError
from agent.evaluation import metrics as measures
from agent.evaluation.metrics import VALIDITY_TAUS, fpr_at_95_tpr, tpr_at_fpr
from agent.evaluation.plots import credibility_histograms, reliability_diagram
from agent.evaluation.scoring import SetScores
from agent.evaluation.scoring import score_set as score_inputs
from dknn_lab.bench.detectors import detector_scores, fit_detectors
from dknn_lab.bench.perturbations import EvalSet, gaussian_noise, inverted, iterative_attack_sets, shifted_sets
from dknn_lab.bench.reports import save_report
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


def score_set(scorer: DkNN, data: EvalSet, batch_size: int, label: str) -> SetScores:
    return score_inputs(scorer, data.x, batch_size, label)


def auroc(in_distribution: np.ndarray, shifted: np.ndarray) -> float:
    """AUROC of a score meant to be high in distribution and low under shift."""
    return measures.auroc(in_distribution, shifted)


def recall_per_layer(approximate: np.ndarray, exact: np.ndarray) -> list[float]:
    """Per layer of `(n, L, k)` ids: the fraction of exact k-NN ids the approximate search also returned."""
    return [recall_at_k(approximate[:, layer], exact[:, layer]) for layer in range(exact.shape[1])]


def right_vs_wrong(data: EvalSet, scores: SetScores) -> dict[str, float | None]:
    """AUROC at telling the model's right answers (positives) from its wrong ones, within one
    labelled set, of: credibility (the p-value of DkNN's own prediction, the acceptance measure);
    the p-value of the model's answer (what the training data says of the answer actually served,
    like for like with the softmax, which also speaks of the model's answer); and the softmax.
    None when the model is all right or all wrong."""
    return measures.right_vs_wrong(
        scores.model_prediction == data.y,
        {
            "credibility": scores.credibility,
            "model_answer_p": scores.p_of(scores.model_prediction),
            "softmax": scores.softmax_max,
        },
    )


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


def set_metrics(data: EvalSet, scores: SetScores) -> dict[str, Any]:
    metrics: dict[str, Any] = {"n": len(data.x), "mean_credibility": float(scores.credibility.mean())}
    if data.y is not None:
        correct = scores.prediction == data.y
        metrics |= {
            "dknn_accuracy": float(correct.mean()),
            "model_accuracy": float((scores.model_prediction == data.y).mean()),
            "mean_credibility_correct": float(scores.credibility[correct].mean()) if correct.any() else None,
        }
    return metrics


def validity(data: EvalSet, scores: SetScores) -> dict[str, float]:
    """Fraction of points whose true-label p-value is ≤ τ; conformal validity wants ≲ τ."""
    if data.y is None:
        raise ConfigError(f"validity needs labels; set {data.name!r} has none")
    return measures.validity(scores.p_of(data.y))


def run_quality(options: QualityOptions) -> dict:
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
    result: dict[str, Any] = {
        "benchmark": "quality",
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "bundle": {
            "path": str(options.artifacts),
            "model": manifest.model.name,
            "version": manifest.model.version,
            "k": manifest.k,
            "layers": {layer.name: layer.preprocessing for layer in manifest.layers},
            "n_trees": manifest.index.n_trees,
            "search_k": {name: manifest.search_k(name) for name in manifest.layer_names},
            "calibration_size": manifest.calibration.size,
            "nonconformity": manifest.nonconformity.model_dump(mode="json"),
        },
        "epsilon": options.epsilon,
        "backends": {},
    }
    for backend, by_set in scores.items():
        clean_scores = by_set["clean"]
        result["backends"][backend] = {
            "sets": {data.name: set_metrics(data, by_set[data.name]) for data in sets},
            "auroc_credibility": {
                data.name: auroc(clean_scores.credibility, by_set[data.name].credibility) for data in sets[1:]
            },
            "auroc_softmax": {
                data.name: auroc(clean_scores.softmax_max, by_set[data.name].softmax_max) for data in sets[1:]
            },
            "auroc_credibility_model_wrong": model_wrong_aurocs(sets[1:], by_set, "credibility"),
            "auroc_softmax_model_wrong": model_wrong_aurocs(sets[1:], by_set, "softmax_max"),
            "validity": validity(clean, clean_scores),
            "right_vs_wrong": {
                data.name: right_vs_wrong(data, by_set[data.name])
                for data in sets
                if SET_KINDS.get(data.name) == COVARIATE_SHIFT
            },
        }
    if len(backends) == 2:
        result["recall_at_k"] = {
            data.name: dict(
                zip(
                    manifest.layer_names,
                    recall_per_layer(scores["annoy"][data.name].neighbor_ids, scores["exact"][data.name].neighbor_ids),
                    strict=True,
                )
            )
            for data in sets
        }
    result["extended"] = options.extended
    if options.extended:
        name = next(iter(backends))
        result["detectors"] = compare_detectors(backends[name], mnist, sets, scores[name], options.batch_size)
        result["detectors"]["backend"] = name
        draw_figures(result, sets, scores[name], options.out_dir)
    write_results(result, options.out_dir)
    return result


def compare_detectors(
    scorer: DkNN, mnist: Mnist, sets: list[EvalSet], by_set: dict[str, SetScores], batch_size: int
) -> dict:
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
    return {
        "layer": detectors.layer,
        "sets": {
            data.name: {
                name: {
                    "auroc": auroc(clean[name], values),
                    "fpr_at_95_tpr": fpr_at_95_tpr(clean[name], values),
                    "tpr_at_1_fpr": tpr_at_fpr(clean[name], values, 0.01),
                    "tpr_at_5_fpr": tpr_at_fpr(clean[name], values, 0.05),
                }
                for name, values in per_set[data.name].items()
            }
            for data in sets[1:]
        },
    }


def draw_figures(result: dict, sets: list[EvalSet], by_set: dict[str, SetScores], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = _stem(result)
    clean = by_set["clean"]
    title = f"{result['bundle']['model']} {result['bundle']['version']}"
    reliability_diagram(clean.credibility, clean.prediction == sets[0].y, out_dir / f"{stem}-reliability.png", title)
    credibility_histograms(
        {data.name: by_set[data.name].credibility for data in sets}, out_dir / f"{stem}-credibility.png", title
    )


def _nonconformity_words(spec: dict) -> str:
    """`labels+distance (distance weight 600) + residual at relu2 (64 directions, weight 600, tail 0.995)`."""
    words = spec.get("kind", "labels")
    if words != "labels":
        words += f" (distance weight {spec['distance_weight']})"
    residual = spec.get("residual")
    if residual:
        words += (
            f" + residual at {residual['layer']} ({residual['components']} directions, weight {residual['weight']}, "
            f"tail {residual['tail']:g})"
        )
    return words


def markdown(result: dict) -> str:
    lines = [
        f"# Quality: {result['bundle']['model']} {result['bundle']['version']}",
        "",
        f"k={result['bundle']['k']}, layers {result['bundle']['layers']}, "
        f"Annoy n_trees={result['bundle']['n_trees']} search_k={result['bundle']['search_k']}, "
        f"{result['bundle']['calibration_size']} calibration points, FGSM ε={result['epsilon']}, "
        f"nonconformity {_nonconformity_words(result['bundle'].get('nonconformity') or {})}.",
        "",
        *natural_markdown(result),
        "## Every set",
        "",
        "AUROC: clean evaluation points against the set, by DkNN credibility and by softmax max-probability; "
        "'model wrong' uses only the set's inputs the model misclassifies.",
        "",
        "| backend | set | n | model acc | DkNN acc | mean cred | mean cred (correct) | AUROC cred | AUROC softmax "
        "| AUROC cred, model wrong | AUROC softmax, model wrong |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for backend, body in result["backends"].items():
        for name, metrics in body["sets"].items():
            lines.append(
                "| "
                + " | ".join(
                    [
                        backend,
                        name,
                        str(metrics["n"]),
                        _pct(metrics.get("model_accuracy")),
                        _pct(metrics.get("dknn_accuracy")),
                        _num(metrics["mean_credibility"]),
                        _num(metrics.get("mean_credibility_correct")),
                        _num(body["auroc_credibility"].get(name)),
                        _num(body["auroc_softmax"].get(name)),
                        _num(body["auroc_credibility_model_wrong"].get(name)),
                        _num(body["auroc_softmax_model_wrong"].get(name)),
                    ]
                )
                + " |"
            )
    lines += [
        "",
        "Validity (fraction of clean evaluation points with true-label p ≤ τ):",
        "",
        "| backend | " + " | ".join(f"τ={tau}" for tau in VALIDITY_TAUS) + " |",
        "|---|" + "---|" * len(VALIDITY_TAUS),
    ]
    for backend, body in result["backends"].items():
        lines.append(f"| {backend} | " + " | ".join(_num(body["validity"][str(tau)]) for tau in VALIDITY_TAUS) + " |")
    layers = list(result["bundle"]["layers"])
    if "recall_at_k" in result:
        lines += [
            "",
            f"Annoy recall@{result['bundle']['k']} against exact search, per layer:",
            "",
            "| set | " + " | ".join(layers) + " |",
            "|---|" + "---|" * len(layers),
        ]
        for name, per_layer in result["recall_at_k"].items():
            lines.append(f"| {name} | " + " | ".join(_num(per_layer[layer]) for layer in layers) + " |")
    if "detectors" in result:
        names = list(next(iter(result["detectors"]["sets"].values())))
        lines += [
            "",
            f"Detectors ({result['detectors']['backend']} backend; baselines on layer {result['detectors']['layer']}): "
            "AUROC / FPR at 95% TPR, clean evaluation points as positives:",
            "",
            "| set | " + " | ".join(names) + " |",
            "|---|" + "---|" * len(names),
        ]
        for set_name, per_detector in result["detectors"]["sets"].items():
            lines.append(
                f"| {set_name} | "
                + " | ".join(
                    f"{_num(per_detector[n]['auroc'])} / {_num(per_detector[n]['fpr_at_95_tpr'])}" for n in names
                )
                + " |"
            )
        stem = _stem(result)
        lines += ["", f"![reliability]({stem}-reliability.png) ![credibility]({stem}-credibility.png)"]
    return "\n".join(lines) + "\n"


def natural_markdown(result: dict) -> list[str]:
    """The natural sets first: what a deployed model mostly meets (docs/data.md)."""
    if "detectors" not in result:
        return []
    per_set = result["detectors"]["sets"]
    far = [name for name in per_set if SET_KINDS.get(name) == FAR_OOD]
    names = list(next(iter(per_set.values())))
    lines = [
        "## Natural sets: far out-of-distribution (not digits)",
        "",
        f"AUROC and the share flagged at the thresholds that flag 1% / 5% of clean traffic "
        f"({result['detectors']['backend']} backend):",
        "",
        "| set | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for set_name in far:
        cells = [
            f"{_num(d['auroc'])} ({_pct(d['tpr_at_1_fpr'])} / {_pct(d['tpr_at_5_fpr'])})"
            for d in (per_set[set_name][n] for n in names)
        ]
        lines.append(f"| {set_name} | " + " | ".join(cells) + " |")
    body = result["backends"][result["detectors"]["backend"]]
    lines += [
        "",
        "## Natural sets: covariate shift (digits from another population)",
        "",
        "| set | n | model acc | DkNN acc | mean cred | right vs wrong answers: AUROC cred "
        "| AUROC p-value of the model's answer | AUROC softmax |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for set_name, aurocs in body["right_vs_wrong"].items():
        metrics = body["sets"][set_name]
        lines.append(
            f"| {set_name} | {metrics['n']} | {_pct(metrics['model_accuracy'])} | {_pct(metrics['dknn_accuracy'])} | "
            f"{_num(metrics['mean_credibility'])} | {_num(aurocs['credibility'])} | "
            f"{_num(aurocs.get('model_answer_p'))} | {_num(aurocs['softmax'])} |"
        )
    return [*lines, ""]


def _stem(result: dict) -> str:
    suffix = f"-{result['bundle']['version']}-extended" if result.get("extended") else ""
    spec = result["bundle"].get("nonconformity") or {}
    if spec.get("kind", "labels") != "labels":  # refitted bundles share the model's version
        suffix += f"-distance-w{spec['distance_weight']}"
    if spec.get("residual"):
        suffix += f"-residual-{spec['residual']['layer']}"
    return f"quality-{result['bundle']['model']}{suffix}"


def write_results(result: dict, out_dir: Path) -> None:
    save_report(result, markdown(result), out_dir, _stem(result))


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}%"


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"
