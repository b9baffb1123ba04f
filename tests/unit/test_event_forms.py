"""The forms model servers already emit: OIP v2 requests and responses, KServe v1 bodies, and KServe's
payload logger as CloudEvents in Kafka's binary mode. Recognised from each record; nothing to configure."""

from __future__ import annotations

import json

import numpy as np
import pytest

from agent.engine.manifest import InputSpec
from agent.errors import EventError
from agent.runtime.events import (
    KSERVE_V1,
    OIP_V2,
    V1,
    Decoded,
    Expectations,
    ServedAnswers,
    decode_record,
    encode_event,
)
from agent.runtime.served import Comparisons, ServedAnswerCheck

FEATURES = InputSpec(name="input-0", shape=(4,), dtype="float32")
EXPECTED = Expectations((FEATURES,), frozenset({"tabular"}), num_classes=3)
TOKENS = InputSpec(name="input_ids", shape=(5,), dtype="int64", value_range=(0, 99))
MASK = InputSpec(name="attention_mask", shape=(5,), dtype="int64", value_range=(0, 1))
TEXT = Expectations((TOKENS, MASK), frozenset({"text"}), num_classes=2)


def v2_request(rows: list[list[float]], **extra: object) -> bytes:
    tensor = {"name": "input-0", "shape": [len(rows), 4], "datatype": "FP32", "data": [v for row in rows for v in row]}
    return json.dumps({"id": "req-1", "inputs": [tensor], **extra}).encode()


def ce_headers(kind: str, event_id: str = "ce-9", **extensions: str) -> list[tuple[str, bytes]]:
    headers = [
        ("ce_specversion", b"1.0"),
        ("ce_id", event_id.encode()),
        ("ce_source", b"http://localhost:9081/"),
        ("ce_type", f"org.kubeflow.serving.inference.{kind}".encode()),
        ("content-type", b"application/json"),
    ]
    return headers + [(f"ce_{name}", value.encode()) for name, value in extensions.items()]


def reason_of(value: bytes, headers: list[tuple[str, bytes]] | None = None, expected: Expectations = EXPECTED) -> str:
    with pytest.raises(EventError) as raised:
        decode_record(value, headers or [], expected)
    assert str(raised.value) and "\n" not in str(raised.value)
    return raised.value.reason


def test_a_v2_request_is_one_event_per_row_of_its_batch() -> None:
    decoded = decode_record(v2_request([[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]), [], EXPECTED)
    assert [event.event_id for event in decoded.events] == ["req-1/0", "req-1/1", "req-1/2"]
    assert all(event.form == OIP_V2 and event.request_id == "req-1" for event in decoded.events)
    np.testing.assert_array_equal(decoded.events[1].x, np.array([4, 5, 6, 7], dtype=np.float32))
    assert decoded.events[1].x.dtype == np.float32
    # a quarantine record quotes one row, not the batch
    assert decoded.events[2].document["inputs"][0]["data"] == [8.0, 9.0, 10.0, 11.0]
    assert decoded.events[2].document["inputs"][0]["shape"] == [1, 4]


def test_nested_data_and_integer_features_are_read_too() -> None:
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "INT64", "data": [[1, 2, 3, 4]]}]}
    (event,) = decode_record(json.dumps(body).encode(), [], EXPECTED).events
    np.testing.assert_array_equal(event.x, [1, 2, 3, 4])
    assert event.event_id == "request" and event.request_id is None  # no id: nothing to join a response with


def test_named_inputs_of_token_ids_go_to_their_inputs() -> None:
    body = {
        "id": "t",
        "inputs": [
            {"name": "attention_mask", "shape": [2, 5], "datatype": "INT64", "data": [1] * 10},
            {"name": "input_ids", "shape": [2, 5], "datatype": "INT32", "data": list(range(10))},
        ],
    }
    events = decode_record(json.dumps(body).encode(), [], TEXT).events
    np.testing.assert_array_equal(events[1].inputs[0], [5, 6, 7, 8, 9])
    assert events[1].inputs[0].dtype == np.int64 and events[1].inputs[1].dtype == np.int64


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"inputs": [{"name": "x", "shape": [1, 5], "datatype": "FP32", "data": [0] * 5}]}, "shape"),
        ({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0] * 5}]}, "shape"),
        ({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "BYTES", "data": ["a"] * 4}]}, "dtype"),
        ({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [True] * 4}]}, "schema"),
        ({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": ["1"] * 4}]}, "schema"),
        ({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [1e39] * 4}]}, "non_finite"),
        ({"inputs": [{"name": "x", "shape": [0, 4], "datatype": "FP32", "data": []}]}, "shape"),
        ({"inputs": [{"name": "x", "shape": [2000, 4], "datatype": "FP32", "data": [0] * 8000}]}, "shape"),
        (
            {
                "inputs": [
                    {
                        "name": "x",
                        "shape": [1, 4],
                        "datatype": "FP32",
                        "data": [],
                        "parameters": {"binary_data_size": 16},
                    }
                ]
            },
            "schema",
        ),
        ({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32"}]}, "schema"),
        (
            {"model_name": "other", "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0] * 4}]},
            "unknown_model",
        ),
        ({"something": "else"}, "schema"),
    ],
)
def test_malformed_v2_requests_are_dead_lettered_with_a_reason(body: dict, reason: str) -> None:
    assert reason_of(json.dumps(body).encode()) == reason


def test_integer_inputs_outside_the_bundles_range_are_refused() -> None:
    body = {
        "inputs": [
            {"name": "input_ids", "shape": [1, 5], "datatype": "INT64", "data": [1, 2, 3, 4, 100]},
            {"name": "attention_mask", "shape": [1, 5], "datatype": "INT64", "data": [1] * 5},
        ]
    }
    assert reason_of(json.dumps(body).encode(), expected=TEXT) == "out_of_range"
    body["inputs"][0]["data"] = [1.5, 2, 3, 4, 5]
    body["inputs"][0]["datatype"] = "FP32"
    assert reason_of(json.dumps(body).encode(), expected=TEXT) == "dtype"


def test_kserve_v1_instances_and_predictions() -> None:
    decoded = decode_record(json.dumps({"instances": [[0, 1, 2, 3], [1, 1, 1, 1]]}).encode(), [], EXPECTED)
    assert [event.form for event in decoded.events] == [KSERVE_V1, KSERVE_V1]
    answers = decode_record(json.dumps({"id": "a", "predictions": [2, [0.1, 0.7, 0.2]]}).encode(), [], EXPECTED).answers
    assert answers == ServedAnswers("a", (2, 1), KSERVE_V1)
    assert reason_of(json.dumps({"predictions": [1]}).encode()) == "schema"  # no id, no CloudEvent: unjoinable
    assert reason_of(json.dumps({"id": "a", "predictions": ["cat"]}).encode()) == "schema"


def test_a_v2_response_gives_the_served_labels_from_scores_or_labels() -> None:
    scores = {
        "model_name": "tabular",
        "id": "r",
        "outputs": [{"name": "p", "shape": [2, 3], "datatype": "FP32", "data": [0.1, 0.8, 0.1, 0.9, 0.05, 0.05]}],
    }
    assert decode_record(json.dumps(scores).encode(), [], EXPECTED).answers == ServedAnswers("r", (1, 0), OIP_V2)
    labels = {
        "model_name": "tabular",
        "id": "r",
        "outputs": [{"name": "l", "shape": [2], "datatype": "INT64", "data": [2, 0]}],
    }
    assert decode_record(json.dumps(labels).encode(), [], EXPECTED).answers == ServedAnswers("r", (2, 0), OIP_V2)
    other = dict(labels, model_name="elsewhere")
    assert reason_of(json.dumps(other).encode()) == "unknown_model"


def test_kserve_logger_cloudevents_in_binary_mode() -> None:
    headers = ce_headers(
        "request", inferenceservicename="tabular", namespace="ml", component="predictor", endpoint="default"
    )
    decoded = decode_record(json.dumps({"instances": [[0, 1, 2, 3]]}).encode(), headers, EXPECTED)
    (event,) = decoded.events
    assert event.request_id == "ce-9" and event.event_id == "ce-9" and event.model_name == "tabular"
    assert event.document["cloudevent"]["namespace"] == "ml"
    response = decode_record(json.dumps({"predictions": [1]}).encode(), ce_headers("response"), EXPECTED)
    assert response == Decoded(answers=ServedAnswers("ce-9", (1,), KSERVE_V1))
    # a v2 body through the logger: the CloudEvent's id wins over the body's
    v2 = decode_record(v2_request([[0, 1, 2, 3]]), ce_headers("request", "ce-2"), EXPECTED)
    assert v2.events[0].request_id == "ce-2"


@pytest.mark.parametrize(
    "headers",
    [
        ce_headers("request", inferenceservicename="another-model"),
        [("ce_type", b"org.kubeflow.serving.inference.request")],  # no specversion, id, source
        ce_headers("something.else"),
        [*ce_headers("request")[:4], ("content-type", b"application/octet-stream")],
        [*ce_headers("request")[:4], ("ce_namespace", b"\xff\xfe")],
    ],
)
def test_bad_cloudevents_are_dead_lettered(headers: list[tuple[str, bytes]]) -> None:
    assert reason_of(v2_request([[0, 1, 2, 3]]), headers) in {"schema", "unknown_model"}


def test_one_topic_may_carry_every_form() -> None:
    v1 = encode_event("e", np.zeros(4, np.float32), "tabular", "1", served_label=2)
    forms = [
        decode_record(v1, [], EXPECTED).events[0].form,
        decode_record(v2_request([[0, 1, 2, 3]]), [], EXPECTED).events[0].form,
        decode_record(b'{"instances": [[0, 1, 2, 3]]}', [], EXPECTED).events[0].form,
    ]
    assert forms == [V1, OIP_V2, KSERVE_V1]
    assert decode_record(v1, [], EXPECTED).events[0].served_label == 2


def test_served_answers_are_compared_whichever_half_arrives_first() -> None:
    check, seen = ServedAnswerCheck(capacity=10), Comparisons()
    check.recomputed("a", 0, 1, seen)
    check.recomputed("a", 1, 2, seen)
    check.served(ServedAnswers("a", (1, 0), OIP_V2), seen)  # the response after its request
    check.served(ServedAnswers("b", (2,), OIP_V2), seen)  # a response before its request
    check.recomputed("b", 0, 2, seen)
    assert (seen.compared, seen.mismatched, seen.unmatched) == (3, 1, 0)
    check.recomputed("b", 0, 0, seen)  # a replayed request after its pair was matched: waits again
    assert seen.compared == 3


def test_waiting_halves_are_bounded_and_the_forgotten_are_counted() -> None:
    check, seen = ServedAnswerCheck(capacity=3), Comparisons()
    for number in range(5):
        check.recomputed(f"r{number}", 0, 0, seen)
    assert seen.unmatched == 2
    check.served(ServedAnswers("r0", (1,), OIP_V2), seen)  # r0 was forgotten: this waits instead
    assert seen.compared == 0
