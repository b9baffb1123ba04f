"""The residual term of the nonconformity (docs/design.md §2.2): hand-computed, fitted, verified, valid.

Its promise, like the distance term's: the same predictions (it is the same for every label), lower
credibility for inputs whose activation pattern the training data never made, and p-values that
stay conformal — and a bundle whose parameters do not fit is refused, naming the file.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from agent.cli import parse_command
from agent.cli.options import IndexOptions
from agent.engine.bundle import sha256_file, verify_bundle
from agent.engine.dknn import DkNN
from agent.engine.manifest import NonconformitySpec, ResidualSpec
from agent.engine.residual import ResidualTerm, residual_share
from agent.errors import BundleError, ConfigError
from tests.conftest import TinyProblem, assert_held_out_p_values_valid, fit_tiny

RESIDUAL = NonconformitySpec(
    residual=ResidualSpec(layer="relu1", components=3, weight=20, tail=0.9, reference_size=150)
)


def test_share_is_the_squared_length_outside_the_span() -> None:
    mean = np.array([1.0, 1.0, 1.0], dtype=np.float32)
    components = np.array([[1.0], [0.0], [0.0]], dtype=np.float32)  # the span is the first axis
    rows = np.array([[4.0, 1.0, 1.0], [1.0, 3.0, 1.0], [2.0, 2.0, 1.0], [1.0, 1.0, 1.0]], dtype=np.float32)
    # centred: (3,0,0) inside; (0,2,0) all outside; (1,1,0) half outside; the mean itself: nothing outside
    np.testing.assert_allclose(residual_share(rows, mean, components), [0.0, 1.0, 0.5, 0.0])


def test_fitted_term_penalises_only_rows_off_the_training_subspace() -> None:
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.normal(size=(12, 3)))[0]  # training data: a 3-d subspace of R^12 plus a little noise

    def on_subspace(n: int) -> np.ndarray:
        return (rng.normal(size=(n, 3)) @ basis.T * 5 + rng.normal(scale=0.1, size=(n, 12))).astype(np.float32)

    spec = ResidualSpec(layer="any", components=3, weight=40, tail=0.9, reference_size=500)
    term = ResidualTerm.fit(spec, on_subspace(2000), on_subspace(500), seed=0)
    assert term.reference_sorted.shape == (500,) and (np.diff(term.reference_sorted) >= 0).all()
    inside = term.penalty(on_subspace(1000))
    off = term.penalty(rng.normal(scale=5, size=(200, 12)).astype(np.float32))
    assert (inside == 0).mean() >= 0.85, np.bincount(inside)  # the tail: ~10% of in-distribution rows count
    np.testing.assert_array_equal(off, 40)  # far beyond every reference share: the whole weight


@pytest.fixture(scope="module")
def residual_bundle(tiny_problem: TinyProblem, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fit_tiny(tiny_problem, tmp_path_factory.mktemp("residual") / "tiny", nonconformity=RESIDUAL)


def test_fitted_bundle_records_and_verifies_the_term(residual_bundle: Path) -> None:
    bundle = verify_bundle(residual_bundle)
    bundle.close()
    assert bundle.manifest.nonconformity == RESIDUAL
    assert bundle.residual is not None and bundle.residual.components.shape == (16, 3)
    assert "residual/relu1.npz" in bundle.manifest.files
    # The directions are orthonormal: the share is then a share.
    np.testing.assert_allclose(bundle.residual.components.T @ bundle.residual.components, np.eye(3), atol=1e-5)


def test_same_predictions_lower_credibility_off_the_subspace(
    tiny_problem: TinyProblem, tiny_bundle: Path, residual_bundle: Path
) -> None:
    paper, with_residual = DkNN.from_bundle(tiny_bundle, "exact"), DkNN.from_bundle(residual_bundle, "exact")
    test = tiny_problem.test.x
    np.testing.assert_array_equal(paper.score(test).prediction, with_residual.score(test).prediction)
    rng = np.random.default_rng(0)
    far = (36 * rng.normal(size=(200, test.shape[1])) / np.sqrt(test.shape[1])).astype(np.float32)
    before, after = paper.score(far).credibility, with_residual.score(far).credibility
    assert (after <= before).all()
    assert after.mean() <= before.mean() - 0.2, (before.mean(), after.mean())


def test_true_label_p_values_stay_valid(tiny_problem: TinyProblem, residual_bundle: Path) -> None:
    scorer = DkNN.from_bundle(residual_bundle, backend="exact")
    held_out = tiny_problem.test
    assert_held_out_p_values_valid(scorer.score(held_out.x).p_values, held_out.y)


def _copy_with_manifest(bundle: Path, tmp_path: Path, edit) -> Path:
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    edit(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def test_parameters_that_do_not_fit_the_spec_are_refused(residual_bundle: Path, tmp_path: Path) -> None:
    def more_components(manifest: dict) -> None:
        manifest["nonconformity"]["residual"]["components"] = 4

    with pytest.raises(BundleError, match=r"residual/relu1\.npz.*\(d, 4\)"):
        verify_bundle(_copy_with_manifest(residual_bundle, tmp_path, more_components))


def test_a_wrong_reference_size_is_refused(residual_bundle: Path, tmp_path: Path) -> None:
    def smaller_reference(manifest: dict) -> None:
        manifest["nonconformity"]["residual"]["reference_size"] = 149

    with pytest.raises(BundleError, match="residual_reference"):
        verify_bundle(_copy_with_manifest(residual_bundle, tmp_path, smaller_reference))


def test_a_missing_parameters_file_is_refused(residual_bundle: Path, tmp_path: Path) -> None:
    def unlisted(manifest: dict) -> None:
        del manifest["files"]["residual/relu1.npz"]

    with pytest.raises(BundleError, match=r"residual/relu1\.npz: not listed"):
        verify_bundle(_copy_with_manifest(residual_bundle, tmp_path, unlisted))


def _cli_args(**overrides: object) -> IndexOptions:
    return IndexOptions.model_validate({"nonconformity": "labels", **overrides})


def test_cli_builds_the_term_only_when_a_layer_is_named() -> None:
    assert _cli_args().residual_spec(None) is None
    spec = _cli_args(residual_layer="relu2", residual_tail=0.99).nonconformity_spec(NonconformitySpec())
    assert spec.residual == ResidualSpec(layer="relu2", tail=0.99)
    with pytest.raises(ConfigError, match="need --residual-layer"):
        _cli_args(residual_weight=100).nonconformity_spec(NonconformitySpec())
    with pytest.raises(ConfigError, match="--residual-tail: input should be less than 1"):
        parse_command(["fit", "--train", "t", "--calibration", "c", "--out", "o", "--residual-tail", "1.0"])


def test_the_presets_term_takes_the_flags_given_and_no_residual_drops_it() -> None:
    preset = NonconformitySpec(residual=ResidualSpec(layer="relu2", components=8))
    assert _cli_args(nonconformity=None).nonconformity_spec(preset) == preset
    moved = _cli_args(nonconformity=None, residual_layer="relu1", residual_weight=50).nonconformity_spec(preset)
    assert moved.residual == ResidualSpec(layer="relu1", components=8, weight=50)
    assert _cli_args(nonconformity=None, no_residual=True).nonconformity_spec(preset).residual is None
    with pytest.raises(ConfigError, match="--no-residual leaves the residual term out"):
        parse_command(
            ["fit", "--train", "t", "--calibration", "c", "--out", "o", "--no-residual", "--residual-layer", "x"]
        )


def test_too_many_components_are_clipped_to_half_the_layer(tiny_problem: TinyProblem, tmp_path: Path) -> None:
    too_many = NonconformitySpec(residual=ResidualSpec(layer="relu1", components=16, reference_size=150))
    manifest = verify_bundle(fit_tiny(tiny_problem, tmp_path / "tiny", nonconformity=too_many)).manifest
    assert manifest.nonconformity.residual is not None
    assert manifest.nonconformity.residual.components == 8  # relu1 has 16 features


def test_parameters_wider_than_the_layer_are_refused_at_start(residual_bundle: Path, tmp_path: Path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(residual_bundle, copy)
    params = copy / "residual" / "relu1.npz"
    with np.load(params) as arrays:
        mean, components = arrays["mean"], arrays["components"]
    np.savez(params, mean=np.append(mean, 0.0), components=np.vstack([components, np.zeros((1, 3))]))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"]["residual/relu1.npz"] = sha256_file(params)  # consistent, just fitted elsewhere
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"layer relu1 has 16 features, the bundle was fitted for 17"):
        DkNN.from_bundle(copy, backend="exact")
