"""The agent under faults, against the real broker: SIGKILL and restart, a second replica dying,
hostile input found by hypothesis, and the broker itself restarting mid-stream.

The delivery rule under test is docs/design.md §5: at-least-once, nothing lost. Every input offset must
show up in the scores topic or the dead-letter topic at least once; duplicates are allowed (and
counted, so a regression that replays far more than the uncommitted tail is visible in the output).
The broker-restart test stops the shared session broker, so it is the last test in this file and
always brings the broker back.
"""

from __future__ import annotations

import base64
import json
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.engine.manifest import InputSpec
from agent.errors import EVENT_ERROR_REASONS, ConnectorError, EventError
from agent.runtime.events import encode_event
from connectors.base import Record
from connectors.kafka import KafkaSink, ensure_topics
from tests.conftest import blobs
from tests.conftest import decode_one as decode_event
from tests.integration.agent_process import (
    AgentProcess,
    OutputFollower,
    header_position,
    read_all,
    score_position,
)
from tests.integration.conftest import LocalKafka, _kafka_sh
from tests.integration.test_agent_stream import mixed_stream, publish, topic_names

pytestmark = pytest.mark.integration

Position = tuple[int, int]  # (partition, offset) of an input record


@dataclass
class Ledger:
    """What the output topics say about the input offsets, updated incrementally from a follower."""

    scores: str
    dead_letter: str
    quarantine: str
    scored: Counter = field(default_factory=Counter)  # position -> copies on the scores topic
    dead: Counter = field(default_factory=Counter)  # position -> copies on the dead-letter topic
    quarantined_by_score: set = field(default_factory=set)  # positions some score copy says quarantined
    held: set = field(default_factory=set)  # positions present on the quarantine topic
    dead_records: dict = field(default_factory=dict)  # position -> one dead-letter Record
    _seen: Counter = field(default_factory=Counter)

    def update(self, follower: OutputFollower) -> Ledger:
        for topic in (self.scores, self.dead_letter, self.quarantine):
            new = follower.records[topic][self._seen[topic] :]
            self._seen[topic] += len(new)
            for record in new:
                if topic == self.scores:
                    position = score_position(record)
                    self.scored[position] += 1
                    if json.loads(record.value)["verdict"] == "quarantined":
                        self.quarantined_by_score.add(position)
                elif topic == self.dead_letter:
                    position = header_position(record)
                    self.dead[position] += 1
                    self.dead_records.setdefault(position, record)
                else:
                    self.held.add(header_position(record))
        return self

    def accounted(self) -> set[Position]:
        return set(self.scored) | set(self.dead)

    def covers(self, positions: set[Position]) -> bool:
        return len(self.scored) + len(self.dead) >= len(positions) and positions <= self.accounted()

    @property
    def duplicates(self) -> int:
        return sum(self.scored.values()) + sum(self.dead.values()) - len(self.accounted())


def follower_for(bootstrap: str, topics: dict[str, str], group: str) -> tuple[OutputFollower, Ledger]:
    follower = OutputFollower(bootstrap, [topics["scores"], topics["dead_letter"], topics["quarantine"]], group)
    return follower, Ledger(topics["scores"], topics["dead_letter"], topics["quarantine"])


def make_topics(bootstrap: str, prefix: str, partitions: int) -> dict[str, str]:
    topics = topic_names(prefix)
    ensure_topics(bootstrap, [topics["input"]], partitions=partitions)
    ensure_topics(bootstrap, [topics["quarantine"], topics["dead_letter"], topics["scores"]])
    return topics


def input_positions(bootstrap: str, topic: str, group: str, n: int) -> dict[Position, bytes]:
    records = read_all(bootstrap, topic, group, n)
    by_position = {(r.partition, r.offset): r.value for r in records}
    assert len(by_position) == n
    return by_position


def assert_accounted(ledger: Ledger, inputs: dict[Position, bytes]) -> None:
    """Nothing lost; each event routed one way only; dead letters byte-exact; quarantine complete."""
    positions = set(inputs)
    missing = positions - ledger.accounted()
    assert not missing, f"{len(missing)} input offsets never reached an output, e.g. {sorted(missing)[:10]}"
    assert ledger.accounted() <= positions
    both = set(ledger.scored) & set(ledger.dead)
    assert not both, f"events both scored and dead-lettered: {sorted(both)[:10]}"
    assert all(r.value == inputs[p] for p, r in ledger.dead_records.items())
    unheld = ledger.quarantined_by_score - ledger.held
    assert not unheld, f"{len(unheld)} quarantined events missing from the quarantine topic: {sorted(unheld)[:10]}"
    assert ledger.held <= ledger.quarantined_by_score
    assert ledger.quarantined_by_score, "the mixed stream should quarantine some between-class points"


def follow_until_covered(
    follower: OutputFollower,
    ledger: Ledger,
    inputs: dict[Position, bytes],
    agents: list[AgentProcess],
    timeout_s: float,
) -> None:
    """Reads outputs until every input offset is accounted for; every agent must stay alive."""

    def alive() -> None:
        for agent in agents:
            assert agent.alive, f"agent died: {agent.log_path.read_text(errors='replace')[-3000:]}"

    positions = set(inputs)
    done = follower.until(lambda: ledger.update(follower).covers(positions), timeout_s, tick=alive)
    alive()
    assert done, f"{len(positions - ledger.accounted())} of {len(positions)} offsets unaccounted after {timeout_s}s"
    follower.drain()  # late copies and quarantine records that sorted after the last score
    ledger.update(follower)


def kill_after_progress(agent: AgentProcess, progress_s: float, max_consumed: float) -> float:
    """SIGKILLs `agent` `progress_s` after it first consumed something, or once it has consumed
    `max_consumed` if that comes first (so a fast machine cannot finish the stream before the
    kill); returns what it had consumed."""
    agent.wait_consumed(1, timeout_s=60)
    deadline = time.monotonic() + progress_s
    consumed = agent.consumed() or 0.0
    while time.monotonic() < deadline and consumed < max_consumed:
        time.sleep(0.05)
        consumed = agent.consumed() or consumed
    agent.kill()
    return consumed


# --- 1. SIGKILL at random moments, three times -------------------------------------------------


def test_sigkill_three_times_mid_stream_loses_nothing(
    kafka_bootstrap: str, unique_name: str, tiny_bundle: Path, tmp_path: Path
) -> None:
    rng = random.Random(20251125)
    n = 6_000
    topics = make_topics(kafka_bootstrap, unique_name, partitions=3)
    publish(kafka_bootstrap, topics["input"], mixed_stream(n, seed=7))
    inputs = input_positions(kafka_bootstrap, topics["input"], f"{unique_name}-in", n)
    group = f"{unique_name}-agent"

    def replica(run: int) -> AgentProcess:
        return AgentProcess(tiny_bundle, kafka_bootstrap, topics, group, tmp_path / f"agent-{run}.log")

    agent: AgentProcess | None = None
    kills: list[tuple[float, float]] = []  # (progress seconds drawn, events consumed) per SIGKILL
    try:
        for run in range(3):
            # A restart joins a group whose dead member still holds the partitions until its session
            # times out (10 s), so readiness of a restarted replica takes that long.
            agent = replica(run).start()
            progress_s = rng.uniform(0.5, 3.0)
            kills.append((progress_s, kill_after_progress(agent, progress_s, max_consumed=1_500)))
        agent = replica(3).start()
        follower, ledger = follower_for(kafka_bootstrap, topics, f"{unique_name}-out")
        with follower:
            follow_until_covered(follower, ledger, inputs, [agent], timeout_s=150)
        final_consumed = agent.consumed()
        assert agent.terminate() == 0
    finally:
        if agent is not None:
            agent.stop()

    print(
        f"\nSIGKILL after (s drawn, consumed): {[(round(s, 2), c) for s, c in kills]}; final run consumed "
        f"{final_consumed}; {ledger.duplicates} duplicate outputs for {n} inputs"
    )
    # The stream was fully published before the first start, so work left for the last replica
    # means every kill landed mid-stream.
    assert final_consumed and final_consumed > 0
    assert all(c > 0 for _, c in kills)
    assert_accounted(ledger, inputs)
    # Replays are bounded by the uncommitted tail: at most the batch in hand (64 records) per
    # kill. More means offsets were not committed as batches completed.
    assert ledger.duplicates <= 3 * 64, ledger.duplicates


# --- 2. Two replicas in one group; one dies ---------------------------------------------------


def test_second_replica_takes_over_a_killed_ones_partitions(
    kafka_bootstrap: str, unique_name: str, tiny_bundle: Path, tmp_path: Path
) -> None:
    rng = random.Random(4242)
    n = 6_000
    topics = make_topics(kafka_bootstrap, unique_name, partitions=4)
    partitions = {(topics["input"], p) for p in range(4)}
    group = f"{unique_name}-agent"
    a = AgentProcess(tiny_bundle, kafka_bootstrap, topics, group, tmp_path / "agent-a.log")
    b = AgentProcess(tiny_bundle, kafka_bootstrap, topics, group, tmp_path / "agent-b.log")
    try:
        a.start()
        b.start()

        def split() -> bool:  # the group has settled: both own partitions, disjoint, covering all
            la, lb = a.assignments(), b.assignments()
            return bool(la and lb and la[-1] and lb[-1] and not la[-1] & lb[-1] and la[-1] | lb[-1] == partitions)

        deadline = time.monotonic() + 45
        while not split() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert split(), f"partitions never split: a={a.assignments()} b={b.assignments()}"
        b_partitions = {p for _, p in b.assignments()[-1]}

        publish(kafka_bootstrap, topics["input"], mixed_stream(n, seed=9))
        a.wait_consumed(1, timeout_s=30)
        b_consumed = kill_after_progress(b, rng.uniform(0.2, 1.0), max_consumed=1_000)
        killed_at = time.monotonic()

        inputs = input_positions(kafka_bootstrap, topics["input"], f"{unique_name}-in", n)
        follower, ledger = follower_for(kafka_bootstrap, topics, f"{unique_name}-out")
        with follower:
            # The coordinator notices the dead member after its 10 s session timeout.
            follow_until_covered(follower, ledger, inputs, [a], timeout_s=120)
        takeover_s = time.monotonic() - killed_at
        a_consumed = a.consumed()
        a_final = a.assignments()[-1]
        assert a.terminate() == 0
    finally:
        a.stop()
        b.stop()

    in_b = sum(1 for p, _ in inputs if p in b_partitions)
    print(
        f"\nb owned partitions {sorted(b_partitions)} ({in_b} events) and consumed {b_consumed} before "
        f"SIGKILL; a consumed {a_consumed}; all accounted {takeover_s:.1f}s after the kill; "
        f"{ledger.duplicates} duplicate outputs for {n} inputs"
    )
    assert b_consumed and 0 < b_consumed < in_b, "b must die with work left on its partitions"
    assert a_final == partitions, f"survivor's last assignment {sorted(a_final)}"
    assert_accounted(ledger, inputs)
    # b's batch in hand, and a's if its commit fell into the rebalance
    assert ledger.duplicates <= 2 * 64, ledger.duplicates


# --- 3. Malformed input found by hypothesis ---------------------------------------------------

SPEC = InputSpec(shape=(8,), dtype="float32")
LIMIT = 4096  # the agent runs with DKNN_MAX_EVENT_BYTES=4096, so "huge" is cheap to publish


@dataclass(frozen=True)
class Case:
    kind: str
    payload: bytes
    reasons: frozenset[str]  # dknn.error.class values this payload may get


def _document(event_id: str, x_b64_or_values: dict, model: str = "tiny") -> bytes:
    doc = {
        "schema": "dknn.inference.v1",
        "event_id": event_id,
        "model": {"name": model, "version": "1"},
        "input": x_b64_or_values,
    }
    return json.dumps(doc, separators=(",", ":")).encode()


event_ids = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=40)
good_x = st.lists(st.floats(-10, 10, width=32), min_size=8, max_size=8).map(lambda v: np.array(v, np.float32))
valid_events = st.builds(lambda i, x: encode_event(i, x, "tiny", "1"), event_ids, good_x)


@st.composite
def truncated(draw: st.DrawFn) -> Case:
    event = draw(valid_events)
    return Case("truncated", event[: draw(st.integers(0, len(event) - 1))], frozenset({"bad_json"}))


@st.composite
def wrong_shape(draw: st.DrawFn) -> Case:
    shape = draw(st.lists(st.integers(0, 12), max_size=3).filter(lambda s: s != [8]))
    payload = encode_event(draw(event_ids), np.zeros(shape, np.float32), "tiny", "1")
    # a big wrong shape is first of all too big: the size check runs before anything is parsed
    return Case("wrong_shape", payload, frozenset({"shape" if len(payload) <= LIMIT else "too_large"}))


@st.composite
def b64_length_mismatch(draw: st.DrawFn) -> Case:  # declares [8] but carries another number of floats
    n = draw(st.integers(0, 20).filter(lambda k: k != 8))
    b64 = base64.b64encode(np.zeros(n, "<f4").tobytes()).decode()
    return Case(
        "b64_length", _document(draw(event_ids), {"dtype": "float32", "shape": [8], "b64": b64}), frozenset({"shape"})
    )


@st.composite
def wrong_dtype(draw: st.DrawFn) -> Case:
    named = st.sampled_from([">f4", "float64", "f8", "int32", "uint8", "float16", "bfloat16", "complex64"])
    dtype = draw(named | st.text(min_size=1, max_size=16).filter(lambda t: t not in ("float32", "<f4", "f4")))
    b64 = base64.b64encode(np.zeros(8, "<f4").tobytes()).decode()
    return Case(
        "wrong_dtype", _document(draw(event_ids), {"dtype": dtype, "shape": [8], "b64": b64}), frozenset({"dtype"})
    )


@st.composite
def non_finite(draw: st.DrawFn) -> Case:
    x = draw(good_x).copy()
    bad = draw(st.lists(st.integers(0, 7), min_size=1, max_size=8, unique=True))
    x[bad] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    form = draw(st.sampled_from(["b64", "values_overflow", "values_literal"]))
    if form == "b64":
        return Case("non_finite_b64", encode_event(draw(event_ids), x, "tiny", "1"), frozenset({"non_finite"}))
    values = [float(v) for v in x]
    if form == "values_overflow":  # finite in JSON and float64, infinite as float32
        values = [draw(st.floats(3.5e38, 1e300)) if i in bad else v for i, v in enumerate(values)]
        return Case(
            "float32_overflow",
            _document(draw(event_ids), {"dtype": "float32", "shape": [8], "values": values}),
            frozenset({"non_finite"}),
        )
    # json.dumps writes NaN / Infinity, which strict JSON (and the agent) does not accept
    doc = {
        "schema": "dknn.inference.v1",
        "event_id": draw(event_ids),
        "model": {"name": "tiny", "version": "1"},
        "input": {"dtype": "float32", "shape": [8], "values": values},
    }
    return Case("nan_literal", json.dumps(doc).encode(), frozenset({"bad_json"}))


@st.composite
def huge(draw: st.DrawFn) -> Case:
    size = draw(st.one_of(st.integers(LIMIT + 1, 2 * LIMIT), st.integers(LIMIT + 1, 600_000)))
    if draw(st.booleans()):  # a valid event padded with JSON whitespace: only its size is wrong
        event = draw(valid_events)
        return Case("huge_valid", b" " * max(0, size - len(event)) + event, frozenset({"too_large"}))
    return Case("huge_junk", bytes([draw(st.integers(0, 255))]) * size, frozenset({"too_large"}))


@st.composite
def wrong_model(draw: st.DrawFn) -> Case:
    name = draw(st.text(min_size=1, max_size=20).filter(lambda s: s != "tiny"))
    return Case("unknown_model", encode_event(draw(event_ids), draw(good_x), name, "1"), frozenset({"unknown_model"}))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@st.composite
def wrong_schema(draw: st.DrawFn) -> Case:
    if draw(st.booleans()):  # any JSON at all (objects without the required fields included)
        return Case("random_json", json.dumps(draw(json_values)).encode(), frozenset({"schema"}))
    doc = json.loads(draw(valid_events))  # a valid event with one required field dropped or retyped
    key = draw(st.sampled_from(["schema", "event_id", "model", "input"]))
    if key != "schema" and draw(st.booleans()):  # (a missing "schema" defaults to v1)
        del doc[key]
    else:
        doc[key] = draw(json_values.filter(lambda v: not isinstance(v, (dict, str))))
    return Case("broken_field", json.dumps(doc).encode(), frozenset({"schema"}))


@st.composite
def hostile_json(draw: st.DrawFn) -> Case:
    """JSON that is hard to parse or to write back: deep nesting, lone surrogates, duplicate keys,
    unusual number forms. Each must be dead-lettered with its exact bytes."""
    spaced = json.dumps(json.loads(draw(valid_events))).encode()  # valid, but not compact
    kind = draw(st.sampled_from(["deep", "surrogate", "duplicate_model", "number_form"]))
    if kind == "deep":  # past Python's recursion limit, within the test's 4 KiB event limit
        depth = draw(st.integers(1_000, LIMIT // 2 - 1))
        return Case("deep_nesting", b"[" * depth + b"]" * depth, frozenset({"bad_json", "schema"}))
    if kind == "surrogate":
        escape = draw(st.sampled_from([b"\\ud800", b"\\udfff", b"\\udbff\\u0041"]))
        return Case(
            "lone_surrogate", spaced.replace(b'"event_id": "', b'"event_id": "' + escape, 1), frozenset({"bad_json"})
        )
    if kind == "duplicate_model":  # the second "model" wins: an unknown model
        return Case(
            "duplicate_keys",
            spaced[:-1] + b', "model": {"name": "other", "version": "1"}}',
            frozenset({"unknown_model"}),
        )
    if kind == "number_form":
        form = draw(st.sampled_from([b"8E0", b"8.0", b"0x8", b"1e999", b"-0"]))
        reasons = frozenset({"bad_json"}) if form in (b"0x8", b"1e999") else frozenset({"schema", "shape"})
        return Case("number_form", spaced.replace(b'"shape": [8]', b'"shape": [' + form + b"]"), reasons)
    raise AssertionError(kind)  # (5,000-digit integers exceed this test's 4 KiB limit: see test_poison_pills)


MALFORMED = {
    "hostile_json": hostile_json(),
    "random_bytes": st.binary(max_size=300).map(lambda b: Case("random_bytes", b, frozenset({"bad_json", "schema"}))),
    "truncated": truncated(),
    "wrong_shape": wrong_shape(),
    "b64_length": b64_length_mismatch(),
    "wrong_dtype": wrong_dtype(),
    "non_finite": non_finite(),
    "huge": huge(),
    "unknown_model": wrong_model(),
    "wrong_schema": wrong_schema(),
}


def draw_malformed_corpus(examples_per_kind: int) -> list[Case]:
    """Hypothesis explores each kind of malformed event (a run per kind, so none is left out).
    Each example is checked here to be malformed, and of the expected class, by the decoder, so a
    generator bug fails with a shrunk example; all are collected for one end-to-end agent run."""
    corpus: list[Case] = []
    for strategy in MALFORMED.values():

        @settings(
            max_examples=examples_per_kind,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
        )
        @given(strategy)
        def collect(case: Case) -> None:
            with pytest.raises(EventError) as raised:
                decode_event(case.payload, SPEC, "tiny", LIMIT)
            assert raised.value.reason in case.reasons, (case.kind, raised.value.reason, str(raised.value))
            corpus.append(case)

        collect()
    return corpus


def test_hypothesis_malformed_events_all_reach_the_dead_letter_topic(
    kafka_bootstrap: str, unique_name: str, tiny_bundle: Path, tmp_path: Path
) -> None:
    corpus = draw_malformed_corpus(examples_per_kind=7)  # ~60 in all
    kinds = Counter(case.kind for case in corpus)
    rng = random.Random(5)
    clean = blobs(300, seed=77)
    valid = [encode_event(f"ok{i}", clean.x[i], "tiny", "1") for i in range(len(clean.x))]
    stream: list[tuple[bytes, Case | None]] = [(v, None) for v in valid] + [(c.payload, c) for c in corpus]
    rng.shuffle(stream)

    topics = make_topics(kafka_bootstrap, unique_name, partitions=2)
    with KafkaSink(kafka_bootstrap) as sink:
        for value, _ in stream:
            sink.send(topics["input"], value)
        sink.flush(60)
    inputs = input_positions(kafka_bootstrap, topics["input"], f"{unique_name}-in", len(stream))
    # Publishing order is per partition only, so pair the cases with their offsets by content.
    case_by_value: dict[bytes, list[Case | None]] = {}
    for value, case in stream:
        case_by_value.setdefault(value, []).append(case)
    expected: dict[Position, Case | None] = {}
    for position, value in inputs.items():
        cases = case_by_value[value]
        # identical payloads (hypothesis repeats minimal examples) share a fate, so any will do
        expected[position] = cases[0]

    agent = AgentProcess(
        tiny_bundle,
        kafka_bootstrap,
        topics,
        f"{unique_name}-agent",
        tmp_path / "agent.log",
        env={"DKNN_MAX_EVENT_BYTES": str(LIMIT)},
    )
    try:
        agent.start()
        follower, ledger = follower_for(kafka_bootstrap, topics, f"{unique_name}-out")
        with follower:
            follow_until_covered(follower, ledger, inputs, [agent], timeout_s=90)
            dead_records: dict[Position, list[Record]] = {}
            for record in follower.records[topics["dead_letter"]]:
                dead_records.setdefault(header_position(record), []).append(record)
        assert agent.alive
        metrics = agent.metrics()
        assert agent.terminate() == 0
    finally:
        agent.stop()

    print(
        f"\nhypothesis corpus: {len(corpus)} malformed events {dict(sorted(kinds.items()))}, "
        f"{len(valid)} valid interleaved; {ledger.duplicates} duplicates"
    )
    bad_positions = {p for p, case in expected.items() if case is not None}
    good_positions = set(expected) - bad_positions
    assert set(dead_records) == bad_positions, (
        f"malformed not dead-lettered: {[expected[p].kind for p in bad_positions - set(dead_records)][:10]}; "
        f"valid dead-lettered: {[dict(dead_records[p][0].headers) for p in set(dead_records) - bad_positions][:3]}"
    )
    assert set(ledger.scored) == good_positions
    for position, records in dead_records.items():
        case = expected[position]
        assert case is not None
        for record in records:
            headers = dict(record.headers)
            assert record.value == inputs[position] == case.payload, f"{case.kind}: dead letter bytes changed"
            error_class = headers["dknn.error.class"].decode()
            assert error_class in EVENT_ERROR_REASONS and error_class in case.reasons, (
                case.kind,
                error_class,
                case.payload[:200],
            )
            assert headers["dknn.error.message"]
            assert headers["dknn.source.topic"].decode() == topics["input"]
    # the agent's counters agree with the topics (one run, no faults: nothing replayed)
    dead_total = sum(v for k, v in metrics.items() if k.startswith("dknn_events_dead_lettered_total{"))
    assert dead_total == sum(len(records) for records in dead_records.values()) == len(bad_positions)
    assert sum(v for k, v in metrics.items() if k.startswith("dknn_events_consumed_total")) == len(inputs)


# --- 3b. Malformed events at the broker's size limit (default agent limit, 1 MiB) -------------


def _largest_publishable(sink: KafkaSink, topic: str) -> int:
    """The biggest value the client (max_request_size, 1 MiB by default) lets us publish."""
    for size in range(1 << 20, (1 << 20) - 4096, -8):
        try:
            sink.send(topic, b"\x00" * size)
        except ConnectorError:
            continue
        return size
    raise AssertionError("no value near 1 MiB could be published")


def test_malformed_events_at_the_size_limit_reach_the_dead_letter_topic(
    kafka_bootstrap: str, unique_name: str, tiny_bundle: Path, tmp_path: Path
) -> None:
    """With the default 1 MiB limit, the largest values the broker takes. A dead letter is the same
    bytes *plus* headers, so for a value at the client's request-size limit it cannot be produced
    at all; the agent must neither crash nor crash-loop on it (it did: a poison pill)."""
    topics = make_topics(kafka_bootstrap, unique_name, partitions=1)
    valid = [encode_event(f"ok{i}", x, "tiny", "1") for i, x in enumerate(blobs(20, seed=5).x)]
    with KafkaSink(kafka_bootstrap) as sink:
        sink.send(topics["input"], valid[0])
        largest = _largest_publishable(sink, topics["input"])  # offset 1: junk, so bad_json
        for value in valid[1:10]:
            sink.send(topics["input"], value)
        sink.send(topics["input"], b"{" + b" " * (largest - 1))  # offset 11: truncated JSON, same size
        sink.send(topics["input"], b"\x00" * 1_000_000)  # offset 12: big junk whose dead letter fits
        sink.send(topics["input"], b" " * 1_000_000 + valid[10])  # offset 13: big but valid
        for value in valid[11:]:
            sink.send(topics["input"], value)
        sink.flush(60)
    n = 23
    inputs = input_positions(kafka_bootstrap, topics["input"], f"{unique_name}-in", n)
    agent = AgentProcess(tiny_bundle, kafka_bootstrap, topics, f"{unique_name}-agent", tmp_path / "agent.log")
    try:
        agent.start()
        follower, ledger = follower_for(kafka_bootstrap, topics, f"{unique_name}-out")
        with follower:
            follow_until_covered(follower, ledger, inputs, [agent], timeout_s=60)
            dead = {header_position(r): r for r in follower.records[topics["dead_letter"]]}
        assert agent.terminate() == 0
    finally:
        agent.stop()
    print(
        f"\nlargest publishable value {largest} bytes; dead letters "
        f"{ {p: (len(r.value), dict(r.headers).get('dknn.value.omitted')) for p, r in dead.items()} }"
    )
    assert set(dead) == {(0, 1), (0, 11), (0, 12)}
    assert set(ledger.scored) == set(inputs) - set(dead)
    assert dead[(0, 12)].value == inputs[(0, 12)] and dict(dead[(0, 12)].headers)["dknn.error.class"] == b"bad_json"
    for position in (0, 1), (0, 11):  # too big to forward: the headers still say what and where
        headers = dict(dead[position].headers)
        assert headers["dknn.error.class"] == b"bad_json"
        assert dead[position].value in (inputs[position], b"")
        if not dead[position].value:
            assert headers["dknn.value.omitted"] == str(len(inputs[position])).encode()


# --- 4. The broker restarts mid-stream (LAST: it stops the shared session broker) -------------


def _broker_up(local_kafka: LocalKafka) -> bool:
    try:
        local_kafka.run("status", timeout_s=30)
        return True
    except RuntimeError:
        return False


def _start_broker(local_kafka: LocalKafka) -> None:
    # Same data dir, hence the same ports; --exit-with keeps the session's guarantee that a killed
    # pytest does not leave a broker behind (a plain `run("start")` would drop the watchdog).
    assert local_kafka.data_dir is not None
    _kafka_sh("start", "--data-dir", str(local_kafka.data_dir), "--exit-with", str(os.getpid()), timeout_s=180)


def test_agent_survives_a_broker_restart_mid_stream(
    local_kafka: LocalKafka, kafka_bootstrap: str, unique_name: str, tiny_bundle: Path, tmp_path: Path
) -> None:
    if local_kafka.data_dir is None:
        pytest.skip("DKNN_TEST_KAFKA points at an external broker; cannot restart it")
    n = 5_000
    topics = make_topics(kafka_bootstrap, unique_name, partitions=3)
    publish(kafka_bootstrap, topics["input"], mixed_stream(n, seed=13))
    inputs = input_positions(kafka_bootstrap, topics["input"], f"{unique_name}-in", n)
    agent = AgentProcess(tiny_bundle, kafka_bootstrap, topics, f"{unique_name}-agent", tmp_path / "agent.log")
    try:
        agent.start()
        agent.wait_consumed(400, timeout_s=60)
        try:
            stopped_at = time.monotonic()
            local_kafka.run("stop", timeout_s=120)
            consumed_at_stop = agent.consumed()
            time.sleep(3)
            assert agent.alive, f"agent died with the broker: {agent.log_path.read_text()[-3000:]}"
        finally:
            if not _broker_up(local_kafka):
                _start_broker(local_kafka)
        down_s = time.monotonic() - stopped_at
        assert consumed_at_stop is not None and consumed_at_stop < n, "the broker must go down mid-stream"
        follower, ledger = follower_for(kafka_bootstrap, topics, f"{unique_name}-out")
        with follower:
            follow_until_covered(follower, ledger, inputs, [agent], timeout_s=180)
        recovered_s = time.monotonic() - stopped_at
        consumed = agent.consumed()
        assert agent.alive
        assert agent.terminate() == 0
    finally:
        agent.stop()
        if not _broker_up(local_kafka):
            _start_broker(local_kafka)

    log = agent.log_path.read_text(errors="replace")
    retries = log.count("retrying in")
    print(
        f"\nbroker down {down_s:.1f}s (stop at {consumed_at_stop} consumed); every offset accounted "
        f"{recovered_s:.1f}s after the stop; agent consumed {consumed} in all, {retries} retried "
        f"route/commit calls; {ledger.duplicates} duplicate outputs for {n} inputs"
    )
    assert consumed is not None and consumed >= n
    assert_accounted(ledger, inputs)
