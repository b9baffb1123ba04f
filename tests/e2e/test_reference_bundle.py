"""The MNIST reference model's commands, as the README shows them, on a small budget.

`train-reference mnist --epochs 1 --train-size 1000 --snnl-weight 0` (the fixture `mnist_smoke`), then `info`,
`score` with both neighbour backends, the offline `demo` table (`make demo-table`) and `bench
quality` (`make bench-quality`) on that bundle. A one-epoch model on 1,000 digits is weak, so the
assertions are about what every command must produce, not about the README's numbers.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest

from tests.e2e.conftest import SMOKE_LAYERS, SMOKE_VERSION, Digits, SmokeBundle, explain, run_cli

pytestmark = pytest.mark.slow

LAYERS = SMOKE_LAYERS


def test_train_reference_writes_a_bundle(mnist_smoke: SmokeBundle) -> None:
    result, path = mnist_smoke.result, mnist_smoke.path
    assert result.stdout.strip() == f"wrote {path} (mnist-cnn {SMOKE_VERSION}, layers {', '.join(LAYERS)})", explain(
        result
    )
    assert "Traceback" not in result.stderr, explain(result)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["model"]["name"] == "mnist-cnn" and manifest["model"]["version"] == SMOKE_VERSION
    # the model travels as a serialized program: serving it trusts no Python module
    assert manifest["model"]["program"] == "model.pt2" and manifest["model"]["factory"] is None
    assert [layer["name"] for layer in manifest["layers"]] == LAYERS
    assert manifest["k"] == 75 and manifest["train"]["size"] == 1000 and manifest["calibration"]["size"] == 750
    assert manifest["nonconformity"]["residual"]["layer"] == "relu2"  # the adopted residual term
    files = ["model.pt2", "train_labels.npy", "calibration.npz", "residual/relu2.npz"]
    for name in [*files, *(f"layers/{layer}.ann" for layer in LAYERS)]:
        assert (path / name).is_file(), name


def test_the_bundle_keeps_the_indexed_digits_as_thumbnails(mnist_bundle: Path) -> None:
    """train-reference keeps thumbnails by default, row i the digit the indexes hold as item i: here the
    --train-size subset's, in its order, the MNIST pixels themselves (28x28 needs no downsampling)."""
    from agent.engine.bundle import verify_bundle
    from dknn_lab.datasets import load_mnist

    bundle = verify_bundle(mnist_bundle)
    bundle.close()
    assert bundle.exemplars is not None and bundle.exemplars.kind == "thumbnails"
    rows = np.sort(np.random.default_rng(0).choice(60_000, 1000, replace=False))  # train_reference_mnist's draw
    pixels = np.rint(load_mnist().x_train[rows] * 255).astype(np.uint8)
    np.testing.assert_array_equal(bundle.exemplars.rows(np.arange(1000))["x"], pixels)


def test_info_verifies_and_describes_the_bundle(mnist_bundle: Path) -> None:
    result = run_cli("info", mnist_bundle, timeout=120)
    assert result.returncode == 0, explain(result)
    lines = result.stdout.splitlines()
    assert re.fullmatch(rf"bundle     {re.escape(str(mnist_bundle))} \(verified: \d+ files\)", lines[0]), explain(
        result
    )
    digest = "sha256:" + hashlib.sha256((mnist_bundle / "manifest.json").read_bytes()).hexdigest()
    assert lines[1].startswith(f"digest     {digest}")  # what --bundle-digest / DKNN_BUNDLE_DIGEST pin
    assert lines[2] == f"model      mnist-cnn {SMOKE_VERSION} from the serialized program model.pt2, 10 classes"
    assert lines[3] == "trust      none needed: the program is read as data; forward pass in float32"
    assert "input      x: float32 [1, 28, 28] range (0.0, 1.0)" in result.stdout  # named as in forward()
    assert "neighbours k=75, annoy n_trees=10 per layer" in result.stdout
    assert "train      1000 points" in result.stdout and "calibrate  750 points" in result.stdout
    assert "residual   + up to 600 for a relu2 activation further off its 64 principal directions" in result.stdout
    assert "exemplars  thumbnails of the 1000 training rows: x uint8 [1, 28, 28], 0.8 MB" in result.stdout
    layer_lines = [line.split() for line in lines if line.startswith("layer ")]
    assert [fields[1] for fields in layer_lines] == LAYERS, explain(result)
    assert layer_lines[0][2:6] == ["128", "->", "32", "l2+pca:32"], explain(result)
    # each layer's search_k was chosen at fit time, with the recall it measured
    assert all(re.fullmatch(r"search_k=\d+", fields[6]) for fields in layer_lines), explain(result)
    assert all(fields[7] == "recall@k" for fields in layer_lines), explain(result)

    as_json = run_cli("info", mnist_bundle, "--json", timeout=120)
    assert as_json.returncode == 0, explain(as_json)
    manifest = json.loads(as_json.stdout)
    assert manifest == json.loads((mnist_bundle / "manifest.json").read_text())


@pytest.fixture(scope="module")
def digits_npy(mnist_digits: Digits, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("score") / "x.npy"
    np.save(path, mnist_digits.x[:40].astype(np.float32))
    return path


def read_scores(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def test_score_with_both_backends(mnist_bundle: Path, mnist_digits: Digits, digits_npy: Path, tmp_path: Path) -> None:
    out = tmp_path / "scores" / "annoy.jsonl"
    annoy = run_cli("score", "--artifacts", mnist_bundle, "--input", digits_npy, "--output", out, timeout=180)
    assert annoy.returncode == 0, explain(annoy)
    assert annoy.stderr.strip().endswith(f"scored 40 inputs -> {out}"), explain(annoy)
    assert not out.with_name("annoy.jsonl.partial").exists()
    exact = run_cli("score", "--artifacts", mnist_bundle, "--input", digits_npy, "--index", "exact", timeout=180)
    assert exact.returncode == 0, explain(exact)

    by_backend = {"annoy": read_scores(out.read_text()), "exact": read_scores(exact.stdout)}
    for records in by_backend.values():
        assert [r["index"] for r in records] == list(range(40))
        for r in records:
            assert set(r) == {"index", "prediction", "credibility", "confidence", "model_prediction", "p_values"}
            assert len(r["p_values"]) == 10 and r["credibility"] == max(r["p_values"])
            # the prediction is argmin α, which is an argmax of p; p may tie where α does not (design §2.3)
            assert r["p_values"][r["prediction"]] == max(r["p_values"]) and 0.0 <= r["confidence"] <= 1.0
        accuracy = np.mean([r["prediction"] == y for r, y in zip(records, mnist_digits.y[:40], strict=True)])
        assert accuracy >= 0.5, f"DkNN accuracy {accuracy:.2f} on clean digits"  # a one-epoch model; chance is 0.1
    # Same model, same bundle: the model's own predictions cannot depend on the neighbour backend.
    assert [r["model_prediction"] for r in by_backend["annoy"]] == [r["model_prediction"] for r in by_backend["exact"]]
    agree = np.mean([a["prediction"] == e["prediction"] for a, e in zip(*by_backend.values(), strict=True)])
    assert agree >= 0.8, f"annoy and exact agree on {agree:.0%} of predictions"


def test_score_rejects_a_flattened_batch_with_one_line(mnist_bundle: Path, tmp_path: Path) -> None:
    np.save(tmp_path / "flat.npy", np.zeros((3, 784), np.float32))
    result = run_cli("score", "--artifacts", mnist_bundle, "--input", tmp_path / "flat.npy", timeout=120)
    assert result.returncode == 3 and "Traceback" not in result.stderr, explain(result)
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and "shape" in result.stderr, explain(result)


def test_demo_table(mnist_bundle: Path) -> None:
    """`make demo-table`: one row per kind of input, in the README's layout."""
    result = run_cli("demo", "--artifacts", mnist_bundle, "--count", "50", timeout=300)
    assert result.returncode == 0, explain(result)
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"bundle {mnist_bundle}: mnist-cnn {SMOKE_VERSION}, k=75"), explain(result)
    header = next(i for i, line in enumerate(lines) if line.startswith("set"))
    assert lines[header].split() == ["set", "n", "model", "acc", "DkNN", "acc", "mean", "cred", "quarantined"]
    rows = [line.split() for line in lines[header + 1 : header + 5]]
    assert [row[0] for row in rows] == ["clean", "noise", "rotated", "fgsm"], explain(result)
    for row in rows:
        assert len(row) == 6 and row[1] == "50", row
        assert 0.0 <= float(row[4]) <= 1.0 and 0.0 <= float(row[5].rstrip("%")) <= 100.0, row
    assert rows[1][2:4] == ["–", "–"]  # noise has no labels
    for row in (rows[0], rows[2], rows[3]):
        assert all(re.fullmatch(r"\d+\.\d%", cell) for cell in row[2:4]), row
    assert "quarantined = credibility < 0.1" in result.stdout


def test_bench_quality(mnist_bundle: Path, tmp_path: Path) -> None:
    """`make bench-quality` without --extended (BIM / PGD and the baselines take a minute more)."""
    result = run_cli("bench", "quality", "--artifacts", mnist_bundle, "--out", tmp_path, "--limit", "100", timeout=400)
    assert result.returncode == 0, explain(result)
    assert f"# Quality: mnist-cnn {SMOKE_VERSION}" in result.stdout
    for backend in ("annoy", "exact"):
        for name in ("clean", "noise", "rotated", "fgsm"):
            assert re.search(rf"^\| {backend} \| {name} \| 100 \|", result.stdout, re.M), (backend, name)
    saved = re.search(r"^saved (\S+\.json) and (\S+\.md)$", result.stdout, re.M)
    assert saved, explain(result)
    report = json.loads(Path(saved.group(1)).read_text())
    assert Path(saved.group(1)).parent == tmp_path and Path(saved.group(2)).is_file()
    assert {"backends", "recall_at_k"} <= set(report)
