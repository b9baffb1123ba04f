"""In-memory Source and Sink for the pipeline's unit tests: a fixed list of records in, the
confirmed messages kept per topic, and the sink faults the delivery rule must survive on demand.

Here, not in `connectors`, because a fake has no place in the wheel: nothing in production may
open one, and the registry knows only the real connectors."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

from agent.errors import ConnectorError, DeliveryRefusedError
from connectors.base import Headers, Offsets, Record, Sink, Source, TopicPartition


class MemorySource(Source):
    """Serves a fixed list of records from one partition; `commit` records the offsets."""

    def __init__(
        self, values: list[bytes], topic: str = "memory", partition: int = 0, headers: list[Headers] | None = None
    ) -> None:
        super().__init__()
        self.records = [
            Record(topic, partition, offset, None, value, list(headers[offset]) if headers else [])
            for offset, value in enumerate(values)
        ]
        self.committed: dict[TopicPartition, int] = {}
        self._next = 0

    def poll(self, max_records: int = 500, timeout_s: float = 1.0) -> list[Record]:
        batch = self.records[self._next : self._next + max_records]
        self._next += len(batch)
        return batch

    @property
    def exhausted(self) -> bool:
        return self._next >= len(self.records)

    def commit(self, offsets: Offsets) -> None:
        self.committed.update(offsets)

    def assignment(self) -> set[TopicPartition]:
        return {(self.records[0].topic, self.records[0].partition)} if self.records else set()

    def close(self) -> None:
        pass


class MemorySink(Sink):
    """Keeps confirmed messages per topic.

    `fail_next_flushes` simulates unconfirmed deliveries (retriable); `refuse(topic, value)`, when
    set and returning a reason, simulates a broker that refuses that record for good at flush.
    """

    def __init__(self) -> None:
        self.pending: list[tuple[str, bytes, bytes | None, Headers]] = []
        self.topics: dict[str, list[tuple[bytes, bytes | None, Headers]]] = defaultdict(list)
        self.fail_next_flushes = 0
        self.refuse: Callable[[str, bytes], str | None] | None = None

    def send(self, topic: str, value: bytes, key: bytes | None = None, headers: Headers = ()) -> None:
        self.pending.append((topic, value, key, list(headers)))

    def flush(self, timeout_s: float = 30.0) -> None:
        batch, self.pending = self.pending, []
        if self.fail_next_flushes:
            self.fail_next_flushes -= 1
            raise ConnectorError("simulated delivery failure", retriable=True)
        refused: dict[int, str] = {}
        for i, (topic, value, key, headers) in enumerate(batch):
            reason = self.refuse(topic, value) if self.refuse else None
            if reason:
                refused[i] = reason
            else:
                self.topics[topic].append((value, key, headers))
        if refused:
            raise DeliveryRefusedError(refused)

    def close(self) -> None:
        pass
