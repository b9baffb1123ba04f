"""`read_whole` on a real broker: a whole topic, every partition, up to its end when called, no consumer
group (what `dknn-agent extend --reviews kafka://HOST:PORT/TOPIC` reads), and its bounds."""

from __future__ import annotations

import pytest

from agent.errors import ConfigError, ConnectorError
from connectors.kafka import KafkaSink, ensure_topics
from connectors.registry import read_whole

pytestmark = pytest.mark.integration


def test_a_whole_topic_is_read_to_its_end(kafka_bootstrap: str, unique_name: str) -> None:
    topic = f"{unique_name}-reviews"
    ensure_topics(kafka_bootstrap, [topic], partitions=3)
    sink = KafkaSink(kafka_bootstrap)
    try:
        for i in range(30):
            sink.send(topic, f'{{"i": {i}}}'.encode(), key=f"event-{i % 7}".encode())
        sink.flush(timeout_s=30)
    finally:
        sink.close()
    records = read_whole(f"kafka://{kafka_bootstrap}/{topic}", max_records=100, max_record_bytes=1 << 20)
    assert sorted(record.value for record in records) == sorted(f'{{"i": {i}}}'.encode() for i in range(30))
    assert len({record.partition for record in records}) > 1  # every partition, not one
    for partition in {record.partition for record in records}:
        offsets = [record.offset for record in records if record.partition == partition]
        assert offsets == list(range(len(offsets)))  # from the start, in order, nothing twice
    again = read_whole(f"kafka://{kafka_bootstrap}/{topic}", max_records=100, max_record_bytes=1 << 20)
    assert len(again) == 30  # nothing was committed: the same records again
    with pytest.raises(ConfigError, match="more than 10 records"):
        read_whole(f"kafka://{kafka_bootstrap}/{topic}", max_records=10, max_record_bytes=1 << 20)


def test_a_missing_topic_is_a_connector_error(kafka_bootstrap: str, unique_name: str) -> None:
    with pytest.raises(ConnectorError, match="does not exist"):
        read_whole(f"kafka://{kafka_bootstrap}/{unique_name}-none", max_records=10, max_record_bytes=1024, timeout_s=10)
    with pytest.raises(ConfigError, match="name the topic"):
        read_whole(f"kafka://{kafka_bootstrap}", max_records=10, max_record_bytes=1024)
