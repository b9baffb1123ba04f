"""Choosing a connector from a URI, so settings name a place and this module knows how to open it.

    kafka://HOST:PORT[,HOST:PORT]   a Kafka cluster (consumer group for a source, producer for a sink)
    file:PATH                       a JSONL file (source) or a directory of JSONL files (sink)

Kafka is imported only when a `kafka://` URI is opened, so file-only runs and tools that merely
validate settings never load the client.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.errors import ConfigError
from connectors.base import OffsetReset, Record, Sink, Source
from connectors.kafka_security import KafkaSecurity

SCHEMES = ("kafka://", "file:")


def split_uri(uri: str) -> tuple[str, str]:
    """`kafka://a:9092,b:9092` -> ("kafka", "a:9092,b:9092"); `file:out/` -> ("file", "out/")."""
    for scheme in SCHEMES:
        if uri.startswith(scheme) and len(uri) > len(scheme):
            return scheme.rstrip(":/"), uri[len(scheme) :]
    raise ConfigError(f"connector {uri!r}: expected kafka://HOST:PORT[,HOST:PORT] or file:PATH")


def open_source(
    uri: str,
    *,
    topic: str,
    group_id: str,
    max_poll_records: int,
    max_record_bytes: int = 1 << 20,
    security: KafkaSecurity | None = None,
    auto_offset_reset: OffsetReset = "earliest",
    extra_config: Mapping[str, Any] | None = None,
) -> Source:
    """The source behind `uri`; a file source reads `uri`'s JSONL file as partition 0 of `topic`,
    cutting lines longer than `max_record_bytes` (they are dead-lettered as too large anyway).
    `auto_offset_reset` is where a Kafka consumer group without committed offsets starts (a file
    source always reads from the start). `extra_config`: further Kafka consumer settings
    (connectors/kafka_tuning.py)."""
    scheme, target = split_uri(uri)
    if scheme == "file":
        from connectors.file import FileSource

        return FileSource(Path(target), topic=topic, max_line_bytes=max_record_bytes)
    from connectors.kafka import KafkaSource

    return KafkaSource(
        target,
        [topic],
        group_id,
        max_poll_records=max_poll_records,
        auto_offset_reset=auto_offset_reset,
        security=security,
        extra_config=extra_config,
    )


def open_sink(
    uri: str, *, security: KafkaSecurity | None = None, extra_config: Mapping[str, Any] | None = None
) -> Sink:
    """The sink behind `uri`; a file sink writes `<dir>/<topic>.jsonl`. `extra_config`: further Kafka
    producer settings (connectors/kafka_tuning.py)."""
    scheme, target = split_uri(uri)
    if scheme == "file":
        from connectors.file import FileSink

        return FileSink(Path(target))
    from connectors.kafka import KafkaSink

    return KafkaSink(target, security=security, extra_config=extra_config)


def create_topics(uri: str, names: list[str], partitions: int, *, security: KafkaSecurity | None = None) -> None:
    """Creates the topics of `names` that a Kafka cluster at `uri` does not have yet (a file
    connector has none to create). For local brokers and tests: a production cluster's topics are
    the operator's, with their own replication and retention."""
    scheme, target = split_uri(uri)
    if scheme == "kafka":
        from connectors.kafka import ensure_topics

        ensure_topics(target, names, partitions=partitions, security=security)


def read_whole(
    uri: str,
    *,
    max_records: int,
    max_record_bytes: int,
    timeout_s: float = 60.0,
    security: KafkaSecurity | None = None,
) -> list[Record]:
    """Every record at `uri`, read once from the start, nothing committed: `kafka://HOST:PORT[,...]/TOPIC`
    (every partition up to its end when called) or `file:PATH` (a JSONL file, one record value per
    line, partition 0 and the 0-based line as offset; a line over `max_record_bytes` comes cut to one
    byte more). More than `max_records` is a ConfigError: for small inputs read whole, such as reviews."""
    scheme, target = split_uri(uri)
    if scheme == "file":
        import tempfile

        from connectors.file import FileSource

        records: list[Record] = []
        with tempfile.TemporaryDirectory() as nowhere:  # never committed: no offset file to resume from
            source = FileSource(
                Path(target), topic="file", offset_path=Path(nowhere) / "offset", max_line_bytes=max_record_bytes
            )
            with source:
                while not source.exhausted:
                    records += source.poll(max_records=1000, timeout_s=0)
                    if len(records) > max_records:
                        raise ConfigError(f"{target} holds more than {max_records} records: more than is read whole")
        return records
    servers, slash, topic = target.partition("/")
    if not slash or not servers or not topic:
        raise ConfigError(f"{uri!r}: name the topic to read, kafka://HOST:PORT[,HOST:PORT]/TOPIC")
    from connectors.kafka import read_topic

    return read_topic(servers, topic, max_records=max_records, timeout_s=timeout_s, security=security)
