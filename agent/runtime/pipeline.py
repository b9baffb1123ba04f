"""The streaming loop: poll → decode → score → route → confirm → account → commit.

Delivery is at-least-once (docs/design.md §5): each polled batch is fully routed, every output is
confirmed by the sink's `flush`, and only then are the batch's offsets committed. Batches are
finished and committed in the order they were polled.

Under a backlog the next batch is scored while this one is delivered. Scoring is torch and
Annoy, which release the interpreter lock; delivery is the Kafka client's Python code, which
holds it, and waits on the broker. Overlapped, they fill each other's idle time on the cores (9%
more events/s on average in `bench stream`, design §5.4). So one batch can be in flight across a
poll: at most two batches are uncommitted at any time, and a crash or a rebalance replays them
(duplicates downstream), never skips one.

Side effects happen once per batch, in this order, whatever the broker does:

1. `_begin`: decode every record and start scoring the valid ones (on the scoring thread).
2. `_prepare`: take the scores, feed the drift detector, build every output message. Pure but for
   the detector and the stage timers, so it runs once.
3. `_deliver`: send the messages and wait for the sink to confirm them. This is the only step a
   retriable fault repeats; a repeat re-sends the same messages (duplicates are allowed,
   gaps are not).
4. `_account`: counters, histograms and the live summary, once the outputs are confirmed, so a
   retried flush never counts an event twice.
5. commit the offsets (retried on its own).

A low-credibility event is a normal result (routed to quarantine); a malformed one is data
(routed to the dead-letter topic with its original bytes); only faults raise. A record the sink
refuses for good (too large for the topic, not authorised) is replaced by its fallback
(`agent.runtime.routing`), so no single event can crash-loop the agent; a commit the group
refuses after a rebalance is logged and counted, and the batch goes to the partition's new owner.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from agent.engine.dknn import DkNN, ScoreBatch
from agent.engine.drift import DriftMonitor
from agent.errors import CommitRejectedError, ConnectorError, DeliveryRefusedError, EventError
from agent.runtime.events import DecodedEvent, Expectations, ServedAnswers, decode_record
from agent.runtime.routing import Message, Outcome, Topics, dead_letter, quarantined, scored_messages
from agent.runtime.served import Comparisons, ServedAnswerCheck
from agent.runtime.settings import AgentSettings, UnknownModelPolicy
from agent.runtime.telemetry import Telemetry
from connectors.base import Record, Sink, Source, next_offsets

log = logging.getLogger(__name__)
T = TypeVar("T")


def _setting_default(name: str) -> Any:
    """The default of an agent setting: the settings model is the one source of every default."""
    return AgentSettings.model_fields[name].default


@dataclass(frozen=True)
class PipelineOptions:
    """The settings the loop itself reads; `from_settings` copies them from the agent's settings."""

    threshold: float = _setting_default("threshold")
    batch_size: int = _setting_default("batch_size")
    max_batch_wait_s: float = _setting_default("max_batch_wait_s")
    max_event_bytes: int = _setting_default("max_event_bytes")
    max_output_bytes: int = _setting_default("max_output_bytes")
    flush_timeout_s: float = _setting_default("flush_timeout_s")
    retry_budget_s: float = _setting_default("retry_budget_s")
    max_inputs_per_event: int = _setting_default("max_inputs_per_event")
    model_names: tuple[str, ...] = _setting_default("model_names")  # besides the bundle's own
    unknown_model: UnknownModelPolicy = _setting_default("unknown_model")

    @classmethod
    def from_settings(cls, settings: AgentSettings) -> PipelineOptions:
        return cls(**{name: getattr(settings, name) for name in cls.__dataclass_fields__})


@dataclass
class PipelineStats:
    """Running totals for the live summary (Prometheus has the same numbers as counters)."""

    consumed: int = 0
    scored: int = 0
    skipped: int = 0
    quarantined: int = 0
    dead_lettered: int = 0
    credibility_sum: float = 0.0
    shifted: bool = False  # the drift state signal
    change_alarms: int = 0  # the drift change signal's alarms so far
    started: float = field(default_factory=time.monotonic)

    @property
    def mean_credibility(self) -> float:
        return self.credibility_sum / self.scored if self.scored else float("nan")


@dataclass(frozen=True)
class StartedBatch:
    """One polled batch, decoded, its valid inputs being scored; nothing sent yet."""

    records: list[Record]
    invalid: list[tuple[Record, EventError]]
    valid: list[tuple[Record, DecodedEvent]]  # one per input to score (a batch request gives several)
    answers: list[ServedAnswers]  # responses: what servers answered
    skipped: int  # records for another model, skipped (`unknown_model: skip`)
    scores: Future[ScoreBatch] | None  # None when no input was valid


@dataclass(frozen=True)
class PreparedBatch:
    """One polled batch, decoded and scored, with every output it owes; nothing sent yet."""

    invalid: list[tuple[Record, EventError]]
    valid: list[tuple[Record, DecodedEvent]]
    skipped: int
    scores: ScoreBatch | None
    quarantined: np.ndarray  # (len(valid),) bool
    comparisons: Comparisons  # served answers against recomputed ones
    messages: list[Message]
    refused: list[Message] = field(default_factory=list)  # replaced by their fallbacks on delivery


def _freeze_startup_heap() -> None:
    """Moves every object alive now (torch, the model, the clients: about 200,000) out of the
    cyclic garbage collector's reach.

    Why: they live as long as the process, yet each full collection walks all of them — about
    100 ms on the reference bundle, every few seconds under load (measured). That pause lands on
    whichever events are in flight and sets the p99 latency. Frozen, a full collection walks only
    what the loop itself allocated. Freezing twice (a second pipeline in one process) is harmless.
    """
    gc.collect()  # free start-up garbage first: frozen objects are never collected
    gc.freeze()


class Pipeline:
    def __init__(
        self,
        scorer: DkNN,
        source: Source,
        sink: Sink,
        topics: Topics,
        telemetry: Telemetry,
        drift: DriftMonitor,
        options: PipelineOptions | None = None,
    ) -> None:
        self.scorer = scorer
        self.source = source
        self.sink = sink
        self.topics = topics
        self.telemetry = telemetry
        self.drift = drift
        self.options = options or PipelineOptions()
        self.stats = PipelineStats()
        manifest = scorer.manifest
        self.expected = Expectations(
            inputs=manifest.inputs,
            model_names=frozenset({manifest.model.name, *self.options.model_names}),
            num_classes=manifest.model.num_classes,
            max_bytes=self.options.max_event_bytes,
            max_rows=self.options.max_inputs_per_event,
        )
        self.served = ServedAnswerCheck()
        telemetry.watch_drift(drift)
        source.on_revoke(self._forget_partitions)

    def _forget_partitions(self, partitions: set[tuple[str, int]]) -> None:
        """A revoked partition's lag belongs to its new owner now."""
        for topic, partition in partitions:
            self.telemetry.clear_lag(topic, partition)

    def run(self, stop: threading.Event) -> None:
        """Processes batches until `stop` is set or a finite source runs dry; the batches in hand
        are always finished (routed, confirmed, committed) first.

        A full batch means a backlog: the next batch is polled and scored while this one is
        delivered, and that poll takes only what the source already holds (timeout 0), since
        waiting for more would hold back the delivery. A short batch means the loop has caught up:
        it is delivered at once, so overlapping never adds latency to a stream that keeps up.
        """
        _freeze_startup_heap()
        in_flight: StartedBatch | None = None
        # Leaving the block waits for a batch still being scored; a fault leaves it uncommitted,
        # so it is replayed, never lost.
        with ThreadPoolExecutor(1, thread_name_prefix="dknn-scoring") as scoring:
            while not stop.is_set():
                wait_s = 0.0 if in_flight else self.options.max_batch_wait_s
                with self.telemetry.stage("poll"):
                    records = self.source.poll(self.options.batch_size, wait_s)
                self.telemetry.set_ready(bool(self.source.assignment()))
                started = self._begin(records, scoring.submit) if records else None
                if in_flight:
                    self._finish(in_flight)
                    in_flight = None
                if started and len(records) == self.options.batch_size:
                    in_flight = started  # finished after the next poll
                elif started:
                    self._finish(started)
                if records:
                    for (topic, partition), lag in self.source.lag().items():
                        self.telemetry.set_lag(topic, partition, lag)
                elif in_flight is None and self.source.exhausted:
                    return
            if in_flight:
                self._finish(in_flight)

    def _finish(self, started: StartedBatch) -> None:
        """Routes one batch, waits for the sink to confirm it, accounts for it, then commits."""
        batch = self._prepare(started)
        self._retrying(lambda: self._deliver(batch), "deliver and flush")
        self._account(batch)
        offsets = next_offsets(started.records)
        with self.telemetry.stage("commit"):
            try:
                self._retrying(lambda: self.source.commit(offsets), "commit")
            except CommitRejectedError as rejected:
                # Every output of the batch is confirmed; whoever owns the partitions now replays
                # it (duplicates downstream, never a gap). The consumer rejoins on its next poll.
                log.warning("%s; the batch will be redelivered to the partitions' new owner", rejected)
                self.telemetry.commit_rejected()

    # -- 1. decode and start scoring ----------------------------------------------------------

    def _begin(self, records: list[Record], submit: Callable[..., Future[ScoreBatch]]) -> StartedBatch:
        self.telemetry.consumed(len(records))
        self.stats.consumed += len(records)
        invalid: list[tuple[Record, EventError]] = []
        valid: list[tuple[Record, DecodedEvent]] = []
        answers: list[ServedAnswers] = []
        skipped = 0
        with self.telemetry.stage("decode"):
            for record in records:
                try:
                    decoded = decode_record(record.value, record.headers, self.expected)
                except EventError as error:
                    if error.reason == "unknown_model" and self.options.unknown_model == "skip":
                        skipped += 1
                    else:
                        invalid.append((record, error))
                    continue
                valid.extend((record, event) for event in decoded.events)
                if decoded.answers is not None:
                    answers.append(decoded.answers)
        scores = None
        if valid:
            inputs = [np.stack([event.inputs[i] for _, event in valid]) for i in range(len(self.expected.inputs))]
            scores = submit(self.scorer.score, inputs, stage=self.telemetry.stage)
        return StartedBatch(records, invalid, valid, answers, skipped, scores)

    # -- 2. route: build every message (once) -------------------------------------------------

    def _prepare(self, started: StartedBatch) -> PreparedBatch:
        manifest = self.scorer.manifest
        invalid, valid = started.invalid, started.valid
        topic = self.topics.dead_letter
        messages = [dead_letter(record, error.reason, str(error), topic) for record, error in invalid]
        scores, held = None, np.zeros(0, dtype=bool)
        comparisons = Comparisons()
        for answers in started.answers:
            self.served.served(answers, comparisons)
        if started.scores is not None:
            scores = started.scores.result()
            held = quarantined(scores.credibility, self.options.threshold)
            # Once per batch, like everything in this step: the signals go into the score records.
            signals = self.drift.update(scores.label_free_score, held)
            self._compare_served(valid, scores, comparisons)
            with self.telemetry.stage("encode"):
                for row, (record, event) in enumerate(valid):
                    outcome = Outcome(
                        record=record,
                        event=event,
                        scores=scores,
                        row=row,
                        quarantined=bool(held[row]),
                        drift_change=bool(signals.change[row]),
                        drift_shifted=bool(signals.shifted[row]),
                    )
                    messages.extend(
                        scored_messages(
                            outcome, self.topics, manifest, self.options.threshold, self.options.max_output_bytes
                        )
                    )
        return PreparedBatch(invalid, valid, started.skipped, scores, held, comparisons, messages)

    def _compare_served(
        self, valid: list[tuple[Record, DecodedEvent]], scores: ScoreBatch, comparisons: Comparisons
    ) -> None:
        """Every served answer known for these inputs against the model's own, recomputed here."""
        for row, (_, event) in enumerate(valid):
            recomputed = int(scores.model_prediction[row])
            if event.served_label is not None:
                comparisons.add(event.served_label, recomputed)
            elif event.request_id is not None:
                self.served.recomputed(event.request_id, event.row, recomputed, comparisons)

    # -- 3. send and confirm (the only step that is retried) ---------------------------------

    def _deliver(self, batch: PreparedBatch) -> None:
        """Sends every message and waits for the sink; a refused one is replaced by its fallback
        and only the replacements are sent again. Raises a retriable error to have it all re-sent."""
        refused: list[Message] = []
        with self.telemetry.stage("produce"):
            pending = batch.messages
            while pending:
                sent = [self._send(message, refused) for message in pending]
                try:
                    self.sink.flush(self.options.flush_timeout_s)
                    pending = []
                except DeliveryRefusedError as refusal:
                    pending = [
                        self._replacement(sent[i], reason, refused) for i, reason in sorted(refusal.refused.items())
                    ]
        batch.refused[:] = refused  # kept for accounting: a retried attempt starts the list anew

    def _send(self, message: Message, refused: list[Message]) -> Message:
        """Sends `message`, or its fallback when the sink refuses it on the spot; returns what was sent."""
        try:
            self.sink.send(message.topic, message.value, key=message.key, headers=message.headers)
            return message
        except ConnectorError as error:
            if error.retriable:
                raise
            return self._send(self._replacement(message, str(error), refused), refused)

    def _replacement(self, message: Message, reason: str, refused: list[Message]) -> Message:
        if message.fallback is None:
            raise ConnectorError(f"{message.topic} refused a record that has no replacement left: {reason}")
        log.warning(
            "%s refused a %d-byte %s record (%s); sending its fallback",
            message.topic,
            len(message.value),
            message.output,
            reason,
        )
        refused.append(message)
        return message.fallback

    # -- 4. metrics and summary (once, after confirmation) -----------------------------------

    def _account(self, batch: PreparedBatch) -> None:
        for _, error in batch.invalid:
            self.telemetry.dead_lettered(error.reason)
        self.stats.dead_lettered += len(batch.invalid)
        self.telemetry.skipped("unknown_model", batch.skipped)
        self.stats.skipped += batch.skipped
        self.telemetry.served_answers(batch.comparisons)
        for message in batch.refused:
            self.telemetry.refused(message.output)
        scores = batch.scores
        if scores is None:
            return
        self.telemetry.scored(
            scores.credibility, scores.confidence, scores.prediction, scores.model_prediction, batch.quarantined
        )
        drift = self.drift.status
        self.stats.shifted, self.stats.change_alarms = drift.shifted, drift.alarms
        self.stats.scored += len(batch.valid)
        self.stats.quarantined += int(batch.quarantined.sum())
        self.stats.credibility_sum += float(scores.credibility.sum())
        now_ms = time.time() * 1000
        stamps = [event.timestamp_ms for _, event in batch.valid if event.timestamp_ms is not None]
        if stamps:
            self.telemetry.observe_latency((now_ms - np.asarray(stamps, dtype=float)) / 1000)

    def _retrying(self, action: Callable[[], T], what: str) -> T:
        """Retries retriable connector faults (a broker restart) with backoff, within a budget."""
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
