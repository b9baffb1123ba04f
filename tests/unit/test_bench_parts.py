"""Pieces of the quality benchmark that can be checked without MNIST: metrics, shifts, figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from agent.research.bench.detectors import fpr_at_95_tpr
from agent.research.bench.perturbations import EvalSet, gaussian_noise, inverted
from agent.research.bench.plots import credibility_histograms, reliability_diagram
from agent.research.bench.quality import auroc, recall_per_layer, write_results


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


def test_figures_are_written_as_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    credibility = rng.uniform(0, 1, 200)
    reliability_diagram(credibility, rng.uniform(0, 1, 200) < credibility, tmp_path / "r.png", "t")
    credibility_histograms({"clean": credibility, "noise": credibility / 10}, tmp_path / "h.png", "t")
    for name in ("r.png", "h.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_results_keep_a_dotted_version_in_their_file_names(tmp_path: Path) -> None:
    """A version like "…-T0.1-relu1" must not lose its tail to a file-suffix replacement."""
    result = {
        "bundle": {
            "model": "m",
            "version": "seed0-snnl1-T0.1-relu1",
            "k": 3,
            "layers": {"a": "none"},
            "n_trees": 1,
            "search_k": -1,
            "calibration_size": 5,
        },
        "epsilon": 0.25,
        "extended": True,
        "backends": {},
    }
    write_results(result, tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "quality-m-seed0-snnl1-T0.1-relu1-extended.json",
        "quality-m-seed0-snnl1-T0.1-relu1-extended.md",
    ]
