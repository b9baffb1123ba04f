"""JSON numbers into the bundle's input arrays, with the same checks whatever the wire form.

Every form ends here: a flat (or nested) list of JSON values with a declared shape and element
type, checked cheapest-first against one of the bundle's inputs (`InputSpec`): the element count
before anything is allocated, then the element type, then the values (finite floats; integers
that are whole and inside the input's range, since a token id beyond an embedding would fail the
forward pass of the whole batch). One way to fail, `EventError`, with a bounded reason.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from agent.engine.manifest import InputSpec
from agent.errors import EventError

# The element types a wire form may declare, by their name in the Open Inference Protocol v2
# (what KServe, Triton and MLServer use), mapped to numpy.
V2_DATATYPES = {
    "BOOL": "bool",
    "UINT8": "uint8",
    "UINT16": "uint16",
    "UINT32": "uint32",
    "UINT64": "uint64",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
}
MAX_NESTING = 10


def kind(dtype: str) -> str:
    """`float`, `int` or `bool`: what an element type can be converted to without loss of meaning."""
    if dtype.startswith("float"):
        return "float"
    return "bool" if dtype == "bool" else "int"


def check_element_type(declared: str, spec: InputSpec, where: str) -> None:
    """Integers may feed a float input; floats may not feed an integer one, nor numbers a boolean one."""
    sent, wanted = kind(declared), kind(spec.dtype)
    if sent != wanted and not (sent == "int" and wanted == "float"):
        raise EventError("dtype", f"{where} is {declared}, the model's input {spec.name!r} takes {spec.dtype}")


def flatten(data: Any, expected: int, where: str) -> list[Any]:
    """A flat list of leaves from a flat or nested JSON list, refused as soon as it holds more than
    `expected` values (so a hostile body costs at most its own size)."""
    if not isinstance(data, list):
        raise EventError("schema", f"{where} must be a JSON list")
    flat: list[Any] = []
    level: list[Any] = [data]
    for _ in range(MAX_NESTING):
        if not any(isinstance(item, list) for item in level):
            break
        nxt: list[Any] = []
        for item in level:
            if isinstance(item, list):
                nxt.extend(item)
            else:
                raise EventError("shape", f"{where} mixes lists and numbers at one depth")
            if len(nxt) > expected:
                raise EventError("shape", f"{where} holds more than the {expected} values its shape allows")
        level = nxt
    else:
        raise EventError("shape", f"{where} is nested deeper than {MAX_NESTING}")
    flat = level
    if len(flat) != expected:
        raise EventError("shape", f"{where} holds {len(flat)} values, its shape needs {expected}")
    return flat


def to_array(values: Sequence[Any], spec: InputSpec, rows: int, where: str) -> np.ndarray:
    """`rows` inputs of `spec` from `rows * spec.size` JSON values, checked and converted."""
    wanted = kind(spec.dtype)
    for value in values:
        if wanted == "bool":
            if not isinstance(value, bool):
                raise EventError("schema", f"{where} holds a {type(value).__name__}, expected booleans")
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise EventError("schema", f"{where} holds a {type(value).__name__}, expected numbers")
    if wanted == "int":
        if any(isinstance(value, float) and not value.is_integer() for value in values):
            raise EventError("dtype", f"{where} holds fractions; the model's input {spec.name!r} takes integers")
        if values:  # before the array is made: a value beyond the dtype would not even convert
            _check_bounds(min(values), max(values), spec, where)
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow to inf is caught just below
        array = np.array(values, dtype=spec.dtype).reshape((rows, *spec.shape))
    if wanted == "float" and not np.isfinite(array).all():
        raise EventError("non_finite", f"{where} contains NaN or infinity (as {spec.dtype})")
    return array


def check_range(array: np.ndarray, spec: InputSpec, where: str) -> None:
    """Integer inputs decoded from bytes: inside the input's range, like JSON ones."""
    if spec.is_integer and array.size:
        _check_bounds(array.min(), array.max(), spec, where)


def _check_bounds(smallest: float, largest: float, spec: InputSpec, where: str) -> None:
    low, high = spec.value_range or (-math.inf, math.inf)
    if smallest < low or largest > high:
        raise EventError(
            "out_of_range", f"{where} holds values outside [{low:g}, {high:g}], what input {spec.name!r} accepts"
        )
