"""`dknn-agent extend` on the tiny bundle (agent.engine.extend, agent.runtime.reviews,
agent.evaluation.extension): reviewed inputs land in every index under their reviewed labels, the
calibration stays the same set scored anew, out-of-scope reviews stay out, the manifest names
every point's review, the new bundle verifies and its held-out p-values are still valid."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from agent.engine.bundle import BundleError, parse_manifest, sha256_file, verify_bundle
from agent.engine.data_files import Dataset
from agent.engine.dknn import DkNN
from agent.engine.extend import extend_bundle, version_of
from agent.engine.index import AnnoyBackend
from agent.engine.manifest import NonconformitySpec
from agent.engine.taps import ActivationTap
from agent.errors import ConfigError, ConnectorError, DataError
from agent.evaluation.extension import ExtendOptions, run_extension
from agent.runtime.events import encode_event
from agent.runtime.reviews import collect, read_reviews, review_inputs, source_uri
from agent.runtime.wire.review import MAX_REVIEW_BYTES, parse_review, review_record
from connectors.base import Record
from connectors.registry import read_whole
from tests.conftest import TinyProblem, assert_held_out_p_values_valid, fit_tiny

pytestmark = pytest.mark.usefixtures("single_torch_thread")

AT = "2026-05-01T12:00:00Z"
LATER = "2026-05-02T12:00:00Z"


def far_inputs(n: int, seed: int = 5) -> np.ndarray:
    """Inputs away from the blobs: what a tiny agent would quarantine."""
    return (np.random.default_rng(seed).normal(0.0, 1.0, (n, 8)) + 6.0).astype(np.float32)


def reviews_of(
    bundle: Path, x: np.ndarray, verdicts: list[str], *, prefix: str = "ev", at: str = AT, **overrides: Any
) -> list[bytes]:
    """One review per input through the producer helper, from the quarantine record the agent would write."""
    scores = DkNN.from_bundle(bundle).score(x)
    lines = []
    for i, verdict in enumerate(verdicts):
        answer = int(scores.model_prediction[i])
        event = orjson.loads(encode_event(f"{prefix}-{i}", x[i], "tiny", "1"))
        quarantine = {"event": event, "dknn": {"prediction": int(scores.prediction[i]), "model_prediction": answer}}
        label = (answer + 1) % 3 if verdict == "model_wrong" else None
        lines.append(
            review_record(
                quarantine, verdict=verdict, label=label, reviewer="ana", model_name="tiny", model_version="1",
                reviewed_at=at, **overrides,
            )
        )  # fmt: skip
    return lines


def write(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def records(lines: list[bytes]) -> list[Record]:
    return [Record("file", 0, offset, None, line) for offset, line in enumerate(lines)]


VERDICTS = ["model_right", "model_wrong", "out_of_scope", "model_wrong", "model_right", "out_of_scope"]


@pytest.fixture(scope="module")
def extended(tiny_bundle: Path, tiny_problem: TinyProblem, tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("extend")
    source = write(work / "reviews.jsonl", reviews_of(tiny_bundle, far_inputs(6), VERDICTS))
    manifest = verify_bundle(tiny_bundle).manifest
    read = read_reviews(str(source), manifest)
    extend_bundle(
        base=tiny_bundle, reviews=read.engine_reviews(), calibration=tiny_problem.calibration, out=work / "b2"
    )
    return work / "b2"


def test_the_indexes_hold_the_reviewed_inputs_under_their_labels(tiny_bundle: Path, extended: Path) -> None:
    base, bundle = verify_bundle(tiny_bundle), verify_bundle(extended)
    x = far_inputs(6)
    indexed = [i for i, verdict in enumerate(VERDICTS) if verdict != "out_of_scope"]
    answers = DkNN.from_bundle(tiny_bundle).score(x).model_prediction
    expected = [int(answers[i]) if VERDICTS[i] == "model_right" else (int(answers[i]) + 1) % 3 for i in indexed]
    assert bundle.manifest.train.size == base.manifest.train.size + len(indexed)  # out_of_scope: not indexed
    assert bundle.train_labels[: base.manifest.train.size].tolist() == base.train_labels.tolist()
    assert bundle.train_labels[base.manifest.train.size :].tolist() == expected
    activations = ActivationTap(bundle.build_model(), bundle.manifest.tapped_layers)(x[indexed])
    for layer in bundle.manifest.layers:
        items = AnnoyBackend(Path(bundle.index_path(layer.name)), layer.dim).item_vectors()
        old = AnnoyBackend(Path(base.index_path(layer.name)), layer.dim).item_vectors()
        np.testing.assert_array_equal(items[: len(old)], old)
        vectors = bundle.preprocessors[layer.name].transform(activations.layers[layer.name])
        np.testing.assert_allclose(items[len(old) :], vectors, rtol=1e-5, atol=1e-6)
    found = DkNN.from_bundle(extended).score(x[indexed]).neighbor_ids
    assert (found >= base.manifest.train.size).any(axis=(1, 2)).all()  # each finds the reviewed points
    base.close()
    bundle.close()


def test_the_calibration_is_the_same_set_scored_again(tiny_bundle: Path, extended: Path) -> None:
    base, bundle = verify_bundle(tiny_bundle), verify_bundle(extended)
    assert bundle.manifest.calibration == base.manifest.calibration
    assert len(bundle.calibration_alpha) == len(base.calibration_alpha) == base.manifest.calibration.size
    assert bundle.manifest.nonconformity == base.manifest.nonconformity
    assert bundle.manifest.layer_names == base.manifest.layer_names
    assert [layer.search_k for layer in bundle.manifest.layers] == [layer.search_k for layer in base.manifest.layers]
    assert all(layer.recall is not None for layer in bundle.manifest.layers)  # measured on the new trees
    base.close()
    bundle.close()


def test_the_manifest_names_every_points_review(tiny_bundle: Path, extended: Path) -> None:
    base = verify_bundle(tiny_bundle)
    manifest = verify_bundle(extended).manifest
    reviews = manifest.reviews
    assert reviews is not None and manifest.model.version == "1+reviews.4"
    assert (reviews.base.version, reviews.base.digest, reviews.base.train_size) == ("1", base.digest, 600)
    assert reviews.sources[0].startswith("file:") and reviews.sources[0].endswith("reviews.jsonl")
    assert [(p.event_id, p.verdict, p.offset) for p in reviews.points] == [
        ("ev-0", "model_right", 0), ("ev-1", "model_wrong", 1), ("ev-3", "model_wrong", 3), ("ev-4", "model_right", 4),
    ]  # fmt: skip
    assert all((p.reviewer, p.reviewed_at, p.partition, p.source) == ("ana", AT, 0, 0) for p in reviews.points)
    assert [(e.event_id, e.verdict) for e in reviews.out_of_scope] == [
        ("ev-2", "out_of_scope"),
        ("ev-5", "out_of_scope"),
    ]
    document = json.loads((extended / "manifest.json").read_text())
    assert document["reviews"]["points"][1]["label"] == verify_bundle(extended).train_labels[601]
    assert "reviews" not in json.loads((tiny_bundle / "manifest.json").read_text())  # absent, not null
    assert any(heading == "reviews" for heading, _ in manifest.describe())
    base.close()


def test_the_manifest_refuses_points_the_training_size_does_not_hold(extended: Path) -> None:
    document = json.loads((extended / "manifest.json").read_text())
    document["train"]["size"] += 1
    with pytest.raises(BundleError, match="plus 4 reviewed ones"):
        parse_manifest(json.dumps(document).encode(), extended / "manifest.json")
    document["train"]["size"] -= 1
    document["reviews"]["out_of_scope"].append(dict(document["reviews"]["points"][0], verdict="out_of_scope"))
    del document["reviews"]["out_of_scope"][-1]["label"]
    with pytest.raises(BundleError, match="reviewed at most once"):
        parse_manifest(json.dumps(document).encode(), extended / "manifest.json")


def test_held_out_p_values_stay_valid(extended: Path, tiny_problem: TinyProblem) -> None:
    scores = DkNN.from_bundle(extended).score(tiny_problem.test.x)
    assert_held_out_p_values_valid(scores.p_values, tiny_problem.test.y)
    assert (scores.prediction == tiny_problem.test.y).mean() > 0.95


def test_malformed_reviews_are_skipped_with_a_counted_reason(tiny_bundle: Path) -> None:
    manifest = verify_bundle(tiny_bundle).manifest
    good = reviews_of(tiny_bundle, far_inputs(2), ["model_wrong", "out_of_scope"])
    other_model = orjson.loads(good[0])
    other_model["model"]["name"] = "other"
    omitted = orjson.loads(good[0])
    del omitted["event"]["input"]
    misshapen = orjson.loads(reviews_of(tiny_bundle, far_inputs(1), ["model_wrong"], prefix="shape")[0])
    misshapen["event"]["input"] = {"dtype": "float32", "shape": [3], "values": [1.0, 2.0, 3.0]}
    renamed = dict(orjson.loads(good[0]), event_id="not-the-event")
    superseded = reviews_of(tiny_bundle, far_inputs(2), ["model_right"], at="2026-04-01T00:00:00Z")[0]
    lines = [
        *good, b"{not json", b'{"schema": "dknn.review.v1"}', orjson.dumps(other_model | {"event_id": "x-1"}),
        superseded, orjson.dumps(omitted | {"event_id": "ev-0"}), orjson.dumps(misshapen), orjson.dumps(renamed),
    ]  # fmt: skip
    read = collect("file:reviews.jsonl", records(lines), manifest)
    # ev-0's good review is superseded by a later-positioned one without an input (and beats April's).
    assert read.records == 9 and read.points == [] and [e.event_id for e in read.out_of_scope] == ["ev-1"]
    assert dict(read.skipped) == {
        "bad_json": 1, "schema": 2, "unknown_model": 1, "superseded": 2, "no_input": 1, "input": 1,
    }  # fmt: skip
    assert read.first_skip["bad_json"].startswith("line 3: not valid JSON")
    assert read.first_skip["schema"].startswith("line 4: invalid event_id: Field required")
    assert read.first_skip["no_input"] == "line 7: the event carries no input (the quarantine record left it out)"


def test_each_skip_reason(tiny_bundle: Path) -> None:
    manifest = verify_bundle(tiny_bundle).manifest
    (line,) = reviews_of(tiny_bundle, far_inputs(1), ["model_wrong"])
    review = orjson.loads(line)

    def reason(document: dict[str, Any]) -> str:
        read = collect("kafka://h:1/t", records([orjson.dumps(document)]), manifest)
        assert not read.points and not read.out_of_scope
        ((name, count),) = read.skipped.items()
        assert count == 1 and read.first_skip[name].startswith("partition 0 offset 0: ")
        return name

    assert reason(review | {"model": {"name": "other", "version": "1"}}) == "unknown_model"
    assert reason(review | {"label": 7}) == "schema"  # beyond the tiny model's 3 classes
    assert reason(review | {"event_id": "someone-else"}) == "schema"
    no_input = dict(review["event"])
    del no_input["input"]
    assert reason(review | {"event": no_input}) == "no_input"
    wrong_shape = review["event"] | {"input": {"dtype": "float32", "shape": [2], "values": [1.0, 2.0]}}
    assert reason(review | {"event": wrong_shape}) == "input"
    nan = base64.b64encode(np.full(8, np.nan, np.float32).tobytes()).decode()
    not_finite = review["event"] | {"input": {"dtype": "float32", "shape": [8], "b64": nan}}
    assert reason(review | {"event": not_finite}) == "input"
    assert reason(review | {"event_id": "r", "event": {"id": "r", "row": 0, "rows": 1}}) == "no_input"


def test_a_batch_input_quoted_by_a_quarantine_record_is_decoded(tiny_bundle: Path) -> None:
    manifest = verify_bundle(tiny_bundle).manifest
    row = {"form": "oip-v2", "id": "req-1", "row": 2, "rows": 4,
           "inputs": [{"name": "x", "shape": [1, 8], "datatype": "FP32", "data": list(range(8))}]}  # fmt: skip
    quarantine = {"event": row, "dknn": {"prediction": 0, "model_prediction": 0}}
    review = parse_review(review_record(quarantine, verdict="model_right", reviewer="a", model_name="tiny",
                                        model_version="1"))  # fmt: skip
    assert review.event_id == "req-1/2"
    (x,) = review_inputs(review, manifest)
    assert x.dtype == np.float32 and x.tolist() == list(range(8))


def test_a_model_right_review_of_another_answer_is_left_out(
    tiny_bundle: Path, tiny_problem: TinyProblem, tmp_path: Path
) -> None:
    manifest = verify_bundle(tiny_bundle).manifest
    lines = reviews_of(tiny_bundle, far_inputs(2), ["model_right", "model_wrong"])
    changed = orjson.loads(lines[0])
    changed["dknn"]["model_prediction"] = (changed["dknn"]["model_prediction"] + 1) % 3
    read = collect("file:r.jsonl", records([orjson.dumps(changed), lines[1]]), manifest)
    result = extend_bundle(base=tiny_bundle, reviews=read.engine_reviews(), calibration=tiny_problem.calibration,
                           out=tmp_path / "b2")  # fmt: skip
    assert [p.event_id for p in result.model_changed] == ["ev-0"]
    assert [p.event_id for p in result.added] == ["ev-1"] and result.manifest.train.size == 601


def test_a_calibration_set_other_than_the_bundles_is_refused(
    tiny_bundle: Path, tiny_problem: TinyProblem, tmp_path: Path
) -> None:
    manifest = verify_bundle(tiny_bundle).manifest
    reviews = collect("file:r.jsonl", records(reviews_of(tiny_bundle, far_inputs(1), ["model_wrong"])), manifest)
    calibration = tiny_problem.calibration
    assert calibration.y is not None
    other = Dataset(calibration.x[::-1].copy(), np.roll(calibration.y[::-1], 1), source="shuffled")
    with pytest.raises(DataError, match="not the set the bundle was calibrated on"):
        extend_bundle(base=tiny_bundle, reviews=reviews.engine_reviews(), calibration=other, out=tmp_path / "b2")
    fewer = Dataset(calibration.x[:50], calibration.y[:50])
    with pytest.raises(DataError, match="calibrated on 200"):
        extend_bundle(base=tiny_bundle, reviews=reviews.engine_reviews(), calibration=fewer, out=tmp_path / "b2")
    unlabelled = Dataset(calibration.x)
    with pytest.raises(DataError, match="label"):
        extend_bundle(base=tiny_bundle, reviews=reviews.engine_reviews(), calibration=unlabelled, out=tmp_path / "b2")
    assert not (tmp_path / "b2").exists()


def test_without_a_point_to_add_nothing_is_written(
    tiny_bundle: Path, tiny_problem: TinyProblem, tmp_path: Path
) -> None:
    manifest = verify_bundle(tiny_bundle).manifest
    only_out = collect("file:r.jsonl", records(reviews_of(tiny_bundle, far_inputs(2), ["out_of_scope"] * 2)), manifest)
    with pytest.raises(ConfigError, match="no reviewed input to add"):
        extend_bundle(base=tiny_bundle, reviews=only_out.engine_reviews(), calibration=tiny_problem.calibration,
                      out=tmp_path / "b2")  # fmt: skip
    assert not (tmp_path / "b2").exists() and not list(tmp_path.iterdir())
    nothing = write(tmp_path / "bad.jsonl", [b"{", b"[]"])
    options = ExtendOptions(artifacts=tiny_bundle, reviews=str(nothing), calibration=tiny_problem.calibration,
                            out=tmp_path / "b3", clean=tiny_problem.test)  # fmt: skip
    with pytest.raises(ConfigError, match=r"no usable review to add .* 2 record\(s\).*1 bad_json, 1 schema"):
        run_extension(options)


def test_extending_an_extended_bundle_merges_the_latest_reviews(
    tiny_bundle: Path, extended: Path, tiny_problem: TinyProblem, tmp_path: Path
) -> None:
    manifest = verify_bundle(extended).manifest
    x = far_inputs(6)
    # ev-1 (a point) turns out_of_scope later; ev-2 (out of scope) gets a later model_wrong; ev-9 is new.
    later = reviews_of(tiny_bundle, x[1:3], ["out_of_scope", "model_wrong"], at=LATER)
    later = [orjson.dumps(_renamed(orjson.loads(line), f"ev-{i}")) for i, line in zip((1, 2), later, strict=True)]
    new = reviews_of(tiny_bundle, far_inputs(1, seed=9), ["model_wrong"], prefix="new")
    read = collect("file:later.jsonl", records([*later, *new]), manifest)
    result = extend_bundle(base=extended, reviews=read.engine_reviews(), calibration=tiny_problem.calibration,
                           out=tmp_path / "b3")  # fmt: skip
    reviews = result.manifest.reviews
    assert reviews is not None
    assert [p.event_id for p in reviews.points] == ["ev-0", "ev-3", "ev-4", "ev-2", "new-0"]
    assert [e.event_id for e in reviews.out_of_scope] == ["ev-1", "ev-5"]
    assert (result.kept, result.replaced, len(result.added)) == (3, 2, 2)
    assert reviews.base.version == "1" and result.manifest.model.version == "1+reviews.5"
    assert reviews.sources[1] == "file:later.jsonl"
    assert [p.source for p in reviews.points] == [0, 0, 0, 1, 1]
    bundle = verify_bundle(tmp_path / "b3")
    assert bundle.manifest.train.size == 605 and len(bundle.train_labels) == 605
    previous = verify_bundle(extended)
    assert bundle.train_labels[600:603].tolist() == previous.train_labels[[600, 602, 603]].tolist()
    bundle.close()
    previous.close()


def _renamed(review: dict[str, Any], event_id: str) -> dict[str, Any]:
    event = dict(review["event"], event_id=event_id)
    return review | {"event_id": event_id, "event": event}


def test_the_report_puts_both_bundles_side_by_side(
    tiny_bundle: Path, tiny_problem: TinyProblem, tmp_path: Path
) -> None:
    lines = reviews_of(tiny_bundle, far_inputs(6), VERDICTS, note="<b>|x|</b>")
    hostile = orjson.loads(lines[0]) | {"event_id": "<img src=x>|*"}
    source = write(tmp_path / "reviews.jsonl", [*lines, orjson.dumps(hostile)])
    far = Dataset(far_inputs(20, seed=11))
    options = ExtendOptions(artifacts=tiny_bundle, reviews=str(source), calibration=tiny_problem.calibration,
                            out=tmp_path / "b2", clean=tiny_problem.test, ood={"far": far}, progress=False)  # fmt: skip
    result = run_extension(options)
    assert set(result["sets"]) == {
        "clean",
        "far",
        "reviewed model_right",
        "reviewed model_wrong",
        "reviewed out_of_scope",
    }
    clean = result["sets"]["clean"]
    assert set(clean["before"]["validity"]) == {"0.05", "0.1", "0.2"} and clean["after"]["dknn_accuracy"] > 0.95
    assert result["reviews"]["skipped"] == {"schema": 1} and result["reviews"]["points"] == 4
    assert result["before"]["train_size"] == 600 and result["after"]["train_size"] == 604
    markdown = (tmp_path / "b2-extend.md").read_text()
    assert "| quarantined at τ = 0.1 |" in markdown and "reviewed model\\_wrong" in markdown
    assert "<img" not in markdown and "&lt;img src=x&gt;\\|\\*" in markdown
    assert json.loads((tmp_path / "b2-extend.json").read_text())["sets"]["far"]["n"] == 20
    out_of_scope = np.load(tmp_path / "b2-extend-out-of-scope.npz")
    assert out_of_scope["x"].shape == (2, 8)  # the tiny model's one input is named x


def test_the_version_says_how_many_reviews() -> None:
    assert version_of("1", 40) == "1+reviews.40"
    long = version_of("v" * 60, 500)
    assert len(long) == 64 and long.endswith("~+reviews.500") and long.startswith("v" * 50)
    assert version_of("1", 3, "2026-05") == "2026-05"
    with pytest.raises(ConfigError):
        version_of("1", 3, "x" * 65)


def test_the_same_reviews_again_change_nothing(
    tiny_bundle: Path, extended: Path, tiny_problem: TinyProblem, tmp_path: Path
) -> None:
    """Idempotent: the same review file read again adds nothing and replaces nothing."""
    manifest = verify_bundle(extended).manifest
    assert manifest.reviews is not None
    source = manifest.reviews.sources[0].removeprefix("file:")
    read = read_reviews(source, manifest)
    result = extend_bundle(base=extended, reviews=read.engine_reviews(), calibration=tiny_problem.calibration,
                           out=tmp_path / "again")  # fmt: skip
    assert (result.kept, result.replaced, result.added) == (4, 0, ())
    assert result.manifest.reviews == manifest.reviews
    assert verify_bundle(tmp_path / "again").train_labels.tolist() == verify_bundle(extended).train_labels.tolist()


def test_exemplars_gain_the_reviewed_rows(tiny_problem: TinyProblem, tmp_path: Path) -> None:
    """A bundle keeping its training rows for reviewers keeps the reviewed inputs too: row i is item i."""
    base = fit_tiny(tiny_problem, tmp_path / "b", exemplars="inputs")
    manifest = verify_bundle(base).manifest
    x = far_inputs(3)
    read = collect(
        "file:r.jsonl", records(reviews_of(base, x, ["model_wrong", "out_of_scope", "model_right"])), manifest
    )
    extend_bundle(base=base, reviews=read.engine_reviews(), calibration=tiny_problem.calibration, out=tmp_path / "b2")
    bundle = verify_bundle(tmp_path / "b2")
    assert bundle.exemplars is not None and bundle.manifest.exemplars == manifest.exemplars
    rows = bundle.exemplars.rows(np.arange(602))["x"]
    np.testing.assert_array_equal(rows[:600], tiny_problem.train.x)
    np.testing.assert_array_equal(rows[600:], x[[0, 2]])
    bundle.close()


def test_review_sources_and_their_bounds(tiny_bundle: Path, tmp_path: Path) -> None:
    assert source_uri("kafka://a:9092,b:9092/reviews") == "kafka://a:9092,b:9092/reviews"
    assert source_uri("reviews.jsonl") == source_uri("file:reviews.jsonl") == "file:reviews.jsonl"
    for bad in ("kafka://a:9092", "kafka://a:9092/", "kafka:///t", "kafka://a:1/t/u", "file:"):
        with pytest.raises(ConfigError, match="--reviews"):
            source_uri(bad)
    manifest = verify_bundle(tiny_bundle).manifest
    (line,) = reviews_of(tiny_bundle, far_inputs(1), ["model_wrong"])
    source = write(tmp_path / "r.jsonl", [line, b"", b"x" * (MAX_REVIEW_BYTES + 10), line])
    read = read_reviews(str(source), manifest)  # a blank line is no record; an overlong one is cut and counted
    assert (read.records, len(read.points), dict(read.skipped)) == (3, 1, {"too_large": 1, "superseded": 1})
    with pytest.raises(ConfigError, match="more than 2 records"):
        read_whole(f"file:{source}", max_records=2, max_record_bytes=MAX_REVIEW_BYTES)
    with pytest.raises(ConnectorError, match="cannot read"):
        read_reviews(str(tmp_path / "missing.jsonl"), manifest)


def test_a_distance_aware_bundle_ranks_what_reviews_vouch_for_among_the_reviewed_points(
    tiny_problem: TinyProblem, tmp_path: Path
) -> None:
    spec = NonconformitySpec(kind="labels+distance", distance_weight=10, distance_reference_size=200)
    base = fit_tiny(tiny_problem, tmp_path / "b", nonconformity=spec)
    x = far_inputs(40, seed=11)  # a cloud far from every blob: B finds it far at every layer
    source = write(tmp_path / "reviews.jsonl", reviews_of(base, x[:30], ["model_right"] * 30))
    read = read_reviews(str(source), verify_bundle(base).manifest)
    extend_bundle(base=base, reviews=read.engine_reviews(), calibration=tiny_problem.calibration, out=tmp_path / "b2")
    bundle = verify_bundle(tmp_path / "b2")
    assert bundle.reviewed_distances is not None
    assert bundle.reviewed_distances.first_item == 600
    assert bundle.reviewed_distances.reference_sorted.shape == (30, len(bundle.manifest.distance_layers))
    before, after = DkNN.from_bundle(base).score(x[30:]), DkNN.from_bundle(tmp_path / "b2").score(x[30:])
    # The held-out rest of the cloud: the model's answers unchanged, judged far by B, near enough by B2.
    assert (before.model_prediction == after.model_prediction).all()
    assert after.credibility.mean() > before.credibility.mean() + 0.2
    assert_held_out_p_values_valid(
        DkNN.from_bundle(tmp_path / "b2").score(tiny_problem.test.x).p_values, tiny_problem.test.y
    )
    # The reference is part of the bundle: without it, the bundle does not load.
    arrays = dict(np.load(tmp_path / "b2" / "calibration.npz"))
    del arrays["reviewed_distance_reference"]
    np.savez(tmp_path / "b2" / "calibration.npz", **arrays)
    document = json.loads((tmp_path / "b2" / "manifest.json").read_text())
    document["files"]["calibration.npz"] = sha256_file(tmp_path / "b2" / "calibration.npz")
    (tmp_path / "b2" / "manifest.json").write_text(json.dumps(document))
    with pytest.raises(BundleError, match="reviewed_distance_reference"):
        verify_bundle(tmp_path / "b2")
