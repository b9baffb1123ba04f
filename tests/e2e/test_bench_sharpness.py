"""`dknn-agent bench sharpness` on the smoke bundle: every set is measured for every bundle given
(the degradations themselves are checked in tests/unit/test_perturbations.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.e2e.conftest import explain, run_cli

pytestmark = pytest.mark.slow


def test_bench_sharpness(mnist_bundle: Path, tmp_path: Path) -> None:
    result = run_cli(
        "bench", "sharpness", "--artifacts", mnist_bundle, "--artifacts", mnist_bundle, "--count", "200",
        "--out", tmp_path, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, explain(result)
    saved = re.search(r"^saved (\S+\.json) and (\S+\.md)$", result.stdout, re.M)
    assert saved and Path(saved.group(1)).parent == tmp_path and Path(saved.group(2)).is_file(), explain(result)
    report = json.loads(Path(saved.group(1)).read_text())
    assert report["benchmark"] == "sharpness" and report["inputs"]["MNIST"] == 200
    assert report["inputs"]["sklearn_digits"] == 1797 and report["inputs"]["font_digits"] == 2100
    (model,) = report["model_accuracy_percent"]  # the same bundle twice is one model
    accuracy = report["model_accuracy_percent"][model]
    assert set(accuracy) == set(report["inputs"])
    assert accuracy["MNIST"] > 30 and all(0 <= value <= 100 for value in accuracy.values())
    assert "--artifacts" in report["command"] and "bench sharpness" in report["command"]


def test_bench_sharpness_needs_a_positive_count(mnist_bundle: Path, tmp_path: Path) -> None:
    result = run_cli("bench", "sharpness", "--artifacts", mnist_bundle, "--count", "0", "--out", tmp_path)
    assert result.returncode == 3 and "--count" in result.stderr, explain(result)
