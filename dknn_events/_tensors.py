"""Arrays and nested lists as what the wire forms need: a shape, flat values, an element kind.

numpy is never imported here. An array a caller passes means numpy is already loaded, so it is
looked up in `sys.modules`: a model server without numpy pays nothing for it, and one with numpy
gets its arrays (and anything with `__array__`, such as a CPU torch tensor) read without copies
through lists where the form allows. Both paths give the same values, element kinds and bytes.
"""

from __future__ import annotations

import math
import struct
import sys
from collections.abc import Sequence
from functools import cached_property
from typing import Any

# The element types a bundle input may have (the agent's InputDtype), with their struct codes.
STRUCT_CODES = {
    "float16": "e",
    "float32": "f",
    "float64": "d",
    "int8": "b",
    "int16": "h",
    "int32": "i",
    "int64": "q",
    "uint8": "B",
    "bool": "?",
}
# Open Inference Protocol v2 datatypes by numpy dtype name (the ones the agent reads).
V2_DATATYPES = {
    "bool": "BOOL",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "float16": "FP16",
    "float32": "FP32",
    "float64": "FP64",
}
# What a plain list declares: JSON numbers have no width, so the common model types.
LIST_DATATYPES = {"bool": "BOOL", "int": "INT64", "float": "FP32"}
MAX_DEPTH = 32


class Tensor:
    """A caller's array or nested list, read once: its shape, element kind ("bool", "int" or
    "float"), numpy dtype name (None for a list) and flat row-major values as Python numbers
    (made from an array only when a form needs them: base64 takes the array's bytes)."""

    def __init__(
        self, shape: tuple[int, ...], kind: str, dtype: str | None, values: list[Any] | None, array: Any = None
    ):
        self.shape, self.kind, self.dtype, self.array = shape, kind, dtype, array
        if values is not None:
            self.__dict__["values"] = values

    @cached_property
    def values(self) -> list[Any]:
        return list(self.array.ravel().tolist())


def _numpy() -> Any:
    return sys.modules.get("numpy")


def is_array(value: Any) -> bool:
    """A numpy array, or anything numpy turns into one without guessing (not a list or tuple)."""
    np = _numpy()
    if np is None or isinstance(value, (list, tuple, str, bytes, dict)):
        return False
    return isinstance(value, (np.ndarray, np.generic)) or hasattr(value, "__array__")


def read(value: Any, where: str) -> Tensor:
    """Shape, flat values and kind of an array or a nested list; ValueError for anything else."""
    if is_array(value):
        return _read_array(value, where)
    if isinstance(value, (list, tuple)) or _is_number(value):
        shape, values = _walk(value, where)
        kind = _kind_of(values, where)
        if kind == "float":  # [1, 2.5] is sent as [1.0, 2.5], as an array's values are
            values = [float(number) for number in values]
        return Tensor(shape, kind, None, values)
    raise ValueError(f"{where} must be a numpy array or nested lists of numbers, got {type(value).__name__}")


def _read_array(value: Any, where: str) -> Tensor:
    np = _numpy()
    array = np.asarray(value)
    kinds = {"b": "bool", "i": "int", "u": "int", "f": "float"}
    if array.dtype.kind not in kinds:
        raise ValueError(f"{where} is an array of {array.dtype}; numbers or booleans are sent")
    return Tensor(tuple(int(n) for n in array.shape), kinds[array.dtype.kind], array.dtype.name, None, array)


def _is_number(value: Any) -> bool:
    return isinstance(value, (bool, int, float))


def _walk(value: Any, where: str) -> tuple[tuple[int, ...], list[Any]]:
    """Nested lists level by level: each level must be all lists of one length, or all numbers."""
    shape: list[int] = []
    level: list[Any] = [value]
    for _ in range(MAX_DEPTH):
        nested = [isinstance(item, (list, tuple)) for item in level]
        if not any(nested):
            break
        if not all(nested):
            raise ValueError(f"{where} is ragged: lists and numbers at depth {len(shape)}")
        lengths = {len(item) for item in level}
        if len(lengths) > 1:
            raise ValueError(f"{where} is ragged: lists of lengths {sorted(lengths)[:4]} at depth {len(shape)}")
        shape.append(lengths.pop() if lengths else 0)
        level = [element for item in level for element in item]
    else:
        raise ValueError(f"{where} is nested deeper than {MAX_DEPTH}")
    values = [_scalar(item, where) for item in level]
    return tuple(shape), values


def _scalar(item: Any, where: str) -> Any:
    if _is_number(item):
        return item
    np = _numpy()
    if np is not None and isinstance(item, np.generic) and item.dtype.kind in "biuf":
        return item.item()  # a numpy scalar inside a list
    raise ValueError(f"{where} holds a {type(item).__name__}; numbers or booleans are sent")


def _kind_of(values: Sequence[Any], where: str) -> str:
    bools = sum(isinstance(value, bool) for value in values)
    if bools and bools != len(values):
        raise ValueError(f"{where} mixes booleans and numbers")
    if bools:
        return "bool"
    return "float" if any(isinstance(value, float) for value in values) else "int"


def datatype(tensor: Tensor, where: str) -> str:
    """The Open Inference Protocol v2 datatype of an array (its own) or a list (BOOL, INT64, FP32)."""
    if tensor.dtype is None:
        return LIST_DATATYPES[tensor.kind]
    if tensor.dtype not in V2_DATATYPES:
        raise ValueError(f"{where} is {tensor.dtype}; the agent reads {', '.join(V2_DATATYPES)}")
    return V2_DATATYPES[tensor.dtype]


def check_finite(tensor: Tensor, where: str) -> None:
    """JSON has no NaN or infinity: refused here with a reason rather than by the JSON writer."""
    if tensor.kind == "float" and not all(math.isfinite(value) for value in tensor.values):
        raise ValueError(
            f"{where} holds NaN or infinity, which JSON cannot carry (inference_event's base64 can: the agent "
            "dead-letters them as non_finite)"
        )


def little_endian_bytes(tensor: Tensor, dtype: str, where: str) -> bytes:
    """The C-order little-endian bytes of `tensor` as `dtype`, refusing what the cast would change:
    booleans as numbers (or numbers as booleans), fractions or out-of-range values as integers.
    Floats may overflow to infinity and NaN stays NaN: the agent dead-letters them (non_finite)."""
    if dtype not in STRUCT_CODES:
        raise ValueError(f"{where}: dtype {dtype!r} is not one the agent reads ({', '.join(STRUCT_CODES)})")
    if (tensor.kind == "bool") != (dtype == "bool"):
        raise ValueError(
            f"{where} holds {tensor.kind}s; dtype {dtype} takes {'booleans' if dtype == 'bool' else 'numbers'}"
        )
    integer = dtype not in ("float16", "float32", "float64", "bool")
    if integer:
        _check_integers(tensor, dtype, where)
    np = _numpy()
    if tensor.array is not None and np is not None:
        with np.errstate(over="ignore", invalid="ignore"):
            little = np.dtype(dtype).newbyteorder("<")
            return bytes(np.ascontiguousarray(tensor.array, dtype=little).tobytes())
    code = STRUCT_CODES[dtype]
    values = [int(value) for value in tensor.values] if integer else tensor.values
    try:
        return struct.pack(f"<{len(values)}{code}", *values)
    except OverflowError:  # a double beyond the float type: infinity, as numpy's cast gives
        return b"".join(_pack_float(code, value) for value in values)


def _check_integers(tensor: Tensor, dtype: str, where: str) -> None:
    if tensor.kind == "float" and not all(
        math.isfinite(value) and float(value).is_integer() for value in tensor.values
    ):
        raise ValueError(f"{where} holds fractions or non-finite values; dtype {dtype} takes integers")
    bits = int(dtype.removeprefix("u").removeprefix("int"))
    low, high = (0, 2**bits - 1) if dtype.startswith("u") else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    if tensor.values and (min(tensor.values) < low or max(tensor.values) > high):
        raise ValueError(f"{where} holds values outside [{low}, {high}], the range of {dtype}")


def _pack_float(code: str, value: float) -> bytes:
    try:
        return struct.pack(f"<{code}", value)
    except OverflowError:
        return struct.pack(f"<{code}", math.copysign(math.inf, value))
