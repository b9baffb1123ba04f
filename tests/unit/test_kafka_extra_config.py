"""`extra_config` on the Kafka connectors: tuning passes, the keys delivery rests on are refused.

No broker: a refusal comes before anything connects, and a producer given `api_version` probes nothing.
"""

from __future__ import annotations

import time

import pytest

from agent.errors import ConfigError
from connectors.kafka import KafkaSink, KafkaSource

NOWHERE = "127.0.0.1:1"


@pytest.mark.parametrize(
    ("key", "value", "why"),
    [
        ("enable_auto_commit", True, "commits offsets itself"),
        ("value_deserializer", bytes.decode, "broker's bytes"),
        ("key_deserializer", bytes.decode, "broker's bytes"),
        ("group_id", "another", "group_id setting"),
        ("max_poll_records", 5, "batch_size setting"),
        ("auto_offset_reset", "latest", "auto_offset_reset setting"),
        ("bootstrap_servers", "elsewhere:9092", "source's address"),
        ("security_protocol", "PLAINTEXT", "kafka_security setting"),
        ("sasl_plain_password", "secret", "kafka_security setting"),
    ],
)
def test_the_source_refuses_what_its_guarantees_and_settings_own(key: str, value: object, why: str) -> None:
    started = time.monotonic()
    with pytest.raises(
        ConfigError, match=rf"^Kafka client setting '{key}' cannot be set through extra config: .*{why}"
    ):
        KafkaSource(NOWHERE, ["in"], "g", extra_config={"fetch_max_wait_ms": 100, key: value})
    assert time.monotonic() - started < 5, "refused before connecting"


@pytest.mark.parametrize(
    ("key", "value", "why"),
    [
        ("acks", 1, "all in-sync replicas"),
        ("enable_idempotence", True, "idempotent producer"),
        ("transactional_id", "tx", "no transactions"),
        ("max_in_flight_requests_per_connection", 5, "in order"),
        ("value_serializer", str.encode, "bytes it is given"),
        ("key_serializer", str.encode, "bytes it is given"),
        ("bootstrap_servers", "elsewhere:9092", "sink's address"),
        ("ssl_cafile", "/ca.pem", "kafka_security setting"),
    ],
)
def test_the_sink_refuses_what_its_guarantees_and_settings_own(key: str, value: object, why: str) -> None:
    with pytest.raises(
        ConfigError, match=rf"^Kafka client setting '{key}' cannot be set through extra config: .*{why}"
    ):
        KafkaSink(NOWHERE, extra_config={key: value})


def test_tuning_keys_reach_the_client_and_the_guarantees_stay() -> None:
    sink = KafkaSink(NOWHERE, extra_config={"api_version": (2, 5, 0), "linger_ms": 50, "retries": 3})
    try:
        config = sink._producer.config
        assert (config["linger_ms"], config["retries"]) == (50, 3)
        assert (config["acks"], config["enable_idempotence"], config["max_in_flight_requests_per_connection"]) == (
            -1,
            False,
            1,
        )
    finally:
        sink.close(timeout_s=0)
