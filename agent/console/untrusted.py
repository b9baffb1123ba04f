"""Values read out of a record anyone with write access to a topic could have filled.

Each reader takes any parsed JSON value and returns it only when it has the type the console
expects (a bool is not a number, however Python sees it), finite and within the bounds named,
else None or an empty container: a field that is not what the agent writes is shown as missing,
never trusted and never a crash. `detail` reads an event page with these, `ingest` a list row.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

JSON_SAFE_INTEGER = 2**53  # beyond it a JSON number is not an exact integer in every reader


def as_object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def integer(value: Any, low: int = -JSON_SAFE_INTEGER + 1, high: int = JSON_SAFE_INTEGER) -> int | None:
    """An int in [low, high), not a bool."""
    return value if isinstance(value, int) and not isinstance(value, bool) and low <= value < high else None


def number(value: Any, low: float = -math.inf, high: float = math.inf) -> float | None:
    """A finite int or float in [low, high] as a float, not a bool."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    found = float(value)
    return found if math.isfinite(found) and low <= found <= high else None


def text(value: Any, limit: int) -> str:
    """Any JSON value as at most `limit` characters of text (data: the template escapes it)."""
    if isinstance(value, str):
        return value[:limit]
    return orjson.dumps(value).decode()[:limit] if value is not None else ""
