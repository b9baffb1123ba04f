"""KServe's v1 protocol bodies (TensorFlow Serving's row format): `{"instances": [...]}` requests
and `{"predictions": [...]}` responses. What KServe's payload logger forwards for a v1 model.

An instance is one input as nested JSON lists (a model with one input), or an object of them by
input name (a model with several). A prediction is a label, or one score per class (the served
answer is their argmax).
"""

from __future__ import annotations

import math
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from agent.engine.manifest import InputSpec
from agent.errors import EventError
from agent.runtime.wire.tensors import flatten, to_array
from agent.runtime.wire.v1 import schema_message


class _Lenient(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", strict=True, allow_inf_nan=False)


class Request(_Lenient):
    instances: list[Any] = Field(min_length=1)
    id: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = None


class Response(_Lenient):
    predictions: list[Any] = Field(min_length=1)
    id: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = None


def is_request(document: dict[str, Any]) -> bool:
    return isinstance(document.get("instances"), list)


def is_response(document: dict[str, Any]) -> bool:
    return isinstance(document.get("predictions"), list)


def decode_request(
    document: dict[str, Any], specs: tuple[InputSpec, ...], max_rows: int
) -> tuple[int, list[np.ndarray]]:
    try:
        request = Request.model_validate(document)
    except ValidationError as exc:
        raise EventError("schema", "KServe v1 request: " + schema_message(exc)) from None
    count = len(request.instances)
    if count > max_rows:
        raise EventError("shape", f"a request of {count} instances; at most {max_rows} are accepted")
    if len(specs) == 1:
        spec = specs[0]
        values = flatten(request.instances, count * math.prod(spec.shape), "instances")
        return count, [to_array(values, spec, count, "instances")]
    if not all(isinstance(instance, dict) for instance in request.instances):
        raise EventError("schema", f"the model takes {len(specs)} inputs: send each instance as an object by name")
    arrays = []
    for spec in specs:
        column = [instance.get(spec.name) for instance in request.instances]
        if any(value is None for value in column):
            raise EventError("schema", f"an instance has no input {spec.name!r}")
        values = flatten(column, count * math.prod(spec.shape), f"instances' {spec.name!r}")
        arrays.append(to_array(values, spec, count, f"instances' {spec.name!r}"))
    return count, arrays


def served_labels(document: dict[str, Any], num_classes: int) -> list[int]:
    try:
        response = Response.model_validate(document)
    except ValidationError as exc:
        raise EventError("schema", "KServe v1 response: " + schema_message(exc)) from None
    labels = []
    for prediction in response.predictions:
        if isinstance(prediction, int) and not isinstance(prediction, bool):
            labels.append(prediction)
        elif isinstance(prediction, list) and len(prediction) == num_classes:
            scores = flatten(prediction, num_classes, "a prediction")
            if any(isinstance(score, bool) or not isinstance(score, (int, float)) for score in scores):
                raise EventError("schema", "a prediction's scores must be numbers")
            labels.append(int(np.argmax(np.asarray(scores, dtype=np.float64))))
        else:
            raise EventError("schema", f"a prediction is neither a label nor {num_classes} scores")
    return labels
