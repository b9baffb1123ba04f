"""Open Inference Protocol v2 ("KServe v2", Triton, MLServer, Seldon): requests and responses as JSON.

A request carries named tensors, each with its `shape` *including* the batch dimension, an
element `datatype` and row-major `data` (flat, or nested as some clients send it); one request is
as many inputs to score as its batch dimension says. A response carries the served model's output
tensors; the agent reads the served answer from them (logits or probabilities: their argmax;
integer labels: as they are) to compare with the answer it recomputes.

Refused, each with a clear dead-letter message: `BYTES` tensors (strings have no place in the
bundle's numeric inputs), the binary tensor data extension (`binary_data_size`: send JSON data),
and shapes or element types that do not fit the bundle.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from agent.engine.manifest import MAX_INPUTS, InputSpec
from agent.errors import EventError
from agent.runtime.wire.tensors import V2_DATATYPES, check_element_type, flatten, to_array
from agent.runtime.wire.v1 import schema_message

Text = Annotated[str, StringConstraints(min_length=1, max_length=128)]


class _Lenient(BaseModel):
    # Servers add fields of their own: ignored, not refused. Types are still strict.
    model_config = ConfigDict(frozen=True, extra="ignore", strict=True, allow_inf_nan=False)


class Tensor(_Lenient):
    name: Text
    shape: list[Annotated[int, Field(ge=0, le=1_000_000_000)]] = Field(min_length=1, max_length=9)
    datatype: Annotated[str, StringConstraints(min_length=1, max_length=16)]
    data: list[Any]
    parameters: dict[Annotated[str, StringConstraints(max_length=64)], Any] | None = Field(None, max_length=32)


class Request(_Lenient):
    """An inference request: `inputs` are the model's tensors; `model_name` is not part of the
    protocol's body (it is in the URL) but is honoured where a producer adds it."""

    id: Text | None = None
    model_name: Text | None = None
    model_version: Text | None = None
    parameters: dict[Annotated[str, StringConstraints(max_length=64)], Any] | None = Field(None, max_length=32)
    inputs: list[Tensor] = Field(min_length=1, max_length=MAX_INPUTS)
    outputs: list[dict[str, Any]] | None = Field(None, max_length=MAX_INPUTS)


class Response(_Lenient):
    model_name: Text
    model_version: Text | None = None
    id: Text | None = None
    parameters: dict[Annotated[str, StringConstraints(max_length=64)], Any] | None = Field(None, max_length=32)
    outputs: list[Tensor] = Field(min_length=1, max_length=MAX_INPUTS)


def is_request(document: dict[str, Any]) -> bool:
    inputs = document.get("inputs")
    return isinstance(inputs, list) and bool(inputs) and all(isinstance(item, dict) for item in inputs)


def is_response(document: dict[str, Any]) -> bool:
    outputs = document.get("outputs")
    return "model_name" in document and isinstance(outputs, list)


def parse_request(document: dict[str, Any]) -> Request:
    try:
        return Request.model_validate(document)
    except ValidationError as exc:
        raise EventError("schema", "Open Inference Protocol v2 request: " + schema_message(exc)) from None


def parse_response(document: dict[str, Any]) -> Response:
    try:
        return Response.model_validate(document)
    except ValidationError as exc:
        raise EventError("schema", "Open Inference Protocol v2 response: " + schema_message(exc)) from None


def _numeric(tensor: Tensor, where: str) -> str:
    """The numpy element type of a tensor; BYTES and the binary extension are refused."""
    if tensor.parameters and "binary_data_size" in tensor.parameters:
        raise EventError("schema", f"{where} uses the binary tensor data extension; send its data as JSON")
    dtype = V2_DATATYPES.get(tensor.datatype)
    if dtype is None:
        raise EventError("dtype", f"{where} is {tensor.datatype[:16]}; numeric and BOOL tensors are accepted")
    return dtype


def decode_request(request: Request, specs: tuple[InputSpec, ...], max_rows: int) -> tuple[int, list[np.ndarray]]:
    """(rows, one array per bundle input of shape (rows, *input shape)); raises only EventError."""
    if len(specs) == 1 and len(request.inputs) == 1:
        pairs = [(specs[0], request.inputs[0])]
    else:
        by_name = {tensor.name: tensor for tensor in request.inputs}
        missing = [spec.name for spec in specs if spec.name not in by_name]
        if missing or len(by_name) != len(specs):
            extra = sorted(set(by_name) - {spec.name for spec in specs})
            raise EventError("schema", f"inputs: missing {missing[:8]}, unknown {extra[:8]}")
        pairs = [(spec, by_name[spec.name]) for spec in specs]
    rows = {tensor.shape[0] for _, tensor in pairs}
    if len(rows) != 1:
        raise EventError("shape", f"the inputs' batch dimensions differ: {sorted(rows)[:4]}")
    count = rows.pop()
    if not 1 <= count <= max_rows:
        raise EventError("shape", f"a request of {count} inputs; between 1 and {max_rows} are accepted")
    arrays = []
    for spec, tensor in pairs:
        where = f"input {tensor.name[:64]!r}"
        check_element_type(_numeric(tensor, where), spec, where)
        if tuple(tensor.shape[1:]) != tuple(spec.shape):
            raise EventError(
                "shape", f"{where} has shape {tensor.shape[:9]}, expected [N, {', '.join(map(str, spec.shape))}]"
            )
        values = flatten(tensor.data, count * math.prod(spec.shape), f"{where} data")
        arrays.append(to_array(values, spec, count, f"{where} data"))
    return count, arrays


def served_labels(response: Response, num_classes: int) -> list[int]:
    """The served answer per row: the argmax of the first output of `num_classes` scores per row,
    else the first integer output of one label per row."""
    for tensor in response.outputs:
        dtype = V2_DATATYPES.get(tensor.datatype)
        if dtype is None or not tensor.shape:
            continue
        rows = tensor.shape[0]
        per_row = math.prod(tensor.shape[1:])
        if per_row == num_classes and dtype.startswith("float"):
            scores = np.asarray(flatten(tensor.data, rows * per_row, f"output {tensor.name[:64]!r}"), dtype=np.float64)
            return [int(label) for label in scores.reshape(rows, per_row).argmax(axis=1)]
        if per_row == 1 and not dtype.startswith("float") and dtype != "bool":
            labels = flatten(tensor.data, rows, f"output {tensor.name[:64]!r}")
            if all(isinstance(label, int) and not isinstance(label, bool) for label in labels):
                return [int(label) for label in labels]
    raise EventError(
        "schema",
        f"the response has no output of {num_classes} scores or one integer label per row "
        f"(outputs: {[tensor.name[:32] for tensor in response.outputs][:8]})",
    )
