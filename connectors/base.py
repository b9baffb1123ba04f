"""The two small interfaces the pipeline talks to: a `Source` of records and a `Sink` for them.

Why interfaces at all: the pipeline must run unchanged against a real Kafka cluster, a JSONL
file (runs without a broker, replays) and in-memory fakes in unit tests. Keeping the
surface this small (poll / commit / close, send / flush / close) is what makes the at-least-once
rule of docs/design.md §5 checkable in one place:

- the pipeline owns offsets; a source never commits on its own;
- `Sink.flush` returning normally is the broker's (or the disk's) confirmation that everything
  sent since the previous flush is durable; only then does the pipeline call `Source.commit`;
- when a partition is revoked (rebalance, close) the source tells the pipeline through the
  `on_revoke` hooks so it can drop in-flight state for it: another consumer now owns it and will
  replay everything after the last commit.

Partitions change hands in two halves. Whoever wants to hear about it registers with `on_assign` /
`on_revoke`; the source itself (or the glue its client calls back, on whatever thread the client
runs its group protocol) announces each change with `announce_assigned` / `announce_revoked`, and
only those two touch the hooks. A hook that raises is logged and skipped: the others still run and
the group protocol goes on, since a broken listener must not wedge the consumer.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal

log = logging.getLogger(__name__)

TopicPartition = tuple[str, int]
"""(topic, partition): plain tuples so nothing outside `connectors.kafka` sees client types."""

Offsets = Mapping[TopicPartition, int]
"""Next offset to read per partition, i.e. last processed offset + 1 (Kafka's convention)."""

Headers = Sequence[tuple[str, bytes]]

RebalanceHook = Callable[[set[TopicPartition]], None]
"""Called with the partitions gained (on_assign) or lost (on_revoke)."""

OffsetReset = Literal["earliest", "latest"]
"""Where a consumer group without committed offsets starts: the oldest retained record, or the next one."""


@dataclass(frozen=True, slots=True)
class Record:
    """One message as it came off the source, with its position so outputs can cite it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    timestamp_ms: int | None = None

    @property
    def position(self) -> TopicPartition:
        return (self.topic, self.partition)


def next_offsets(records: Iterable[Record]) -> dict[TopicPartition, int]:
    """The offsets to commit once every one of `records` has been fully handled."""
    out: dict[TopicPartition, int] = {}
    for r in records:
        if r.offset + 1 > out.get(r.position, -1):
            out[r.position] = r.offset + 1
    return out


class Source(ABC):
    """Where records come from. Not thread-safe: one pipeline thread polls and commits.

    Rebalance hooks may run on a client-owned thread while `poll` or `close` is blocked in the
    calling thread (kafka-python 3 drives the group protocol on its IO thread), so they must be
    quick and must not call back into the source.
    """

    def __init__(self) -> None:
        self._assign_hooks: list[RebalanceHook] = []
        self._revoke_hooks: list[RebalanceHook] = []

    def on_assign(self, hook: RebalanceHook) -> None:
        """Register a hook called with the partitions this source has just been given."""
        self._assign_hooks.append(hook)

    def on_revoke(self, hook: RebalanceHook) -> None:
        """Register a hook called with the partitions taken away (rebalance, eviction, close)."""
        self._revoke_hooks.append(hook)

    def announce_assigned(self, partitions: set[TopicPartition]) -> None:
        """Calls every `on_assign` hook with `partitions`, just given to this source."""
        self._call(self._assign_hooks, partitions)

    def announce_revoked(self, partitions: set[TopicPartition]) -> None:
        """Calls every `on_revoke` hook with `partitions`, just taken away (rebalance, eviction, close)."""
        self._call(self._revoke_hooks, partitions)

    @staticmethod
    def _call(hooks: list[RebalanceHook], partitions: set[TopicPartition]) -> None:
        for hook in hooks:
            try:
                hook(set(partitions))
            except Exception:  # a broken hook must not wedge the consumer group protocol
                log.exception("rebalance hook %r failed for %s", hook, sorted(partitions))

    @abstractmethod
    def poll(self, max_records: int = 500, timeout_s: float = 1.0) -> list[Record]:
        """Up to `max_records` records, waiting at most `timeout_s` for the first; [] if none.

        Records of one partition come in offset order.
        """

    @abstractmethod
    def commit(self, offsets: Offsets) -> None:
        """Durably record `offsets` (next offset to read) so a restart resumes after them.

        Offsets for partitions no longer assigned are skipped: their new owner decides.
        Raises `CommitRejectedError` when the group moved on before the commit (the batch will be
        redelivered to the partitions' new owner; the caller goes on polling), and
        `ConnectorError` when the commit is not confirmed for another reason.
        """

    def lag(self) -> dict[TopicPartition, int]:
        """Messages behind the end of each owned partition, as far as the source knows without a
        round trip (for the consumer-lag gauge); empty where it cannot tell."""
        return {}

    @property
    def exhausted(self) -> bool:
        """True when a finite source has nothing more to give; a stream never is."""
        return False

    @abstractmethod
    def assignment(self) -> set[TopicPartition]:
        """Partitions currently owned; empty before the first rebalance completes."""

    @abstractmethod
    def close(self) -> None:
        """Leave the group (fires `on_revoke`) and release resources; never commits."""

    def __enter__(self) -> Source:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class Sink(ABC):
    """Where records go. `send` may buffer; only `flush` promises durability."""

    @abstractmethod
    def send(self, topic: str, value: bytes, key: bytes | None = None, headers: Headers = ()) -> None:
        """Queue one message; raises `ConnectorError` only if it cannot even be queued
        (non-retriable when this record can never be sent, e.g. over the producer's size limit)."""

    @abstractmethod
    def flush(self, timeout_s: float = 30.0) -> None:
        """Block until everything sent since the previous `flush` call is settled.

        Returns normally only when every one of those records is confirmed. Otherwise, nothing
        may be committed for them, and it raises:

        - `ConnectorError(retriable=True)` when any record failed for a reason that may pass
          (broker restart, timeout): the caller re-sends all of them (duplicates are allowed);
        - `DeliveryRefusedError` when every failure is final for that record (too large for the
          topic, not authorised): `refused` names them by position among the records sent
          since the previous flush; all the others are confirmed.

        Either way the records are settled: the next flush reports only what is sent after it.
        """

    @abstractmethod
    def close(self) -> None:
        """Release resources. Does not flush: unconfirmed messages are the caller's decision."""

    def __enter__(self) -> Sink:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
