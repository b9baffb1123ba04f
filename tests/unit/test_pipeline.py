"""The pipeline's routing and delivery rules with in-memory connectors and the tiny bundle."""

from __future__ import annotations

import gc
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from agent.engine.dknn import DkNN
from agent.errors import EVENT_ERROR_REASONS, CommitRejectedError, ConnectorError
from agent.runtime.events import encode_event
from agent.runtime.pipeline import Pipeline
from agent.runtime.routing import Verdict
from tests.conftest import TinyProblem, pipeline_for
from tests.support.memory_connectors import MemorySink, MemorySource


def build(bundle: Path, values: list[bytes], **options) -> tuple[Pipeline, MemorySource, MemorySink]:
    source, sink = MemorySource(values, topic="in"), MemorySink()
    options = {"batch_size": 16, "retry_budget_s": 5, **options}
    return pipeline_for(bundle, source, sink, **options), source, sink


def mixed_events(problem: TinyProblem) -> tuple[list[bytes], set[int]]:
    """Valid events, plus malformed ones at known offsets."""
    values = [encode_event(f"e{i}", x, "tiny", "1") for i, x in enumerate(problem.test.x[:40])]
    # in between the classes: low credibility expected for some
    values += [encode_event(f"mid{i}", np.full(8, 0.0, np.float32) + i * 0.1, "tiny", "1") for i in range(10)]
    bad = {
        3: b"{not json",
        11: encode_event("x", np.zeros(9, np.float32), "tiny", "1"),
        20: encode_event("y", np.zeros(8, np.float32), "other-model", "1"),
        33: b"\xff\xfe",
    }
    for offset, value in sorted(bad.items()):
        values.insert(offset, value)
    return values, set(bad)


def drain(pipeline: Pipeline, source: MemorySource) -> None:
    """The agent's own loop, which returns once the finite source runs dry."""
    assert not source.exhausted
    pipeline.run(threading.Event())


def test_every_offset_is_accounted_for(tiny_bundle: Path, tiny_problem: TinyProblem) -> None:
    values, bad = mixed_events(tiny_problem)
    pipeline, source, sink = build(tiny_bundle, values)
    drain(pipeline, source)

    assert source.committed == {("in", 0): len(values)}
    dead = sink.topics["dlq"]
    assert [value for value, _, _ in dead] == [values[i] for i in sorted(bad)]  # original bytes untouched
    assert {dict(h)["dknn.source.offset"] for _, _, h in dead} == {str(i).encode() for i in bad}
    scores = [json.loads(value) for value, _, _ in sink.topics["scores"]]
    assert {s["source"]["offset"] for s in scores} == set(range(len(values))) - bad
    quarantined = {s["event_id"] for s in scores if s["verdict"] == "quarantined"}
    assert all(s["credibility"] < 0.1 for s in scores if s["event_id"] in quarantined)
    wire = {value.split(b'"verdict":', 1)[1].split(b",", 1)[0] for value, _, _ in sink.topics["scores"]}
    assert wire == {b'"accepted"', b'"quarantined"'}  # the verdict's text, byte for byte
    held = [json.loads(value) for value, _, _ in sink.topics["q"]]
    assert {q["event"]["event_id"] for q in held} == quarantined
    assert all(len(q["dknn"]["neighbors"]["relu1"]["ids"]) == 5 and q["dknn"]["reason"] for q in held)
    histograms = [layer["label_counts"] for q in held for layer in q["dknn"]["neighbors"].values()]
    assert histograms and all(sum(counts.values()) == 10 for counts in histograms)  # all k = 10 neighbours
    assert pipeline.stats.dead_lettered == len(bad) and pipeline.stats.scored == len(values) - len(bad)


def test_unconfirmed_delivery_is_retried_before_commit(tiny_bundle: Path, tiny_problem: TinyProblem) -> None:
    values = [encode_event(f"e{i}", x, "tiny", "1") for i, x in enumerate(tiny_problem.test.x[:10])]
    pipeline, source, sink = build(tiny_bundle, values)
    sink.fail_next_flushes = 2
    drain(pipeline, source)
    assert source.committed == {("in", 0): 10}
    assert {json.loads(v)["event_id"] for v, _, _ in sink.topics["scores"]} == {f"e{i}" for i in range(10)}


def test_a_retried_flush_counts_and_detects_each_event_once(tiny_bundle: Path, tiny_problem: TinyProblem) -> None:
    """Two failed flushes re-send the batch three times; metrics, detector and stats see it once."""
    values = [encode_event(f"e{i}", x, "tiny", "1") for i, x in enumerate(tiny_problem.test.x[:10])]
    values += [b"{broken", b"\xff"]
    pipeline, source, sink = build(tiny_bundle, values)
    sink.fail_next_flushes = 2
    drain(pipeline, source)

    registry = pipeline.telemetry.registry
    scored = sum(registry.get_sample_value("dknn_events_scored_total", {"verdict": v}) for v in Verdict)
    dead = sum(registry.get_sample_value("dknn_events_dead_lettered_total", {"reason": r}) for r in EVENT_ERROR_REASONS)
    assert scored == 10 and dead == 2
    assert registry.get_sample_value("dknn_credibility_count") == 10
    assert registry.get_sample_value("dknn_events_consumed_total") == 12
    assert pipeline.drift.events_seen == 10 and pipeline.drift.p_values.size == 10 + len(
        pipeline.scorer.calibration_label_free
    )
    assert (pipeline.stats.scored, pipeline.stats.dead_lettered, pipeline.stats.consumed) == (10, 2, 12)
    assert source.committed == {("in", 0): 12}


def test_permanent_delivery_failure_commits_nothing(tiny_bundle: Path, tiny_problem: TinyProblem) -> None:
    values = [encode_event("e", tiny_problem.test.x[0], "tiny", "1")]
    pipeline, source, sink = build(tiny_bundle, values)

    def refuse(timeout_s: float = 30.0) -> None:
        raise ConnectorError("not authorised", retriable=False)

    sink.flush = refuse  # type: ignore[method-assign]
    with pytest.raises(ConnectorError):
        drain(pipeline, source)
    assert source.committed == {}


def test_run_stops_when_asked_and_marks_ready(tiny_bundle: Path, tiny_problem: TinyProblem) -> None:
    values = [encode_event(f"e{i}", x, "tiny", "1") for i, x in enumerate(tiny_problem.test.x[:5])]
    pipeline, source, sink = build(tiny_bundle, values)
    stop = threading.Event()
    thread = threading.Thread(target=pipeline.run, args=(stop,))
    thread.start()
    deadline = time.monotonic() + 60
    while pipeline.stats.scored < 5 and thread.is_alive() and time.monotonic() < deadline:
        thread.join(0.05)
    assert pipeline.stats.scored == 5, "the pipeline thread died or stalled before scoring every event"
    stop.set()
    thread.join(5)
    assert not thread.is_alive() and source.committed == {("in", 0): 5}


def test_run_takes_the_start_up_heap_out_of_the_garbage_collectors_walks(
    tiny_bundle: Path, tiny_problem: TinyProblem
) -> None:
    """Full collections must not walk the model and the clients (a 100 ms pause on the reference)."""
    values = [encode_event(f"e{i}", x, "tiny", "1") for i, x in enumerate(tiny_problem.test.x[:3])]
    pipeline, source, _ = build(tiny_bundle, values)
    gc.unfreeze()
    alive_before_the_loop = len(gc.get_objects())
    pipeline.run(threading.Event())  # returns when the finite source runs dry
    assert pipeline.stats.scored == 3
    assert gc.get_freeze_count() >= alive_before_the_loop // 2  # the scorer's objects among them


def test_dead_letter_the_sink_refuses_goes_without_its_value(tiny_bundle: Path) -> None:
    """A malformed event the sink will not take (over its size limit) must not crash-loop the agent."""
    values = [b"x" * 5000, b"{}"]
    pipeline, source, sink = build(tiny_bundle, values, max_event_bytes=4096)
    original_send = sink.send

    def refuse_big(topic, value, key=None, headers=()):
        if len(value) > 4096:
            raise ConnectorError("message too large", retriable=False)
        original_send(topic, value, key, headers)

    sink.send = refuse_big  # type: ignore[method-assign]
    drain(pipeline, source)
    dead = sink.topics["dlq"]
    assert [value for value, _, _ in dead] == [b"", b"{}"]
    assert dict(dead[0][2])["dknn.value.omitted"] == b"5000" and dict(dead[0][2])["dknn.error.class"] == b"too_large"
    assert source.committed == {("in", 0): 2}


class RebalancingSource(MemorySource):
    """A source whose first commit is refused because the group moved on."""

    def __init__(self, values: list[bytes]) -> None:
        super().__init__(values, topic="in")
        self.rejections = 1

    def commit(self, offsets: dict[tuple[str, int], int]) -> None:
        if self.rejections:
            self.rejections -= 1
            raise CommitRejectedError("group rebalanced before the commit")
        super().commit(offsets)


def test_a_commit_refused_by_a_rebalance_is_counted_and_the_agent_goes_on(
    tiny_bundle: Path, tiny_problem: TinyProblem
) -> None:
    values = [encode_event(f"e{i}", x, "tiny", "1") for i, x in enumerate(tiny_problem.test.x[:40])]
    source, sink = RebalancingSource(values), MemorySink()
    pipeline = pipeline_for(tiny_bundle, source, sink, batch_size=16, retry_budget_s=5)
    drain(pipeline, source)  # must not raise
    assert pipeline.telemetry.registry.get_sample_value("dknn_commits_rejected_total") == 1
    assert source.committed == {("in", 0): 40}  # later batches commit past the refused one
    assert len(sink.topics["scores"]) == 40


def refused_records(sink: MemorySink) -> dict[str, list[dict]]:
    return {topic: [json.loads(v) if v else {} for v, _, _ in rows] for topic, rows in sink.topics.items()}


def test_a_record_the_sink_refuses_for_good_is_replaced_by_its_fallback(
    tiny_bundle: Path, tiny_problem: TinyProblem
) -> None:
    """Quarantine topic refuses everything: each quarantined event becomes an 'undeliverable' dead letter
    with its original bytes; every offset is still accounted for and committed."""
    values = [encode_event(f"mid{i}", np.full(8, 0.1 * i, np.float32), "tiny", "1") for i in range(10)]
    values += [encode_event(f"e{i}", x, "tiny", "1") for i, x in enumerate(tiny_problem.test.x[:20])]
    pipeline, source, sink = build(tiny_bundle, values)
    sink.refuse = lambda topic, value: "not authorised" if topic == "q" else None
    drain(pipeline, source)

    scores = [json.loads(v) for v, _, _ in sink.topics["scores"]]
    quarantined = {s["source"]["offset"] for s in scores if s["verdict"] == "quarantined"}
    assert quarantined, "the in-between events should be quarantined"
    assert "q" not in sink.topics
    dead = sink.topics["dlq"]
    assert {int(dict(h)["dknn.source.offset"]) for _, _, h in dead} == quarantined
    assert all(dict(h)["dknn.error.class"] == b"undeliverable" for _, _, h in dead)
    assert all(value == values[int(dict(h)["dknn.source.offset"])] for value, _, h in dead)  # original bytes
    refusals = pipeline.telemetry.registry.get_sample_value("dknn_outputs_refused_total", {"output": "quarantine"})
    assert refusals == 2 * len(quarantined)  # the full record, then the one without the input
    assert source.committed == {("in", 0): len(values)}


def test_an_oversized_quarantine_record_leaves_out_the_input_and_a_refused_dead_letter_its_value(
    tiny_bundle: Path,
) -> None:
    """A quarantine record over max_output_bytes is sent without the event's input; a dead letter a
    topic refuses on flush goes out empty with dknn.value.omitted."""
    noisy = json.loads(encode_event("big", np.full(8, 0.35, np.float32), "tiny", "1"))
    noisy["input"] = {"dtype": "float32", "shape": [8], "values": [0.35] * 8}
    noisy["attributes"] = {f"k{i}": "x" * 256 for i in range(32)}
    big_event = json.dumps(noisy).encode()
    malformed = b"{" + b" " * 9000
    pipeline, source, sink = build(tiny_bundle, [big_event, malformed], threshold=0.999, max_output_bytes=4096)
    sink.refuse = lambda topic, value: "record too large" if topic == "dlq" and len(value) > 4096 else None
    drain(pipeline, source)

    (held,) = [json.loads(v) for v, _, _ in sink.topics["q"]]
    assert held["input_omitted"] is True and "input" not in held["event"]
    assert held["event"]["event_id"] == "big" and held["dknn"]["source"]["offset"] == 0
    ((value, _, headers),) = sink.topics["dlq"]
    assert value == b"" and dict(headers)["dknn.value.omitted"] == str(len(malformed)).encode()
    assert source.committed == {("in", 0): 2}


def test_a_refused_record_without_a_replacement_stops_the_agent_uncommitted(tiny_bundle: Path) -> None:
    """The dead-letter topic refuses even empty records (no write permission): nothing is lost, nothing committed."""
    pipeline, source, sink = build(tiny_bundle, [b"{broken"])
    sink.refuse = lambda topic, value: "not authorised"
    with pytest.raises(ConnectorError, match="no replacement left"):
        drain(pipeline, source)
    assert source.committed == {}


class OrderLog:
    """Records, across threads, when each batch's scoring starts and when each commit happens."""

    def __init__(self) -> None:
        self.entries: list[str] = []
        self.second_scoring_started = threading.Event()


def logged_pipeline(bundle: Path, values: list[bytes], log: OrderLog) -> tuple[Pipeline, MemorySource, MemorySink]:
    pipeline, source, sink = build(bundle, values, batch_size=4)
    score, commit = pipeline.scorer.score, source.commit

    def logged_score(x, **kwargs):
        log.entries.append(f"score {len(x)} on {threading.current_thread().name.split('_')[0]}")
        if sum(entry.startswith("score") for entry in log.entries) == 2:
            log.second_scoring_started.set()
        return score(x, **kwargs)

    def logged_commit(offsets):
        log.entries.append(f"commit {offsets[('in', 0)]}")
        commit(offsets)

    pipeline.scorer.score = logged_score  # type: ignore[method-assign]
    source.commit = logged_commit  # type: ignore[method-assign]
    return pipeline, source, sink


def test_run_scores_the_next_batch_while_this_one_is_delivered(tiny_bundle: Path, tiny_problem: TinyProblem) -> None:
    """The overlap the stream's throughput rests on: batch 2 is scored (on the scoring thread)
    before batch 1 is confirmed, and still every batch is committed in poll order."""
    values = [encode_event(f"e{i}", x, "tiny", "1") for i, x in enumerate(tiny_problem.test.x[:10])]
    log = OrderLog()
    pipeline, source, sink = logged_pipeline(tiny_bundle, values, log)
    flush = sink.flush
    overlapped: list[bool] = []

    def flush_once_scoring_moved_on(timeout_s: float = 30.0) -> None:
        if not overlapped:  # batch 1's confirmation: batch 2 must be on the scoring thread by now
            overlapped.append(log.second_scoring_started.wait(10))
        flush(timeout_s)

    sink.flush = flush_once_scoring_moved_on  # type: ignore[method-assign]
    pipeline.run(threading.Event())

    assert overlapped == [True], "batch 2 was not scored while batch 1 was being delivered"
    assert [entry for entry in log.entries if entry.startswith("commit")] == ["commit 4", "commit 8", "commit 10"]
    assert all(entry.endswith("on dknn-scoring") for entry in log.entries if entry.startswith("score"))
    assert len(sink.topics["scores"]) == 10 and pipeline.stats.scored == 10


def test_a_fault_while_the_next_batch_is_scored_commits_neither(tiny_bundle: Path, tiny_problem: TinyProblem) -> None:
    """Batch 1's delivery fails for good while batch 2 is in flight: run raises, leaves no scoring
    thread behind, and commits nothing, so both batches are replayed on restart."""
    values = [encode_event(f"e{i}", x, "tiny", "1") for i, x in enumerate(tiny_problem.test.x[:8])]
    log = OrderLog()
    pipeline, source, sink = logged_pipeline(tiny_bundle, values, log)

    def broken_flush(timeout_s: float = 30.0) -> None:
        log.second_scoring_started.wait(10)
        raise ConnectorError("the broker refused the whole batch", retriable=False)

    sink.flush = broken_flush  # type: ignore[method-assign]
    with pytest.raises(ConnectorError, match="refused the whole batch"):
        pipeline.run(threading.Event())

    assert source.committed == {} and not [entry for entry in log.entries if entry.startswith("commit")]
    assert log.second_scoring_started.is_set()
    assert not [thread for thread in threading.enumerate() if thread.name.startswith("dknn-scoring")]


def test_stop_finishes_the_batch_in_flight(tiny_bundle: Path, tiny_problem: TinyProblem) -> None:
    """Stopped while batch 2 is being scored, the loop still delivers and commits it before returning."""
    values = [encode_event(f"e{i}", x, "tiny", "1") for i, x in enumerate(tiny_problem.test.x[:12])]
    log = OrderLog()
    pipeline, source, sink = logged_pipeline(tiny_bundle, values, log)
    stop = threading.Event()
    flush = sink.flush

    def stop_during_first_flush(timeout_s: float = 30.0) -> None:
        log.second_scoring_started.wait(10)
        stop.set()
        flush(timeout_s)

    sink.flush = stop_during_first_flush  # type: ignore[method-assign]
    pipeline.run(stop)

    assert source.committed == {("in", 0): 8}  # two batches of 4; the third was never polled
    assert len(sink.topics["scores"]) == 8


def test_a_short_batch_is_delivered_before_the_next_poll(tiny_bundle: Path, tiny_problem: TinyProblem) -> None:
    """A batch shorter than batch_size means the loop has caught up: it is committed at once, not
    held in flight across another poll (which would add a poll's wait to its events' latency)."""
    values = [encode_event(f"e{i}", x, "tiny", "1") for i, x in enumerate(tiny_problem.test.x[:6])]
    log = OrderLog()
    pipeline, source, _ = logged_pipeline(tiny_bundle, values, log)
    poll = source.poll

    def logged_poll(max_records: int = 500, timeout_s: float = 1.0):
        records = poll(max_records, timeout_s)
        log.entries.append(f"poll {len(records)} waiting {timeout_s:g}s")
        return records

    source.poll = logged_poll  # type: ignore[method-assign]
    pipeline.run(threading.Event())

    wait = pipeline.options.max_batch_wait_s
    assert [entry for entry in log.entries if not entry.startswith("score")] == [
        f"poll 4 waiting {wait:g}s",  # full: a backlog, so the next batch is polled at once
        "poll 2 waiting 0s",
        "commit 4",
        "commit 6",  # short: delivered before the next poll
        f"poll 0 waiting {wait:g}s",
    ]


def _v2(request_id: str, rows: np.ndarray) -> bytes:
    tensor = {"name": "x", "shape": list(rows.shape), "datatype": "FP32", "data": rows.ravel().tolist()}
    return json.dumps({"id": request_id, "inputs": [tensor]}).encode()


def _cloudevent(kind: str, event_id: str) -> list[tuple[str, bytes]]:
    return [
        ("ce_specversion", b"1.0"),
        ("ce_id", event_id.encode()),
        ("ce_source", b"test"),
        ("ce_type", f"org.kubeflow.serving.inference.{kind}".encode()),
    ]


def test_a_batch_request_scores_every_input_it_carries(tiny_bundle: Path, tiny_problem: TinyProblem) -> None:
    values = [_v2("batch", tiny_problem.test.x[:5]), encode_event("single", tiny_problem.test.x[5], "tiny", "1")]
    pipeline, source, sink = build(tiny_bundle, values)
    drain(pipeline, source)
    scores = [json.loads(value) for value, _, _ in sink.topics["scores"]]
    assert [s["event_id"] for s in scores] == ["batch/0", "batch/1", "batch/2", "batch/3", "batch/4", "single"]
    assert [s["form"] for s in scores] == ["oip-v2"] * 5 + ["dknn.inference.v1"]
    assert {s["source"]["offset"] for s in scores[:5]} == {0}
    assert source.committed == {("in", 0): 2} and pipeline.stats.scored == 6 and pipeline.stats.consumed == 2


def test_served_answers_that_differ_from_the_bundles_model_are_counted(
    tiny_bundle: Path, tiny_problem: TinyProblem
) -> None:
    x = tiny_problem.test.x[:6]
    answered = DkNN.from_bundle(tiny_bundle).score(x).model_prediction
    wrong = (answered + 1) % 3
    values = [encode_event(f"v1-{i}", x[i], "tiny", "1", served_label=int(answered[i])) for i in range(2)]
    values.append(encode_event("v1-wrong", x[2], "tiny", "1", served_label=int(wrong[2])))
    headers: list[list[tuple[str, bytes]]] = [[], [], []]
    # KServe's logger: a response before its request, and one after, the second one wrong
    values.append(json.dumps({"predictions": [int(answered[3])]}).encode())
    headers.append(_cloudevent("response", "ce-3"))
    values += [json.dumps({"instances": [x[3].tolist()]}).encode(), json.dumps({"instances": [x[4].tolist()]}).encode()]
    headers += [_cloudevent("request", "ce-3"), _cloudevent("request", "ce-4")]
    values.append(json.dumps({"predictions": [int(wrong[4])]}).encode())
    headers.append(_cloudevent("response", "ce-4"))
    source, sink = MemorySource(values, topic="in", headers=headers), MemorySink()
    pipeline = pipeline_for(tiny_bundle, source, sink, batch_size=2, retry_budget_s=5)
    drain(pipeline, source)
    exported = metric_values(pipeline)
    assert exported["dknn_served_answers_compared_total"] == 5
    assert exported["dknn_served_answer_mismatches_total"] == 2
    assert pipeline.stats.scored == 5 and not sink.topics["dlq"]  # responses are read, not scored or dead-lettered
    assert source.committed == {("in", 0): len(values)}


def test_records_for_another_model_are_skipped_and_counted_when_told(
    tiny_bundle: Path, tiny_problem: TinyProblem
) -> None:
    values = [
        encode_event("mine", tiny_problem.test.x[0], "tiny", "1"),
        encode_event("theirs", tiny_problem.test.x[1], "fraud", "1"),
        encode_event("also-mine", tiny_problem.test.x[2], "tiny-isvc", "1"),
    ]
    pipeline, source, sink = build(tiny_bundle, values, unknown_model="skip", model_names=("tiny-isvc",))
    drain(pipeline, source)
    assert [json.loads(v)["event_id"] for v, _, _ in sink.topics["scores"]] == ["mine", "also-mine"]
    assert not sink.topics["dlq"] and pipeline.stats.skipped == 1
    assert metric_values(pipeline)['dknn_events_skipped_total{reason="unknown_model"}'] == 1
    assert source.committed == {("in", 0): 3}
    pipeline, source, sink = build(tiny_bundle, values)  # the default: dead-lettered, as before
    drain(pipeline, source)
    assert [dict(h)["dknn.error.class"] for _, _, h in sink.topics["dlq"]] == [b"unknown_model", b"unknown_model"]


def metric_values(pipeline: Pipeline) -> dict[str, float]:
    """`name{labels}` -> value of the pipeline's metrics page (samples without labels by name alone)."""
    from prometheus_client.parser import text_string_to_metric_families

    page = pipeline.telemetry.exposition()[0].decode()
    out = {}
    for family in text_string_to_metric_families(page):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            out[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
    return out
