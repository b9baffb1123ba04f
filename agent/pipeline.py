"""The streaming loop: poll → decode → micro-batch → activations → score → metrics → route → commit.

Delivery is at-least-once (DESIGN.md §5): each polled batch is fully routed, every output is
confirmed by the sink's `flush`, and only then are the batch's offsets committed. Nothing is held
across polls, so a rebalance or a crash can only replay the uncommitted batch, never skip it.
A low-credibility event is a normal result (routed to quarantine); a malformed one is data
(routed to the dead-letter topic with its original bytes); only faults raise. The one exception to
"original bytes": a value the sink refuses outright (over the producer's or broker's size limit
once the dead-letter headers are added) is dead-lettered empty with a `dknn.value.omitted: <bytes>`
header, rather than crash-looping the agent on it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from agent.dknn import DkNN
from agent.events import DecodedEvent, EventError, decode_event
from agent.metrics import Telemetry
from agent.routing import (
    QUARANTINED,
    Outcome,
    dead_letter_headers,
    provenance_headers,
    quarantine_record,
    score_record,
    verdicts,
)
from agent.shift import ShiftDetector
from connectors.base import ConnectorError, Record, Sink, Source, next_offsets

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Topics:
    quarantine: str
    dead_letter: str
    scores: str | None = None


@dataclass(frozen=True)
class PipelineOptions:
    threshold: float = 0.1
    batch_size: int = 64
    max_batch_wait_s: float = 0.2
    max_event_bytes: int = 1 << 20
    flush_timeout_s: float = 30.0
    retry_budget_s: float = 120.0  # how long a retriable broker fault may last before we give up


@dataclass
class PipelineStats:
    """Running totals for the live summary (Prometheus has the same numbers as counters)."""

    consumed: int = 0
    scored: int = 0
    quarantined: int = 0
    dead_lettered: int = 0
    credibility_sum: float = 0.0
    started: float = field(default_factory=time.monotonic)

    @property
    def mean_credibility(self) -> float:
        return self.credibility_sum / self.scored if self.scored else float("nan")


class Pipeline:
    def __init__(
        self,
        scorer: DkNN,
        source: Source,
        sink: Sink,
        topics: Topics,
        telemetry: Telemetry,
        shift: ShiftDetector,
        options: PipelineOptions = PipelineOptions(),
    ) -> None:
        self.scorer = scorer
        self.source = source
        self.sink = sink
        self.topics = topics
        self.telemetry = telemetry
        self.shift = shift
        self.options = options
        self.stats = PipelineStats()
        source.on_revoke(lambda partitions: [telemetry.clear_lag(*tp) for tp in partitions])

    def run(self, stop: threading.Event) -> None:
        """Processes batches until `stop` is set or a finite source runs dry; the batch in hand is
        always finished (routed, confirmed, committed) first."""
        while not stop.is_set():
            with self.telemetry.stage("poll"):
                records = self.source.poll(self.options.batch_size, self.options.max_batch_wait_s)
            self.telemetry.set_ready(bool(self.source.assignment()))
            if records:
                self.process(records)
                for (topic, partition), lag in self.source.lag().items():
                    self.telemetry.set_lag(topic, partition, lag)
            elif self.source.exhausted:
                return

    def process(self, records: list[Record]) -> None:
        """Routes one batch, waits for the sink to confirm it, then commits its offsets."""
        self.telemetry.consumed(len(records))
        self.stats.consumed += len(records)
        self._retrying(lambda: self._route(records), "route and flush")
        offsets = next_offsets(records)
        with self.telemetry.stage("commit"):
            self._retrying(lambda: self.source.commit(offsets), "commit")

    def _route(self, records: list[Record]) -> None:
        valid: list[tuple[Record, DecodedEvent]] = []
        with self.telemetry.stage("decode"):
            for record in records:
                try:
                    event = decode_event(record.value, self.scorer.manifest.input, self.scorer.manifest.model.name,
                                         self.options.max_event_bytes)
                except EventError as error:
                    self._dead_letter(record, error)
                else:
                    valid.append((record, event))
        if valid:
            self._score_and_route(valid)
        with self.telemetry.stage("produce"):
            self.sink.flush(self.options.flush_timeout_s)

    def _dead_letter(self, record: Record, error: EventError) -> None:
        headers = dead_letter_headers(record, error)
        try:
            self.sink.send(self.topics.dead_letter, record.value, key=record.key, headers=headers)
        except ConnectorError as refused:
            if refused.retriable:
                raise
            # The sink refuses these bytes outright: an input value near the broker's size limit
            # plus our headers is over it. A replay would be refused again, for ever (a poison
            # pill), so this one dead letter goes without its value and says so; the original
            # stays on the input topic at the position the headers cite.
            log.warning("dead letter for %s[%d]@%d sent without its %d-byte value: %s",
                        record.topic, record.partition, record.offset, len(record.value), refused)
            key = record.key if record.key is None or len(record.key) <= 1024 else None
            self.sink.send(self.topics.dead_letter, b"", key=key,
                           headers=[*headers, ("dknn.value.omitted", str(len(record.value)).encode())])
        self.telemetry.dead_lettered(error.reason)
        self.stats.dead_lettered += 1

    def _score_and_route(self, valid: list[tuple[Record, DecodedEvent]]) -> None:
        x = np.stack([event.x for _, event in valid])
        scores = self.scorer.score(x, stage=self.telemetry.stage)
        verdict = verdicts(scores.credibility, self.options.threshold)
        quarantined = verdict == QUARANTINED
        self.telemetry.scored(scores.credibility, scores.confidence, scores.prediction, scores.model_prediction,
                              quarantined)
        self.shift.update(scores.label_free_score)
        self.telemetry.set_shift(self.shift.log10_martingale, self.shift.alarm)
        self.stats.scored += len(valid)
        self.stats.quarantined += int(quarantined.sum())
        self.stats.credibility_sum += float(scores.credibility.sum())

        now_ms = time.time() * 1000
        manifest = self.scorer.manifest
        with self.telemetry.stage("produce"):
            for row, (record, event) in enumerate(valid):
                outcome = Outcome(record=record, event=event, scores=scores, row=row, verdict=str(verdict[row]))
                key = record.key or event.event_id.encode()
                headers = provenance_headers(record, manifest)
                if self.topics.scores:
                    self.sink.send(self.topics.scores, score_record(outcome), key=key, headers=headers)
                if quarantined[row]:
                    body = quarantine_record(outcome, self.options.threshold, manifest.layer_names)
                    self.sink.send(self.topics.quarantine, body, key=key, headers=headers)
                if event.timestamp_ms is not None:
                    self.telemetry.observe_latency(max(0.0, (now_ms - event.timestamp_ms) / 1000))

    def _retrying(self, action: Callable[[], T], what: str) -> T:
        """Retries retriable connector faults (a broker restart) with backoff, within a budget.

        Re-routing a batch re-sends its outputs: duplicates are allowed (at-least-once), gaps are not.
        """
        deadline = time.monotonic() + self.options.retry_budget_s
        delay = 0.5
        while True:
            try:
                return action()
            except ConnectorError as error:
                if not error.retriable or time.monotonic() + delay > deadline:
                    raise
                log.warning("%s failed (%s); retrying in %.1fs", what, error, delay)
                time.sleep(delay)
                delay = min(delay * 2, 10.0)
