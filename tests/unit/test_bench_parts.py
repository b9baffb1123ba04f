"""Pieces of the quality benchmark that can be checked without MNIST: metrics, shifts, figures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from agent.engine.manifest import NonconformitySpec, ResidualSpec
from agent.evaluation.metrics import fpr_at_95_tpr
from agent.evaluation.plots import credibility_histograms, reliability_diagram
from dknn_lab.bench.perturbations import EvalSet, blurred, gaussian_noise, inverted, through_resolution
from dknn_lab.bench.quality import (
    BackendQuality,
    BundleInfo,
    Labelled,
    QualityResult,
    SetMetrics,
    auroc,
    markdown,
    recall_per_layer,
    write_results,
)
from dknn_lab.bench.reports import table


def test_fpr_at_95_tpr_and_auroc() -> None:
    clean = np.linspace(0.0, 1.0, 101)  # 5% quantile = 0.05
    assert fpr_at_95_tpr(clean, np.array([0.0, 0.01, 0.04, 0.5])) == 0.25
    assert auroc(np.array([0.9, 0.8]), np.array([0.1, 0.2])) == 1.0
    assert auroc(np.array([0.1]), np.array([0.9])) == 0.0


def test_recall_per_layer_counts_shared_ids_per_layer() -> None:
    exact = np.array([[[1, 2, 3], [4, 5, 6]]])
    approx = np.array([[[3, 2, 9], [4, 5, 6]]])
    assert recall_per_layer(approx, exact) == [2 / 3, 1.0]


def test_shifts_keep_shape_and_range() -> None:
    clean = EvalSet("clean", np.random.default_rng(0).uniform(0, 1, (4, 1, 5, 5)).astype(np.float32), np.arange(4))
    flipped = inverted(clean)
    np.testing.assert_allclose(flipped.x + clean.x, 1.0, atol=1e-6)
    noise = gaussian_noise(10, (1, 5, 5), seed=0)
    assert noise.x.shape == (10, 1, 5, 5) and noise.x.min() >= 0 and noise.x.max() <= 1 and noise.y is None


def _rings(n: int = 3) -> EvalSet:
    """Sharp synthetic "zeros": a two-pixel ring, a different size in each image."""
    radius = np.hypot(*np.meshgrid(np.arange(28) - 13.5, np.arange(28) - 13.5))
    x = np.stack([((radius >= 5 + i) & (radius <= 7 + i)).astype(np.float32) for i in range(n)])[:, None]
    return EvalSet("rings", x, np.arange(n))


def _sharpness(x: np.ndarray) -> float:
    """Mean squared difference between horizontal neighbours: high for crisp edges (the absolute
    difference would not do: at a fixed peak it sums to twice the peak for any unimodal profile)."""
    return float((np.diff(x, axis=-1) ** 2).mean())


def test_blur_and_low_resolution_soften_strokes_but_keep_labels_ink_and_framing() -> None:
    clean = _rings()
    for softer in (blurred(clean, 1.0), through_resolution(clean, 8)):
        assert softer.x.shape == clean.x.shape and softer.x.dtype == np.float32
        np.testing.assert_array_equal(softer.y, clean.y)
        assert np.allclose(softer.x.max(axis=(-2, -1)), 1.0, atol=1e-5) and softer.x.min() >= 0.0
        # the ink spreads over more pixels with the same peak: per unit of ink, fewer crisp edges
        assert (softer.x > 0.05).sum() > (clean.x > 0.05).sum()
    assert blurred(clean, 1.5).name == "blur σ=1.5" and through_resolution(clean, 8).name == "through 8×8"
    assert _sharpness(blurred(clean, 1.5).x) < _sharpness(blurred(clean, 0.5).x) < _sharpness(clean.x)
    assert _sharpness(through_resolution(clean, 8).x) < _sharpness(through_resolution(clean, 16).x)


def test_figures_are_written_as_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    credibility = rng.uniform(0, 1, 200)
    reliability_diagram(credibility, rng.uniform(0, 1, 200) < credibility, tmp_path / "r.png", "t")
    credibility_histograms({"clean": credibility, "noise": credibility / 10}, tmp_path / "h.png", "t")
    for name in ("r.png", "h.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _quality(version: str, spec: NonconformitySpec, extended: bool = True) -> QualityResult:
    clean = SetMetrics(n=4, mean_credibility=0.5, labelled=Labelled(0.75, 1.0, mean_credibility_correct=None))
    body = BackendQuality(
        sets={"clean": clean, "noise": SetMetrics(n=4, mean_credibility=0.01, labelled=None)},
        auroc_credibility={"noise": 0.99},
        auroc_softmax={"noise": 0.6},
        auroc_credibility_model_wrong={},
        auroc_softmax_model_wrong={},
        validity={"0.05": 0.04, "0.1": 0.09, "0.2": 0.2},
        right_vs_wrong={},
    )
    bundle = BundleInfo("b", "m", version, 3, {"a": "none"}, 1, {"a": 6}, 5, spec)
    return QualityResult(bundle, 0.25, {"annoy": body}, recall_at_k=None, extended=extended, detectors=None)


def test_results_keep_a_dotted_version_in_their_file_names(tmp_path: Path) -> None:
    """A version like "…-T0.1-relu1" must not lose its tail to a file-suffix replacement."""
    write_results(_quality("seed0-snnl1-T0.1-relu1", NonconformitySpec()), tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "quality-m-seed0-snnl1-T0.1-relu1-extended.json",
        "quality-m-seed0-snnl1-T0.1-relu1-extended.md",
    ]


def test_quality_json_keeps_the_shape_readers_know(tmp_path: Path) -> None:
    """Typed results are written as the dicts were: a set without labels has no accuracy keys, a
    measured None stays null, what was not measured (recall@k with one backend) has no key at all."""
    spec = NonconformitySpec(
        kind="labels+distance", distance_weight=600, distance_reference_size=50, residual=ResidualSpec(layer="r")
    )
    result = _quality("v", spec, extended=False)
    write_results(result, tmp_path)
    assert result.stem == "quality-m-distance-w600-residual-r"
    document = json.loads((tmp_path / "quality-m-distance-w600-residual-r.json").read_text())
    assert list(document) == ["benchmark", "created_at", "bundle", "epsilon", "backends", "extended"]
    assert document["bundle"]["nonconformity"] == spec.model_dump(mode="json")
    sets = document["backends"]["annoy"]["sets"]
    assert sets["noise"] == {"n": 4, "mean_credibility": 0.01}
    assert sets["clean"] == {
        "n": 4,
        "mean_credibility": 0.5,
        "dknn_accuracy": 0.75,
        "model_accuracy": 1.0,
        "mean_credibility_correct": None,
    }
    text = markdown(result)
    assert "| annoy | noise | 4 | – | – | 0.010 | – | 0.990 | 0.600 | – | – |" in text
    assert "| annoy | 0.040 | 0.090 | 0.200 |" in text and "recall@" not in text


def test_tables_have_one_cell_per_header() -> None:
    assert table(["a", "b"], [[1, "x"]]) == ["| a | b |", "|---|---|", "| 1 | x |"]
    with pytest.raises(ValueError, match="2 headers"):
        table(["a", "b"], [[1]])
