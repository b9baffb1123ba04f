"""Three model families beyond the MNIST CNN, each onboarded through the public CLI alone, from a
serialized program and with no code inside the project (examples/<family>/train.py is the team's own
script: plain torch):

- a tabular MLP on scikit-learn's digits (64 features): fit's defaults separate uniform noise;
- a small ResNet whose blocks call one `relu` twice: both call sites listed and tapped;
- a GRU over token ids with two named int64 inputs and a dict output: the GRU's tuple output
  tapped by part, the logits named by `--output logits`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import Example
from tests.e2e.conftest import explain, run_cli


def evaluate(example: Example, out: Path, *ood: str, extra: tuple[str, ...] = ()) -> dict:
    """`evaluate` on the example's test split and the OOD files named (their stems name the sets)."""
    sets = [option for file in ood for option in ("--ood", f"{Path(file).stem}={example.work / 'ood' / file}")]
    result = run_cli(
        "evaluate", "--artifacts", example.bundle, "--clean", example.work / "test.npz", *sets,
        "--out", out, "--quiet", "--bootstrap", "200", *extra, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, explain(result)
    (report,) = out.glob("evaluation-*.json")
    assert (out / report.name.replace(".json", ".md")).is_file()
    return json.loads(report.read_text())


def test_the_tabular_models_default_bundle_flags_uniform_noise(tabular_example: Example, tmp_path: Path) -> None:
    listed = run_cli("layers", tabular_example.work / "model.pt2")
    assert listed.returncode == 0, explain(listed)
    assert "recommended l2+pca:32" in listed.stdout and "residual" in listed.stdout, explain(listed)
    report = evaluate(tabular_example, tmp_path / "report", "noise.npy", "unseen-digits.npy")
    annoy = report["backends"]["annoy"]
    assert annoy["noise"]["separation"]["credibility"]["auroc"] >= 0.99  # issue #22's bar, fit's defaults
    assert annoy["clean"]["dknn_accuracy"] >= 0.95
    assert all(abs(annoy["clean"]["validity"][tau] - float(tau)) <= 0.06 for tau in annoy["clean"]["validity"])
    assert set(report["speed"]) == {"annoy", "exact"} and report["speed"]["annoy"]["inputs_per_s_per_core"] > 0
    scored = run_cli(
        "score", "--artifacts", tabular_example.bundle, "--input", tabular_example.work / "test.npz",
        "--output", tmp_path / "scores.jsonl",
    )  # fmt: skip
    assert scored.returncode == 0, explain(scored)
    assert len((tmp_path / "scores.jsonl").read_text().splitlines()) == report["sets"]["clean"]["n"]


def test_a_module_called_twice_is_tapped_at_both_call_sites(resnet_example: Example, tmp_path: Path) -> None:
    listed = run_cli("layers", resnet_example.work / "model.pt2")
    assert listed.returncode == 0, explain(listed)
    names = [line.split()[0] for line in listed.stdout.splitlines()[1:] if line.strip() and not line[0].isdigit()]
    assert {"layer2.1.relu", "layer2.1.relu#1", "avgpool", "fc"} <= set(names), explain(listed)
    layers = "layer2.1.relu=pca:16,layer2.1.relu#1=pca:16,avgpool=l2,fc"
    bundle = tmp_path / "both-calls"
    fitted = run_cli(
        "fit", "--model", resnet_example.work / "model.pt2", "--layers", layers,
        "--train", resnet_example.work / "train.npz", "--calibration", resnet_example.work / "calibration.npz",
        "--out", bundle, "--model-name", "resnet", "--quiet", timeout=600,
    )  # fmt: skip
    assert fitted.returncode == 0, explain(fitted)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert [layer["name"] for layer in manifest["layers"]] == ["layer2.1.relu", "layer2.1.relu#1", "avgpool", "fc"]
    first, second = manifest["layers"][:2]
    assert first["index_file"] != second["index_file"]
    assert manifest["files"][first["index_file"]] != manifest["files"][second["index_file"]]  # different values
    report = evaluate(
        resnet_example, tmp_path / "report", "noise.npy", "rotated.npy", "photos.npy", extra=("--index", "annoy")
    )
    annoy = report["backends"]["annoy"]
    assert annoy["clean"]["model_accuracy"] >= 0.8  # two quick epochs
    assert annoy["noise"]["separation"]["credibility"]["auroc"] >= 0.9


def test_token_ids_in_two_named_inputs_and_a_dict_output(text_example: Example, tmp_path: Path) -> None:
    listed = run_cli("layers", text_example.work / "model.pt2", "--output", "logits")
    assert listed.returncode == 0, explain(listed)
    rows = {line.split()[0]: line for line in listed.stdout.splitlines()[1:] if line.strip()}
    assert "gru[0]" in rows and "residual" in rows["gru[0]"], explain(listed)  # a part of the GRU's tuple
    info = run_cli("info", text_example.bundle)
    assert "input      input_ids: int64 [24] range (" in info.stdout, explain(info)
    assert "input      attention_mask: int64 [24] range (0.0, 1.0)" in info.stdout, explain(info)
    assert "logits at logits" in info.stdout, explain(info)
    assert "vocabulary 60 tokens (vocabulary.json)" in info.stdout, explain(info)
    report = evaluate(text_example, tmp_path / "report", "random-tokens.npz", "unseen-language.npz")
    assert report["backends"]["annoy"]["clean"]["model_accuracy"] >= 0.6  # chance: 0.25
    with np.load(text_example.work / "test.npz") as test:
        ids, mask = test["input_ids"][:5], test["attention_mask"][:5]
    np.save(tmp_path / "ids.npy", ids)
    np.save(tmp_path / "mask.npy", mask)
    scored = run_cli(
        "score", "--artifacts", text_example.bundle,
        "--input", f"input_ids={tmp_path / 'ids.npy'},attention_mask={tmp_path / 'mask.npy'}",
    )  # fmt: skip
    assert scored.returncode == 0 and len(scored.stdout.splitlines()) == 5, explain(scored)
    np.save(tmp_path / "ids.npy", np.full_like(ids, 500))  # beyond the vocabulary: refused, not a crash
    refused = run_cli(
        "score", "--artifacts", text_example.bundle,
        "--input", f"input_ids={tmp_path / 'ids.npy'},attention_mask={tmp_path / 'mask.npy'}",
    )  # fmt: skip
    assert refused.returncode == 3 and "outside [" in refused.stderr, explain(refused)


@pytest.mark.parametrize("family", ["tabular", "resnet", "text"])
def test_every_example_is_plain_user_code(family: str) -> None:
    from tests.e2e.conftest import ROOT

    source = (ROOT / "examples" / family / "train.py").read_text()
    imports = [line for line in source.splitlines() if line.startswith(("import ", "from "))]
    assert imports and not [line for line in imports if "agent" in line or "dknn" in line]  # the team's own code
    assert source.startswith('"""') and "--out" in source.split('"""')[1]  # says what it writes and how to run it
