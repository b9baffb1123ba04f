"""The forward pass's precision is the bundle's (`ModelSpec.compute_dtype`): fit, calibration and
scoring share it, so bfloat16 keeps the p-values conformal; activations reach numpy as float32."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from agent.engine.dknn import DkNN
from agent.engine.manifest import ModelSpec
from agent.engine.taps import ActivationTap, native_bfloat16
from agent.errors import ConfigError
from dknn_lab.models.tiny import build_model
from tests.conftest import TinyProblem, assert_held_out_p_values_valid, fit_tiny


def test_bfloat16_activations_come_back_as_float32_close_to_full_precision() -> None:
    torch.manual_seed(0)
    model = build_model()
    x = np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32)
    full, half = ActivationTap(model, ["relu1", "logits"]), ActivationTap(model, ["relu1", "logits"], "bfloat16")
    exact, reduced = full(x), half(x)
    assert reduced.outputs.dtype == np.float32 and reduced.layers["relu1"].dtype == np.float32
    # bfloat16 keeps 8 bits of mantissa: about 2-3 significant digits, and not more
    np.testing.assert_allclose(reduced.outputs, exact.outputs, rtol=0.05, atol=0.05)
    assert not np.array_equal(reduced.outputs, exact.outputs)


def test_an_unknown_precision_is_refused() -> None:
    with pytest.raises(ConfigError, match="float32 or bfloat16"):
        ActivationTap(build_model(), ["logits"], "float16")


def test_manifests_without_a_precision_mean_float32() -> None:
    spec = ModelSpec(name="m", version="1", factory="a.b:c", num_classes=2)
    assert spec.compute_dtype == "float32"


@pytest.fixture(scope="module")
def bfloat16_bundle(tiny_problem: TinyProblem, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fit_tiny(tiny_problem, tmp_path_factory.mktemp("bf16") / "tiny", compute_dtype="bfloat16")


def test_the_bundle_records_its_precision_and_scores_in_it(bfloat16_bundle: Path, tiny_problem: TinyProblem) -> None:
    manifest = json.loads((bfloat16_bundle / "manifest.json").read_text())
    assert manifest["model"]["compute_dtype"] == "bfloat16"
    scorer = DkNN.from_bundle(bfloat16_bundle, backend="exact")
    assert scorer.tap.compute_dtype == "bfloat16"
    held_out = tiny_problem.test
    batch = scorer.score(held_out.x)
    assert (batch.prediction == held_out.y).mean() >= 0.95
    assert_held_out_p_values_valid(batch.p_values, held_out.y)


@pytest.mark.parametrize(
    ("flags", "native"),
    [
        ("fpu avx2 avx512f avx512_bf16 avx512vl", True),
        ("fpu avx2 amx_bf16 amx_tile", True),
        ("fpu avx2 avx512f", False),
    ],
)
def test_native_bfloat16_reads_the_cpu_flags(tmp_path: Path, flags: str, native: bool) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
    assert native_bfloat16(cpuinfo) is native


def test_without_cpuinfo_bfloat16_is_not_assumed_native(tmp_path: Path) -> None:
    assert native_bfloat16(tmp_path / "missing") is False
