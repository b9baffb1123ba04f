"""docs/schemas/: the committed JSON Schemas are what the generator writes, and they agree with the
decoder: every example of docs/schemas/README.md is valid under its schema and decoded by
`decode_record`, and bodies the schema refuses are dead-lettered by the agent too."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from agent.engine.manifest import InputSpec
from agent.errors import EventError
from agent.runtime.events import KSERVE_V1, OIP_V2, V1, Expectations, ServedAnswers, decode_record
from agent.runtime.wire import schemas

DOCS = Path(__file__).resolve().parents[2] / "docs" / "schemas"
EXPECTED = Expectations((InputSpec(name="input-0", shape=(4,), dtype="float32"),), frozenset({"sklearn-iris"}), 3)
HEADERS = "kserve-cloudevent-headers.schema.json"
ROWS = [[6.8, 2.8, 4.8, 1.4], [6.0, 3.4, 4.5, 1.6]]


def readme_examples() -> dict[str, Any]:
    """The first ```json block after each `## `<name>.schema.json`` heading, by schema file."""
    text = (DOCS / "README.md").read_text(encoding="utf-8")
    found = re.findall(r"^## `([\w.-]+\.schema\.json)`\n.*?```json\n(.*?)```", text, flags=re.M | re.S)
    return {name: json.loads(block) for name, block in found}


EXAMPLES = readme_examples()


def validator(name: str) -> jsonschema.protocols.Validator:
    schema = json.loads((DOCS / name).read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def headers_of(document: dict[str, str]) -> list[tuple[str, bytes]]:
    return [(name, value.encode()) for name, value in document.items()]


def body(document: dict[str, Any]) -> bytes:
    return json.dumps(document).encode()


def test_the_committed_schemas_are_the_generated_ones() -> None:
    assert schemas.main(["--check"]) == 0
    assert sorted(path.name for path in DOCS.glob("*.schema.json")) == sorted(schemas.SCHEMAS)


def test_every_schema_has_a_title_a_description_and_no_id() -> None:
    for name in schemas.SCHEMAS:
        schema = json.loads((DOCS / name).read_text(encoding="utf-8"))
        assert schema["title"] and "dknn-agent reads" in schema["description"], name
        assert "$id" not in json.dumps(schema), name


def test_the_readme_has_one_example_per_schema() -> None:
    assert sorted(EXAMPLES) == sorted(schemas.SCHEMAS)


@pytest.mark.parametrize("name", sorted(schemas.SCHEMAS))
def test_each_example_is_valid_under_its_schema(name: str) -> None:
    validator(name).validate(EXAMPLES[name])


def test_the_examples_decode_as_the_forms_they_show() -> None:
    (event,) = decode_record(body(EXAMPLES["dknn.inference.v1.schema.json"]), [], EXPECTED).events
    assert (event.form, event.event_id, event.served_label) == (V1, "7f1c-0001", 1)
    assert event.x.tolist() == pytest.approx(ROWS[0])
    request = decode_record(body(EXAMPLES["oip-v2-request.schema.json"]), [], EXPECTED)
    assert [(e.form, e.request_id) for e in request.events] == [(OIP_V2, "req-1")] * 2
    assert request.events[1].x.tolist() == pytest.approx(ROWS[1])
    response = decode_record(body(EXAMPLES["oip-v2-response.schema.json"]), [], EXPECTED)
    assert response.answers == ServedAnswers("req-1", (1, 1), OIP_V2)
    instances = decode_record(body(EXAMPLES["kserve-v1-request.schema.json"]), [], EXPECTED)
    assert [e.x.tolist() for e in instances.events] == [pytest.approx(row) for row in ROWS]
    predictions = decode_record(body(EXAMPLES["kserve-v1-response.schema.json"]), [], EXPECTED)
    assert predictions.answers == ServedAnswers("req-1", (1, 1), KSERVE_V1)


def test_the_cloudevent_example_carries_a_request_and_its_response() -> None:
    headers = EXAMPLES[HEADERS]
    logged = decode_record(body(EXAMPLES["kserve-v1-request.schema.json"]), headers_of(headers), EXPECTED)
    assert {(e.request_id, e.model_name) for e in logged.events} == {(headers["ce_id"], "sklearn-iris")}
    assert logged.events[0].timestamp_ms == 1_618_014_206_078
    response_headers = dict(headers, ce_type="org.kubeflow.serving.inference.response")
    validator(HEADERS).validate(response_headers)
    answered = decode_record(b'{"predictions": [1, 2]}', headers_of(response_headers), EXPECTED)
    assert answered.answers == ServedAnswers(headers["ce_id"], (1, 2), KSERVE_V1)


def v1(**changes: Any) -> dict[str, Any]:
    document = dict(EXAMPLES["dknn.inference.v1.schema.json"], **changes)
    return {key: value for key, value in document.items() if value is not None}


PAYLOAD = {"dtype": "float32", "shape": [4], "b64": "mpnZQDMzM0CamZlAMzOzPw=="}
TENSOR = {"name": "input-0", "shape": [1, 4], "datatype": "FP32", "data": [0, 1, 2, 3]}
INVALID_BODIES = [
    ("dknn.inference.v1.schema.json", v1(inputs={"input-0": PAYLOAD})),  # input and inputs
    ("dknn.inference.v1.schema.json", v1(input=None)),  # neither
    ("dknn.inference.v1.schema.json", v1(input=dict(PAYLOAD, values=[0, 1, 2, 3]))),  # b64 and values
    ("dknn.inference.v1.schema.json", v1(input={"dtype": "float32", "shape": [4]})),  # no data
    ("dknn.inference.v1.schema.json", v1(input=None, inputs={"input 0": PAYLOAD})),  # not an input name
    ("dknn.inference.v1.schema.json", v1(schema="dknn.inference.v2")),
    ("dknn.inference.v1.schema.json", v1(event_id="")),
    ("dknn.inference.v1.schema.json", v1(event_id="e" * 129)),
    ("dknn.inference.v1.schema.json", v1(prediction={"label": "1"})),
    ("dknn.inference.v1.schema.json", v1(timestamp_ms=-1)),
    ("dknn.inference.v1.schema.json", v1(tenant="a")),  # unknown keys are refused
    ("dknn.inference.v1.schema.json", v1(attributes={"k": {"nested": 1}})),
    ("oip-v2-request.schema.json", {"inputs": []}),
    ("oip-v2-request.schema.json", {"inputs": [{key: TENSOR[key] for key in ("name", "shape", "datatype")}]}),
    ("oip-v2-request.schema.json", {"inputs": [dict(TENSOR, shape=[])]}),
    ("oip-v2-request.schema.json", {"inputs": [dict(TENSOR, name="")]}),
    ("oip-v2-request.schema.json", {"id": 7, "inputs": [TENSOR]}),
    ("oip-v2-response.schema.json", {"model_name": "sklearn-iris", "id": "r", "outputs": [{"name": "p"}]}),
    ("oip-v2-response.schema.json", {"model_name": "", "id": "r", "outputs": [dict(TENSOR, shape=[1])]}),
    ("kserve-v1-request.schema.json", {"instances": []}),
    ("kserve-v1-request.schema.json", {"instances": [[0, 1, 2, 3]], "id": ""}),
    ("kserve-v1-response.schema.json", {"predictions": [], "id": "r"}),
]


@pytest.mark.parametrize(("name", "document"), INVALID_BODIES)
def test_bodies_the_schema_refuses_are_dead_lettered(name: str, document: dict[str, Any]) -> None:
    assert not validator(name).is_valid(document)
    with pytest.raises(EventError) as refused:
        decode_record(body(document), [], EXPECTED)
    assert refused.value.reason == "schema"


def header_changes(**changes: str | None) -> dict[str, str]:
    headers = dict(EXAMPLES[HEADERS], **changes)
    return {name: value for name, value in headers.items() if value is not None}


INVALID_HEADERS = [
    header_changes(ce_specversion="0.3"),
    header_changes(ce_source=None),
    header_changes(ce_id=None),
    header_changes(ce_id="i" * 129),
    header_changes(ce_type="org.kubeflow.serving.inference.explain"),
    header_changes(**{"content-type": "application/octet-stream"}),
    header_changes(ce_namespace="n" * 5000),
]


@pytest.mark.parametrize("headers", INVALID_HEADERS)
def test_headers_the_schema_refuses_are_dead_lettered(headers: dict[str, str]) -> None:
    assert not validator(HEADERS).is_valid(headers)
    with pytest.raises(EventError) as refused:
        decode_record(body(EXAMPLES["kserve-v1-request.schema.json"]), headers_of(headers), EXPECTED)
    assert refused.value.reason == "schema"
