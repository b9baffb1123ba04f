"""Connectors chosen from URIs, and the one Kafka security model they are configured with."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from agent.errors import ConfigError
from connectors.file import FileSink, FileSource
from connectors.kafka_security import KafkaSecurity
from connectors.registry import open_sink, open_source, split_uri


def test_uris_split_into_scheme_and_target() -> None:
    assert split_uri("kafka://a:9092,b:9092") == ("kafka", "a:9092,b:9092")
    assert split_uri("file:out/dir") == ("file", "out/dir")
    for bad in ("ftp://x", "kafka://", "file:", "a:9092"):
        with pytest.raises(ConfigError, match="expected kafka://"):
            split_uri(bad)


def test_file_uris_open_file_connectors(tmp_path: Path) -> None:
    source = open_source(f"file:{tmp_path / 'in.jsonl'}", topic="events", group_id="g", max_poll_records=10)
    assert isinstance(source, FileSource) and source.path == tmp_path / "in.jsonl" and source.position == ("events", 0)
    sink = open_sink(f"file:{tmp_path / 'out'}")
    assert isinstance(sink, FileSink) and sink.directory == tmp_path / "out"
    sink.close()


class _ConsumerCreatedError(Exception):
    """Raised by the stand-in KafkaConsumer once it has recorded its configuration."""


@pytest.mark.parametrize("reset", ["earliest", "latest"])
def test_auto_offset_reset_reaches_the_consumer_configuration(monkeypatch: pytest.MonkeyPatch, reset: str) -> None:
    import connectors.kafka

    seen: dict[str, object] = {}

    def consumer(**config: object) -> None:
        seen.update(config)
        raise _ConsumerCreatedError

    monkeypatch.setattr(connectors.kafka, "KafkaConsumer", consumer)
    with pytest.raises(_ConsumerCreatedError):
        open_source("kafka://k:9092", topic="events", group_id="g", max_poll_records=10, auto_offset_reset=reset)
    assert seen["auto_offset_reset"] == reset and seen["group_id"] == "g" and seen["enable_auto_commit"] is False


def test_security_settings_reach_the_client_with_the_secret_unwrapped() -> None:
    security = KafkaSecurity(
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_plain_username="agent",
        sasl_plain_password=SecretStr("hunter2"),
        ssl_cafile=Path("/ca.pem"),
    )
    assert security.client_config() == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "agent",
        "sasl_plain_password": "hunter2",
        "ssl_cafile": "/ca.pem",
    }
    assert "hunter2" not in repr(security)
    assert KafkaSecurity().client_config() == {"security_protocol": "PLAINTEXT"}
