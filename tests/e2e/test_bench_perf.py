"""`make bench-perf`: `dknn-agent bench perf` on the smoke bundle with few inputs. Rates are reported,
never asserted; what is asserted is that every part of the report was measured and saved."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.e2e.conftest import SMOKE_LAYERS, explain, run_cli

pytestmark = pytest.mark.slow


def test_bench_perf(mnist_bundle: Path, tmp_path: Path) -> None:
    result = run_cli(
        "bench",
        "perf",
        "--artifacts",
        mnist_bundle,
        "--count",
        "128",
        "--exact-count",
        "64",
        "--batch-size",
        "64",
        "--out",
        tmp_path,
        timeout=600,
    )
    assert result.returncode == 0, explain(result)
    saved = re.search(r"^saved (\S+\.json) and (\S+\.md)$", result.stdout, re.M)
    assert saved and Path(saved.group(1)).parent == tmp_path and Path(saved.group(2)).is_file(), explain(result)
    report = json.loads(Path(saved.group(1)).read_text())
    assert report["benchmark"] == "perf" and report["inputs"] == 128 and report["exact_inputs"] == 64
    assert set(report["rates"]) == {"plain forward pass", "scoring annoy", "scoring exact"}
    assert all(rate > 0 for rate in report["rates"].values())
    layers = SMOKE_LAYERS
    # the smoke bundle has the adopted residual term (relu2): timed alone, and inside conformal
    expected_stages = {"decode", "activations", "residual relu2", "conformal, residual included", "encode outputs"}
    expected_stages |= {f"{stage} {layer}" for stage in ("preprocess", "knn") for layer in layers}
    assert set(report["stages"]) == expected_stages
    quality = report["quality"]
    assert set(quality["auroc"]["annoy"]) == {"noise", "rotated", "fgsm"} == set(quality["auroc"]["exact"])
    assert set(quality["recall_at_k"]) == {"clean", "noise", "rotated", "fgsm"}
    assert all(0 <= recall <= 1 for per_layer in quality["recall_at_k"].values() for recall in per_layer.values())
    assert set(report["goals"]) == {
        "scoring / forward pass",
        "annoy / exact",
        "max AUROC gap",
        "accuracy gap (points)",
        "agent RSS (MiB)",
        "second agent adds / first RSS",
    }
    # two processes on one bundle share its memory-mapped files: the second's own pages are fewer than its RSS
    first, second = report["memory"]["first"], report["memory"]["second"]
    assert 0 < second["unique_mib"] < second["rss_mib"] and first["shared_mib"] > 0
    assert "| scoring annoy |" in result.stdout and "recall@k" in result.stdout, explain(result)
