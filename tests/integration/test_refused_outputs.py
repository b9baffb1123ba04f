"""Records the broker refuses for good must not stop the agent: each is replaced by its fallback.

The output topics are created with a tiny `max.message.bytes`, so the broker itself (not the client)
refuses the records at flush with a non-retriable error. Before, every delivery failure counted as
retriable: 120 s of re-sending, exit, and the same again after a restart.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.runtime.events import encode_event
from connectors.kafka import KafkaSink, ensure_topics
from tests.conftest import blobs
from tests.integration.agent_process import AgentProcess, header_position
from tests.integration.test_agent_faults import follow_until_covered, follower_for, input_positions
from tests.integration.test_agent_stream import topic_names

pytestmark = pytest.mark.integration


def test_refused_quarantine_and_dead_letter_records_fall_back_and_the_agent_goes_on(
    kafka_bootstrap: str, unique_name: str, tiny_bundle: Path, tmp_path: Path
) -> None:
    topics = topic_names(unique_name)
    ensure_topics(kafka_bootstrap, [topics["input"], topics["scores"]])
    ensure_topics(kafka_bootstrap, [topics["quarantine"]], configs={"max.message.bytes": "200"})
    ensure_topics(kafka_bootstrap, [topics["dead_letter"]], configs={"max.message.bytes": "4096"})
    x = blobs(30, seed=7).x
    values = [encode_event(f"e{i}", row, "tiny", "1") for i, row in enumerate(x)]
    values += [encode_event(f"mid{i}", np.full(8, 0.1 * i, np.float32), "tiny", "1") for i in range(10)]
    values.append(b"{" + b" " * 20_000)  # malformed and over the dead-letter topic's limit
    with KafkaSink(kafka_bootstrap) as sink:
        for value in values:
            sink.send(topics["input"], value)
        sink.flush(60)
    inputs = input_positions(kafka_bootstrap, topics["input"], f"{unique_name}-in", len(values))

    # Every valid event is quarantined (threshold 0.999), and the quarantine topic takes none of them.
    agent = AgentProcess(
        tiny_bundle,
        kafka_bootstrap,
        topics,
        f"{unique_name}-agent",
        tmp_path / "agent.log",
        env={"DKNN_THRESHOLD": "0.999"},
    )
    try:
        agent.start()
        follower, ledger = follower_for(kafka_bootstrap, topics, f"{unique_name}-out")
        with follower:
            follow_until_covered(follower, ledger, inputs, [agent], timeout_s=90)
            dead = {header_position(r): r for r in follower.records[topics["dead_letter"]]}
        metrics = agent.metrics()
        assert agent.alive
        assert agent.terminate() == 0
    finally:
        agent.stop()

    big = (0, len(values) - 1)
    assert dead[big].value == b"" and dict(dead[big].headers)["dknn.value.omitted"] == str(len(values[-1])).encode()
    assert dict(dead[big].headers)["dknn.error.class"] == b"bad_json"
    valid = set(inputs) - {big}
    assert set(ledger.scored) == valid
    quarantined = ledger.quarantined_by_score
    assert len(quarantined) >= 10, "threshold 0.999 should quarantine the in-between events at least"
    assert {p for p, r in dead.items() if dict(r.headers)["dknn.error.class"] == b"undeliverable"} == quarantined
    assert all(dead[p].value == inputs[p] for p in quarantined)  # the original bytes, for review
    assert not ledger.held
    assert metrics["dknn_outputs_refused_total{output=quarantine}"] >= len(quarantined)
    assert metrics["dknn_outputs_refused_total{output=dead_letter}"] >= 1
