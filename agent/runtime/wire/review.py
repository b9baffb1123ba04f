"""`dknn.review.v1`: a person's verdict on a quarantined event (docs/design.md §5.2).

A reviewer (today a script, later a web console) reads a quarantine record and answers one of
three things about the event in it: the model was right and the quarantine a false alarm
(`model_right`), the model was wrong and here is the true `label` (`model_wrong`), or the input is
nothing the model should answer at all (`out_of_scope`). `dknn-agent extend` reads these records
and adds the reviewed inputs to a new bundle's indexes, so a review carries the event as the
quarantine record carried it: it is self-contained, nothing has to be fetched from the input topic.

A review is keyed by its event id and idempotent: of several reviews of one event, the one with
the latest `reviewed_at` wins, then the later position in its source (`latest_reviews`).

Reviews are read from a topic or a file anyone with write access can fill, so they are untrusted
like events: `parse_review` fails in one way only, `ReviewError` with a bounded reason, and checks
cheapest-first (size, JSON, the schema name, then the model). Free text (`note`, `reviewer`) is
kept exactly as written: it is data, never markup, and whoever displays it escapes it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal, get_args

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agent.engine.manifest import MAX_CLASSES
from agent.errors import ReviewError
from agent.runtime.wire.v1 import ModelRef, schema_message

SCHEMA: Final = "dknn.review.v1"
MAX_REVIEW_BYTES = 2 * 1024 * 1024  # a quarantine record is at most 1,000,000 bytes by default
MAX_NOTE_CHARS = 2000
MAX_REVIEWER_CHARS = 128
ReviewVerdict = Literal["model_right", "model_wrong", "out_of_scope"]
REVIEW_VERDICTS: tuple[ReviewVerdict, ...] = get_args(ReviewVerdict)
# RFC 3339 date-time: a date, "T", a time with optional fraction, and a zone ("Z" or ±hh:mm).
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$")


class _Strict(BaseModel):
    # As the events' models: a JSON "7" is not the label 7, unknown fields are refused.
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)


class QuarantineAnswers(_Strict):
    """What the quarantine record's `dknn` block said: DkNN's label and the model's own answer."""

    prediction: int = Field(ge=0, lt=MAX_CLASSES)
    model_prediction: int = Field(ge=0, lt=MAX_CLASSES)


class Review(_Strict):
    """One review of one quarantined event."""

    schema_: Literal["dknn.review.v1"] = Field(alias="schema")
    event_id: str = Field(min_length=1, max_length=128, description="the quarantined event's id: the record key")
    verdict: ReviewVerdict = Field(
        description="model_right: the model's answer is right (a false alarm); model_wrong: it is not, `label` is; "
        "out_of_scope: the input is nothing the model should answer"
    )
    label: int | None = Field(None, ge=0, lt=MAX_CLASSES, description="the true label: with model_wrong only")
    note: str = Field("", max_length=MAX_NOTE_CHARS, description="free text, kept as data")
    reviewer: str = Field(min_length=1, max_length=MAX_REVIEWER_CHARS)
    reviewed_at: str = Field(
        max_length=40,
        json_schema_extra={"format": "date-time", "pattern": _RFC3339.pattern},  # checked by `_rfc3339`
        description="RFC 3339 date-time with a zone: the latest review of an event wins",
    )
    model: ModelRef = Field(description="the bundle's model that quarantined the event (dknn.bundle.* headers)")
    event: dict[str, Any] = Field(description="the quarantined event, as the quarantine record carried it")
    dknn: QuarantineAnswers

    @field_validator("reviewed_at")
    @classmethod
    def _rfc3339(cls, text: str) -> str:
        if not _RFC3339.match(text):
            raise ValueError("reviewed_at must be an RFC 3339 date-time with a zone, e.g. 2026-05-01T12:00:00Z")
        parse_time(text)  # a month 13 matches the pattern
        return text

    @model_validator(mode="after")
    def _label_goes_with_model_wrong(self) -> Review:
        if self.verdict == "model_wrong":
            if self.label is None:
                raise ValueError("a model_wrong review needs the true `label`")
            if self.label == self.dknn.model_prediction:
                raise ValueError(f"label {self.label} is the model's own answer: that is a model_right review")
        elif self.label is not None:
            raise ValueError(f"`label` goes with model_wrong only, not {self.verdict}")
        return self

    @property
    def reviewed_time(self) -> datetime:
        return parse_time(self.reviewed_at)

    @property
    def reviewed_label(self) -> int | None:
        """The label the input goes into the indexes under: the model's answer, the given one, or none."""
        if self.verdict == "model_right":
            return self.dknn.model_prediction
        return self.label


def parse_time(text: str) -> datetime:
    """An RFC 3339 date-time as an aware UTC datetime (ValueError if it is none)."""
    moment = datetime.fromisoformat(text.upper().replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError("reviewed_at needs a zone")
    return moment.astimezone(UTC)


def parse_review(raw: bytes) -> Review:
    """One review from a record's value; raises only `ReviewError`, cheapest check first."""
    if not isinstance(raw, (bytes, bytearray)):
        raise ReviewError("schema", f"a review must be bytes, got {type(raw).__name__}")
    if len(raw) > MAX_REVIEW_BYTES:
        raise ReviewError("too_large", f"the review is {len(raw)} bytes, limit {MAX_REVIEW_BYTES}")
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ReviewError("bad_json", f"not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ReviewError("schema", f"a review must be a JSON object, got {type(document).__name__}")
    if document.get("schema") != SCHEMA:
        found = document.get("schema")
        shown = repr(found[:64]) if isinstance(found, str) else type(found).__name__
        raise ReviewError("schema", f"schema is {shown}, expected {SCHEMA!r}")
    try:
        return Review.model_validate(document)
    except ValidationError as exc:
        raise ReviewError("schema", schema_message(exc)) from None
    except (RecursionError, ValueError, TypeError) as exc:  # pydantic internals, belt and braces
        raise ReviewError("schema", f"invalid review: {type(exc).__name__}") from None


def event_id_of(event: Mapping[str, Any]) -> str | None:
    """The id the agent gave the event a quarantine record carries (agent.runtime.events): a v1
    event's `event_id`; for one input of a batch request, the request id (or "request") with
    `/row` when the batch had several. None where the event says neither."""
    if "event_id" in event:
        value = event["event_id"]
        return value if isinstance(value, str) else None
    request, row, rows = event.get("id"), event.get("row"), event.get("rows")
    if not isinstance(row, int) or not isinstance(rows, int) or (request is not None and not isinstance(request, str)):
        return None
    return (request or "request") + (f"/{row}" if rows > 1 else "")


@dataclass(frozen=True)
class PositionedReview:
    """A parsed review and where it was read: partition and offset (a file: partition 0, its line)."""

    review: Review
    partition: int
    offset: int

    @property
    def order(self) -> tuple[datetime, int, int]:
        """Which of two reviews of one event wins: the later reviewed_at, then the later position."""
        return (self.review.reviewed_time, self.partition, self.offset)


def latest_reviews(reviews: Iterable[PositionedReview]) -> tuple[list[PositionedReview], int]:
    """The winning review of every event (in source order) and how many were superseded."""
    winners: dict[str, PositionedReview] = {}
    seen = 0
    for one in reviews:
        seen += 1
        current = winners.get(one.review.event_id)
        if current is None or one.order > current.order:
            winners[one.review.event_id] = one
    kept = sorted(winners.values(), key=lambda one: (one.partition, one.offset))
    return kept, seen - len(kept)


def review_record(
    quarantine: bytes | Mapping[str, Any],
    *,
    verdict: ReviewVerdict,
    reviewer: str,
    model_name: str,
    model_version: str,
    label: int | None = None,
    note: str = "",
    reviewed_at: datetime | str | None = None,
) -> bytes:
    """The producer side: a review of one quarantine record, as a console would publish it (with
    `key=` the event id, which `Review.event_id` holds). `model_name` / `model_version` are the
    record's `dknn.bundle.model` / `dknn.bundle.version` headers; `reviewed_at` defaults to now.
    Raises ValueError where the result would not be a valid review, so a mistake fails here."""
    record = orjson.loads(quarantine) if isinstance(quarantine, (bytes, bytearray)) else dict(quarantine)
    if not isinstance(record, dict) or not isinstance(record.get("event"), dict) or "dknn" not in record:
        raise ValueError("expected a quarantine record: an object with `event` and `dknn`")
    if record.get("input_omitted"):
        raise ValueError("the quarantine record left the event's input out (it was too large): fetch the event first")
    event, block = record["event"], record["dknn"]
    event_id = event_id_of(event)
    if event_id is None:
        raise ValueError("the quarantine record's event names no id")
    when = reviewed_at or datetime.now(UTC)
    document = {
        "schema": SCHEMA,
        "event_id": event_id,
        "verdict": verdict,
        **({"label": label} if label is not None else {}),
        "note": note,
        "reviewer": reviewer,
        "reviewed_at": when if isinstance(when, str) else when.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "model": {"name": model_name, "version": model_version},
        "event": event,
        "dknn": {"prediction": block.get("prediction"), "model_prediction": block.get("model_prediction")},
    }
    payload = orjson.dumps(document)
    try:
        parse_review(payload)
    except ReviewError as exc:
        raise ValueError(str(exc)) from None
    return payload
