"""The reviews `dknn-agent extend` reads: from a JSONL file or a Kafka topic, into points to add.

Each record is one `dknn.review.v1` (agent.runtime.wire.review), untrusted like an event. A record
that cannot be used is skipped and counted by reason, with the first message of each reason kept
for the report; an unusable source (missing file, unreachable broker, too many records) is an
error. Per event only the latest review counts (`latest_reviews`), and only then is its event
decoded against the bundle's inputs, exactly as the agent decodes events (the v1 event, or one
input of a batch request as the quarantine record quotes it), so a superseded review costs no
decoding.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agent.engine.extend import NewPoint, Reviews
from agent.engine.manifest import Manifest
from agent.engine.provenance import ReviewedEvent, ReviewedPoint
from agent.errors import ConfigError, EventError, ReviewError
from agent.runtime.wire import oip_v2, v1
from agent.runtime.wire.review import (
    MAX_REVIEW_BYTES,
    PositionedReview,
    Review,
    event_id_of,
    latest_reviews,
    parse_review,
)
from connectors.base import Record
from connectors.registry import read_whole

MAX_REVIEW_RECORDS = 100_000  # records one source may hold: reviews are a person's work, not a stream
KAFKA_TIMEOUT_S = 60.0
SUPERSEDED = "superseded"  # not an error: a later review of the same event counts instead


@dataclass
class ReadReviews:
    """What a source's reviews amount to, for `extend_bundle` and the report."""

    source: str
    records: int = 0
    points: list[NewPoint] = field(default_factory=list)
    out_of_scope: list[ReviewedEvent] = field(default_factory=list)
    out_of_scope_inputs: list[tuple[np.ndarray, ...]] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> records (superseded included)
    first_skip: dict[str, str] = field(default_factory=dict)  # reason -> the first such record's message

    @property
    def usable(self) -> int:
        return len(self.points) + len(self.out_of_scope)

    def engine_reviews(self) -> Reviews:
        return Reviews(source=self.source, points=tuple(self.points), out_of_scope=tuple(self.out_of_scope))

    def skip(self, reason: str, message: str, count: int = 1) -> None:
        self.skipped[reason] += count
        self.first_skip.setdefault(reason, message)


def source_uri(text: str) -> str:
    """`--reviews`: a `kafka://HOST:PORT[,HOST:PORT]/TOPIC`, a `file:PATH`, or a plain path."""
    if text.startswith("kafka://"):
        servers, slash, topic = text.removeprefix("kafka://").partition("/")
        if not servers or not slash or not topic or "/" in topic:
            raise ConfigError(f"--reviews {text!r}: a topic is named as kafka://HOST:PORT[,HOST:PORT]/TOPIC")
        return text
    path = text.removeprefix("file:")
    if not path:
        raise ConfigError("--reviews needs a JSONL file or kafka://HOST:PORT/TOPIC")
    return f"file:{Path(path)}"


def read_reviews(source: str, manifest: Manifest) -> ReadReviews:
    """Every review at `source`, the latest per event, each decoded against the bundle's inputs."""
    uri = source_uri(source)
    records = read_whole(
        uri, max_records=MAX_REVIEW_RECORDS, max_record_bytes=MAX_REVIEW_BYTES, timeout_s=KAFKA_TIMEOUT_S
    )
    return collect(uri, records, manifest)


def collect(source: str, records: list[Record], manifest: Manifest) -> ReadReviews:
    """The reviews of `records` (read from `source`): parsed, the latest per event, decoded."""
    result = ReadReviews(source=source, records=len(records))
    parsed = []
    for record in records:
        where = _where(source, record.partition, record.offset)
        try:
            review = parse_review(record.value)
        except ReviewError as exc:
            result.skip(exc.reason, f"{where}: {exc}")
            continue
        parsed.append(PositionedReview(review, record.partition, record.offset))
    latest, superseded = latest_reviews(parsed)
    if superseded:
        result.skip(SUPERSEDED, f"{superseded} review(s) replaced by a later review of the same event", superseded)
    for one in latest:
        where = _where(source, one.partition, one.offset)
        try:
            inputs = review_inputs(one.review, manifest)
        except ReviewError as exc:
            result.skip(exc.reason, f"{where}: {exc}")
            continue
        _add(result, one, inputs)
    return result


def _where(source: str, partition: int, offset: int) -> str:
    """A review's position as a person finds it: a file's line, a topic's partition and offset."""
    return f"line {offset + 1}" if source.startswith("file:") else f"partition {partition} offset {offset}"


def _add(result: ReadReviews, one: PositionedReview, inputs: tuple[np.ndarray, ...]) -> None:
    review = one.review
    provenance: dict[str, Any] = {
        "event_id": review.event_id,
        "verdict": review.verdict,
        "reviewer": review.reviewer,
        "reviewed_at": review.reviewed_at,
        "source": 0,  # the engine sets the index of this source among the bundle's
        "partition": one.partition,
        "offset": one.offset,
    }
    label = review.reviewed_label
    if label is None:
        result.out_of_scope.append(ReviewedEvent(**provenance))
        result.out_of_scope_inputs.append(inputs)
        return
    point = ReviewedPoint(**provenance, label=label)
    result.points.append(NewPoint(inputs=inputs, model_answer=review.dknn.model_prediction, review=point))


def review_inputs(review: Review, manifest: Manifest) -> tuple[np.ndarray, ...]:
    """The reviewed event's input arrays, one per bundle input, checked as the agent checks events.
    ReviewError: another model, labels beyond its classes, no input, or an input that does not fit."""
    model = manifest.model
    if review.model.name != model.name:
        raise ReviewError(
            "unknown_model", f"the review is for model {review.model.name!r}, the bundle is {model.name!r}"
        )
    for what, label in (("label", review.reviewed_label), ("model_prediction", review.dknn.model_prediction)):
        if label is not None and label >= model.num_classes:
            raise ReviewError("schema", f"{what} {label} is not one of the model's {model.num_classes} classes")
    event = review.event
    claimed = event_id_of(event)
    if claimed is not None and claimed != review.event_id:
        raise ReviewError("schema", f"event_id {review.event_id!r} is not the event's own id {claimed[:128]!r}")
    return event_inputs(event, manifest)


def event_inputs(event: dict[str, Any], manifest: Manifest) -> tuple[np.ndarray, ...]:
    """The input arrays of an event as a quarantine record quotes it (a v1 event, or one input of a
    batch request), one per bundle input, decoded and checked by the agent's own decoders: what
    `extend` adds and what the review console shows. ReviewError: no input, or one that does not fit."""
    try:
        if "schema" in event or "event_id" in event:  # a v1 event, as it arrived
            if "input" not in event and "inputs" not in event:
                raise ReviewError("no_input", "the event carries no input (the quarantine record left it out)")
            return v1.decode_inputs(v1.validate(event), manifest.inputs)
        if oip_v2.is_request(event):  # one input of a batch request, as the quarantine record quotes it
            _, arrays = oip_v2.decode_request(oip_v2.parse_request(event), manifest.inputs, max_rows=1)
            return tuple(array[0] for array in arrays)
    except EventError as exc:
        raise ReviewError("input", f"the event's input does not fit the bundle: {exc}") from None
    raise ReviewError("no_input", "the event is neither a dknn.inference.v1 event nor a quoted request input")
