"""The builders: one function per form dknn-agent reads (the package docstring says which to use)."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any, Union

from dknn_events import _tensors
from dknn_events._tensors import Tensor

SCHEMA = "dknn.inference.v1"
REQUEST_TYPE = "org.kubeflow.serving.inference.request"
RESPONSE_TYPE = "org.kubeflow.serving.inference.response"
# What KServe's logger sends as ce_source (its agent's address in the pod).
KSERVE_LOGGER_SOURCE = "http://localhost:9081/"

# The agent's limits (docs/schemas/; tests/unit/test_producer.py compares them): a value past one is
# refused here, where the mistake is made, instead of dead-lettered by the agent.
MAX_ID_LENGTH = 128
MAX_MODEL_NAME_LENGTH = 128
MAX_MODEL_VERSION_LENGTH = 64
MAX_V1_DIMENSIONS = 8
MAX_V2_DIMENSIONS = 9  # the batch dimension and eight more
MAX_INPUTS = 16
MAX_CLASSES = 10_000
MAX_ATTRIBUTES = 32
MAX_ATTRIBUTE_KEY_LENGTH = 64
MAX_ATTRIBUTE_TEXT_LENGTH = 256
MAX_HEADER_BYTES = 4096
INPUT_NAME = re.compile(r"[A-Za-z_][\w.-]{0,63}")

# What a builder takes as an array: a numpy array (or anything with __array__) or nested lists.
ArrayLike = Any
AttributeValue = Union[str, int, float, bool]


def inference_event(
    event_id: str,
    x: ArrayLike | None = None,
    *,
    model_name: str,
    model_version: str,
    inputs: Mapping[str, ArrayLike] | None = None,
    dtype: str | Mapping[str, str] = "float32",
    timestamp_ms: int | None = None,
    served_label: int | None = None,
    scores: ArrayLike | None = None,
    attributes: Mapping[str, AttributeValue] | None = None,
) -> bytes:
    """A `dknn.inference.v1` event: the agent's own form, one input to score per event.

    `x` is the model's one input *without* the batch dimension; a model with several inputs gets
    `inputs={name: array}` instead (the bundle's input names). Each is sent as the C-order
    little-endian bytes of `dtype` in base64 (compact, exact, and decoded without parsing numbers);
    `dtype` is the bundle input's, float32 unless told, one name for all inputs or one per name.
    NaN and infinity are sent as they are: the agent dead-letters them as `non_finite`, which is a
    signal about the server worth seeing.

    `served_label` (with the optional `scores`) is the answer the server gave: the agent compares it
    with the one it recomputes. `timestamp_ms` (ms since the epoch) lets it measure event latency;
    `attributes` (at most 32 flat key/values) are passed through into its quarantine records.
    """
    document: dict[str, Any] = {
        "schema": SCHEMA,
        "event_id": _text(event_id, "event_id", MAX_ID_LENGTH),
        "model": {
            "name": _text(model_name, "model_name", MAX_MODEL_NAME_LENGTH),
            "version": _text(model_version, "model_version", MAX_MODEL_VERSION_LENGTH),
        },
    }
    if (x is None) == (inputs is None):
        raise ValueError("pass exactly one of x (a model with one input) and inputs (several, by name)")
    if x is not None:
        if not isinstance(dtype, str):
            raise ValueError("with x, dtype is one dtype name, not a mapping")
        document["input"] = _v1_payload(x, dtype, "x")
    else:
        assert inputs is not None
        if not isinstance(inputs, Mapping) or not 1 <= len(inputs) <= MAX_INPUTS:
            raise ValueError(f"inputs must be a mapping of 1 to {MAX_INPUTS} input names to arrays")
        payloads = {}
        for name, value in inputs.items():
            if not isinstance(name, str) or not INPUT_NAME.fullmatch(name):
                raise ValueError(f"input name {name!r} is not one a bundle can have ([A-Za-z_][\\w.-]{{0,63}})")
            if isinstance(dtype, str):
                input_dtype = dtype
            elif name in dtype:
                input_dtype = dtype[name]
            else:
                raise ValueError(f"dtype names no dtype for input {name!r}")
            payloads[name] = _v1_payload(value, input_dtype, f"inputs[{name!r}]")
        document["inputs"] = payloads
    if timestamp_ms is not None:
        if isinstance(timestamp_ms, bool) or not isinstance(timestamp_ms, int) or not 0 <= timestamp_ms < 2**63:
            raise ValueError(f"timestamp_ms must be an int of milliseconds since the epoch, got {timestamp_ms!r}")
        document["timestamp_ms"] = timestamp_ms
    if served_label is not None:
        document["prediction"] = {"label": _label(served_label)}
        if scores is not None:
            document["prediction"]["scores"] = _scores(scores)
    elif scores is not None:
        raise ValueError("scores need served_label: they are the served answer's")
    if attributes is not None:
        document["attributes"] = _attributes(attributes)
    return _json(document)


def oip_v2_request(
    inputs: Mapping[str, ArrayLike],
    *,
    id: str | None = None,
    model_name: str | None = None,
    model_version: str | None = None,
    parameters: Mapping[str, Any] | None = None,
) -> bytes:
    """An Open Inference Protocol v2 inference request, as KServe v2, Triton, MLServer and Seldon take it.

    `inputs` maps each tensor name to an array *with* the batch dimension first: the agent scores
    every row as one input. The datatype comes from the array (float32 -> FP32, int64 -> INT64, ...)
    or, for lists, from the values (BOOL, INT64, FP32); data is sent flat, in row-major order.
    `id` is what the response carries: give one to have the served answers compared.
    `model_name` is not part of the protocol's body (servers take it from the URL) but the agent
    honours it; leave it out if your server refuses unknown fields.
    """
    document: dict[str, Any] = {}
    if id is not None:
        document["id"] = _text(id, "id", MAX_ID_LENGTH)
    if model_name is not None:
        document["model_name"] = _text(model_name, "model_name", MAX_MODEL_NAME_LENGTH)
    if model_version is not None:
        document["model_version"] = _text(model_version, "model_version", MAX_MODEL_NAME_LENGTH)
    if parameters is not None:
        document["parameters"] = dict(parameters)
    document["inputs"] = _v2_tensors(inputs, "inputs", same_batch=True)
    return _json(document)


def oip_v2_response(
    outputs: Mapping[str, ArrayLike],
    *,
    model_name: str,
    id: str | None = None,
    model_version: str | None = None,
) -> bytes:
    """An Open Inference Protocol v2 inference response: the served answers of a request.

    `outputs` maps each output name to its array, batch dimension first. The agent reads the served
    label of each row from the first output of one score per class (its argmax) or else the first
    integer output of one label per row. `id` must be the request's, or the pair cannot be matched
    (a CloudEvent's `ce_id` takes its place: see `cloudevent_record`).
    """
    document: dict[str, Any] = {"model_name": _text(model_name, "model_name", MAX_MODEL_NAME_LENGTH)}
    if model_version is not None:
        document["model_version"] = _text(model_version, "model_version", MAX_MODEL_NAME_LENGTH)
    if id is not None:
        document["id"] = _text(id, "id", MAX_ID_LENGTH)
    document["outputs"] = _v2_tensors(outputs, "outputs", same_batch=False)
    return _json(document)


def kserve_v1_request(instances: ArrayLike | Mapping[str, ArrayLike], *, id: str | None = None) -> bytes:
    """A KServe v1 `{"instances": [...]}` request (TensorFlow Serving's row format).

    `instances` is a batch, first dimension the rows: an array or a list of inputs for a model with
    one input, or a mapping of input name to batch for a model with several (sent as one object per
    instance, as the v1 protocol has it). `id` is optional; KServe's logger pairs a request with its
    response by the CloudEvent id instead.
    """
    if isinstance(instances, Mapping):
        if not 1 <= len(instances) <= MAX_INPUTS:
            raise ValueError(f"instances by name must name 1 to {MAX_INPUTS} inputs")
        columns = {}
        for name, value in instances.items():
            tensor = _tensors.read(value, f"instances[{name!r}]")
            columns[str(name)] = _rows(tensor, f"instances[{name!r}]")
        counts = {len(rows) for rows in columns.values()}
        if len(counts) != 1:
            raise ValueError(f"the inputs' batch dimensions differ: {sorted(counts)}")
        rows: list[Any] = [{name: column[row] for name, column in columns.items()} for row in range(counts.pop())]
    else:
        rows = _rows(_tensors.read(instances, "instances"), "instances")
    document: dict[str, Any] = {"instances": rows}
    if id is not None:
        document["id"] = _text(id, "id", MAX_ID_LENGTH)
    return _json(document)


def kserve_v1_response(predictions: ArrayLike, *, id: str | None = None) -> bytes:
    """A KServe v1 `{"predictions": [...]}` response: one integer label per row, or one score per
    class per row (the agent takes their argmax). Standing alone it needs the request's `id`; sent
    through `cloudevent_record` the CloudEvent's id pairs it instead."""
    tensor = _tensors.read(predictions, "predictions")
    if len(tensor.shape) == 1 and tensor.kind == "int":
        values: list[Any] = [int(value) for value in tensor.values]
    elif len(tensor.shape) == 2 and tensor.kind in ("int", "float") and tensor.shape[1] >= 1:
        _tensors.check_finite(tensor, "predictions")
        values = _rows(tensor, "predictions")
    else:
        raise ValueError(
            f"predictions must be one integer label per row or one score per class per row; got shape "
            f"{list(tensor.shape)} of {tensor.kind}s"
        )
    if not values:
        raise ValueError("predictions must hold at least one row")
    document: dict[str, Any] = {"predictions": values}
    if id is not None:
        document["id"] = _text(id, "id", MAX_ID_LENGTH)
    return _json(document)


def cloudevent_record(
    body: bytes | Mapping[str, Any],
    kind: str,
    *,
    event_id: str,
    inference_service: str | None = None,
    namespace: str | None = None,
    component: str | None = None,
    endpoint: str | None = None,
    source: str = KSERVE_LOGGER_SOURCE,
    time: datetime | None = None,
    metadata: str | Mapping[str, Any] | None = None,
    annotations: str | Mapping[str, Any] | None = None,
) -> tuple[bytes, list[tuple[str, bytes]]]:
    """A request or response as KServe's payload logger puts it in Kafka: a CloudEvent in binary mode.

    Returns `(value, headers)` exactly as kafka-python's `send(topic, value=value, headers=headers)`
    takes them: the body as the value, the event's attributes as `ce_*` headers (`content-type`
    application/json). `kind` is "request" or "response"; a request and its response must share
    `event_id`, which is how the agent pairs the served answers with the ones it recomputes (the
    body's own id is then not needed). `inference_service` (`ce_inferenceservicename`) is the
    model's name as the agent matches it; `namespace`, `component` (predictor, transformer, ...),
    `endpoint` (default or canary), `metadata` and `annotations` are KServe's other extensions,
    kept by the agent with what it quarantines. `time` (default now) becomes `ce_time`.

    `body` is what the other builders return (any of the JSON forms), or a mapping to send as JSON.
    """
    if kind not in ("request", "response"):
        raise ValueError(f"kind must be 'request' or 'response', got {kind!r}")
    if isinstance(body, Mapping):
        value = _json(dict(body))
    elif isinstance(body, (bytes, bytearray)):
        value = bytes(body)
    else:
        raise ValueError(f"body must be bytes (a builder's result) or a mapping, got {type(body).__name__}")
    if time is None:
        time = datetime.now(timezone.utc)
    elif not isinstance(time, datetime) or time.tzinfo is None:
        raise ValueError("time must be a timezone-aware datetime")
    attributes = [
        ("ce_specversion", "1.0"),
        ("ce_id", _text(event_id, "event_id", MAX_ID_LENGTH)),
        ("ce_source", _text(source, "source", MAX_HEADER_BYTES)),
        ("ce_type", REQUEST_TYPE if kind == "request" else RESPONSE_TYPE),
        ("ce_time", time.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")),
        ("content-type", "application/json"),
    ]
    extensions = {
        "inferenceservicename": inference_service,
        "namespace": namespace,
        "component": component,
        "endpoint": endpoint,
        "metadata": metadata,
        "annotations": annotations,
    }
    for name, text in extensions.items():
        if text is None:
            continue
        if isinstance(text, Mapping) and name in ("metadata", "annotations"):
            text = json.dumps(dict(text), separators=(",", ":"), sort_keys=True)
        if not isinstance(text, str):
            raise ValueError(f"{name} must be a string, got {type(text).__name__}")
        attributes.append((f"ce_{name}", text))
    headers = []
    for name, text in attributes:
        encoded = text.encode("utf-8")
        if len(encoded) > MAX_HEADER_BYTES:
            raise ValueError(f"header {name} is {len(encoded)} bytes; the agent reads at most {MAX_HEADER_BYTES}")
        headers.append((name, encoded))
    return value, headers


def _text(value: Any, name: str, limit: int) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= limit:
        shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
        raise ValueError(f"{name} must be a string of 1 to {limit} characters, got {shown}")
    return value


def _label(value: Any) -> int:
    if hasattr(value, "item") and not isinstance(value, (list, tuple)):
        value = value.item()  # a numpy integer
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_CLASSES:
        raise ValueError(f"served_label must be a class index, an int from 0 to {MAX_CLASSES}, got {value!r}")
    return value


def _scores(value: ArrayLike) -> list[float]:
    tensor = _tensors.read(value, "scores")
    if tensor.kind == "bool" or len(tensor.values) > MAX_CLASSES:
        raise ValueError(f"scores must be at most {MAX_CLASSES} numbers, one per class")
    _tensors.check_finite(tensor, "scores")
    return [float(score) for score in tensor.values]


def _attributes(attributes: Mapping[str, Any]) -> dict[str, AttributeValue]:
    if not isinstance(attributes, Mapping) or len(attributes) > MAX_ATTRIBUTES:
        raise ValueError(f"attributes must be a mapping of at most {MAX_ATTRIBUTES} entries")
    flat: dict[str, AttributeValue] = {}
    for key, value in attributes.items():
        _text(key, "an attribute's key", MAX_ATTRIBUTE_KEY_LENGTH)
        if isinstance(value, str):
            if len(value) > MAX_ATTRIBUTE_TEXT_LENGTH:
                raise ValueError(f"attribute {key!r} is longer than {MAX_ATTRIBUTE_TEXT_LENGTH} characters")
        elif not isinstance(value, (bool, int, float)):
            raise ValueError(f"attribute {key!r} is a {type(value).__name__}; strings, numbers and booleans are sent")
        flat[key] = value
    return flat


def _v1_payload(value: ArrayLike, dtype: str, where: str) -> dict[str, Any]:
    tensor = _tensors.read(value, where)
    if len(tensor.shape) > MAX_V1_DIMENSIONS:
        raise ValueError(f"{where} has {len(tensor.shape)} dimensions; an input has at most {MAX_V1_DIMENSIONS}")
    data = _tensors.little_endian_bytes(tensor, dtype, where)
    return {"dtype": dtype, "shape": list(tensor.shape), "b64": base64.b64encode(data).decode("ascii")}


def _v2_tensors(tensors: Mapping[str, ArrayLike], where: str, same_batch: bool) -> list[dict[str, Any]]:
    if not isinstance(tensors, Mapping) or not 1 <= len(tensors) <= MAX_INPUTS:
        raise ValueError(f"{where} must be a mapping of 1 to {MAX_INPUTS} tensor names to arrays")
    documents, batches = [], set()
    for name, value in tensors.items():
        label = f"{where}[{name!r}]"
        _text(name, f"a tensor name in {where}", MAX_ID_LENGTH)
        tensor = _tensors.read(value, label)
        if not 1 <= len(tensor.shape) <= MAX_V2_DIMENSIONS:
            raise ValueError(
                f"{label} has shape {list(tensor.shape)}: it needs the batch dimension first, and at most "
                f"{MAX_V2_DIMENSIONS} dimensions"
            )
        if tensor.shape[0] < 1:
            raise ValueError(f"{label} has a batch of 0 rows")
        _tensors.check_finite(tensor, label)
        batches.add(tensor.shape[0])
        documents.append(
            {
                "name": name,
                "shape": list(tensor.shape),
                "datatype": _tensors.datatype(tensor, label),
                "data": tensor.values,
            }
        )
    if same_batch and len(batches) > 1:  # a request's rows are one input each: every tensor has them all
        raise ValueError(f"the {where}' batch dimensions differ: {sorted(batches)}")
    return documents


def _rows(tensor: Tensor, where: str) -> list[Any]:
    """The rows of a batch as nested lists (the first dimension is the batch)."""
    if not tensor.shape or tensor.shape[0] < 1:
        raise ValueError(f"{where} must be a batch: at least one row, the batch dimension first")
    _tensors.check_finite(tensor, where)
    if tensor.array is not None:
        return list(tensor.array.tolist())
    return _nest(tensor.values, tensor.shape)


def _nest(values: list[Any], shape: tuple[int, ...]) -> list[Any]:
    if len(shape) <= 1:
        return list(values)
    step = len(values) // shape[0] if shape[0] else 0
    return [_nest(values[row * step : (row + 1) * step], shape[1:]) for row in range(shape[0])]


def _json(document: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON; NaN and infinity never reach it (refused above with a reason)."""
    try:
        return json.dumps(document, separators=(",", ":"), allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as exc:  # what a caller's parameters may hold
        raise ValueError(f"not JSON: {exc}") from None
