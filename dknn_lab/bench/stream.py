"""The stream benchmark: events/s and event latency through a real broker (`dknn-agent bench stream`).

Phase 0 (scoring only): the same inputs scored in-process in batches of the agent's batch size —
the rate the stream is compared with, measured in the same run. Phase 1 (throughput): N clean
events are published first, then one in-process agent drains them; events/s = N / (time from its
first poll until the sink confirmed the last event's outputs), and the scores topic must then hold
a record for every one of the N events. Phase 2 (latency): events are published at a steady rate
(1,000 events/s by default) while the agent runs; an event's latency is the broker timestamp of
its score record minus the `timestamp_ms` the producer stamped on it, so it includes the broker
hops, batching, scoring and the confirmed produce. The paced producer runs in a process of its own
(`dknn_lab.bench.paced_producer` says why) and starts with half a second of warm-up events
that are not measured: the latency is the steady state's.
"""

from __future__ import annotations

import json
import multiprocessing
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agent.engine.dknn import DkNN
from agent.engine.drift import DriftMonitor
from agent.errors import ConnectorError
from agent.runtime.events import encode_event
from agent.runtime.pipeline import Pipeline, PipelineOptions
from agent.runtime.routing import Topics
from agent.runtime.telemetry import STAGES, Telemetry
from connectors.base import Record
from connectors.kafka import KafkaSink, KafkaSource, ensure_topics
from dknn_lab.bench.paced_producer import publish_paced
from dknn_lab.bench.reports import MISSING, ModelVersion, now, save_report, table
from dknn_lab.demo_traffic import load_demo_data


@dataclass(frozen=True)
class StreamOptions:
    artifacts: Path
    bootstrap_servers: str
    count: int = 5000
    latency_count: int = 2000
    latency_rate: float = 1000.0
    batch_size: int = 256
    partitions: int = 3
    out_dir: Path = Path("docs/results")


LATENCY_QUANTILES = (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))


@dataclass(frozen=True)
class StreamResult:
    """Both phases of one run; rates in events/s, stage maps keyed by the agent's stage names."""

    benchmark: str = field(default="stream", init=False)
    created_at: str = field(default_factory=now, init=False)
    bundle: ModelVersion
    batch_size: int
    partitions: int
    scoring_only_events_per_s: float
    throughput_events_per_s: float
    throughput_share_of_scoring: float
    throughput_events: int
    throughput_events_scored: int  # events with a record on the scores topic
    throughput_stage_share: dict[str, float]  # of the throughput phase's wall time
    latency_rate_events_per_s: float
    latency_events: int
    latency_mean_batch: float
    latency_stage_ms_per_batch: dict[str, float]
    latency_ms: dict[str, float]  # LATENCY_QUANTILES by name; empty when no event's latency was measured


def _publish(bootstrap: str, topic: str, values: list[bytes]) -> None:
    with KafkaSink(bootstrap) as sink:
        for value in values:
            sink.send(topic, value)
        sink.flush(120)


def _stamps(
    bootstrap: str,
    topic: str,
    prefix: str,
    expected: int,
    stamp: Callable[[Record], int | None],
    timeout_s: float = 300,
) -> dict[str, int]:
    """event_id -> stamp(record) for the events of one phase (ids starting with `prefix`) on `topic`."""
    found: dict[str, int] = {}
    deadline = time.monotonic() + timeout_s
    with KafkaSource(bootstrap, [topic], f"bench-reader-{uuid.uuid4().hex[:8]}") as source:
        while len(found) < expected and time.monotonic() < deadline:
            for record in source.poll(2000, 0.5):
                event_id = json.loads(record.value)["event_id"]
                if event_id.startswith(prefix) and (value := stamp(record)) is not None:
                    found.setdefault(event_id, value)
    return found


def run_stream(options: StreamOptions) -> StreamResult:
    run_id = uuid.uuid4().hex[:8]
    topics = {kind: f"bench-{run_id}-{kind}" for kind in ("input", "quarantine", "dead-letter", "scores")}
    ensure_topics(options.bootstrap_servers, [topics["input"]], partitions=options.partitions)
    ensure_topics(options.bootstrap_servers, [topics["quarantine"], topics["dead-letter"], topics["scores"]])
    data = load_demo_data(options.artifacts, None, need_fgsm=False)
    scorer = DkNN.from_bundle(options.artifacts)
    inputs = np.stack([data.clean[i % len(data.clean)] for i in range(options.count)])
    batches = [inputs[start : start + options.batch_size] for start in range(0, len(inputs), options.batch_size)]
    started = time.monotonic()
    for batch in batches:
        scorer.score(batch)
    scoring_only = options.count / (time.monotonic() - started)
    _publish(
        options.bootstrap_servers,
        topics["input"],
        [
            encode_event(f"thr-{i}", data.clean[i % len(data.clean)], data.model_name, data.model_version)
            for i in range(options.count)
        ],
    )

    source = KafkaSource(
        options.bootstrap_servers, [topics["input"]], f"bench-agent-{run_id}", max_poll_records=options.batch_size
    )
    sink = KafkaSink(options.bootstrap_servers)
    pipeline = Pipeline(
        scorer,
        source,
        sink,
        Topics(topics["quarantine"], topics["dead-letter"], topics["scores"]),
        Telemetry(),
        DriftMonitor(scorer.calibration_alpha, scorer.calibration_label_free, PipelineOptions().threshold),
        PipelineOptions(batch_size=options.batch_size, max_batch_wait_s=0.05),
    )
    telemetry = pipeline.telemetry
    stop = threading.Event()
    agent = threading.Thread(target=pipeline.run, args=(stop,), name="agent")
    agent.start()
    try:
        while pipeline.stats.consumed == 0:
            time.sleep(0.01)
        started = time.monotonic()
        while pipeline.stats.scored + pipeline.stats.dead_lettered < options.count:
            time.sleep(0.01)  # until the sink confirmed an output for every event
        elapsed = time.monotonic() - started
        throughput = options.count / elapsed
        stages = _stage_seconds(telemetry)
        accounted = len(_stamps(options.bootstrap_servers, topics["scores"], "thr-", options.count, lambda _: 0))
        rate = options.latency_rate
        before, batches_before = _stage_seconds(telemetry), _batches_scored(telemetry)
        scored_before = pipeline.stats.scored
        producer = multiprocessing.get_context("spawn").Process(
            target=publish_paced,
            args=(
                data.clean,
                data.model_name,
                data.model_version,
                options.latency_count,
                rate,
                options.bootstrap_servers,
                topics["input"],
                "lat-",
                int(rate / 2),
            ),
            name="paced-producer",
        )
        producer.start()
        producer.join()
        if producer.exitcode != 0:
            raise ConnectorError(f"the paced producer failed (exit code {producer.exitcode}); see its traceback above")
        scored = _stamps(
            options.bootstrap_servers,
            topics["scores"],
            "lat-",
            options.latency_count,
            lambda record: record.timestamp_ms,
        )
        latency_batches = max(1, _batches_scored(telemetry) - batches_before)
        latency_scored = pipeline.stats.scored - scored_before  # the warm-up events included
        latency_stage_ms = {
            name: round(1000 * (seconds - before[name]) / latency_batches, 1)
            for name, seconds in _stage_seconds(telemetry).items()
        }
    finally:
        stop.set()
        agent.join(60)
        source.close()
        sink.close()
    sent = _stamps(
        options.bootstrap_servers,
        topics["input"],
        "lat-",
        options.latency_count,
        lambda record: json.loads(record.value)["timestamp_ms"],
    )
    latencies_ms = np.array([scored[e] - sent[e] for e in scored if e in sent], dtype=float)
    result = StreamResult(
        bundle=ModelVersion(scorer.manifest.model.name, scorer.manifest.model.version),
        batch_size=options.batch_size,
        partitions=options.partitions,
        scoring_only_events_per_s=round(scoring_only, 1),
        throughput_events_per_s=round(throughput, 1),
        throughput_share_of_scoring=round(throughput / scoring_only, 3),
        throughput_events=options.count,
        throughput_events_scored=accounted,
        throughput_stage_share={name: round(seconds / elapsed, 3) for name, seconds in stages.items()},
        latency_rate_events_per_s=round(rate, 1),
        latency_events=int(len(latencies_ms)),
        latency_mean_batch=round(latency_scored / latency_batches, 1),
        latency_stage_ms_per_batch=latency_stage_ms,
        latency_ms={q: round(float(np.percentile(latencies_ms, p)), 1) for q, p in LATENCY_QUANTILES}
        if len(latencies_ms)
        else {},
    )
    save_report(result, markdown(result), options.out_dir, f"stream-{result.bundle.model}")
    return result


def _stage_seconds(telemetry: Telemetry) -> dict[str, float]:
    """Seconds the agent spent in each stage so far, from its own dknn_stage_duration_seconds."""
    seconds = {}
    for stage in STAGES:
        total = telemetry.registry.get_sample_value("dknn_stage_duration_seconds_sum", {"stage": stage})
        seconds[stage] = total or 0.0
    return seconds


def _batches_scored(telemetry: Telemetry) -> int:
    """Batches the agent has scored so far (each times its activations stage once)."""
    count = telemetry.registry.get_sample_value("dknn_stage_duration_seconds_count", {"stage": "activations"})
    return int(count or 0)


def markdown(result: StreamResult) -> str:
    shares, per_batch = result.throughput_stage_share, result.latency_stage_ms_per_batch
    lines = [
        f"# Stream: {result.bundle.model} {result.bundle.version}",
        "",
        f"One agent (batch size {result.batch_size}, {result.partitions} input partitions), "
        "real Kafka broker on 127.0.0.1.",
        "",
        *table(
            [
                "scoring only (inputs/s)",
                "throughput (events/s)",
                "share of scoring",
                "score records / events",
                "latency rate (events/s)",
                *(f"{q} ms" for q, _ in LATENCY_QUANTILES),
            ],
            [
                [
                    f"{result.scoring_only_events_per_s:,.0f}",
                    f"{result.throughput_events_per_s:,.0f}",
                    f"{result.throughput_share_of_scoring:.0%}",
                    f"{result.throughput_events_scored:,} / {result.throughput_events:,}",
                    f"{result.latency_rate_events_per_s:,.0f}",
                    *(result.latency_ms.get(q, MISSING) for q, _ in LATENCY_QUANTILES),
                ]
            ],
        ),
        "",
        "Where the agent's time went in the throughput phase (its own stage timers, share of the wall time; "
        "poll includes waiting for the broker; activations, knn and score run on the scoring thread beside "
        "the other stages, so the shares add up to more than 100%):",
        "",
        *table(list(shares), [[f"{share:.0%}" for share in shares.values()]]),
        "",
        f"In the latency phase the agent scored {result.latency_mean_batch:g} events per batch on average; "
        "milliseconds per batch in each stage:",
        "",
        *table(list(per_batch), [[f"{ms:g}" for ms in per_batch.values()]]),
    ]
    return "\n".join(lines) + "\n"
