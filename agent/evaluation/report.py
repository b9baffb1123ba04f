"""`dknn-agent evaluate`: a bundle measured on your own held-out data and out-of-distribution sets.

What an operator needs to decide whether the agent's credibility is worth deploying next to the
softmax score every model server already exports, including where it loses:

- accuracy of the model and of DkNN on the clean held-out set, and conformal **validity** (the
  share of clean inputs whose true label's p-value is ≤ τ should be about τ);
- per out-of-distribution set: AUROC and the share flagged at 1% / 5% of clean traffic (TPR at
  1% / 5% FPR) for credibility, the softmax maximum and the energy score, each marked where
  credibility is behind;
- how well each score tells the model's right answers from its wrong ones (AUROC), with a paired
  bootstrap interval of credibility minus softmax, on every labelled set;
- the share quarantined at the configured threshold, per set;
- inputs/s per core, Annoy and exact search (one core each: torch, BLAS and the index pinned to one
  thread), so capacity can be planned per core requested.

Writes `<stem>.json` (every number), `<stem>.md` (the tables) and, where matplotlib is installed,
`<stem>-credibility.png` and `<stem>-reliability.png`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agent.engine.bundle import BundleTrust
from agent.engine.data_files import Dataset
from agent.engine.dknn import DkNN
from agent.engine.index import BACKENDS, IndexBackend
from agent.errors import ConfigError
from agent.evaluation.metrics import VALIDITY_TAUS, paired_bootstrap, right_vs_wrong, separation, validity
from agent.evaluation.scoring import SetScores, score_set

DETECTORS = ("credibility", "softmax", "energy")
SPEED_INPUTS = 1024


@dataclass(frozen=True)
class EvaluationOptions:
    artifacts: Path
    clean: Dataset  # labelled held-out data, never seen by fit
    ood: dict[str, Dataset] = field(default_factory=dict)  # labels, where present, give right-vs-wrong too
    out_dir: Path = Path(".")
    name: str | None = None  # the files' stem; default evaluation-<model>
    threshold: float = 0.1
    batch_size: int = 256
    backends: tuple[IndexBackend, ...] = BACKENDS
    trust: BundleTrust = BundleTrust()
    bootstrap: int = 2000
    command: str = ""
    progress: bool = True


def run_evaluation(options: EvaluationOptions) -> dict[str, Any]:
    if options.clean.y is None:
        raise ConfigError("--clean needs labels ('y'): accuracy and validity are measured on it")
    if not options.backends or not set(options.backends) <= set(BACKENDS):
        raise ConfigError(f"backends must be some of {', '.join(BACKENDS)}")
    scorers = {
        backend: DkNN.from_bundle(options.artifacts, backend=backend, trust=options.trust)
        for backend in options.backends
    }
    first = next(iter(scorers.values()))
    manifest = first.manifest
    names = [spec.name for spec in manifest.inputs]
    sets = {"clean": options.clean, **options.ood}
    result: dict[str, Any] = {
        "evaluation": 1,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": options.command,
        "bundle": {
            "path": str(options.artifacts),
            "digest": first.digest,
            "model": manifest.model.name,
            "version": manifest.model.version,
            "layers": {layer.name: layer.preprocessing for layer in manifest.layers},
            "nonconformity": manifest.nonconformity.model_dump(mode="json"),
            "calibration_size": manifest.calibration.size,
        },
        "threshold": options.threshold,
        "sets": {name: {"n": len(data), "labelled": data.y is not None} for name, data in sets.items()},
        "backends": {},
    }
    scores: dict[str, dict[str, SetScores]] = {}
    for backend, scorer in scorers.items():
        scores[backend] = {
            name: score_set(scorer, data.arrays_for(names), options.batch_size, f"{backend}:{name}", options.progress)
            for name, data in sets.items()
        }
        result["backends"][backend] = _measures(sets, scores[backend], options)
    result["speed"] = _speed(options, names)
    stem = options.name or f"evaluation-{manifest.model.name}"
    figures = _figures(sets, scores[next(iter(scores))], options.out_dir, stem, manifest.model.name)
    result["figures"] = figures
    options.out_dir.mkdir(parents=True, exist_ok=True)
    (options.out_dir / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (options.out_dir / f"{stem}.md").write_text(markdown(result))
    return result


def _measures(sets: dict[str, Dataset], by_set: dict[str, SetScores], options: EvaluationOptions) -> dict[str, Any]:
    clean, clean_scores = sets["clean"], by_set["clean"]
    assert clean.y is not None
    out: dict[str, Any] = {}
    for name, data in sets.items():
        scores = by_set[name]
        measures: dict[str, Any] = {
            "mean_credibility": float(scores.credibility.mean()),
            "quarantined": float((scores.credibility < options.threshold).mean()),
        }
        if data.y is not None:
            right = scores.model_prediction == data.y
            measures |= {
                "model_accuracy": float(right.mean()),
                "dknn_accuracy": float((scores.prediction == data.y).mean()),
                "right_vs_wrong": right_vs_wrong(
                    right,
                    {
                        "credibility": scores.credibility,
                        "model_answer_p": scores.p_of(scores.model_prediction),
                        "softmax": scores.softmax_max,
                    },
                ),
                "credibility_minus_softmax": paired_bootstrap(
                    right, scores.credibility, scores.softmax_max, options.bootstrap
                ),
            }
        if name == "clean":
            measures["validity"] = validity(scores.p_of(clean.y))
        else:
            measures["separation"] = {
                "credibility": separation(clean_scores.credibility, scores.credibility),
                "softmax": separation(clean_scores.softmax_max, scores.softmax_max),
                "energy": separation(clean_scores.energy, scores.energy),
            }
        out[name] = measures
    return out


def _speed(options: EvaluationOptions, names: list[str]) -> dict[str, Any]:
    """Inputs/s on one core: torch, BLAS and the index threads pinned to one, best of three runs."""
    rows = min(SPEED_INPUTS, len(options.clean))
    sample = [np.ascontiguousarray(array[:rows]) for array in options.clean.arrays_for(names)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out: dict[str, Any] = {}
    try:
        for backend in options.backends:
            scorer = DkNN.from_bundle(options.artifacts, backend=backend, threads=1, trust=options.trust)
            with scorer.single_threaded_blas():
                scorer.score([array[: options.batch_size] for array in sample])  # warm-up
                best = float("inf")
                for _ in range(3):
                    start = time.perf_counter()
                    for begin in range(0, rows, options.batch_size):
                        scorer.score([array[begin : begin + options.batch_size] for array in sample])
                    best = min(best, time.perf_counter() - start)
            out[backend] = {"inputs": rows, "inputs_per_s_per_core": rows / best}
    finally:
        torch.set_num_threads(threads)
    return out


def _figures(sets: dict[str, Dataset], by_set: dict[str, SetScores], out_dir: Path, stem: str, title: str) -> list[str]:
    try:
        from agent.evaluation.plots import credibility_histograms, reliability_diagram
    except ImportError:  # matplotlib is an extra (`pip install dknn-agent[eval]`)
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    clean = sets["clean"]
    assert clean.y is not None
    reliability = f"{stem}-reliability.png"
    histograms = f"{stem}-credibility.png"
    reliability_diagram(
        by_set["clean"].credibility, by_set["clean"].prediction == clean.y, out_dir / reliability, title
    )
    credibility_histograms({name: scores.credibility for name, scores in by_set.items()}, out_dir / histograms, title)
    return [histograms, reliability]


def markdown(result: dict[str, Any]) -> str:
    bundle = result["bundle"]
    lines = [
        f"# Evaluation: {bundle['model']} {bundle['version']}",
        "",
        f"Bundle `{bundle['path']}` ({bundle['digest']}), layers "
        + ", ".join(f"`{name}`={prep}" for name, prep in bundle["layers"].items())
        + f", {bundle['nonconformity']['kind']}"
        + (
            f" + residual term at `{bundle['nonconformity']['residual']['layer']}`"
            if bundle["nonconformity"].get("residual")
            else ""
        )
        + f", {bundle['calibration_size']} calibration points.",
        "",
    ]
    if result.get("command"):
        lines += [f"Regenerate: `{result['command']}`", ""]
    sets = result["sets"]
    lines += [
        "Sets: "
        + ", ".join(f"{name} ({info['n']:,}{', labelled' if info['labelled'] else ''})" for name, info in sets.items()),
        "",
    ]
    for backend, measures in result["backends"].items():
        clean = measures["clean"]
        lines += [
            f"## {backend}",
            "",
            "| clean held-out | model | DkNN |",
            "|---|---|---|",
            f"| accuracy | {_pct(clean['model_accuracy'])} | {_pct(clean['dknn_accuracy'])} |",
            "",
            "Validity, the share of clean inputs whose true label's p-value is ≤ τ (about τ is right): "
            + ", ".join(f"τ = {tau}: {_num(clean['validity'][str(tau)])}" for tau in VALIDITY_TAUS)
            + f". Quarantined at the threshold {result['threshold']}: {_pct(clean['quarantined'])} of clean inputs.",
            "",
        ]
        shifted = [name for name in measures if name != "clean"]
        if shifted:
            lines += [
                "Out-of-distribution sets, clean inputs as positives: AUROC (the set's share flagged when 1% / 5% "
                "of clean traffic is). **Bold**: the best; *credibility behind*: a baseline above credibility.",
                "",
                "| set | n | quarantined at τ | DkNN credibility | softmax | energy |",
                "|---|---|---|---|---|---|",
            ]
            for name in shifted:
                separation = measures[name]["separation"]
                best = max(separation[detector]["auroc"] for detector in DETECTORS)
                cells = []
                for detector in DETECTORS:
                    values = separation[detector]
                    cell = f"{_num(values['auroc'])} ({_pct(values['tpr_at_1_fpr'], 0)} / {_pct(values['tpr_at_5_fpr'], 0)})"
                    if values["auroc"] == best:
                        cell = f"**{cell}**"
                    if detector != "credibility" and values["auroc"] > separation["credibility"]["auroc"]:
                        cell += " *credibility behind*"
                    cells.append(cell)
                lines.append(
                    f"| {name} | {sets[name]['n']:,} | {_pct(measures[name]['quarantined'])} | "
                    + " | ".join(cells)
                    + " |"
                )
            lines.append("")
        labelled = [name for name, values in measures.items() if "right_vs_wrong" in values]
        lines += [
            "Right versus wrong answers of the model (AUROC, right answers as positives), and credibility minus "
            "softmax with its 95% paired-bootstrap interval:",
            "",
            "| set | model accuracy | DkNN accuracy | credibility | p-value of the model's answer | softmax | credibility − softmax |",
            "|---|---|---|---|---|---|---|",
        ]
        for name in labelled:
            values = measures[name]
            aurocs, difference = values["right_vs_wrong"], values["credibility_minus_softmax"]
            interval = (
                f"{difference['difference']:+.3f} [{difference['low']:+.3f}, {difference['high']:+.3f}]"
                if difference
                else "–"
            )
            lines.append(
                f"| {name} | {_pct(values['model_accuracy'])} | {_pct(values['dknn_accuracy'])} | "
                f"{_num(aurocs['credibility'])} | {_num(aurocs['model_answer_p'])} | {_num(aurocs['softmax'])} | {interval} |"
            )
        lines.append("")
    speed = result["speed"]
    lines += [
        "## Speed",
        "",
        "Inputs/s on one core (torch, BLAS and the index on one thread; best of three over "
        f"{next(iter(speed.values()))['inputs']:,} clean inputs): "
        + ", ".join(f"{backend} {values['inputs_per_s_per_core']:,.0f}" for backend, values in speed.items())
        + ".",
        "",
    ]
    if result["figures"]:
        lines += [" ".join(f"![{name}]({name})" for name in result["figures"]), ""]
    else:
        lines += ["(No figures: matplotlib is not installed; `pip install dknn-agent[eval]`.)", ""]
    return "\n".join(lines)


def _pct(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{100 * value:.{digits}f}%"


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"
