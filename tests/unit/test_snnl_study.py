"""The SNNL study's comparison and report, on made-up per-seed results (no training needed)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from agent.errors import ConfigError
from dknn_lab.bench import snnl_study
from dknn_lab.bench.quality import QualityOptions, run_quality
from dknn_lab.bench.reports import to_json
from dknn_lab.bench.snnl_study import (
    ADOPTED_FIT,
    PAPER_FIT,
    CovariateSummary,
    RunSummary,
    SetSummary,
    StudyOptions,
    StudyResult,
    compare,
    condition_fit,
    condition_options,
    markdown,
)
from dknn_lab.reference import REFERENCE_TRAINING, reference_version
from dknn_lab.training import TrainOptions


def run(auroc: float, accuracy: float) -> RunSummary:
    return RunSummary(
        model_accuracy=accuracy,
        dknn_accuracy=accuracy - 0.001,
        mean_credibility_correct=0.6,
        validity={"0.05": 0.04, "0.1": 0.09, "0.2": 0.19},
        sets={
            "fgsm": SetSummary(
                auroc_credibility=auroc,
                fpr95_credibility=1 - auroc,
                tpr1_credibility=auroc / 2,
                auroc_softmax=0.9,
                auroc_deep_knn=0.95,
                mean_credibility=0.1,
                model_accuracy=0.2,
            )
        },
        covariate={
            "sklearn_digits": CovariateSummary(
                model_accuracy=0.94,
                dknn_accuracy=accuracy - 0.05,
                right_vs_wrong_credibility=auroc - 0.05,
                right_vs_wrong_softmax=0.9,
            )
        },
        bundle_version="v",
        snnl={"relu1": 0.5, "relu2": 0.4},
    )


def test_compare_pairs_seeds_and_counts_wins() -> None:
    runs = {
        "baseline": {"0": run(0.90, 0.99), "1": run(0.92, 0.99)},
        "snnl": {"0": run(0.95, 0.98), "1": run(0.91, 0.985)},
    }
    comparison = compare(runs, (0, 1))
    fgsm = comparison.sets["fgsm"]
    assert fgsm.auroc_credibility.difference == pytest.approx(((0.95 - 0.90) + (0.91 - 0.92)) / 2)
    assert fgsm.auroc_credibility.snnl_better_seeds == 1
    assert fgsm.fpr95_credibility.snnl_better_seeds == 1  # lower FPR is better
    assert comparison.model_accuracy.snnl_better_seeds == 0
    assert comparison.model_accuracy.baseline_sd == pytest.approx(0.0)
    training = TrainOptions(shift_px=2, snnl_weight=1.0, snnl_layers=("relu1", "relu2"), snnl_distance="cosine")
    training = replace(training, snnl_temperature=0.1)
    result = StudyResult(adopted=False, seeds=(0, 1), limit=500, training=training, runs=runs, comparison=comparison)
    text = markdown(result)
    assert "| fgsm | AUROC credibility | 0.910 ± 0.014 | 0.930 ± 0.028 | +0.020 | 1/2 |" in text
    assert "| SNNL | 1 | 0.040 | 0.090 | 0.190 | 0.500 | 0.400 |" in text
    assert "| sklearn_digits | right vs wrong: credibility | 0.860 ± 0.014 | 0.880 ± 0.028 | +0.020 | 1/2 |" in text
    assert "| fgsm | TPR@1%FPR credibility | 0.455 ± 0.007 | 0.465 ± 0.014 | +0.010 | 1/2 |" in text
    adopted = markdown(replace(result, adopted=True, training=replace(result.training, blur_sigma=1.5)))
    assert adopted.startswith("# The adopted reference configuration") and "| metric | previous | adopted |" in adopted
    document = to_json(result)  # what docs/results/*-study.json hold
    assert list(document) == ["benchmark", "adopted", "created_at", "seeds", "limit", "training", "runs", "comparison"]
    assert "seed" not in document["training"] and document["training"]["snnl_layers"] == ["relu1", "relu2"]
    assert document["runs"]["snnl"]["1"]["sets"]["fgsm"]["auroc_credibility"] == 0.91
    assert document["comparison"]["sets"]["fgsm"]["auroc_credibility"]["snnl_better_seeds"] == 1


def test_conditions_differ_only_in_the_snnl_weight() -> None:
    options = StudyOptions()
    baseline, snnl = condition_options(options, "baseline", 4), condition_options(options, "snnl", 4)
    assert baseline.snnl_weight == 0 and snnl.snnl_weight == options.training.snnl_weight
    assert {**baseline.__dict__, "snnl_weight": None} == {**snnl.__dict__, "snnl_weight": None}
    assert baseline.seed == snnl.seed == 4
    assert condition_fit(options, "baseline") == condition_fit(options, "snnl") == PAPER_FIT


def test_the_adopted_study_compares_against_the_previous_reference() -> None:
    options = StudyOptions(training=REFERENCE_TRAINING, adopted=True)
    baseline, adopted = condition_options(options, "baseline", 1), condition_options(options, "snnl", 1)
    assert baseline.snnl_weight == 0 and baseline.blur_sigma == 0  # the plain model, as the previous reference
    assert adopted == REFERENCE_TRAINING.__class__(**{**REFERENCE_TRAINING.__dict__, "seed": 1})
    assert condition_fit(options, "baseline") == PAPER_FIT and condition_fit(options, "snnl") == ADOPTED_FIT


def test_quality_rejects_unknown_backends(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="backends"):
        run_quality(QualityOptions(artifacts=tmp_path, backends=("faiss",)))


@pytest.fixture()
def calls(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """What ensure_bundle asked train_reference_mnist to do, without training anything."""
    seen: list[dict] = []
    monkeypatch.setattr(snnl_study, "train_reference_mnist", lambda path, **kwargs: seen.append(kwargs))
    return seen


def _cached(tiny_bundle: Path, tmp_path: Path, version: str, nonconformity: dict, layers: list[str]) -> Path:
    """A bundle directory whose manifest says it holds `version` fitted over `layers` that way."""
    document = json.loads((tiny_bundle / "manifest.json").read_text())
    document["model"]["version"] = version
    document["nonconformity"] = nonconformity
    document["layers"] = [{**document["layers"][0], "name": name} for name in layers]
    (tmp_path / "cached").mkdir()
    (tmp_path / "cached" / "manifest.json").write_text(json.dumps(document))
    return tmp_path / "cached"


def test_a_cached_model_fitted_another_way_is_refitted_not_retrained(
    tiny_bundle: Path, tmp_path: Path, calls: list[dict]
) -> None:
    training = REFERENCE_TRAINING
    paper_fitted = _cached(
        tiny_bundle, tmp_path, reference_version(training), {"kind": "labels"}, list(PAPER_FIT.layers)
    )
    options = StudyOptions(training=training, adopted=True)
    snnl_study.ensure_bundle(paper_fitted, training, ADOPTED_FIT, options, mnist=None)  # type: ignore[arg-type]
    assert calls[-1]["refit"] == paper_fitted and calls[-1]["fit_options"] == ADOPTED_FIT.options


def test_a_cached_bundle_of_exactly_this_fit_is_reused_and_another_model_retrained(
    tiny_bundle: Path, tmp_path: Path, calls: list[dict]
) -> None:
    training = REFERENCE_TRAINING
    spec = ADOPTED_FIT.options.nonconformity.model_dump(mode="json")
    cached = _cached(tiny_bundle, tmp_path, reference_version(training), spec, list(ADOPTED_FIT.layers))
    options = StudyOptions(training=training, adopted=True)
    snnl_study.ensure_bundle(cached, training, ADOPTED_FIT, options, mnist=None)  # type: ignore[arg-type]
    assert calls == []
    other_seed = replace(training, seed=7)
    snnl_study.ensure_bundle(cached, other_seed, ADOPTED_FIT, options, mnist=None)  # type: ignore[arg-type]
    assert calls[-1]["refit"] is None and calls[-1]["train_options"] == other_seed
