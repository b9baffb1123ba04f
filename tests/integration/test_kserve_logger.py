"""A team's own tabular model, onboarded through the public CLI only, watched through KServe's payload
logger: CloudEvents in Kafka's binary mode (request and response sharing `ce_id`), published by a
torch-free producer, scored by the agent on a real broker.

The bundle comes from the user-side example (`examples/tabular/train.py`: plain torch, a
`torch.export` program) and `dknn-agent fit` with its defaults (the `tabular_example` fixture):
no factory, no trusted code.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from connectors.kafka import ensure_topics
from tests.conftest import Example
from tests.e2e.conftest import ROOT
from tests.integration.agent_process import AgentProcess, OutputFollower, header_position, score_position

pytestmark = pytest.mark.integration

PRODUCER = textwrap.dedent(
    """
    import json, sys
    from kafka import KafkaProducer
    from dknn_events import cloudevent_record, kserve_v1_request, kserve_v1_response, oip_v2_request, oip_v2_response

    spec = json.load(open(sys.argv[1]))
    producer = KafkaProducer(bootstrap_servers=spec["bootstrap"], acks="all")
    send = lambda pair: producer.send(spec["topic"], value=pair[0], headers=pair[1])
    for i, (row, label) in enumerate(zip(spec["rows"], spec["served"])):
        event_id = f"kserve-{i}"
        if i % 2:  # half as KServe v1 bodies, half as Open Inference Protocol v2
            request, response = kserve_v1_request([row]), kserve_v1_response([label])
        else:
            request = oip_v2_request({"input-0": [row]})
            response = oip_v2_response({"output-0": [label]}, model_name="tabular")
        send(cloudevent_record(request, "request", event_id=event_id, inference_service="tabular", namespace="ml"))
        send(cloudevent_record(response, "response", event_id=event_id, inference_service="tabular", namespace="ml"))
    batch = spec["batch"]  # one request carrying three inputs, answered at once
    send(cloudevent_record(oip_v2_request({"input-0": batch["rows"]}), "request", event_id="kserve-batch", inference_service="tabular"))
    send(cloudevent_record(oip_v2_response({"output-0": batch["served"]}, model_name="tabular"), "response", event_id="kserve-batch", inference_service="tabular"))
    for i, body in enumerate(spec["malformed"]):  # v2 bodies a broken client might send
        send(cloudevent_record(body, "request", event_id=f"bad-{i}", inference_service="tabular"))
    producer.flush()
    assert "torch" not in sys.modules and "agent" not in sys.modules, sorted(sys.modules)
    print("published")
    """
)


def test_kserve_logger_cloudevents_are_scored_compared_and_the_broken_ones_dead_lettered(
    kafka_bootstrap: str, unique_name: str, tabular_example: Example, tmp_path: Path
) -> None:
    from agent.engine.dknn import DkNN

    topics = {kind: f"{unique_name}-{kind}" for kind in ("input", "quarantine", "dead_letter", "scores")}
    ensure_topics(kafka_bootstrap, [topics["input"]], partitions=2)
    ensure_topics(kafka_bootstrap, [topics["quarantine"], topics["dead_letter"], topics["scores"]])
    with np.load(tabular_example.work / "test.npz") as test:
        rows = test["x"][:40]
    answers = DkNN.from_bundle(tabular_example.bundle).score(rows).model_prediction
    served = [int(label) for label in answers[:37]]
    served[5] = (served[5] + 1) % 8  # one response from a server that disagrees: version skew
    malformed = [
        {"inputs": [{"name": "input-0", "shape": [1, 63], "datatype": "FP32", "data": [0.0] * 63}]},
        {"inputs": [{"name": "input-0", "shape": [1, 64], "datatype": "BYTES", "data": ["x"] * 64}]},
        {"inputs": [{"name": "input-0", "shape": [1, 64], "datatype": "FP32"}]},
    ]
    spec = {
        "bootstrap": kafka_bootstrap,
        "topic": topics["input"],
        "rows": rows[:37].tolist(),
        "served": served,
        "batch": {"rows": rows[37:].tolist(), "served": [int(label) for label in answers[37:]]},
        "malformed": malformed,
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    agent = AgentProcess(
        tabular_example.bundle, kafka_bootstrap, topics, f"{unique_name}-agent", tmp_path / "agent.log"
    ).start()
    try:
        published = subprocess.run(
            [sys.executable, "-c", PRODUCER, str(tmp_path / "spec.json")],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
        )
        assert published.returncode == 0 and "published" in published.stdout, published.stderr[-3000:]
        records = 2 * 37 + 2 + len(malformed)
        with OutputFollower(kafka_bootstrap, [topics["scores"], topics["dead_letter"]], f"{unique_name}-read") as out:
            assert out.until(
                lambda: len(out.records[topics["scores"]]) >= 40 and len(out.records[topics["dead_letter"]]) >= 3,
                timeout_s=120,
            ), (len(out.records[topics["scores"]]), agent.log_path.read_text()[-3000:])
            out.drain()
        agent.wait_consumed(records, timeout_s=60)
        metrics = agent.metrics()
    finally:
        assert agent.terminate() == 0

    scores = [json.loads(record.value) for record in out.records[topics["scores"]]]
    assert sorted(score["event_id"] for score in scores) == sorted(
        [f"kserve-{i}" for i in range(37)] + [f"kserve-batch/{row}" for row in range(3)]
    )
    assert {score["form"] for score in scores} == {"oip-v2", "kserve-v1"}
    dead = out.records[topics["dead_letter"]]
    reasons = sorted(dict(record.headers)["dknn.error.class"].decode() for record in dead)
    assert reasons == ["dtype", "schema", "shape"]
    assert all(dict(record.headers)["dknn.error.message"] for record in dead)
    # nothing lost: every request's record is scored or dead-lettered, each once
    request_positions = {score_position(record) for record in out.records[topics["scores"]]}
    assert len(request_positions) == 38 and not request_positions & {header_position(record) for record in dead}
    assert metrics["dknn_events_consumed_total{}"] == records
    assert metrics["dknn_served_answers_compared_total{}"] == 40
    assert metrics["dknn_served_answer_mismatches_total{}"] == 1
    assert metrics["dknn_events_dead_lettered_total{reason=shape}"] == 1
    assert metrics["dknn_events_dead_lettered_total{reason=dtype}"] == 1
    assert metrics["dknn_events_dead_lettered_total{reason=schema}"] == 1
