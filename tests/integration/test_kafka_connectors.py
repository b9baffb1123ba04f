"""KafkaSource / KafkaSink against the real broker: delivery, manual commits, headers, groups."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from agent.errors import ConnectorError
from connectors.base import Record, TopicPartition, next_offsets
from connectors.kafka import KafkaSink, KafkaSource, ensure_topics

pytestmark = pytest.mark.integration

FAST_GROUP = {"session_timeout_ms": 6000}  # the broker's minimum; quicker rebalances in tests


def poll_until(
    sources: list[KafkaSource], done: Callable[[], bool], timeout_s: float = 30.0, sink: list[Record] | None = None
) -> None:
    """Poll every source in turn (that is what drives the group protocol) until `done()`."""
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, "condition not reached in time"
        for s in sources:
            got = s.poll(max_records=100, timeout_s=0.2)
            if sink is not None:
                sink.extend(got)


def produce(bootstrap: str, topic: str, n: int) -> list[tuple[bytes, bytes]]:
    sent = [(f"k{i}".encode(), f'{{"i": {i}}}'.encode()) for i in range(n)]
    sink = KafkaSink(bootstrap)
    try:
        for key, value in sent:
            sink.send(topic, value, key=key)
        sink.flush(timeout_s=30)  # raises unless every message is confirmed
    finally:
        sink.close()
    return sent


def test_commit_then_second_consumer_resumes_after_it(kafka_bootstrap: str, unique_name: str) -> None:
    topic, group = f"{unique_name}-in", f"{unique_name}-g"
    ensure_topics(kafka_bootstrap, [topic], partitions=3)
    sent = produce(kafka_bootstrap, topic, 60)

    first: list[Record] = []
    with KafkaSource(kafka_bootstrap, [topic], group, **FAST_GROUP) as source:
        poll_until([source], lambda: len(first) >= 25, sink=first)
        source.commit(next_offsets(first))
        for tp, offset in next_offsets(first).items():
            assert source.committed(tp) == offset

    rest: list[Record] = []
    with KafkaSource(kafka_bootstrap, [topic], group, **FAST_GROUP) as source:
        poll_until([source], lambda: len(first) + len(rest) >= len(sent), sink=rest)
        time.sleep(0.5)
        rest.extend(source.poll(timeout_s=0.5))  # nothing beyond what was sent arrives

    positions = lambda rs: {(r.partition, r.offset) for r in rs}  # noqa: E731
    assert not positions(first) & positions(rest), "a committed record was delivered again"
    assert len(positions(first) | positions(rest)) == len(sent)
    assert sorted((r.key, r.value) for r in first + rest) == sorted(sent)
    assert {r.topic for r in first + rest} == {topic}
    for p in range(3):  # each partition arrives in offset order from 0, across the hand-over
        offsets = [r.offset for r in first + rest if r.partition == p]
        assert offsets == list(range(len(offsets)))


def test_headers_keys_and_timestamps_round_trip(kafka_bootstrap: str, unique_name: str) -> None:
    topic = f"{unique_name}-h"
    ensure_topics(kafka_bootstrap, [topic], partitions=1)
    headers = [("dknn.source", b"events/0/17"), ("binary", b"\x00\xff\x10"), ("empty", b"")]
    before_ms = int(time.time() * 1000)
    with KafkaSink(kafka_bootstrap) as sink:
        sink.send(topic, b"with-headers", key=b"\x01key", headers=headers)
        sink.send(topic, b"", key=None)
        sink.flush()

    got: list[Record] = []
    with KafkaSource(kafka_bootstrap, [topic], f"{unique_name}-g", **FAST_GROUP) as source:
        poll_until([source], lambda: len(got) >= 2, sink=got)
    a, b = sorted(got, key=lambda r: r.offset)
    assert (a.offset, a.key, a.value, a.headers) == (0, b"\x01key", b"with-headers", headers)
    assert (b.offset, b.key, b.value, b.headers) == (1, None, b"", [])
    assert a.timestamp_ms is not None and before_ms - 5000 <= a.timestamp_ms <= int(time.time() * 1000) + 5000


def test_two_consumers_split_partitions_and_hand_them_back(kafka_bootstrap: str, unique_name: str) -> None:
    topic, group = f"{unique_name}-p", f"{unique_name}-g"
    ensure_topics(kafka_bootstrap, [topic], partitions=4)
    everything: set[TopicPartition] = {(topic, p) for p in range(4)}
    revoked_from_a: list[set[TopicPartition]] = []

    a = KafkaSource(kafka_bootstrap, [topic], group, **FAST_GROUP)
    b = KafkaSource(kafka_bootstrap, [topic], group, **FAST_GROUP)
    try:
        a.on_revoke(revoked_from_a.append)
        poll_until([a], lambda: a.assignment() == everything)
        assert b.assignment() == set()
        split = lambda: (  # noqa: E731
            a.assignment()
            and b.assignment()
            and not a.assignment() & b.assignment()
            and a.assignment() | b.assignment() == everything
        )
        poll_until([a, b], split)
        assert revoked_from_a, "the first member was not told its partitions were revoked"

        sent = produce(kafka_bootstrap, topic, 40)
        from_a: list[Record] = []
        from_b: list[Record] = []
        deadline = time.monotonic() + 30
        while len(from_a) + len(from_b) < len(sent):
            assert time.monotonic() < deadline, "not every record arrived"
            from_a.extend(a.poll(timeout_s=0.2))
            from_b.extend(b.poll(timeout_s=0.2))
        assert {r.position for r in from_a} <= a.assignment()
        assert {r.position for r in from_b} <= b.assignment()
        assert sorted((r.key, r.value) for r in from_a + from_b) == sorted(sent)

        b.close()  # a leaving member's partitions go back to the survivor
        poll_until([a], lambda: a.assignment() == everything)
    finally:
        a.close()
        b.close()


def test_missing_topics_are_connector_errors(kafka_bootstrap: str, unique_name: str) -> None:
    # The broker does not auto-create topics, so a producer cannot even learn where to send.
    with KafkaSink(kafka_bootstrap, max_block_ms=1000) as sink:
        with pytest.raises(ConnectorError) as info:
            sink.send(f"{unique_name}-missing", b"x")
        assert info.value.retriable
        sink.flush(timeout_s=5)  # nothing pending: confirms trivially
    with pytest.raises(ConnectorError, match="do not exist"):
        KafkaSource(kafka_bootstrap, [f"{unique_name}-missing"], f"{unique_name}-g")
