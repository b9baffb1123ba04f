"""The console's consumer: the quarantine and reviews topics into the store (docs/design.md §5.5).

One thread, one consumer group of its own, both topics. Per poll: every record is parsed, the rows
and the offsets after them are written in one SQLite transaction, and only then are the offsets
committed to Kafka, so a crash replays what the file does not hold (duplicates are ignored by
event id; a review replayed loses to itself). A record is untrusted like an event: too large,
not JSON, not the expected shape — it is counted by reason in
`dknn_review_console_records_skipped_total` and skipped, never a crash, and its strings are kept
as data (bounded, never interpreted).

Ready (`/readyz`) once the consumer holds its partitions and the store has caught up with the end
offsets the topics had when the console started, so a console behind a load balancer takes traffic
when its list is complete. Offsets can stop short of an end for good (a partition whose records
retention deleted, a transaction marker), so polls that come back empty with no lag left, or
`IDLE_POLLS` empty polls in a row, count as caught up too.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Final

import orjson

from agent.console.store import QuarantinedEvent, Store, StoredReview
from agent.console.untrusted import integer, number
from agent.errors import CommitRejectedError, ConnectorError, ReviewError
from agent.runtime.telemetry import ReviewTelemetry
from agent.runtime.wire.review import event_id_of, parse_review
from connectors.base import Record, Source, TopicPartition, next_offsets

log = logging.getLogger("dknn.console")

MAX_QUARANTINE_BYTES: Final = 4 * 1024 * 1024  # the agent writes at most max_output_bytes (1,000,000 by default)
MAX_EVENT_ID_CHARS: Final = 256  # a v1 id is at most 128; a batch row's is "<request id>/<row>"
MAX_REASON_CHARS: Final = 300
MAX_HEADER_CHARS: Final = 128
POLL_RECORDS: Final = 500
RETRY_S: Final = 2.0
IDLE_POLLS: Final = 3


class SkipError(Exception):
    """A record the console cannot use; `reason` is a bounded label (a metric label value)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def parse_quarantine(record: Record, now_ms: Callable[[], int] = lambda: int(time.time() * 1000)) -> QuarantinedEvent:
    """A quarantine record (docs/design.md §5.2) as a store row; raises only `SkipError`."""
    if len(record.value) > MAX_QUARANTINE_BYTES:
        raise SkipError("too_large", f"{len(record.value)} bytes, limit {MAX_QUARANTINE_BYTES}")
    try:
        document = orjson.loads(record.value)
    except orjson.JSONDecodeError as exc:
        raise SkipError("bad_json", f"not valid JSON: {exc}") from None
    if not (
        isinstance(document, dict)
        and isinstance(document.get("event"), dict)
        and isinstance(document.get("dknn"), dict)
    ):
        raise SkipError("schema", "not a quarantine record: an object with `event` and `dknn`")
    block = document["dknn"]
    event_id = event_id_of(document["event"])
    if not event_id or len(event_id) > MAX_EVENT_ID_CHARS:
        raise SkipError("no_event_id", "the record's event names no usable id")
    reason = block.get("reason")
    stamp = record.timestamp_ms
    return QuarantinedEvent(
        event_id=event_id,
        quarantined_ms=stamp if isinstance(stamp, int) and stamp >= 0 else now_ms(),
        model_prediction=integer(block.get("model_prediction"), 0, 2**31),
        prediction=integer(block.get("prediction"), 0, 2**31),
        credibility=number(block.get("credibility"), 0.0, 1.0),
        reason=reason[:MAX_REASON_CHARS] if isinstance(reason, str) else "",
        model_name=_header(record, "dknn.bundle.model"),
        model_version=_header(record, "dknn.bundle.version"),
        record=bytes(record.value),
    )


def parse_stored_review(record: Record) -> StoredReview:
    """A dknn.review.v1 record as a store row; raises only `SkipError` (with ReviewError's reasons,
    `too_large` first: `parse_review` checks the size before anything else)."""
    try:
        review = parse_review(record.value)
    except ReviewError as exc:
        raise SkipError(exc.reason, str(exc)) from None
    return StoredReview.of(review, record.partition, record.offset)


def _header(record: Record, name: str) -> str:
    value = next((value for key, value in record.headers if key == name), b"")
    return value.decode("utf-8", "replace")[:MAX_HEADER_CHARS]


class Ingest:
    """Polls, stores, commits; see the module docstring. `ends`: the topics' end offsets at start."""

    def __init__(
        self,
        source: Source,
        store: Store,
        telemetry: ReviewTelemetry,
        *,
        quarantine_topic: str,
        reviews_topic: str,
        ends: Mapping[TopicPartition, int],
    ) -> None:
        self.source, self.store, self.telemetry = source, store, telemetry
        self.quarantine_topic, self.reviews_topic = quarantine_topic, reviews_topic
        self.ends = dict(ends)
        self.ready = threading.Event()
        self.failed = threading.Event()  # the store could not be written: /healthz turns 503
        self._idle = 0  # empty polls in a row since the partitions were assigned
        self._report_state()

    def step(self, timeout_s: float = 1.0) -> int:
        """One poll stored and committed; the number of records it brought."""
        records = self.source.poll(POLL_RECORDS, timeout_s)
        if not records:
            self._check_ready(idle=True)
            return 0
        events, reviews = [], []
        for record in records:
            topic = "quarantine" if record.topic == self.quarantine_topic else "reviews"
            try:
                if topic == "quarantine":
                    events.append(parse_quarantine(record))
                else:
                    reviews.append(parse_stored_review(record))
            except SkipError as skip:
                self.telemetry.skipped(topic, skip.reason)
                log.debug("skipped %s record %d/%d: %s", topic, record.partition, record.offset, skip)
        offsets = next_offsets(records)
        applied = self.store.apply(events, reviews, offsets)
        winners = {id(one): quarantined for one, quarantined in applied.reviews}
        for one in reviews:
            quarantined = winners.get(id(one))
            latency = None if quarantined is None else one.reviewed_us / 1e6 - quarantined / 1e3
            self.telemetry.reviewed(one.verdict, latency)
        self._report_state()
        try:
            self.source.commit(offsets)
        except CommitRejectedError as exc:  # the rows are stored; the next owner replays them, harmlessly
            log.info("commit refused after a rebalance: %s", exc)
        self._check_ready(idle=False)
        return len(records)

    def _report_state(self) -> None:
        summary = self.store.summary
        self.telemetry.state(summary.events, summary.coverage, summary.precision)

    def _check_ready(self, *, idle: bool) -> None:
        if self.ready.is_set() or not self.source.assignment():
            return
        self._idle = self._idle + 1 if idle else 0
        held = self.store.offsets()
        caught_up = all(held.get(tp, 0) >= end for tp, end in self.ends.items())
        lag = self.source.lag() if idle else {}
        if caught_up or (lag and not any(lag.values())) or self._idle >= IDLE_POLLS:
            log.info("review console ready: %d quarantined events", self.store.summary.events)
            self.ready.set()

    def run(self, stop: threading.Event) -> None:
        """Until `stop`: a broker fault is logged and retried; a store that cannot be written ends the
        loop with `failed` set (nothing was committed for that poll, so a restart reads it again)."""
        while not stop.is_set():
            try:
                self.step()
            except ConnectorError as exc:
                log.warning("review console: %s; retrying in %gs", exc, RETRY_S)
                stop.wait(RETRY_S)
            except Exception:
                log.exception("review console: cannot store what it read; stopping the consumer")
                self.failed.set()
                return
