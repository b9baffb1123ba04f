"""What the agent writes where (docs/design.md §5): score records, quarantine records, dead letters.

Pure functions from a consumed record and its scores to output messages, so the routing rules are
testable without a broker. Every output cites its source position (topic, partition, offset) and
the event id, so downstream consumers can de-duplicate at-least-once deliveries.

No single event may stop the agent, so every message carries a `fallback`: what to send instead
when the sink refuses it for good (too large for the topic, not authorised to write there).
The chains end in a dead letter without a value, which any writable dead-letter topic takes:

    quarantine record ─► the same without the event's input ─► "undeliverable" dead letter ─► empty dead letter
    score record ─────────────────────────────────────────────► "undeliverable" dead letter ─► empty dead letter
    dead letter (original bytes) ─────────────────────────────────────────────────────────────► empty dead letter

An empty dead letter says `dknn.value.omitted: <bytes>`; the original stays on the input topic at
the position its headers cite.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np
import orjson

from agent.engine.manifest import Manifest
from agent.runtime.events import DecodedEvent
from connectors.base import Headers, Record

if TYPE_CHECKING:  # the scorer pulls in torch; reading settings must not
    from agent.engine.dknn import ScoreBatch


class Verdict(StrEnum):
    """What became of a scored event, as text on the wire: the `verdict` of score and quarantine
    records and the `verdict` label of `dknn_events_scored_total`."""

    ACCEPTED = "accepted"
    QUARANTINED = "quarantined"


# Conformal validity: on clean traffic about this share of events is quarantined (docs/design.md §2).
DEFAULT_THRESHOLD = 0.1
NEIGHBOURS_SHOWN = 5
LABELS_COUNTED = 10  # a layer's label histogram keeps its most frequent labels: bounded for 10,000 classes
UNDELIVERABLE = "undeliverable"  # the dead-letter reason of a valid event whose output was refused
Output = Literal["scores", "quarantine", "dead_letter"]  # what a message is: a bounded metric label
OUTPUTS: tuple[Output, ...] = get_args(Output)
_KEY_LIMIT = 1024  # bytes of the original key an empty dead letter keeps


@dataclass(frozen=True)
class Topics:
    quarantine: str
    dead_letter: str
    scores: str | None = None


@dataclass(frozen=True)
class Message:
    """One output record; `fallback` is sent instead when the sink refuses this one for good."""

    output: Output
    topic: str
    value: bytes
    key: bytes | None
    headers: Headers
    fallback: Message | None = None


@dataclass(frozen=True)
class Outcome:
    """One scored event: its verdict and the scores row it owns."""

    record: Record
    event: DecodedEvent
    scores: ScoreBatch
    row: int
    quarantined: bool
    drift_change: bool = False  # a change alarm fired at this event
    drift_shifted: bool = False  # the traffic was in the shifted state after this event

    @property
    def verdict(self) -> Verdict:
        return Verdict.QUARANTINED if self.quarantined else Verdict.ACCEPTED


def quarantined(credibility: np.ndarray, threshold: float) -> np.ndarray:
    """Which events to quarantine (bool per event): strictly below the threshold, so validity
    bounds the clean share at about `threshold`."""
    return np.asarray(credibility < threshold, dtype=bool)


def _source_headers(record: Record) -> list[tuple[str, bytes]]:
    return [
        ("dknn.source.topic", record.topic.encode()),
        ("dknn.source.partition", str(record.partition).encode()),
        ("dknn.source.offset", str(record.offset).encode()),
    ]


def provenance_headers(record: Record, manifest: Manifest) -> list[tuple[str, bytes]]:
    return [
        *_source_headers(record),
        ("dknn.bundle.model", manifest.model.name.encode()),
        ("dknn.bundle.version", manifest.model.version.encode()),
    ]


def dead_letter(record: Record, reason: str, message: str, topic: str) -> Message:
    """The original bytes with why they could not be scored, falling back to no value at all."""
    headers = [
        ("dknn.error.class", reason.encode()),
        ("dknn.error.message", message[:512].encode("utf-8", "replace")),
        *_source_headers(record),
    ]
    short_key = record.key if record.key is None or len(record.key) <= _KEY_LIMIT else None
    omitted = Message(
        "dead_letter", topic, b"", short_key, [*headers, ("dknn.value.omitted", str(len(record.value)).encode())]
    )
    return Message("dead_letter", topic, record.value, record.key, headers, fallback=omitted)


def _verdict_fields(outcome: Outcome) -> dict[str, Any]:
    s, i = outcome.scores, outcome.row
    return {
        "prediction": int(s.prediction[i]),
        "credibility": round(float(s.credibility[i]), 6),
        "confidence": round(float(s.confidence[i]), 6),
        "model_prediction": int(s.model_prediction[i]),
        "verdict": outcome.verdict,
    }


def _position(record: Record) -> dict[str, Any]:
    return {"topic": record.topic, "partition": record.partition, "offset": record.offset}


def score_record(outcome: Outcome) -> bytes:
    """The compact record every valid event gets on the scores topic."""
    body = {
        "event_id": outcome.event.event_id,
        "form": outcome.event.form,
        "source": _position(outcome.record),
        **_verdict_fields(outcome),
        "drift": {"change": outcome.drift_change, "shifted": outcome.drift_shifted},
    }
    return orjson.dumps(body)


def label_counts(labels: np.ndarray, limit: int = LABELS_COUNTED) -> dict[str, int]:
    """How many of a layer's k neighbours carry each label, the `limit` most frequent first (ties: the
    lower label first); "-1" counts missing neighbours, which vote against every label. The five ids
    shown say who the nearest are; this says how the whole vote went, in at most `limit` entries
    whatever the number of classes."""
    values, counts = np.unique(labels, return_counts=True)
    order = np.lexsort((values, -counts))[:limit]
    return {str(int(values[j])): int(counts[j]) for j in order}


def quarantine_record(outcome: Outcome, threshold: float, layer_names: tuple[str, ...], max_bytes: int) -> bytes:
    """The original event plus a `dknn` block explaining why it is held for review.

    Re-serialising an event can make it bigger than it arrived (`1e-5` becomes `0.00001`), so a
    record over `max_bytes` carries the event without its input (`"input_omitted": true`); the
    input stays on the input topic at `dknn.source`.
    """
    s, i = outcome.scores, outcome.row
    neighbours = {
        name: {
            "ids": [int(v) for v in s.neighbor_ids[i, layer, :NEIGHBOURS_SHOWN]],
            "labels": [int(v) for v in s.neighbor_labels[i, layer, :NEIGHBOURS_SHOWN]],
            "label_counts": label_counts(s.neighbor_labels[i, layer]),
        }
        for layer, name in enumerate(layer_names)
    }
    credibility = float(s.credibility[i])
    block = {
        **_verdict_fields(outcome),
        "p_values": [round(float(p), 6) for p in s.p_values[i]],
        "served_label": outcome.event.served_label,
        "reason": f"credibility {credibility:.4f} below threshold {threshold}",
        "neighbors": neighbours,
        "source": _position(outcome.record),
    }
    body = orjson.dumps({"event": outcome.event.document, "dknn": block})
    if len(body) <= max_bytes:
        return body
    event = {key: value for key, value in outcome.event.document.items() if key != "input"}
    return orjson.dumps({"event": event, "input_omitted": True, "dknn": block})


def scored_messages(
    outcome: Outcome, topics: Topics, manifest: Manifest, threshold: float, max_bytes: int
) -> list[Message]:
    """The score record (when a scores topic is set) and, when quarantined, the quarantine record."""
    record = outcome.record
    key = record.key or outcome.event.event_id.encode()
    headers = provenance_headers(record, manifest)
    out = []
    if topics.scores:
        refused = dead_letter(
            record, UNDELIVERABLE, f"the score record was refused by {topics.scores}", topics.dead_letter
        )
        out.append(Message("scores", topics.scores, score_record(outcome), key, headers, fallback=refused))
    if outcome.quarantined:
        refused = dead_letter(
            record, UNDELIVERABLE, f"the quarantine record was refused by {topics.quarantine}", topics.dead_letter
        )
        trimmed = quarantine_record(outcome, threshold, manifest.layer_names, max_bytes=0)
        full = quarantine_record(outcome, threshold, manifest.layer_names, max_bytes)
        if full != trimmed:
            refused = Message("quarantine", topics.quarantine, trimmed, key, headers, fallback=refused)
        out.append(Message("quarantine", topics.quarantine, full, key, headers, fallback=refused))
    return out
