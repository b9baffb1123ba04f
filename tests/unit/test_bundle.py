"""Bundle round trip, and every way a bundle can be damaged failing with a clear error."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from agent.engine.bundle import BundleTrust, verify_bundle
from agent.engine.dknn import DkNN, NonconformityScorer
from agent.errors import BundleError, ConfigError, InputError
from tests.conftest import TINY_LAYERS, TinyProblem, fit_tiny


def copy_bundle(bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(bundle, tmp_path / "bundle"))


def rewrite_manifest(root: Path, edit) -> None:
    path = root / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def rehash(root: Path, relative: str) -> None:
    digest = hashlib.sha256((root / relative).read_bytes()).hexdigest()
    rewrite_manifest(root, lambda m: m["files"].__setitem__(relative, digest))


def test_round_trip_manifest_and_scores(tiny_bundle: Path, tiny_problem: TinyProblem) -> None:
    manifest = verify_bundle(tiny_bundle).manifest
    assert manifest.layer_names == tuple(TINY_LAYERS)
    assert [layer.dim for layer in manifest.layers] == [16, 16, 2]
    assert manifest.calibration.size == 200 and manifest.train.size == 600
    assert set(manifest.files) >= {"model.pt2", "train_labels.npy", "calibration.npz", "layers/relu1.ann"}
    assert manifest.model.program == "model.pt2" and manifest.model.factory is None

    first, second = DkNN.from_bundle(tiny_bundle), DkNN.from_bundle(tiny_bundle)
    a, b = first.score(tiny_problem.test.x), second.score(tiny_problem.test.x)
    np.testing.assert_array_equal(a.p_values, b.p_values)
    assert (a.prediction == tiny_problem.test.y).mean() >= 0.95
    assert a.neighbor_ids.shape == (100, 3, 10)


def test_annoy_and_exact_agree_on_the_same_bundle(tiny_bundle: Path, tiny_problem: TinyProblem) -> None:
    annoy = DkNN.from_bundle(tiny_bundle, backend="annoy", search_k=10_000).score(tiny_problem.test.x)
    exact = DkNN.from_bundle(tiny_bundle, backend="exact").score(tiny_problem.test.x)
    assert (annoy.prediction == exact.prediction).mean() >= 0.98
    assert np.abs(annoy.credibility - exact.credibility).mean() < 0.02


def test_calibration_is_valid_on_fresh_in_distribution_data(tiny_problem: TinyProblem, tmp_path: Path) -> None:
    """Conformal validity is a promise over calibration draws: P(true-label p ≤ τ) ≤ τ on average.
    One 200-point draw can miss by 0.05 when α takes few values (a tuned, small search_k makes it
    lumpy), so five draws are fitted around the same model and their mean is checked."""
    from dataclasses import replace

    from tests.conftest import blobs, fit_tiny

    fresh = blobs(4000, seed=9)
    rates = []
    for seed in (2, 5, 7, 11, 13):
        bundle = fit_tiny(replace(tiny_problem, calibration=blobs(200, seed=seed)), tmp_path / f"calibration-{seed}")
        scores = DkNN.from_bundle(bundle).score(fresh.x)
        true_p = scores.p_values[np.arange(len(fresh.y)), fresh.y]
        rates.append([(true_p <= tau).mean() for tau in (0.05, 0.1, 0.2)])
    for tau, rate in zip((0.05, 0.1, 0.2), np.mean(rates, axis=0), strict=True):
        assert rate <= tau + 0.02, (tau, rates)


def test_inputs_between_classes_get_lower_credibility(tiny_bundle: Path, tiny_problem: TinyProblem) -> None:
    """Half-way between two class means the neighbours split between labels: credibility drops."""
    train = tiny_problem.train
    means = np.stack([train.x[train.y == c].mean(axis=0) for c in range(3)])
    between = np.repeat(((means[0] + means[1]) / 2)[None], 20, axis=0)
    between += np.random.default_rng(0).normal(0, 0.3, size=between.shape)
    scorer = DkNN.from_bundle(tiny_bundle)
    clean = scorer.score(tiny_problem.test.x).credibility.mean()
    assert scorer.score(between.astype(np.float32)).credibility.mean() < clean - 0.2


def test_corrupted_index_is_rejected_naming_the_file(tiny_bundle: Path, tmp_path: Path) -> None:
    root = copy_bundle(tiny_bundle, tmp_path)
    ann = root / "layers/relu2.ann"
    data = bytearray(ann.read_bytes())
    data[100] ^= 0xFF
    ann.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"layers/relu2\.ann: sha256 mismatch"):
        DkNN.from_bundle(root)


def test_wrong_dimension_is_rejected_before_annoy_opens_the_file(tiny_bundle: Path, tmp_path: Path) -> None:
    root = copy_bundle(tiny_bundle, tmp_path)
    rewrite_manifest(root, lambda m: m["layers"][0].__setitem__("dim", 17))
    with pytest.raises(BundleError, match=r"relu1\.ann: size \d+ bytes does not fit 600 vectors of dim 17"):
        verify_bundle(root)


def test_pca_params_of_the_wrong_shape_are_rejected(tiny_bundle: Path, tmp_path: Path) -> None:
    root = copy_bundle(tiny_bundle, tmp_path)
    np.savez(root / "layers/logits.npz", mean=np.zeros(3, np.float32), components=np.zeros((3, 3), np.float32))
    rehash(root, "layers/logits.npz")
    with pytest.raises(BundleError, match=r"logits\.npz"):
        verify_bundle(root)


def test_missing_file_and_missing_manifest(tiny_bundle: Path, tmp_path: Path) -> None:
    root = copy_bundle(tiny_bundle, tmp_path)
    (root / "calibration.npz").unlink()
    with pytest.raises(BundleError, match=r"calibration\.npz: missing"):
        verify_bundle(root)
    (root / "manifest.json").unlink()
    with pytest.raises(BundleError, match=r"manifest\.json: missing"):
        verify_bundle(root)
    with pytest.raises(BundleError, match="does not exist"):
        verify_bundle(tmp_path / "nowhere")


def test_invalid_manifest_names_the_field(tiny_bundle: Path, tmp_path: Path) -> None:
    root = copy_bundle(tiny_bundle, tmp_path)
    rewrite_manifest(root, lambda m: m.__setitem__("k", 0))
    with pytest.raises(BundleError, match=r"manifest\.json: invalid manifest at k"):
        verify_bundle(root)


def test_path_escaping_the_bundle_is_rejected(tiny_bundle: Path, tmp_path: Path) -> None:
    root = copy_bundle(tiny_bundle, tmp_path)
    rewrite_manifest(root, lambda m: m["files"].__setitem__("../outside", "0" * 64))
    with pytest.raises(BundleError, match="escapes the bundle"):
        verify_bundle(root)


class _Exploit:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_weights_that_would_run_code_are_refused(tiny_factory_bundle: Path, tmp_path: Path) -> None:
    root = copy_bundle(tiny_factory_bundle, tmp_path)
    (root / "model.pt").write_bytes(pickle.dumps({"fc1.weight": _Exploit()}, protocol=2))
    rehash(root, "model.pt")
    with pytest.raises(BundleError, match=r"model\.pt: not a loadable weights file"):
        DkNN.from_bundle(root, trust=BundleTrust(factory_modules=("dknn_lab.models",)))


def test_bad_inputs_and_backend(tiny_bundle: Path) -> None:
    scorer = DkNN.from_bundle(tiny_bundle)
    with pytest.raises(InputError, match="dtype float64"):
        scorer.score(np.zeros((2, 8)))
    with pytest.raises(InputError, match=r"shape \(2, 9\)"):
        scorer.score(np.zeros((2, 9), np.float32))
    with pytest.raises(InputError, match="NaN"):
        scorer.score(np.full((2, 8), np.nan, np.float32))
    with pytest.raises(ConfigError, match="unknown index backend"):
        DkNN.from_bundle(tiny_bundle, backend="faiss")


def test_refuses_to_overwrite_a_bundle_without_force(tiny_problem: TinyProblem, tiny_bundle: Path) -> None:
    with pytest.raises(ConfigError, match="--force"):
        fit_tiny(tiny_problem, tiny_bundle)


def test_a_verified_bundle_is_complete_and_frozen(tiny_bundle: Path) -> None:
    bundle = verify_bundle(tiny_bundle)
    try:
        assert list(bundle.preprocessors) == list(TINY_LAYERS) and len(bundle.train_labels) == 600
        assert len(bundle.calibration_alpha) == len(bundle.calibration_label_free) == 200
        assert (np.diff(bundle.calibration_alpha) >= 0).all() and (np.diff(bundle.calibration_label_free) >= 0).all()
        assert bundle.distance_reference is None and bundle.residual is None  # the tiny bundle's labels-only α
        with pytest.raises(dataclasses.FrozenInstanceError):
            bundle.calibration_alpha = np.zeros(200)  # type: ignore[misc]
    finally:
        bundle.close()


def test_dknn_takes_a_verified_bundle_and_the_nonconformity_scorer_needs_no_calibration(
    tiny_bundle: Path, tiny_problem: TinyProblem
) -> None:
    bundle = verify_bundle(tiny_bundle)
    try:
        scorer = DkNN(bundle)
    finally:
        bundle.close()  # the scorer keeps what it opened
    assert scorer.digest == bundle.digest
    assert scorer.calibration_alpha is bundle.calibration_alpha
    scores = scorer.score(tiny_problem.test.x)
    np.testing.assert_array_equal(scores.p_values, DkNN.from_bundle(tiny_bundle).score(tiny_problem.test.x).p_values)

    # What fit measures calibration with: the same α, without any calibration to give it.
    measure = NonconformityScorer(
        scorer.manifest, scorer.tap.source, scorer.preprocessors, scorer.indexes, scorer.train_labels, None, None
    )
    np.testing.assert_array_equal(measure.alpha(tiny_problem.test.x), scores.alpha)
    calibration = measure.alpha(tiny_problem.calibration.x)
    true_alpha = calibration[np.arange(len(calibration)), tiny_problem.calibration.y]
    np.testing.assert_array_equal(np.sort(true_alpha), bundle.calibration_alpha)  # the same indexes and search_k as fit
    np.testing.assert_array_equal(np.sort(calibration.min(axis=1)), bundle.calibration_label_free)


def test_a_scorer_refuses_references_its_manifest_does_not_name(tiny_bundle: Path) -> None:
    scorer = DkNN.from_bundle(tiny_bundle)
    parts = (scorer.manifest, scorer.tap.source, scorer.preprocessors, scorer.indexes, scorer.train_labels)
    with pytest.raises(BundleError, match="distance reference disagree"):
        NonconformityScorer(*parts, np.zeros((5, 1)), None)
