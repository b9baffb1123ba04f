"""The agent end to end against the real broker: nothing lost, routing right, metrics agree."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from agent.runtime.events import encode_event
from connectors.kafka import KafkaSink, ensure_topics
from tests.conftest import blobs
from tests.integration.agent_process import AgentProcess, read_all

pytestmark = pytest.mark.integration


def topic_names(prefix: str) -> dict[str, str]:
    return {kind: f"{prefix}-{kind}" for kind in ("input", "quarantine", "dead_letter", "scores")}


def mixed_stream(n: int, seed: int) -> list[bytes]:
    """Clean blobs, points between classes (low credibility) and malformed events of every kind."""
    rng = np.random.default_rng(seed)
    clean = blobs(n, seed=seed + 100)
    values: list[bytes] = []
    for i in range(n):
        roll = rng.random()
        if roll < 0.85:
            values.append(encode_event(f"c{i}", clean.x[i], "tiny", "1"))
        elif roll < 0.92:
            values.append(encode_event(f"b{i}", rng.normal(0, 0.5, 8).astype(np.float32), "tiny", "1"))
        else:
            values.append(
                [
                    b"{truncated",
                    bytes(rng.integers(0, 256, 40, dtype=np.uint8)),
                    encode_event(f"s{i}", np.zeros(7, np.float32), "tiny", "1"),
                    encode_event(f"m{i}", np.zeros(8, np.float32), "someone-else", "1"),
                    encode_event(f"n{i}", np.full(8, np.nan, np.float32), "tiny", "1"),
                ][int(rng.integers(5))]
            )
    return values


def publish(bootstrap: str, topic: str, values: list[bytes]) -> None:
    with KafkaSink(bootstrap) as sink:
        for value in values:
            sink.send(topic, value)
        sink.flush(60)


def metric_sum(metrics: dict[str, float], name: str, label: str = "") -> float:
    return sum(v for k, v in metrics.items() if k.startswith(name + "{") and label in k)


def test_ten_thousand_mixed_events_are_all_accounted_for(
    kafka_bootstrap: str, unique_name: str, tiny_bundle: Path, tmp_path: Path
) -> None:
    topics = topic_names(unique_name)
    ensure_topics(kafka_bootstrap, [topics["input"]], partitions=3)
    ensure_topics(kafka_bootstrap, [topics["quarantine"], topics["dead_letter"], topics["scores"]])
    values = mixed_stream(10_000, seed=1)
    publish(kafka_bootstrap, topics["input"], values)

    agent = AgentProcess(tiny_bundle, kafka_bootstrap, topics, f"{unique_name}-agent", tmp_path / "agent.log").start()
    try:
        inputs = read_all(kafka_bootstrap, topics["input"], f"{unique_name}-r1", 10_000)
        scores = read_all(kafka_bootstrap, topics["scores"], f"{unique_name}-r2", 1, timeout_s=180)
        dead = read_all(kafka_bootstrap, topics["dead_letter"], f"{unique_name}-r3", 1)
        while len(scores) + len(dead) < 10_000:  # the agent may still be working through the tail
            scores += read_all(kafka_bootstrap, topics["scores"], f"{unique_name}-r2", 1, timeout_s=5)
            dead += read_all(kafka_bootstrap, topics["dead_letter"], f"{unique_name}-r3", 1, timeout_s=5)
        quarantine = read_all(kafka_bootstrap, topics["quarantine"], f"{unique_name}-r4", 1)
        metrics = agent.metrics()
    finally:
        assert agent.terminate() == 0

    positions = {(r.partition, r.offset) for r in inputs}
    assert len(positions) == 10_000
    scored = [json.loads(r.value) for r in scores]
    scored_positions = {(s["source"]["partition"], s["source"]["offset"]) for s in scored}
    dead_positions = {
        (int(dict(r.headers)["dknn.source.partition"]), int(dict(r.headers)["dknn.source.offset"])) for r in dead
    }
    assert scored_positions | dead_positions == positions and not scored_positions & dead_positions
    by_position = {(r.partition, r.offset): r.value for r in inputs}
    assert all(
        r.value == by_position[p]
        for r, p in zip(
            dead,
            [(int(dict(r.headers)["dknn.source.partition"]), int(dict(r.headers)["dknn.source.offset"])) for r in dead],
            strict=True,
        )
    )

    held = {json.loads(r.value)["event"]["event_id"] for r in quarantine}
    assert held == {s["event_id"] for s in scored if s["verdict"] == "quarantined"}
    assert all(s["credibility"] < 0.1 for s in scored if s["verdict"] == "quarantined")
    assert any(s["event_id"].startswith("b") for s in scored if s["verdict"] == "quarantined")

    assert metric_sum(metrics, "dknn_events_consumed_total") == 10_000
    assert metric_sum(metrics, "dknn_events_scored_total") == len(scored)
    assert metric_sum(metrics, "dknn_events_scored_total", "verdict=quarantined") == len(held)
    assert metric_sum(metrics, "dknn_events_dead_lettered_total") == len(dead)
    lags = {k: v for k, v in metrics.items() if k.startswith("dknn_consumer_lag_messages{")}
    assert len(lags) == 3 and set(lags.values()) == {0.0}, lags
    assert metric_sum(metrics, "dknn_stage_duration_seconds_count", "stage=knn") > 0
