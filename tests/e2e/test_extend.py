"""`dknn-agent extend` and `dknn-agent bench extend` on the MNIST smoke bundle, as a user runs them: rotated
digits reviewed in a JSONL file, the new bundle written, verified and compared with the old one. (The
mechanics, bounds and provenance are in tests/unit/test_extend.py on the tiny bundle; the smoke bundle
keeps thumbnails, so here the exemplars gain the reviewed digits as thumbnails too.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import orjson
import pytest

from agent.engine.bundle import verify_bundle
from agent.engine.dknn import DkNN
from agent.runtime.events import encode_event
from agent.runtime.wire.review import review_record
from tests.e2e.conftest import explain, run_cli

pytestmark = pytest.mark.slow


def mnist_files(bundle: Path, work: Path) -> dict[str, Path]:
    """The smoke bundle's calibration set, 300 clean evaluation digits and 40 rotated ones reviewed with
    their true labels (and one out of scope, and two malformed lines), as files."""
    from dknn_lab.datasets import load_mnist

    mnist = load_mnist()
    manifest = json.loads((bundle / "manifest.json").read_text())
    calibration = np.asarray(manifest["calibration"]["source_indices"])
    evaluation = np.setdiff1d(np.arange(len(mnist.x_test)), calibration)
    files = {"calibration": work / "calibration.npz", "clean": work / "clean.npz", "reviews": work / "reviews.jsonl"}
    np.savez(files["calibration"], x=mnist.x_test[calibration], y=mnist.y_test[calibration])
    np.savez(files["clean"], x=mnist.x_test[evaluation[:300]], y=mnist.y_test[evaluation[:300]])
    rows = evaluation[300:341]
    x = np.ascontiguousarray(np.rot90(mnist.x_test[rows], k=1, axes=(-2, -1)))
    scores = DkNN.from_bundle(bundle).score(x)
    lines = []
    for i, row in enumerate(rows):
        answer, truth = int(scores.model_prediction[i]), int(mnist.y_test[row])
        event = orjson.loads(encode_event(f"rotated-{row}", x[i], "mnist-cnn", manifest["model"]["version"]))
        quarantine = {"event": event, "dknn": {"prediction": int(scores.prediction[i]), "model_prediction": answer}}
        verdict = "out_of_scope" if i == 40 else "model_right" if answer == truth else "model_wrong"
        label = truth if verdict == "model_wrong" else None
        lines.append(review_record(quarantine, verdict=verdict, label=label, reviewer="e2e", model_name="mnist-cnn",
                                   model_version=manifest["model"]["version"]))  # fmt: skip
    files["reviews"].write_bytes(b"\n".join([*lines, b"{", b'{"schema": "dknn.review.v1"}']) + b"\n")
    return files


def test_extend_writes_a_new_version_and_compares_it(mnist_bundle: Path, tmp_path: Path) -> None:
    files = mnist_files(mnist_bundle, tmp_path)
    result = run_cli(
        "extend", "--artifacts", mnist_bundle, "--reviews", files["reviews"], "--calibration", files["calibration"],
        "--clean", files["clean"], "--out", tmp_path / "b2", "--report", tmp_path / "report", "--quiet", timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, explain(result)
    assert "| quarantined at τ = 0.1 |" in result.stdout and "skipped: 1 bad\\_json, 1 schema" in result.stdout
    report = json.loads((tmp_path / "report" / "b2-extend.json").read_text())
    assert report["reviews"]["points"] == 40 and report["reviews"]["out_of_scope"] == 1
    assert report["after"]["train_size"] == report["before"]["train_size"] + 40
    clean = report["sets"]["clean"]
    assert clean["before"]["model_accuracy"] == clean["after"]["model_accuracy"]  # the model is the same
    assert all(0 <= clean["after"]["validity"][tau] <= 0.4 for tau in ("0.05", "0.1", "0.2"))
    assert (tmp_path / "report" / "b2-extend-out-of-scope.npz").is_file()
    info = run_cli("info", tmp_path / "b2")
    assert info.returncode == 0 and "reviews" in info.stdout and "+reviews.40" in info.stdout, explain(info)
    bundle = verify_bundle(tmp_path / "b2")  # train-reference keeps thumbnails: the reviewed digits are rows too
    assert bundle.exemplars is not None and bundle.exemplars.kind == "thumbnails"
    (last,) = bundle.exemplars.rows([report["after"]["train_size"] - 1])["x"]
    assert last.dtype == np.uint8 and last.shape == (1, 28, 28) and last.max() > 0
    bundle.close()


def test_extend_refuses_reviews_it_cannot_use(mnist_bundle: Path, tmp_path: Path) -> None:
    files = mnist_files(mnist_bundle, tmp_path)
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"schema": "dknn.review.v1"}\n[]\n')
    result = run_cli(
        "extend", "--artifacts", mnist_bundle, "--reviews", bad, "--calibration", files["calibration"],
        "--clean", files["clean"], "--out", tmp_path / "b2", "--quiet",
    )  # fmt: skip
    assert result.returncode == 3 and "no usable review to add" in result.stderr, explain(result)
    assert "Traceback" not in result.stderr and not (tmp_path / "b2").exists()
    wrong = run_cli(
        "extend", "--artifacts", mnist_bundle, "--reviews", files["reviews"], "--calibration", files["clean"],
        "--clean", files["clean"], "--out", tmp_path / "b2", "--quiet",
    )  # fmt: skip
    assert wrong.returncode == 3 and "--calibration has 300 inputs" in wrong.stderr, explain(wrong)


def test_bench_extend(mnist_bundle: Path, tmp_path: Path) -> None:
    result = run_cli(
        "bench", "extend", "--artifacts", mnist_bundle, "--reviews", "40", "--held-out", "200", "--clean", "300",
        "--out", tmp_path, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, explain(result)
    report = json.loads((tmp_path / "extend-mnist-cnn.json").read_text())
    assert report["benchmark"] == "extend" and report["reviews"]["offered"] == 40
    assert report["after"]["indexed_points"] == report["before"]["indexed_points"] + 40
    assert report["before"]["clean_model_accuracy"] == report["after"]["clean_model_accuracy"]
    assert set(report["after"]["clean_validity"]) == {"0.05", "0.1", "0.2"}
    assert "turned digits held out: quarantined at τ" in result.stdout and "(false alarms)" in result.stdout
