"""`dknn.review.v1` (agent.runtime.wire.review): what a valid review is, its bounds, free text kept as
data, the producer helper, and which of several reviews of one event counts."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from agent.errors import ReviewError
from agent.runtime.wire.review import (
    MAX_REVIEW_BYTES,
    PositionedReview,
    latest_reviews,
    parse_review,
    review_record,
)

EVENT = {
    "schema": "dknn.inference.v1",
    "event_id": "ev-1",
    "model": {"name": "tiny", "version": "1"},
    "input": {"dtype": "float32", "shape": [2], "values": [0.5, 1.5]},
}
QUARANTINE = {"event": EVENT, "dknn": {"prediction": 2, "model_prediction": 1, "credibility": 0.01, "p_values": []}}


def review(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "schema": "dknn.review.v1",
        "event_id": "ev-1",
        "verdict": "model_wrong",
        "label": 0,
        "note": "",
        "reviewer": "ana",
        "reviewed_at": "2026-05-01T12:00:00Z",
        "model": {"name": "tiny", "version": "1"},
        "event": EVENT,
        "dknn": {"prediction": 2, "model_prediction": 1},
    }
    document.update(changes)
    return {key: value for key, value in document.items() if value is not ...}


def raw(document: dict[str, Any]) -> bytes:
    return json.dumps(document).encode()


def refused(document: dict[str, Any] | bytes) -> ReviewError:
    with pytest.raises(ReviewError) as caught:
        parse_review(document if isinstance(document, bytes) else raw(document))
    return caught.value


def test_a_valid_review_of_each_verdict() -> None:
    wrong = parse_review(raw(review()))
    assert (wrong.verdict, wrong.label, wrong.reviewed_label, wrong.event["event_id"]) == ("model_wrong", 0, 0, "ev-1")
    right = parse_review(raw(review(verdict="model_right", label=...)))
    assert right.reviewed_label == 1  # the model's answer
    out = parse_review(raw(review(verdict="out_of_scope", label=..., note=...)))
    assert out.reviewed_label is None and out.note == ""


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"verdict": "model_wrong", "label": ...}, "needs the true `label`"),
        ({"verdict": "model_wrong", "label": 1}, "the model's own answer"),
        ({"verdict": "model_right"}, "`label` goes with model_wrong only"),
        ({"verdict": "out_of_scope", "label": 3}, "`label` goes with model_wrong only"),
        ({"verdict": "unsure"}, "verdict"),
        ({"label": -1}, "label"),
        ({"label": 10_000}, "label"),
        ({"label": "0"}, "label"),  # strict: a JSON string is not a label
        ({"label": 0.0}, "label"),
        ({"note": "x" * 2001}, "note"),
        ({"reviewer": ""}, "reviewer"),
        ({"reviewer": "r" * 129}, "reviewer"),
        ({"event_id": "e" * 129}, "event_id"),
        ({"reviewed_at": "2026-05-01 12:00"}, "RFC 3339"),
        ({"reviewed_at": "2026-05-01T12:00:00"}, "RFC 3339"),  # no zone
        ({"reviewed_at": "2026-13-01T12:00:00Z"}, "reviewed_at"),
        ({"reviewed_at": 1746100800}, "reviewed_at"),
        ({"model": {"name": "tiny"}}, "model.version"),
        ({"event": [1, 2]}, "event"),
        ({"dknn": {"prediction": 1}}, "dknn.model_prediction"),
        ({"dknn": {"prediction": 1, "model_prediction": 1, "credibility": 0.5}}, "dknn.credibility"),
        ({"extra": 1}, "extra"),
    ],
)
def test_bounds_and_rules(changes: dict[str, Any], message: str) -> None:
    error = refused(review(**changes))
    assert error.reason == "schema" and message in str(error), str(error)


def test_cheap_checks_come_first_with_their_own_reasons() -> None:
    assert refused(b"x" * (MAX_REVIEW_BYTES + 1)).reason == "too_large"
    assert refused(b'{"schema": "dknn.review.v1", ').reason == "bad_json"
    assert refused(b"NaN").reason == "bad_json"
    assert refused(b"[1]").reason == "schema"
    error = refused(raw({"schema": "dknn.inference.v1", "event_id": "e"}))
    assert "expected 'dknn.review.v1'" in str(error)
    assert len(str(refused(raw(review(schema="s" * 10_000))))) <= 300  # messages stay one bounded line


def test_markup_in_free_text_is_kept_as_data() -> None:
    markup = '<script>alert("x")</script> | **bold** [link](javascript:x) `code`'
    parsed = parse_review(raw(review(note=markup, reviewer="<b>eve</b>", event_id="<img src=x>")))
    assert (parsed.note, parsed.reviewer, parsed.event_id) == (markup, "<b>eve</b>", "<img src=x>")


def test_the_producer_helper_builds_a_review_from_a_quarantine_record() -> None:
    payload = review_record(
        orjson.dumps(QUARANTINE),
        verdict="model_wrong",
        label=0,
        reviewer="ana",
        model_name="tiny",
        model_version="1",
        note="a sideways 0",
        reviewed_at="2026-05-01T12:00:00+02:00",
    )
    parsed = parse_review(payload)
    assert parsed.event_id == "ev-1" and parsed.event == EVENT and parsed.dknn.model_prediction == 1
    assert parsed.reviewed_time.isoformat() == "2026-05-01T10:00:00+00:00"
    now = parse_review(
        review_record(QUARANTINE, verdict="model_right", reviewer="a", model_name="m", model_version="1")
    )
    assert now.reviewed_at.endswith("Z")


def test_the_helper_refuses_what_would_not_be_a_review() -> None:
    with pytest.raises(ValueError, match="needs the true `label`"):
        review_record(QUARANTINE, verdict="model_wrong", reviewer="a", model_name="m", model_version="1")
    with pytest.raises(ValueError, match="left the event's input out"):
        review_record({**QUARANTINE, "input_omitted": True}, verdict="out_of_scope", reviewer="a", model_name="m",
                      model_version="1")  # fmt: skip
    with pytest.raises(ValueError, match="quarantine record"):
        review_record({"dknn": {}}, verdict="out_of_scope", reviewer="a", model_name="m", model_version="1")


def test_a_batch_input_is_named_as_the_agent_named_it() -> None:
    row = {"form": "oip-v2", "id": "req-7", "row": 1, "rows": 3, "inputs": []}
    quarantine = {"event": row, "dknn": {"prediction": 0, "model_prediction": 0}}
    record = review_record(quarantine, verdict="out_of_scope", reviewer="a", model_name="m", model_version="1")
    assert parse_review(record).event_id == "req-7/1"
    single = {**row, "id": None, "row": 0, "rows": 1}
    record = review_record({**quarantine, "event": single}, verdict="out_of_scope", reviewer="a", model_name="m",
                           model_version="1")  # fmt: skip
    assert parse_review(record).event_id == "request"


def positioned(event_id: str, at: str, partition: int, offset: int, verdict: str = "out_of_scope") -> PositionedReview:
    document = review(event_id=event_id, reviewed_at=at, verdict=verdict, label=... if verdict != "model_wrong" else 0)
    return PositionedReview(parse_review(raw(document)), partition, offset)


def test_the_latest_review_of_an_event_wins_then_the_later_position() -> None:
    first = positioned("a", "2026-05-01T12:00:00Z", 0, 0, "model_wrong")
    later = positioned("a", "2026-05-01T13:00:00+02:00", 0, 1)  # 11:00 UTC: earlier, though read later
    latest = positioned("a", "2026-05-01T12:30:00Z", 0, 2)
    other = positioned("b", "2026-05-01T09:00:00Z", 0, 3)
    tie = positioned("b", "2026-05-01T09:00:00.000Z", 0, 4, "model_wrong")  # same instant, later position
    kept, superseded = latest_reviews([latest, first, later, other, tie])
    assert [(one.review.event_id, one.offset) for one in kept] == [("a", 2), ("b", 4)]
    assert superseded == 3
    again, _ = latest_reviews([tie, other, later, first, latest])  # order read does not matter: idempotent
    assert [(one.review.event_id, one.offset) for one in again] == [("a", 2), ("b", 4)]


def test_the_schema_and_the_parser_agree() -> None:
    """docs/schemas/dknn.review.v1.schema.json says what parse_review accepts, its example included."""
    from tests.unit.test_event_schemas import EXAMPLES, validator

    schema = validator("dknn.review.v1.schema.json")
    example = EXAMPLES["dknn.review.v1.schema.json"]
    assert parse_review(raw(example)).reviewed_label == 1
    accepted = [example, review(), review(verdict="model_right", label=...), review(verdict="out_of_scope", label=None)]
    for document in accepted:
        schema.validate(document)
        parse_review(raw(document))
    refused_both = [
        review(label=...),
        review(verdict="model_right"),
        review(reviewed_at="yesterday"),
        review(note="x" * 2001),
        review(extra=1),
    ]
    for document in refused_both:
        assert not schema.is_valid(document), document
        refused(document)
