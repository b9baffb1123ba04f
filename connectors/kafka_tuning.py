"""Further Kafka client settings an operator may pass (`kafka_tuning` in the agent's settings), and
the ones they may not.

Why a guard: kafka-python takes any keyword, so a tuning map could quietly turn auto-commit back on
or lower `acks`, and the agent would lose events without a word. Every key the delivery guarantee
rests on, or that an agent setting already gives, is refused with the reason, when the settings
load: one value, one place. Kept free of kafka-python so the settings can check it without loading
the client.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from connectors.kafka_security import KafkaSecurity

# `retries` and `isolation_level` may be set: fewer retries only turn more failures into re-sends of
# the batch, read_committed only skips aborted records.
CONSUMER_FIXED = {
    "enable_auto_commit": "the agent commits offsets itself, only once every output for them is confirmed",
    "key_deserializer": "records reach the decoder as the broker's bytes",
    "value_deserializer": "records reach the decoder as the broker's bytes",
    "bootstrap_servers": "it is the source's address (bootstrap_servers or the source URI)",
    "group_id": "it is the group_id setting",
    "auto_offset_reset": "it is the auto_offset_reset setting",
    "max_poll_records": "it follows the batch_size setting",
}
PRODUCER_FIXED = {
    "acks": "flush confirms a record only once all in-sync replicas have it (acks=all)",
    "enable_idempotence": "one record refused for good would fail every pending record of an idempotent producer",
    "transactional_id": "the sink runs no transactions; a transactional producer refuses sends outside one",
    "max_in_flight_requests_per_connection": "one request in flight keeps each partition in order across retries",
    "key_serializer": "the sink sends the bytes it is given",
    "value_serializer": "the sink sends the bytes it is given",
    "bootstrap_servers": "it is the sink's address (bootstrap_servers or the sink URI)",
}
SECURITY_KEYS = dict.fromkeys(KafkaSecurity.model_fields, "it is a kafka_security setting")

ClientValue = str | int | float | bool


def refuse_fixed(extra: Mapping[str, Any] | None, fixed: Mapping[str, str]) -> None:
    """ValueError (a ConfigError's cause) naming the first key of `extra` that `fixed` or security owns."""
    for key in extra or {}:
        why = fixed.get(key) or SECURITY_KEYS.get(key)
        if why:
            raise ValueError(f"Kafka client setting {key!r} cannot be set through extra config: {why}")


class KafkaTuning(BaseModel):
    """kafka-python keyword arguments for the consumer and the producer: timeouts, fetch sizes,
    linger, compression, client id. Anything the guarantees rest on is refused (`CONSUMER_FIXED`,
    `PRODUCER_FIXED`, the security settings)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    consumer: dict[str, ClientValue] = Field(
        {},
        max_length=64,
        description='extra KafkaConsumer settings as a JSON object, e.g. {"fetch_max_bytes": 1048576}',
    )
    producer: dict[str, ClientValue] = Field(
        {}, max_length=64, description='extra KafkaProducer settings as a JSON object, e.g. {"linger_ms": 5}'
    )

    @field_validator("consumer")
    @classmethod
    def _consumer_keys(cls, extra: dict[str, ClientValue]) -> dict[str, ClientValue]:
        refuse_fixed(extra, CONSUMER_FIXED)
        return extra

    @field_validator("producer")
    @classmethod
    def _producer_keys(cls, extra: dict[str, ClientValue]) -> dict[str, ClientValue]:
        refuse_fixed(extra, PRODUCER_FIXED)
        return extra
