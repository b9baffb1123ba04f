"""The distance-aware nonconformity (docs/design.md §2.2): hand-computed, fitted, verified, valid.

Its promise: the same predictions as the paper's DkNN (the term is the same for every label), lower
credibility for inputs far from every training point — which the paper's count of disagreeing
neighbours cannot see — and p-values that stay conformal.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from agent.engine import conformal
from agent.engine.bundle import verify_bundle
from agent.engine.dknn import DkNN
from agent.engine.manifest import Manifest, NonconformitySpec
from agent.errors import BundleError
from tests.conftest import TinyProblem, assert_held_out_p_values_valid, fit_tiny

DISTANCE = NonconformitySpec(kind="labels+distance", distance_weight=10, distance_reference_size=200)
KTH_TAIL = NonconformitySpec(
    kind="labels+distance",
    distance_weight=30,
    distance_reference_size=200,
    distance_statistic="kth",
    distance_tail=0.5,
    distance_neighbors=3,
)


def test_penalty_counts_the_share_of_the_reference_below_per_layer() -> None:
    reference = np.sort(np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0], [4.0, 40.0]]), axis=0)
    mean = np.array([[0.5, 5.0], [2.5, 45.0], [np.inf, 20.0]])
    # row 0: 0/4 and 0/4 below; row 1: 2/4 -> floor(10 * 0.5) = 5, 4/4 -> 10; row 2: 4/4 -> 10, 1/4 -> 2
    np.testing.assert_array_equal(conformal.distance_penalty(mean, reference, weight=10), [0, 15, 12])
    np.testing.assert_array_equal(conformal.distance_penalty(mean, reference, weight=10, tail=0.0), [0, 15, 12])


def test_a_tail_counts_only_ranks_above_it() -> None:
    reference = np.arange(1.0, 11.0)[:, None]  # ten reference distances 1..10
    distance = np.array([[5.5], [9.5], [11.0]])  # 5, 9 and 10 of them below
    # t(r) = max(0, r - 0.8) / 0.2: 0, 0.5 and 1 -> floor(40 t) = 0, 20, 40
    np.testing.assert_array_equal(conformal.distance_penalty(distance, reference, weight=40, tail=0.8), [0, 20, 40])


def test_distance_statistic_is_the_mean_or_the_kth() -> None:
    distances = np.array([[[1.0, 2.0, 6.0]], [[1.0, 1.0, np.inf]]])
    np.testing.assert_array_equal(conformal.distance_statistic(distances, "mean"), [[3.0], [np.inf]])
    np.testing.assert_array_equal(conformal.distance_statistic(distances, "kth"), [[6.0], [np.inf]])


def test_distance_statistic_can_read_only_the_nearest_neighbours() -> None:
    distances = np.array([[[1.0, 2.0, 6.0]], [[1.0, 1.0, np.inf]]])
    np.testing.assert_array_equal(conformal.distance_statistic(distances, "mean", 2), [[1.5], [1.0]])
    np.testing.assert_array_equal(conformal.distance_statistic(distances, "kth", 1), [[1.0], [1.0]])


def test_more_distance_neighbours_than_k_are_refused(tiny_bundle: Path) -> None:
    document = json.loads((tiny_bundle / "manifest.json").read_text())
    document["nonconformity"] = DISTANCE.model_copy(update={"distance_neighbors": document["k"] + 1}).model_dump()
    with pytest.raises(ValueError, match="exceeds k"):
        Manifest.model_validate(document)


def test_the_spec_refuses_half_configured_distance() -> None:
    with pytest.raises(ValueError, match="exactly for labels\\+distance"):
        NonconformitySpec(kind="labels+distance", distance_weight=0, distance_reference_size=100)
    with pytest.raises(ValueError, match="exactly for labels\\+distance"):
        NonconformitySpec(kind="labels", distance_weight=5, distance_reference_size=0)


@pytest.fixture(scope="module", params=[DISTANCE, KTH_TAIL], ids=["mean", "kth-tail"])
def distance_bundle(
    request: pytest.FixtureRequest, tiny_problem: TinyProblem, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    return fit_tiny(tiny_problem, tmp_path_factory.mktemp("distance") / "tiny", nonconformity=request.param)


def test_fitted_bundle_records_and_verifies_its_nonconformity(distance_bundle: Path) -> None:
    bundle = verify_bundle(distance_bundle)
    bundle.close()
    assert bundle.manifest.nonconformity in (DISTANCE, KTH_TAIL)
    assert bundle.manifest.distance_layers == bundle.manifest.layer_names
    assert bundle.distance_reference is not None and bundle.distance_reference.shape == (
        200,
        len(bundle.manifest.layers),
    )
    assert (np.diff(bundle.distance_reference, axis=0) >= 0).all()


def test_same_predictions_lower_credibility_far_away(
    tiny_problem: TinyProblem, tiny_bundle: Path, distance_bundle: Path
) -> None:
    paper, aware = DkNN.from_bundle(tiny_bundle, backend="exact"), DkNN.from_bundle(distance_bundle, backend="exact")
    test = tiny_problem.test.x
    np.testing.assert_array_equal(paper.score(test).prediction, aware.score(test).prediction)
    # Far from every blob (norm 36; the blobs' centres are ~11 out), in 200 random directions; keep
    # those where all neighbours agree, so the paper's DkNN trusts them.
    rng = np.random.default_rng(0)
    directions = rng.normal(size=(200, test.shape[1]))
    far = (36 * directions / np.linalg.norm(directions, axis=1, keepdims=True)).astype(np.float32)
    trusted = far[paper.score(far).credibility > 0.5]
    assert len(trusted) >= 20, len(trusted)
    credibility = aware.score(trusted).credibility  # the distance term is not fooled, mostly:
    assert np.median(credibility) == 0.0 and credibility.mean() <= 0.05, credibility
    # (a direction close to a blob's looks in-distribution to the l2-normalised layer, which sees
    # only directions: its term stays small there)


def test_true_label_p_values_stay_valid(tiny_problem: TinyProblem, distance_bundle: Path) -> None:
    scorer = DkNN.from_bundle(distance_bundle, backend="exact")
    held_out = tiny_problem.test
    assert_held_out_p_values_valid(scorer.score(held_out.x).p_values, held_out.y)


def test_a_wrong_reference_shape_is_refused(distance_bundle: Path, tmp_path: Path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(distance_bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["nonconformity"]["distance_reference_size"] = 199
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="distance_reference"):
        verify_bundle(copy)


def test_unknown_layers_in_the_nonconformity_are_refused(tiny_bundle: Path) -> None:
    document = json.loads((tiny_bundle / "manifest.json").read_text())
    document["nonconformity"] = {"kind": "labels", "label_layers": ["nope"]}
    with pytest.raises(ValueError, match="not tapped"):
        Manifest.model_validate(document)


def test_an_input_a_reviewed_point_vouches_for_is_ranked_among_the_reviewed_points() -> None:
    reviewed = conformal.ReviewedDistances(first_item=100, reference_sorted=np.array([[5.0, 50.0], [6.0, 60.0]]))
    # nearest ids per layer: row 0 finds reviewed points at both layers, row 1 at the first only,
    # row 2 finds one at both but the model answers otherwise, row 3 finds training points.
    nearest = np.array([[100, 101], [101, 7], [100, 100], [3, 4]])
    labels = np.array([[2, 2], [1, 1], [0, 0], [1, 1]])
    answers = np.array([2, 1, 1, 1])
    vouched = reviewed.vouched(nearest, labels, answers)
    np.testing.assert_array_equal(vouched, [[True, True], [True, False], [False, False], [False, False]])
    training = np.sort(np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0], [4.0, 40.0]]), axis=0)
    distance = np.array([[5.5, 55.0]] * 4)  # beyond every training distance, between the reviewed ones
    penalty = conformal.vouched_penalty(distance, vouched, training, reviewed.reference_sorted, weight=10)
    # vouched layers: 1 of 2 reviewed distances below -> 5; the others: all 4 training ones -> 10
    np.testing.assert_array_equal(penalty, [10, 15, 20, 20])
    nobody = np.zeros_like(vouched)
    np.testing.assert_array_equal(
        conformal.vouched_penalty(distance, nobody, training, reviewed.reference_sorted, weight=10),
        conformal.distance_penalty(distance, training, weight=10),
    )
