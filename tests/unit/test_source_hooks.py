"""The rebalance announcements of `connectors.base.Source`: who hears them, and what a broken listener may not do."""

from __future__ import annotations

import logging

import pytest
from kafka.structs import TopicPartition as KafkaTopicPartition

from connectors.base import Offsets, Record, Source, TopicPartition
from connectors.kafka import _Listener


class StillSource(Source):
    """A source with nothing to read: only its announcements matter here."""

    def poll(self, max_records: int = 500, timeout_s: float = 1.0) -> list[Record]:
        return []

    def commit(self, offsets: Offsets) -> None:
        pass

    def assignment(self) -> set[TopicPartition]:
        return set()

    def close(self) -> None:
        pass


def test_each_announcement_reaches_every_hook_of_its_kind_with_its_own_copy() -> None:
    source = StillSource()
    assigned: list[set[TopicPartition]] = []
    revoked: list[set[TopicPartition]] = []
    source.on_assign(assigned.append)
    source.on_assign(lambda parts: parts.clear())  # a hook that mutates its set cannot touch the next one's
    source.on_assign(assigned.append)
    source.on_revoke(revoked.append)
    partitions = {("t", 0), ("t", 1)}
    source.announce_assigned(partitions)
    assert assigned == [partitions, partitions] and revoked == []
    source.announce_revoked({("t", 1)})
    assert revoked == [{("t", 1)}] and len(assigned) == 2
    assert partitions == {("t", 0), ("t", 1)}


def test_a_failing_hook_is_logged_and_the_others_still_run(caplog: pytest.LogCaptureFixture) -> None:
    source = StillSource()
    heard: list[set[TopicPartition]] = []

    def broken(_: set[TopicPartition]) -> None:
        raise RuntimeError("listener bug")

    source.on_revoke(broken)
    source.on_revoke(heard.append)
    with caplog.at_level(logging.ERROR, logger="connectors.base"):
        source.announce_revoked({("t", 3)})  # must not raise into the client's group protocol
    assert heard == [{("t", 3)}]
    assert "rebalance hook" in caplog.text and "listener bug" in caplog.text


def test_the_kafka_listener_announces_through_the_public_interface() -> None:
    source = StillSource()
    assigned: list[set[TopicPartition]] = []
    revoked: list[set[TopicPartition]] = []
    source.on_assign(assigned.append)
    source.on_revoke(revoked.append)
    listener = _Listener(source)
    listener.on_partitions_assigned([KafkaTopicPartition("in", 0), KafkaTopicPartition("in", 2)])
    listener.on_partitions_revoked([KafkaTopicPartition("in", 2)])
    listener.on_partitions_revoked([])  # nothing lost: nobody is told
    assert assigned == [{("in", 0), ("in", 2)}] and revoked == [{("in", 2)}]
