"""`fit`, `score` and `info` on the tiny problem, as a user runs them: a real subprocess, exit codes, one-line
errors. The bundle names its model by a factory, so opening it is a trust decision the user makes with
--trust-factory (bundles carrying a serialized program need none). (`--help` of every command is in
test_help.py.)"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import TinyProblem
from tests.e2e.conftest import explain, run_cli

TRUST = ("--trust-factory", "dknn_lab.models")


def assert_one_line_error(result: subprocess.CompletedProcess, fragment: str) -> None:
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], result.stderr


@pytest.fixture(scope="module")
def cli_bundle(tiny_problem: TinyProblem, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle made by `dknn-agent fit` from .npz files, as a user would."""
    work = tmp_path_factory.mktemp("cli")
    np.savez(work / "train.npz", x=tiny_problem.train.x, y=tiny_problem.train.y)
    np.savez(work / "cal.npz", x=tiny_problem.calibration.x, y=tiny_problem.calibration.y)
    result = run_cli(
        "fit",
        "--factory",
        "dknn_lab.models.tiny:build_model",
        "--weights",
        tiny_problem.weights,
        "--layers",
        "relu1,relu2=l2,logits",
        "--train",
        work / "train.npz",
        "--calibration",
        work / "cal.npz",
        "--out",
        work / "bundle",
        "--k",
        "10",
        "--n-trees",
        "10",
        "--quiet",
        "--model-name",
        "tiny",
    )
    assert result.returncode == 0, explain(result)
    return work / "bundle"


def test_score_writes_one_record_per_input(cli_bundle: Path, tiny_problem: TinyProblem, tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", tiny_problem.test.x)
    out = tmp_path / "scores.jsonl"
    result = run_cli(
        "score", "--artifacts", cli_bundle, "--input", tmp_path / "x.npy", "--output", out, "--batch-size", "7", *TRUST
    )
    assert result.returncode == 0, explain(result)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["index"] for r in records] == list(range(100))
    assert set(records[0]) == {"index", "prediction", "credibility", "confidence", "model_prediction", "p_values"}
    assert all(len(r["p_values"]) == 3 and r["credibility"] == max(r["p_values"]) for r in records)
    accuracy = np.mean([r["prediction"] == y for r, y in zip(records, tiny_problem.test.y, strict=True)])
    assert accuracy >= 0.95


def test_score_to_stdout_with_exact_index_agrees(cli_bundle: Path, tiny_problem: TinyProblem, tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", tiny_problem.test.x[:20])
    result = run_cli("score", "--artifacts", cli_bundle, "--input", tmp_path / "x.npy", "--index", "exact", *TRUST)
    assert result.returncode == 0, explain(result)
    predictions = [json.loads(line)["prediction"] for line in result.stdout.splitlines()]
    assert np.mean(np.array(predictions) == tiny_problem.test.y[:20]) >= 0.95


@pytest.mark.parametrize(
    ("array", "fragment"),
    [
        (np.zeros((4, 8), np.float64), "input dtype float64, expected float32"),
        (np.zeros((4, 9), np.float32), "input shape (4, 9), expected ('N', 8)"),
        (np.full((4, 8), np.inf, np.float32), "NaN or infinity"),
    ],
)
def test_bad_input_arrays_exit_3_with_one_line(
    cli_bundle: Path, tmp_path: Path, array: np.ndarray, fragment: str
) -> None:
    np.save(tmp_path / "bad.npy", array)
    assert_one_line_error(
        run_cli("score", "--artifacts", cli_bundle, "--input", tmp_path / "bad.npy", *TRUST), fragment
    )


def test_unreadable_and_missing_files_exit_3(cli_bundle: Path, tmp_path: Path) -> None:
    (tmp_path / "junk.npy").write_bytes(b"not numpy at all")
    assert_one_line_error(run_cli("score", "--artifacts", cli_bundle, "--input", tmp_path / "junk.npy"), "junk.npy")
    assert_one_line_error(run_cli("score", "--artifacts", cli_bundle, "--input", tmp_path / "none.npy"), "no such file")
    np.save(tmp_path / "x.npy", np.zeros((1, 8), np.float32))
    assert_one_line_error(
        run_cli("score", "--artifacts", tmp_path / "nobundle", "--input", tmp_path / "x.npy"), "does not exist"
    )


def test_corrupted_bundle_exits_3_naming_the_file(cli_bundle: Path, tmp_path: Path) -> None:
    import shutil

    root = Path(shutil.copytree(cli_bundle, tmp_path / "b"))
    (root / "train_labels.npy").write_bytes(b"\x93NUMPY garbage")
    np.save(tmp_path / "x.npy", np.zeros((1, 8), np.float32))
    assert_one_line_error(
        run_cli("score", "--artifacts", root, "--input", tmp_path / "x.npy", *TRUST), "train_labels.npy"
    )
    assert_one_line_error(run_cli("info", root), "train_labels.npy: sha256 mismatch")


def test_info_describes_a_verified_bundle(cli_bundle: Path) -> None:
    result = run_cli("info", cli_bundle)
    assert result.returncode == 0, explain(result)
    assert "verified" in result.stdout and "relu2" in result.stdout and "l2" in result.stdout
    manifest = json.loads(run_cli("info", cli_bundle, "--json").stdout)
    assert manifest["k"] == 10 and manifest["model"]["name"] == "tiny"


def test_fit_option_errors_exit_3(tiny_problem: TinyProblem, tmp_path: Path) -> None:
    np.savez(tmp_path / "f64.npz", x=tiny_problem.train.x.astype(np.float64), y=tiny_problem.train.y)
    np.savez(tmp_path / "ok.npz", x=tiny_problem.train.x, y=tiny_problem.train.y)
    common = [
        "--weights",
        tiny_problem.weights,
        "--calibration",
        tmp_path / "ok.npz",
        "--out",
        tmp_path / "b",
        "--quiet",
        "--train",
    ]
    tiny = ["--factory", "dknn_lab.models.tiny:build_model"]
    assert_one_line_error(
        run_cli("fit", *tiny, "--layers", "relu1", *common, tmp_path / "f64.npz"),
        "training float64[8] and calibration float32[8] differ",
    )
    assert_one_line_error(run_cli("fit", *tiny, "--layers", "conv9", *common, tmp_path / "ok.npz"), "no layer 'conv9'")
    assert_one_line_error(
        run_cli("fit", *tiny, "--layers", "relu1=pca", *common, tmp_path / "ok.npz"), "bad preprocessing step"
    )
    assert_one_line_error(
        run_cli("fit", "--factory", "dknn_lab.models.nope:build", "--layers", "relu1", *common, tmp_path / "ok.npz"),
        "cannot import",
    )
