"""Decoding a consumed record, whatever form it came in, into what the agent scores (docs/design.md §4).

Every record is untrusted: it comes from a topic any model server (or anything with produce
rights) can write to. A bad record is *data*, not a crash, so `decode_record` has exactly one way
to fail, `EventError`, whose `reason` is one of a small fixed set (it becomes a Prometheus label
and a dead-letter header, so it must stay bounded). The checks are ordered cheapest-first so a
hostile payload costs as little as possible: size before parsing, headers before the body,
declared dtype and shape before decoding, element counts before allocating.

The form is recognised from each record, with no flag to set (agent.runtime.wire):

    ce_type header (CloudEvents binary mode) ─ ...inference.request  ─┐
                                             ─ ...inference.response ─┼─► the body below
    body {"schema": "dknn.inference.v1", ...}    one input to score    │
    body {"inputs": [tensor, ...]}               OIP v2 request ◄──────┘ (N inputs: its batch)
    body {"model_name": ..., "outputs": [...]}   OIP v2 response: the served answers
    body {"instances": [...]}                    KServe v1 request (N inputs)
    body {"predictions": [...]}                  KServe v1 response

A request becomes one `DecodedEvent` per input in it; a response becomes `ServedAnswers`, which
the agent compares with the answers it recomputed for the request of the same id. The model a
record is for comes from the body (`model.name`, `model_name`) or KServe's
`ce_inferenceservicename` header; a record that names none is taken to be for this agent's model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal

import numpy as np
import orjson

import dknn_events
from agent.engine.manifest import InputSpec
from agent.errors import EventError
from agent.runtime.wire import cloudevents, kserve_v1, oip_v2, v1
from connectors.base import Headers

DEFAULT_MAX_EVENT_BYTES = 1_048_576
DEFAULT_MAX_ROWS = 1024
Form = Literal["dknn.inference.v1", "oip-v2", "kserve-v1"]  # the `form` of score records
V1: Final[Form] = v1.SCHEMA
OIP_V2: Final[Form] = "oip-v2"
KSERVE_V1: Final[Form] = "kserve-v1"


@dataclass(frozen=True)
class DecodedEvent:
    """One input to score, validated: one array per bundle input, without the batch dimension."""

    event_id: str
    form: Form
    inputs: tuple[np.ndarray, ...]
    document: dict[str, Any]  # what a quarantine record embeds (for a batch request: this input's part)
    request_id: str | None = None  # what a response to it carries (OIP v2 `id`, `ce_id`)
    row: int = 0  # its place in a batch request
    model_name: str | None = None
    model_version: str | None = None
    timestamp_ms: int | None = None
    served_label: int | None = None  # the answer the server gave, where the event says (v1)

    @property
    def x(self) -> np.ndarray:
        """The input of a model with one."""
        return self.inputs[0]


@dataclass(frozen=True)
class ServedAnswers:
    """A response: the label the server answered for each input of the request `request_id`."""

    request_id: str
    labels: tuple[int, ...]
    form: Form


@dataclass(frozen=True)
class Decoded:
    """What one record holds: inputs to score, or a response's answers."""

    events: tuple[DecodedEvent, ...] = ()
    answers: ServedAnswers | None = None


@dataclass(frozen=True)
class Expectations:
    """What the bundle accepts: its inputs, the names its model goes by, and bounds."""

    inputs: tuple[InputSpec, ...]
    model_names: frozenset[str]
    num_classes: int
    max_bytes: int = DEFAULT_MAX_EVENT_BYTES
    max_rows: int = DEFAULT_MAX_ROWS


def _parse_json(raw: bytes) -> Any:
    """Strict RFC 8259 JSON; every failure becomes bad_json.

    orjson, not the standard library: it parses a 4 KB event about 6x faster (the decode stage is
    per event, on the hot path). It is also stricter, which suits untrusted input: NaN/Infinity
    literals, numbers beyond a double (`1e999`), lone surrogate escapes, invalid UTF-8 and nesting
    deeper than 1,024 are all refused at parse time.
    """
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise EventError("bad_json", f"not valid JSON: {exc}") from None


def _check_model(name: str | None, expected: Expectations) -> None:
    if name is not None and name not in expected.model_names:
        served = ", ".join(sorted(expected.model_names))
        raise EventError("unknown_model", f"the record is for model {name[:64]!r}, this agent serves {served}")


def decode_record(raw: bytes, headers: Headers, expected: Expectations) -> Decoded:
    """Validates one record against the bundle; raises only `EventError`."""
    if not isinstance(raw, (bytes, bytearray)):
        raise EventError("schema", f"event value must be bytes, got {type(raw).__name__}")
    size = len(raw)
    if size > expected.max_bytes:  # before anything looks inside: a 100 MB value costs one len()
        raise EventError("too_large", f"event is {size} bytes, limit {expected.max_bytes}")
    event = cloudevents.from_headers(headers) if headers else None
    if event is not None:
        if not (event.is_request or event.is_response):
            raise EventError("schema", f"CloudEvent of type {event.type[:80]!r}: not an inference request or response")
        _check_model(event.model_name, expected)
    document = _parse_json(raw)
    if not isinstance(document, dict):
        raise EventError("schema", f"event must be a JSON object, got {type(document).__name__}")
    if event is not None and event.is_response:
        return Decoded(answers=_answers(document, event.id, expected))
    if event is None and (oip_v2.is_response(document) or kserve_v1.is_response(document)):
        if "predictions" in document and "id" not in document:
            raise EventError("schema", "a KServe v1 response without an id or CloudEvent: nothing to compare it with")
        return Decoded(answers=_answers(document, None, expected))
    return Decoded(events=_requests(document, event, expected))


def _requests(
    document: dict[str, Any], event: cloudevents.CloudEvent | None, expected: Expectations
) -> tuple[DecodedEvent, ...]:
    time_ms = event.time_ms if event is not None else None
    if "schema" in document or "event_id" in document:
        parsed = v1.validate(document)
        _check_model(parsed.model.name, expected)
        return (
            DecodedEvent(
                event_id=parsed.event_id,
                form=V1,
                inputs=v1.decode_inputs(parsed, expected.inputs),
                document=document,
                request_id=event.id if event is not None else None,
                model_name=parsed.model.name,
                model_version=parsed.model.version,
                timestamp_ms=parsed.timestamp_ms if parsed.timestamp_ms is not None else time_ms,
                served_label=parsed.prediction.label if parsed.prediction is not None else None,
            ),
        )
    if oip_v2.is_request(document):
        request = oip_v2.parse_request(document)
        _check_model(request.model_name, expected)
        count, arrays = oip_v2.decode_request(request, expected.inputs, expected.max_rows)
        request_id = event.id if event is not None else request.id
        form, names = OIP_V2, [tensor.name for tensor in request.inputs]
        datatypes = [tensor.datatype for tensor in request.inputs]
        model_name, model_version = request.model_name, request.model_version
    elif kserve_v1.is_request(document):
        count, arrays = kserve_v1.decode_request(document, expected.inputs, expected.max_rows)
        request_id = event.id if event is not None else _text_or_none(document.get("id"))
        form, names, datatypes = KSERVE_V1, [spec.name for spec in expected.inputs], []
        model_name = model_version = None
    else:
        raise EventError(
            "schema",
            "not a dknn.inference.v1 event, an Open Inference Protocol v2 request or response, or a KServe v1 "
            "instances / predictions body",
        )
    if event is not None:
        model_name = model_name or event.model_name
    return tuple(
        DecodedEvent(
            event_id=(request_id or "request") + (f"/{row}" if count > 1 else ""),
            form=form,
            inputs=tuple(array[row] for array in arrays),
            document=_row_document(form, request_id, row, count, names, datatypes, arrays, event),
            request_id=request_id,
            row=row,
            model_name=model_name,
            model_version=model_version,
            timestamp_ms=time_ms,
        )
        for row in range(count)
    )


def _text_or_none(value: Any) -> str | None:
    return value[:128] if isinstance(value, str) and value else None


def _row_document(
    form: Form,
    request_id: str | None,
    row: int,
    count: int,
    names: list[str],
    datatypes: list[str],
    arrays: list[np.ndarray],
    event: cloudevents.CloudEvent | None,
) -> dict[str, Any]:
    """One input of a batch request as a small document of its own (a quarantine record quotes it,
    not the whole batch): its inputs as OIP v2 tensors of batch 1."""
    tensors = [
        {
            "name": name,
            "shape": [1, *array.shape[1:]],
            "datatype": datatypes[index] if index < len(datatypes) else _datatype(array),
            "data": array[row].ravel().tolist(),
        }
        for index, (name, array) in enumerate(zip(names, arrays, strict=True))
    ]
    document: dict[str, Any] = {"form": form, "id": request_id, "row": row, "rows": count, "inputs": tensors}
    if event is not None:
        document["cloudevent"] = {"id": event.id, "type": event.type, "source": event.source, **event.extensions}
    return document


def _datatype(array: np.ndarray) -> str:
    return {"bool": "BOOL"}.get(array.dtype.name, array.dtype.name.upper().replace("FLOAT", "FP"))


def _answers(document: dict[str, Any], event_id: str | None, expected: Expectations) -> ServedAnswers:
    if oip_v2.is_response(document):
        response = oip_v2.parse_response(document)
        _check_model(response.model_name, expected)
        labels = oip_v2.served_labels(response, expected.num_classes)
        request_id, form = event_id or response.id, OIP_V2
    elif kserve_v1.is_response(document):
        labels = kserve_v1.served_labels(document, expected.num_classes)
        request_id, form = event_id or _text_or_none(document.get("id")), KSERVE_V1
    else:
        raise EventError("schema", "an inference response that is neither OIP v2 outputs nor KServe v1 predictions")
    if request_id is None:
        raise EventError("schema", "a response without an id: nothing to compare it with")
    return ServedAnswers(request_id=request_id, labels=tuple(labels), form=form)


def encode_event(
    event_id: str,
    x: np.ndarray,
    model_name: str,
    model_version: str,
    timestamp_ms: int | None = None,
    served_label: int | None = None,
    scores: list[float] | np.ndarray | None = None,
    attributes: dict[str, str | int | float | bool] | None = None,
) -> bytes:
    """A valid v1 event carrying `x` as little-endian float32 base64 (demo producer, benches, tests).

    The encoder is `dknn_events.inference_event`, the one model servers use, so the agent's own
    traffic goes through it too; here its output is also validated with the consumer's model, so
    a disagreement between the two fails at the producer, not downstream.
    """
    payload = dknn_events.inference_event(
        event_id,
        x,
        model_name=model_name,
        model_version=model_version,
        timestamp_ms=None if timestamp_ms is None else int(timestamp_ms),
        served_label=served_label,
        scores=scores,
        attributes=attributes,
    )
    v1.InferenceEvent.model_validate(orjson.loads(payload))  # as the consumer reads it
    return payload
