"""Kafka source and sink on kafka-python; the only module in the project that imports it.

Why the settings are what they are:
- `KafkaSource` never auto-commits. The pipeline commits explicit offsets after its sinks have
  confirmed every output for them (docs/design.md §5), so a crash replays at most the uncommitted tail.
- `KafkaSink` uses acks=all with one request in flight per connection, so a retry cannot reorder a
  partition, and `flush` is the delivery confirmation the pipeline waits on before committing. It
  is deliberately *not* idempotent: kafka-python 3.0 turns any final error of an idempotent,
  non-transactional producer (one record too large for its topic) into a fatal state that fails
  every pending record and the producer for good, so one oversized record would take every other
  output down with it. Without idempotence that record fails alone and is replaced by its fallback;
  the price is a possible duplicate after a retry, which at-least-once delivery allows anyway.
- Security settings are passed through untouched so SASL/TLS clusters need no code change.
- `extra_config` passes further client settings (tuning: timeouts, fetch sizes, linger), never a
  key the guarantees above rest on nor one an agent setting already gives (servers, group, offset
  reset, batch size, security): a `ConfigError` names the key and why (connectors/kafka_tuning.py,
  which the settings check when they load), before anything connects.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from contextlib import suppress
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka import errors as kafka_errors
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.producer.future import FutureRecordMetadata
from kafka.structs import MemberState, OffsetAndMetadata
from kafka.structs import TopicPartition as KafkaTopicPartition

from agent.errors import CommitRejectedError, ConfigError, ConnectorError, DeliveryRefusedError
from connectors.base import Headers, OffsetReset, Offsets, Record, Sink, Source, TopicPartition
from connectors.kafka_security import KafkaSecurity
from connectors.kafka_tuning import CONSUMER_FIXED, PRODUCER_FIXED, refuse_fixed

log = logging.getLogger(__name__)

_TOPIC_EXISTS = kafka_errors.TopicAlreadyExistsError.errno


def _is_retriable(exc: BaseException | None) -> bool:
    """kafka-python marks each error class; a lost connection may always come back."""
    return bool(getattr(exc, "retriable", False)) or isinstance(exc, kafka_errors.KafkaConnectionError)


def _wrap(exc: BaseException, what: str) -> ConnectorError:
    return ConnectorError(f"{what}: {exc}", retriable=_is_retriable(exc))


def _with_extra(config: dict[str, Any], extra: Mapping[str, Any] | None, fixed: Mapping[str, str]) -> dict[str, Any]:
    """`config` updated with `extra`; ConfigError for the first key of `fixed` or security it tries to set."""
    try:
        refuse_fixed(extra, fixed)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return {**config, **(extra or {})}


# The group generation moved on (a rebalance, e.g. after a broker restart): the commit is refused
# and the partitions' new owner will replay the batch. The consumer rejoins on its next poll.
_REBALANCED = (
    kafka_errors.CommitFailedError,
    kafka_errors.UnknownMemberIdError,
    kafka_errors.IllegalGenerationError,
    kafka_errors.RebalanceInProgressError,
)


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]  # kafka-python ships no types
    """Bridges kafka-python's listener to the source's announcements, translating partition types."""

    def __init__(self, source: Source) -> None:
        self._source = source

    def on_partitions_revoked(self, revoked: Iterable[KafkaTopicPartition]) -> None:
        parts = {(tp.topic, tp.partition) for tp in revoked}
        if parts:
            log.info("partitions revoked: %s", sorted(parts))
            self._source.announce_revoked(parts)

    def on_partitions_assigned(self, assigned: Iterable[KafkaTopicPartition]) -> None:
        parts = {(tp.topic, tp.partition) for tp in assigned}
        log.info("partitions assigned: %s", sorted(parts))
        self._source.announce_assigned(parts)


class KafkaSource(Source):
    """A consumer-group member that hands out batches and commits only what it is told to.

    `auto_offset_reset="earliest"` by default: a new group starts at the beginning of the topic,
    because a monitor that silently skips the backlog it was deployed to watch is surprising (the
    agent's `auto_offset_reset` setting can choose "latest").
    `session_timeout_ms=10000` (the client's default is 45 s): a killed agent's partitions move
    to the survivors within seconds instead of sitting unread for most of a minute.
    """

    def __init__(
        self,
        bootstrap_servers: str | list[str],
        topics: Iterable[str],
        group_id: str,
        *,
        max_poll_records: int = 500,
        auto_offset_reset: OffsetReset = "earliest",
        session_timeout_ms: int = 10_000,
        max_poll_interval_ms: int = 300_000,
        commit_timeout_s: float = 30.0,
        client_id: str = "dknn-agent",
        security: KafkaSecurity | None = None,
        extra_config: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self._commit_timeout_ms = int(commit_timeout_s * 1000)
        config: dict[str, Any] = dict(
            bootstrap_servers=bootstrap_servers,
            group_id=group_id,
            client_id=client_id,
            enable_auto_commit=False,
            auto_offset_reset=auto_offset_reset,
            max_poll_records=max_poll_records,
            session_timeout_ms=session_timeout_ms,
            heartbeat_interval_ms=max(1000, session_timeout_ms // 3),
            max_poll_interval_ms=max_poll_interval_ms,
            allow_auto_create_topics=False,
            **(security or KafkaSecurity()).client_config(),
        )
        config = _with_extra(config, extra_config, CONSUMER_FIXED)
        topics, self._group_id = list(topics), group_id
        self._next_offsets: dict[TopicPartition, int] = {}
        what = f"cannot join consumer group {group_id!r} at {bootstrap_servers}"
        try:
            self._consumer = KafkaConsumer(**config)
        except kafka_errors.KafkaError as exc:
            raise _wrap(exc, what) from exc
        try:
            # Learn the partitions before the first JoinGroup. Without this the first generation is
            # assigned nothing, and the metadata-triggered second one can hang (see _unstick_join).
            missing = [t for t in topics if not self._consumer.partitions_for_topic(t)]
            if missing:
                raise ConnectorError(f"topics do not exist (or are not visible): {missing}")
            self._consumer.subscribe(topics=topics, listener=_Listener(self))
        except BaseException as exc:
            self._consumer.close(autocommit=False)
            if isinstance(exc, kafka_errors.KafkaError):
                raise _wrap(exc, what) from exc
            raise

    def _unstick_join(self) -> None:
        """Work around a kafka-python 3.0.12 hang in the group protocol.

        When a poll's timer runs out while a leader's JoinGroup/SyncGroup round trip is in flight,
        and that round trip was started because the topic metadata changed (not by an explicit
        rejoin request), the finished round trip is never picked up: the consumer stays in
        REBALANCING with heartbeats off and no partitions, for ever. Asking for a rejoin lets the
        next poll run a fresh round. Reaches into client internals, hence every getattr.
        """
        coordinator = getattr(self._consumer, "_coordinator", None)
        join_task = getattr(coordinator, "_join_task", None)
        if (
            coordinator is not None
            and join_task is not None
            and getattr(join_task, "is_done", False)
            and getattr(coordinator, "state", None) == MemberState.REBALANCING
            and not coordinator.need_rejoin()
        ):
            log.warning("consumer group %r: finished rebalance was never applied; rejoining", self._group_id)
            coordinator.request_rejoin()

    def poll(self, max_records: int = 500, timeout_s: float = 1.0) -> list[Record]:
        try:
            batches = self._consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        except kafka_errors.KafkaError as exc:
            raise _wrap(exc, f"poll failed for group {self._group_id!r}") from exc
        if not batches:
            self._unstick_join()
        out: list[Record] = []
        for tp, messages in batches.items():
            if messages:
                self._next_offsets[(tp.topic, tp.partition)] = messages[-1].offset + 1
            for m in messages:
                out.append(
                    Record(
                        topic=tp.topic,
                        partition=tp.partition,
                        offset=m.offset,
                        key=m.key,
                        value=m.value if m.value is not None else b"",  # a tombstone is empty data
                        headers=[(k, v if v is not None else b"") for k, v in (m.headers or [])],
                        timestamp_ms=m.timestamp,
                    )
                )
        return out

    def lag(self) -> dict[TopicPartition, int]:
        """High-water mark (from the last fetch response) minus the next offset to hand out."""
        out = {}
        for tp in self._consumer.assignment():
            highwater, next_offset = self._consumer.highwater(tp), self._next_offsets.get((tp.topic, tp.partition))
            if highwater is not None and next_offset is not None:
                out[(tp.topic, tp.partition)] = max(0, highwater - next_offset)
        return out

    def commit(self, offsets: Offsets) -> None:
        owned = self.assignment()
        skipped = sorted(tp for tp in offsets if tp not in owned)
        if skipped:
            log.info("not committing %s: no longer assigned", skipped)
        to_commit = {
            KafkaTopicPartition(t, p): OffsetAndMetadata(off, "", -1)
            for (t, p), off in offsets.items()
            if (t, p) in owned
        }
        if not to_commit:
            return
        try:
            self._consumer.commit(offsets=to_commit, timeout_ms=self._commit_timeout_ms)
        except _REBALANCED as exc:
            raise CommitRejectedError(f"group {self._group_id!r} rebalanced before the commit: {exc}") from exc
        except kafka_errors.KafkaError as exc:
            raise _wrap(exc, f"commit failed for group {self._group_id!r}") from exc

    def committed(self, partition: TopicPartition) -> int | None:
        """The group's committed offset for a partition (None if never committed); for checks."""
        return self._consumer.committed(KafkaTopicPartition(*partition))

    def assignment(self) -> set[TopicPartition]:
        return {(tp.topic, tp.partition) for tp in self._consumer.assignment()}

    def close(self) -> None:
        self._consumer.close(autocommit=False)


def read_topic(
    bootstrap_servers: str | list[str],
    topic: str,
    *,
    max_records: int,
    timeout_s: float = 60.0,
    security: KafkaSecurity | None = None,
) -> list[Record]:
    """Every record of `topic` from the start up to its end when called, every partition, without a
    consumer group (nothing is committed, no group is joined): for tools that read a small topic whole,
    such as the reviews `dknn-agent extend` reads. More than `max_records` is a ConfigError, and a
    topic not read to its end within `timeout_s` a retriable ConnectorError."""
    what = f"cannot read topic {topic!r} at {bootstrap_servers}"
    consumer = _group_free_reader(bootstrap_servers, security, what)
    try:
        ids = consumer.partitions_for_topic(topic)
        if not ids:
            raise ConnectorError(f"topic {topic!r} does not exist (or is not visible) at {bootstrap_servers}")
        partitions = [KafkaTopicPartition(topic, partition) for partition in sorted(ids)]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        end = consumer.end_offsets(partitions)
        records: list[Record] = []
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < end[tp] for tp in partitions):
            if time.monotonic() > deadline:
                raise ConnectorError(f"{what}: not read to its end within {timeout_s:g}s", retriable=True)
            for tp, messages in consumer.poll(timeout_ms=500, max_records=500).items():
                for m in messages:
                    if m.offset >= end[tp]:
                        continue
                    records.append(
                        Record(tp.topic, tp.partition, m.offset, m.key, m.value if m.value is not None else b"",
                               [(k, v if v is not None else b"") for k, v in (m.headers or [])], m.timestamp)
                    )  # fmt: skip
            if len(records) > max_records:
                raise ConfigError(f"topic {topic!r} holds more than {max_records} records: more than is read whole")
        return records
    except kafka_errors.KafkaError as exc:
        raise _wrap(exc, what) from exc
    finally:
        consumer.close(autocommit=False)


class KafkaSink(Sink):
    """An acks=all producer that remembers what it sent until `flush` settles it (see module docstring)."""

    def __init__(
        self,
        bootstrap_servers: str | list[str],
        *,
        linger_ms: int = 5,
        batch_bytes: int = 262_144,
        delivery_timeout_ms: int = 120_000,
        max_block_ms: int = 30_000,
        compression_type: str | None = None,
        client_id: str = "dknn-agent",
        security: KafkaSecurity | None = None,
        extra_config: Mapping[str, Any] | None = None,
    ) -> None:
        config: dict[str, Any] = dict(
            bootstrap_servers=bootstrap_servers,
            client_id=client_id,
            acks="all",
            enable_idempotence=False,  # see the module docstring
            max_in_flight_requests_per_connection=1,  # retries keep each partition in order
            retries=2**31 - 1,  # bounded in time by delivery_timeout_ms, not by count
            delivery_timeout_ms=delivery_timeout_ms,
            linger_ms=linger_ms,
            # 256 KiB per partition batch, not the client's 16 KiB: a 256-event micro-batch of ~1 KB
            # score records goes out in a few requests instead of dozens, which halved the time
            # spent sending and waiting for acks (send + flush, 50 -> 25 µs per record, measured
            # against the local broker).
            batch_size=batch_bytes,
            max_block_ms=max_block_ms,
            compression_type=compression_type,
            allow_auto_create_topics=False,
            **(security or KafkaSecurity()).client_config(),
        )
        config = _with_extra(config, extra_config, PRODUCER_FIXED)
        try:
            self._producer = KafkaProducer(**config)
        except kafka_errors.KafkaError as exc:
            raise _wrap(exc, f"cannot connect producer to {bootstrap_servers}") from exc
        self._sent: list[tuple[str, FutureRecordMetadata]] = []  # since the previous flush

    def send(self, topic: str, value: bytes, key: bytes | None = None, headers: Headers = ()) -> None:
        try:
            future = self._producer.send(topic, value=value, key=key, headers=list(headers))
        except kafka_errors.KafkaError as exc:
            raise _wrap(exc, f"cannot queue a message for {topic!r}") from exc
        self._sent.append((topic, future))

    def flush(self, timeout_s: float = 30.0) -> None:
        """Waits for every record sent since the previous flush and classifies the failures (see
        `Sink.flush`): a broker that is away is worth waiting for; a record the broker will never
        take (too large for the topic, no write permission) is not, and must not block the rest."""
        sent, self._sent = self._sent, []
        deadline = time.monotonic() + timeout_s
        # The client's flush can give up early (it raises "Future not done" while a batch the broker
        # refused as too large is being split); the records' own futures are the truth, so wait on
        # those. Failures are classified below, record by record.
        with suppress(kafka_errors.KafkaError):
            self._producer.flush(timeout=timeout_s)
        for _, future in sent:
            remaining = deadline - time.monotonic()
            if future.is_done or remaining <= 0:
                continue
            with suppress(kafka_errors.KafkaError):
                future.get(timeout=remaining)
        unconfirmed = sum(1 for _, future in sent if not future.is_done)
        failed = [(i, topic, future.exception) for i, (topic, future) in enumerate(sent) if future.failed()]
        transient = [(topic, exc) for _, topic, exc in failed if _is_retriable(exc)]
        if unconfirmed or transient:
            first = f" (first failure: {transient[0][0]!r}: {transient[0][1]})" if transient else ""
            raise ConnectorError(
                f"{unconfirmed} of {len(sent)} records not confirmed within {timeout_s:g}s, "
                f"{len(transient)} failed{first}",
                retriable=True,
            )
        if failed:
            raise DeliveryRefusedError({i: f"{topic!r}: {exc}" for i, topic, exc in failed})

    def close(self, timeout_s: float = 5.0) -> None:
        self._producer.close(timeout=timeout_s)


def ensure_topics(
    bootstrap_servers: str | list[str],
    names: Iterable[str],
    partitions: int = 1,
    *,
    replication_factor: int = 1,
    configs: Mapping[str, str] | None = None,
    security: KafkaSecurity | None = None,
    timeout_s: float = 30.0,
) -> None:
    """Create the topics that do not exist yet and wait until every partition has a leader.

    Existing topics are left as they are (partition count included): the operator owns them.
    The local broker runs with auto.create.topics.enable=false, so tests and the demo call this.
    """
    names = list(dict.fromkeys(names))
    if not names:
        return
    admin = _admin(bootstrap_servers, security, f"cannot reach {bootstrap_servers} to create topics")
    try:
        options: dict[str, Any] = {"num_partitions": partitions, "replication_factor": replication_factor}
        if configs:
            options["configs"] = dict(configs)
        spec = {n: options for n in names}
        result = admin.create_topics(spec, timeout_ms=int(timeout_s * 1000), raise_errors=False)
        errors = [t for t in result["topics"] if t["error_code"] not in (0, _TOPIC_EXISTS)]
        if errors:
            detail = "; ".join(f"{t['name']}: {t['error_message'] or t['error_code']}" for t in errors)
            raise ConnectorError(f"cannot create topics: {detail}")
        admin.wait_for_topics(names, timeout_ms=int(timeout_s * 1000))
    except kafka_errors.KafkaError as exc:
        raise _wrap(exc, f"creating topics {names}") from exc
    finally:
        admin.close()


def _admin(bootstrap_servers: str | list[str], security: KafkaSecurity | None, what: str) -> KafkaAdminClient:
    """An admin client (topics, groups); a ConnectorError saying `what` where it cannot connect."""
    try:
        return KafkaAdminClient(
            bootstrap_servers=bootstrap_servers,
            client_id="dknn-agent-admin",
            **(security or KafkaSecurity()).client_config(),
        )
    except kafka_errors.KafkaError as exc:
        raise _wrap(exc, what) from exc


def _group_free_reader(bootstrap_servers: str | list[str], security: KafkaSecurity | None, what: str) -> KafkaConsumer:
    """A consumer outside any group that commits nothing: for reading positions and whole topics."""
    try:
        return KafkaConsumer(
            bootstrap_servers=bootstrap_servers,
            group_id=None,
            client_id="dknn-agent-reader",
            enable_auto_commit=False,
            allow_auto_create_topics=False,
            **(security or KafkaSecurity()).client_config(),
        )
    except kafka_errors.KafkaError as exc:
        raise _wrap(exc, what) from exc


def end_offsets(
    bootstrap_servers: str | list[str], topics: Iterable[str], *, security: KafkaSecurity | None = None
) -> dict[TopicPartition, int]:
    """The end offset (next offset to be written) of every partition of `topics` now, read without a
    consumer group: what a reader that must catch up first (the review console's readiness) waits for."""
    what = f"cannot read the end offsets of {list(topics)} at {bootstrap_servers}"
    consumer = _group_free_reader(bootstrap_servers, security, what)
    try:
        partitions = []
        for topic in topics:
            ids = consumer.partitions_for_topic(topic)
            if not ids:
                raise ConnectorError(f"topic {topic!r} does not exist (or is not visible) at {bootstrap_servers}")
            partitions += [KafkaTopicPartition(topic, partition) for partition in sorted(ids)]
        return {(tp.topic, tp.partition): int(end) for tp, end in consumer.end_offsets(partitions).items()}
    except kafka_errors.KafkaError as exc:
        raise _wrap(exc, what) from exc
    finally:
        consumer.close(autocommit=False)


def forget_group(
    bootstrap_servers: str | list[str], group_id: str, *, security: KafkaSecurity | None = None, timeout_s: float = 30.0
) -> None:
    """Deletes a consumer group's committed offsets (the whole group; one that does not exist is fine),
    so its next member starts where `auto_offset_reset` says. For a reader whose own state is gone
    (the review console with a new database): the offsets described a state that no longer exists.
    A group with live members is refused by the broker: a ConnectorError says so."""
    admin = _admin(bootstrap_servers, security, f"cannot reach {bootstrap_servers} to reset group {group_id!r}")
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                outcome = dict(admin.delete_groups([group_id])).get(group_id, "OK")
                break
            except kafka_errors.CoordinatorNotAvailableError as exc:
                # a fresh cluster creates its offsets topic on the first coordinator lookup: ask again
                if time.monotonic() > deadline:
                    raise _wrap(exc, f"resetting consumer group {group_id!r}") from exc
                time.sleep(0.5)
    except kafka_errors.KafkaError as exc:
        raise _wrap(exc, f"resetting consumer group {group_id!r}") from exc
    finally:
        admin.close()
    if outcome in ("OK", "GroupIdNotFoundError"):
        return
    if outcome == "NonEmptyGroupError":
        raise ConnectorError(f"consumer group {group_id!r} has live members: is another console running with it?")
    raise ConnectorError(f"cannot reset consumer group {group_id!r}: {outcome}")
