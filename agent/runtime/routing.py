"""What the agent writes where (docs/design.md §5): score records, quarantine records, dead letters.

Pure functions from a consumed record and its scores to output bytes and headers, so the routing
rules are testable without a broker. Every output cites its source position (topic, partition,
offset) and the event id, so downstream consumers can de-duplicate at-least-once deliveries.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from agent.engine.manifest import Manifest
from agent.errors import EventError
from agent.runtime.events import DecodedEvent
from connectors.base import Headers, Record

if TYPE_CHECKING:  # the scorer pulls in torch; reading settings must not
    from agent.engine.dknn import ScoreBatch

ACCEPTED, QUARANTINED = "accepted", "quarantined"
VERDICTS = (ACCEPTED, QUARANTINED)
# Conformal validity: on clean traffic about this share of events is quarantined (docs/design.md §2).
DEFAULT_THRESHOLD = 0.1
NEIGHBOURS_SHOWN = 5


@dataclass(frozen=True)
class Outcome:
    """One scored event: its verdict and the scores row it owns."""

    record: Record
    event: DecodedEvent
    scores: ScoreBatch
    row: int
    verdict: str


def verdicts(credibility: np.ndarray, threshold: float) -> np.ndarray:
    """Quarantine strictly below the threshold: validity bounds the clean share at about `threshold`."""
    return np.where(credibility < threshold, QUARANTINED, ACCEPTED)


def provenance_headers(record: Record, manifest: Manifest) -> list[tuple[str, bytes]]:
    return [
        ("dknn.source.topic", record.topic.encode()),
        ("dknn.source.partition", str(record.partition).encode()),
        ("dknn.source.offset", str(record.offset).encode()),
        ("dknn.bundle.model", manifest.model.name.encode()),
        ("dknn.bundle.version", manifest.model.version.encode()),
    ]


def dead_letter_headers(record: Record, error: EventError) -> Headers:
    return [
        ("dknn.error.class", error.reason.encode()),
        ("dknn.error.message", str(error)[:512].encode()),
        ("dknn.source.topic", record.topic.encode()),
        ("dknn.source.partition", str(record.partition).encode()),
        ("dknn.source.offset", str(record.offset).encode()),
    ]


def _verdict_fields(outcome: Outcome) -> dict[str, Any]:
    s, i = outcome.scores, outcome.row
    return {
        "prediction": int(s.prediction[i]),
        "credibility": round(float(s.credibility[i]), 6),
        "confidence": round(float(s.confidence[i]), 6),
        "model_prediction": int(s.model_prediction[i]),
        "verdict": outcome.verdict,
    }


def score_record(outcome: Outcome) -> bytes:
    """The compact record every valid event gets on the scores topic."""
    record = outcome.record
    body = {
        "event_id": outcome.event.event_id,
        "source": {"topic": record.topic, "partition": record.partition, "offset": record.offset},
        **_verdict_fields(outcome),
    }
    return json.dumps(body, separators=(",", ":")).encode()


def quarantine_record(outcome: Outcome, threshold: float, layer_names: tuple[str, ...]) -> bytes:
    """The original event plus a `dknn` block explaining why it is held for review."""
    s, i = outcome.scores, outcome.row
    neighbours = {
        name: {
            "ids": [int(v) for v in s.neighbor_ids[i, layer, :NEIGHBOURS_SHOWN]],
            "labels": [int(v) for v in s.neighbor_labels[i, layer, :NEIGHBOURS_SHOWN]],
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
        "source": {
            "topic": outcome.record.topic,
            "partition": outcome.record.partition,
            "offset": outcome.record.offset,
        },
    }
    return json.dumps({"event": outcome.event.document, "dknn": block}, separators=(",", ":")).encode()
