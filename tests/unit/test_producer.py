"""dknn_events, the producer helper model servers import: it loads nothing beyond the standard
library, works without numpy, and what each builder writes is what the agent decodes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import dknn_events
from agent.engine.manifest import InputSpec
from agent.errors import EventError
from agent.runtime.events import KSERVE_V1, OIP_V2, V1, Expectations, ServedAnswers, decode_record, encode_event
from dknn_events import _forms as forms
from dknn_events import (
    cloudevent_record,
    inference_event,
    kserve_v1_request,
    kserve_v1_response,
    oip_v2_request,
    oip_v2_response,
)

ROOT = Path(__file__).resolve().parents[2]
FEATURES = InputSpec(name="input-0", shape=(2, 3), dtype="float32")
TABULAR = Expectations((FEATURES,), frozenset({"tabular"}), num_classes=3)
TOKENS = InputSpec(name="input_ids", shape=(5,), dtype="int64", value_range=(0, 99))
MASK = InputSpec(name="attention_mask", shape=(5,), dtype="int64", value_range=(0, 1))
TEXT = Expectations((TOKENS, MASK), frozenset({"text"}), num_classes=2)
BATCH = np.arange(18, dtype=np.float32).reshape(3, 2, 3) / 4  # exact in binary: lists and arrays agree


def run_python(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120, cwd=ROOT
    )
    return done.stdout.strip().splitlines()[-1]


def test_importing_it_loads_nothing_a_model_server_may_lack() -> None:
    loaded = run_python(
        "import sys, dknn_events\n"
        "print(sorted(m for m in ('torch', 'pydantic', 'pydantic_core', 'numpy', 'orjson', 'pybase64', 'agent',"
        " 'connectors', 'kafka') if m in sys.modules))"
    )
    assert loaded == "[]"


# Every builder with nested lists, in an interpreter where numpy cannot be imported.
WITHOUT_NUMPY = """
import json, sys
sys.modules["numpy"] = None  # `import numpy` raises ImportError from here on
import dknn_events as d
rows = json.loads(sys.argv[1])
time = __import__("datetime").datetime(2025, 1, 2, 3, 4, 5, tzinfo=__import__("datetime").timezone.utc)
built = [
    d.inference_event("e", rows[0], model_name="tabular", model_version="1", served_label=2, timestamp_ms=7),
    d.oip_v2_request({"input-0": rows}, id="r"),
    d.oip_v2_response({"scores": [[0.25, 0.5, 0.25]] * 3}, model_name="tabular", id="r"),
    d.kserve_v1_request(rows, id="k"),
    d.kserve_v1_response([0, 1, 2], id="k"),
    d.cloudevent_record(d.kserve_v1_request(rows), "request", event_id="c", inference_service="tabular", time=time)[1],
]
print(json.dumps([item.decode() if isinstance(item, bytes) else [[n, v.decode()] for n, v in item] for item in built]))
"""


def test_without_numpy_lists_give_the_same_records_as_arrays() -> None:
    printed = json.loads(
        subprocess.run(
            [sys.executable, "-c", WITHOUT_NUMPY, json.dumps(BATCH.tolist())],
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
            cwd=ROOT,
        ).stdout
    )
    time = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    with_numpy = [
        inference_event(
            "e", BATCH[0], model_name="tabular", model_version="1", served_label=np.int64(2), timestamp_ms=7
        ),
        oip_v2_request({"input-0": BATCH}, id="r"),
        oip_v2_response({"scores": np.array([[0.25, 0.5, 0.25]] * 3, np.float32)}, model_name="tabular", id="r"),
        kserve_v1_request(BATCH, id="k"),
        kserve_v1_response(np.array([0, 1, 2]), id="k"),
    ]
    assert printed[:5] == [value.decode() for value in with_numpy]
    _, headers = cloudevent_record(
        kserve_v1_request(BATCH), "request", event_id="c", inference_service="tabular", time=time
    )
    assert printed[5] == [[name, value.decode()] for name, value in headers]


def test_a_v1_event_decodes_to_its_input_label_time_and_attributes() -> None:
    payload = inference_event(
        "e-1",
        BATCH[1],
        model_name="tabular",
        model_version="3",
        timestamp_ms=1_764_000_000_000,
        served_label=2,
        scores=np.array([0.1, 0.2, 0.7]),
        attributes={"tenant": "a", "canary": True},
    )
    (event,) = decode_record(payload, [], TABULAR).events
    assert (event.form, event.event_id, event.model_version) == (V1, "e-1", "3")
    assert (event.served_label, event.timestamp_ms) == (2, 1_764_000_000_000)
    np.testing.assert_array_equal(event.x, BATCH[1])
    assert event.document["attributes"] == {"tenant": "a", "canary": True}
    # the agent's own encoder is this one, checked against the consumer's model on top
    assert encode_event("e-1", BATCH[1], "tabular", "3", served_label=2) == inference_event(
        "e-1", BATCH[1], model_name="tabular", model_version="3", served_label=2
    )


def test_a_v1_event_with_named_inputs_of_token_ids() -> None:
    ids, mask = [3, 1, 4, 1, 5], np.array([1, 1, 1, 0, 0], dtype=np.int32)
    payload = inference_event(
        "t", inputs={"input_ids": ids, "attention_mask": mask}, model_name="text", model_version="1", dtype="int64"
    )
    (event,) = decode_record(payload, [], TEXT).events
    assert [array.tolist() for array in event.inputs] == [ids, mask.tolist()]
    assert all(array.dtype == np.int64 for array in event.inputs)
    per_name = inference_event(
        "t",
        inputs={"input_ids": ids, "attention_mask": mask},
        model_name="text",
        model_version="1",
        dtype={"input_ids": "int64", "attention_mask": "int64"},
    )
    assert per_name == payload


def test_a_v2_request_of_batch_three_is_three_inputs() -> None:
    events = decode_record(oip_v2_request({"input-0": BATCH}, id="r-1", model_name="tabular"), [], TABULAR).events
    assert [(event.event_id, event.request_id, event.form) for event in events] == [
        ("r-1/0", "r-1", OIP_V2),
        ("r-1/1", "r-1", OIP_V2),
        ("r-1/2", "r-1", OIP_V2),
    ]
    for event, row in zip(events, BATCH, strict=True):
        np.testing.assert_array_equal(event.x, row)
    assert json.loads(oip_v2_request({"input-0": BATCH.astype(np.float64)}))["inputs"][0]["datatype"] == "FP64"


def test_named_v2_tensors_go_to_their_inputs() -> None:
    body = oip_v2_request({"attention_mask": [[1] * 5] * 2, "input_ids": np.arange(10).reshape(2, 5)}, id="t")
    events = decode_record(body, [], TEXT).events
    assert events[1].inputs[0].tolist() == [5, 6, 7, 8, 9]
    assert json.loads(body)["inputs"][0]["datatype"] == "INT64"


def test_a_v2_response_gives_the_served_labels() -> None:
    scores = np.array([[0.1, 0.8, 0.1], [0.7, 0.2, 0.1]], dtype=np.float32)
    answers = decode_record(oip_v2_response({"probabilities": scores}, model_name="tabular", id="r"), [], TABULAR)
    assert answers.answers == ServedAnswers("r", (1, 0), OIP_V2)
    labels = oip_v2_response({"label": [2, 0]}, model_name="tabular", id="r")
    assert decode_record(labels, [], TABULAR).answers == ServedAnswers("r", (2, 0), OIP_V2)


def test_kserve_v1_instances_and_predictions() -> None:
    events = decode_record(kserve_v1_request(BATCH.tolist(), id="k"), [], TABULAR).events
    assert [event.form for event in events] == [KSERVE_V1] * 3
    np.testing.assert_array_equal(events[2].x, BATCH[2])
    named = kserve_v1_request({"input_ids": [[1, 2, 3, 4, 5]], "attention_mask": np.ones((1, 5), np.int64)})
    assert json.loads(named) == {"instances": [{"input_ids": [1, 2, 3, 4, 5], "attention_mask": [1, 1, 1, 1, 1]}]}
    assert decode_record(named, [], TEXT).events[0].inputs[1].tolist() == [1] * 5
    answers = decode_record(kserve_v1_response([[0.2, 0.3, 0.5], [0.9, 0.05, 0.05]], id="k"), [], TABULAR).answers
    assert answers == ServedAnswers("k", (2, 0), KSERVE_V1)


def test_a_kserve_logger_pair_shares_its_id_and_names_the_model() -> None:
    time = datetime(2025, 6, 1, 12, 0, 0, 250_000, tzinfo=UTC)
    extensions = {"inference_service": "tabular", "namespace": "ml", "component": "predictor", "endpoint": "default"}
    value, headers = cloudevent_record(
        oip_v2_request({"input-0": BATCH}), "request", event_id="ce-1", time=time, **extensions
    )
    assert all(isinstance(name, str) and isinstance(raw, bytes) for name, raw in headers)  # as kafka-python takes them
    assert dict(headers)["ce_inferenceservicename"] == b"tabular"
    events = decode_record(value, headers, TABULAR).events
    assert {(e.request_id, e.model_name, e.timestamp_ms) for e in events} == {("ce-1", "tabular", 1_748_779_200_250)}
    assert events[0].document["cloudevent"]["namespace"] == "ml"
    response = oip_v2_response({"label": [0, 1, 2]}, model_name="tabular")  # no body id: the CloudEvent's pairs it
    value, headers = cloudevent_record(response, "response", event_id="ce-1", **extensions)
    assert decode_record(value, headers, TABULAR).answers == ServedAnswers("ce-1", (0, 1, 2), OIP_V2)
    value, headers = cloudevent_record({"predictions": [1, 1, 1]}, "response", event_id="ce-1", metadata={"a": 1})
    assert dict(headers)["ce_metadata"] == b'{"a":1}'
    assert decode_record(value, headers, TABULAR).answers == ServedAnswers("ce-1", (1, 1, 1), KSERVE_V1)


def test_non_finite_inputs_reach_the_agent_in_base64_only() -> None:
    x = BATCH[0].copy()
    x[0, 0] = np.nan
    payload = inference_event("nan", x, model_name="tabular", model_version="1")  # the agent dead-letters it
    with pytest.raises(EventError, match="NaN or infinity") as refused:
        decode_record(payload, [], TABULAR)
    assert refused.value.reason == "non_finite"
    listed = [[float("inf"), 0.0, 0.0], [0.0, 0.0, 0.0]]
    assert inference_event("inf", listed, model_name="tabular", model_version="1")  # lists too, like arrays
    with pytest.raises(ValueError, match="JSON cannot carry"):
        oip_v2_request({"input-0": x[None]})


def test_the_example_prints_a_pair_the_agent_decodes() -> None:
    done = subprocess.run(
        [sys.executable, "producer/examples/kserve_logger_to_kafka.py", "--topic", "t", "--dry-run"]
        + ["--model-name", "tabular", "--shape", "2,3", "--rows", "3", "--classes", "3"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        cwd=ROOT,
    )
    request, response = (json.loads(line) for line in done.stdout.splitlines())
    headers = [[(name, value.encode()) for name, value in record["headers"]] for record in (request, response)]
    events = decode_record(request["value"].encode(), headers[0], TABULAR).events
    answers = decode_record(response["value"].encode(), headers[1], TABULAR).answers
    assert len(events) == 3 and answers is not None and answers.request_id == events[0].request_id
    assert {request["topic"], response["topic"]} == {"t"}


def test_the_producer_distribution_packages_the_same_sources() -> None:
    link = ROOT / "producer" / "dknn_events"
    assert link.is_symlink() and link.resolve() == (ROOT / "dknn_events").resolve()
    assert re.search(r'^name = "dknn-events"$', (ROOT / "producer" / "pyproject.toml").read_text(), re.M)
    assert re.search(r"^dependencies = \[\]$", (ROOT / "producer" / "pyproject.toml").read_text(), re.M)


def test_its_limits_are_the_agents() -> None:
    schema = json.loads((ROOT / "docs" / "schemas" / "dknn.inference.v1.schema.json").read_text())
    defs, properties = schema["$defs"], schema["properties"]
    attributes = properties["attributes"]["anyOf"][0]
    assert properties["event_id"]["maxLength"] == forms.MAX_ID_LENGTH
    assert defs["ModelRef"]["properties"]["name"]["maxLength"] == forms.MAX_MODEL_NAME_LENGTH
    assert defs["ModelRef"]["properties"]["version"]["maxLength"] == forms.MAX_MODEL_VERSION_LENGTH
    assert defs["InputPayload"]["properties"]["shape"]["maxItems"] == forms.MAX_V1_DIMENSIONS
    assert defs["ServedPrediction"]["properties"]["label"]["maximum"] == forms.MAX_CLASSES
    assert properties["inputs"]["anyOf"][0]["maxProperties"] == forms.MAX_INPUTS
    assert list(properties["inputs"]["anyOf"][0]["patternProperties"]) == [f"^{forms.INPUT_NAME.pattern}$"]
    assert attributes["maxProperties"] == forms.MAX_ATTRIBUTES
    assert attributes["propertyNames"]["maxLength"] == forms.MAX_ATTRIBUTE_KEY_LENGTH
    assert attributes["additionalProperties"]["anyOf"][0]["maxLength"] == forms.MAX_ATTRIBUTE_TEXT_LENGTH
    v2 = json.loads((ROOT / "docs" / "schemas" / "oip-v2-request.schema.json").read_text())
    assert v2["$defs"]["Tensor"]["properties"]["shape"]["maxItems"] == forms.MAX_V2_DIMENSIONS
    headers = json.loads((ROOT / "docs" / "schemas" / "kserve-cloudevent-headers.schema.json").read_text())
    assert headers["additionalProperties"]["maxLength"] == forms.MAX_HEADER_BYTES
    assert headers["properties"]["ce_type"]["enum"] == [dknn_events.REQUEST_TYPE, dknn_events.RESPONSE_TYPE]


ROW = [0.0, 1.0, 2.0]
WRONG: list[tuple[Any, str]] = [
    (lambda: inference_event("", ROW, model_name="m", model_version="1"), "event_id must be a string of 1 to 128"),
    (lambda: inference_event("e", ROW, model_name="m" * 129, model_version="1"), "model_name must be"),
    (lambda: inference_event("e", model_name="m", model_version="1"), "exactly one of x"),
    (lambda: inference_event("e", ROW, inputs={"a": ROW}, model_name="m", model_version="1"), "exactly one of x"),
    (lambda: inference_event("e", [[1.0, 2.0], [3.0]], model_name="m", model_version="1"), "ragged"),
    (lambda: inference_event("e", ["1", "2"], model_name="m", model_version="1"), "holds a str"),
    (lambda: inference_event("e", [True, 1], model_name="m", model_version="1"), "mixes booleans and numbers"),
    (
        lambda: inference_event("e", ROW, model_name="m", model_version="1", dtype="complex64"),
        "not one the agent reads",
    ),
    (lambda: inference_event("e", [0.5], model_name="m", model_version="1", dtype="int64"), "takes integers"),
    (lambda: inference_event("e", [300], model_name="m", model_version="1", dtype="uint8"), r"outside \[0, 255\]"),
    (lambda: inference_event("e", [1.0], model_name="m", model_version="1", dtype="bool"), "takes booleans"),
    (lambda: inference_event("e", ROW, model_name="m", model_version="1", scores=[0.5]), "scores need served_label"),
    (lambda: inference_event("e", ROW, model_name="m", model_version="1", served_label=-1), "class index"),
    (lambda: inference_event("e", ROW, model_name="m", model_version="1", served_label=True), "class index"),
    (lambda: inference_event("e", ROW, model_name="m", model_version="1", timestamp_ms=1.5), "timestamp_ms"),
    (lambda: inference_event("e", ROW, model_name="m", model_version="1", attributes={"k": [1]}), "attribute 'k'"),
    (lambda: inference_event("e", inputs={"bad name": ROW}, model_name="m", model_version="1"), "input name"),
    (lambda: inference_event("e", inputs={"a": ROW}, model_name="m", model_version="1", dtype={}), "no dtype for"),
    (lambda: oip_v2_request({}), "mapping of 1 to 16"),
    (lambda: oip_v2_request({"x": 1.0}), "batch dimension first"),
    (lambda: oip_v2_request({"x": [[1.0]], "y": [[1.0], [2.0]]}), "batch dimensions differ"),
    (lambda: oip_v2_request({"x": np.array([["a"]])}), "numbers or booleans are sent"),
    (lambda: oip_v2_request({"x": [[1.0]]}, parameters={"p": object()}), "not JSON"),
    (lambda: oip_v2_response({"y": [1]}, model_name=""), "model_name must be"),
    (lambda: kserve_v1_request([]), "at least one row"),
    (lambda: kserve_v1_request({"a": [[1]], "b": [[1], [2]]}), "batch dimensions differ"),
    (lambda: kserve_v1_response([[[1.0]]]), "one integer label per row"),
    (lambda: kserve_v1_response([0.5, 0.5]), "one integer label per row"),
    (lambda: cloudevent_record(b"{}", "explain", event_id="c"), "kind must be 'request' or 'response'"),
    (lambda: cloudevent_record(b"{}", "request", event_id="c" * 129), "event_id must be"),
    (lambda: cloudevent_record("{}", "request", event_id="c"), "body must be bytes"),
    (lambda: cloudevent_record(b"{}", "request", event_id="c", time=datetime(2025, 1, 1)), "timezone-aware"),
    (lambda: cloudevent_record(b"{}", "request", event_id="c", namespace="n" * 5000), "at most 4096"),
    (lambda: cloudevent_record(b"{}", "request", event_id="c", endpoint=1), "endpoint must be a string"),
]


@pytest.mark.parametrize(("build", "message"), WRONG)
def test_wrong_arguments_raise_value_error_saying_what_is_wrong(build: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()
