"""The review console's readers of untrusted record fields: the type, finite, in bounds, or nothing."""

from __future__ import annotations

import math

import pytest

from agent.console.untrusted import JSON_SAFE_INTEGER, as_list, as_object, integer, number, text


@pytest.mark.parametrize("value", [True, False, 1.0, "1", None, [1], {"a": 1}])
def test_only_an_int_is_an_integer(value: object) -> None:
    assert integer(value) is None


def test_an_integer_is_kept_within_its_bounds_only() -> None:
    assert integer(3) == 3 and integer(-3) == -3
    assert integer(JSON_SAFE_INTEGER) is None and integer(JSON_SAFE_INTEGER - 1) == JSON_SAFE_INTEGER - 1
    assert integer(-JSON_SAFE_INTEGER) is None
    assert integer(-1, 0, 10) is None and integer(0, 0, 10) == 0 and integer(10, 0, 10) is None


@pytest.mark.parametrize("value", [True, math.nan, math.inf, -math.inf, "0.5", None])
def test_a_number_is_finite_and_not_a_bool(value: object) -> None:
    assert number(value) is None


def test_a_number_is_a_float_within_closed_bounds() -> None:
    assert number(1) == 1.0 and isinstance(number(1), float)
    assert number(0.0, 0.0, 1.0) == 0.0 and number(1.0, 0.0, 1.0) == 1.0 and number(1.5, 0.0, 1.0) is None


def test_containers_and_text() -> None:
    assert as_object([1]) == {} and as_object({"a": 1}) == {"a": 1}
    assert as_list({"a": 1}) == [] and as_list([1]) == [1]
    assert text("abcdef", 3) == "abc" and text(None, 3) == "" and text({"a": 1}, 100) == '{"a":1}'
    assert text("<script>", 100) == "<script>"  # data, unchanged: the template escapes it
