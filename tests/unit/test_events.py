"""Event decoding: round trips, one test per failure reason, and hostile input never escapes."""

from __future__ import annotations

import base64
import json
import pickle

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.engine.manifest import InputSpec
from agent.errors import EVENT_ERROR_REASONS, DknnError, EventError, InputError
from agent.runtime import events
from agent.runtime.events import DecodedEvent, encode_event
from tests.conftest import decode_one

SPEC = InputSpec(shape=(1, 3, 4), dtype="float32", value_range=(0.0, 1.0))
MODEL = "mnist-cnn"
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def sample(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(SPEC.shape, dtype=np.float32)


def valid_doc(**changes: object) -> dict:
    doc = json.loads(encode_event("e-1", sample(), MODEL, "3", timestamp_ms=1_764_000_000_000, served_label=7))
    doc.update(changes)
    return doc


def raw(doc: dict) -> bytes:
    return json.dumps(doc).encode()


def decode_event(
    payload: bytes, spec: InputSpec = SPEC, model: str = MODEL, max_bytes: int = 1_048_576
) -> DecodedEvent:
    return decode_one(payload, spec, model, max_bytes)


def reason_of(payload: bytes, max_bytes: int = 1_048_576) -> str:
    with pytest.raises(EventError) as info:
        decode_event(payload, SPEC, MODEL, max_bytes)
    assert "\n" not in str(info.value) and str(info.value)
    return info.value.reason


def test_round_trip_b64() -> None:
    x = sample(1)
    payload = encode_event(
        "abc",
        x,
        MODEL,
        "3",
        timestamp_ms=12,
        served_label=4,
        scores=[0.1, 0.9],
        attributes={"tenant": "a", "shard": 2, "canary": True, "w": 0.5},
    )
    event = decode_event(payload, SPEC, MODEL)
    assert isinstance(event, DecodedEvent)
    assert (event.event_id, event.model_name, event.model_version) == ("abc", MODEL, "3")
    assert (event.timestamp_ms, event.served_label) == (12, 4)
    assert event.x.dtype == np.float32 and event.x.shape == SPEC.shape
    assert event.x.flags.c_contiguous and event.x.flags.writeable
    np.testing.assert_array_equal(event.x, x)
    assert event.document["attributes"]["tenant"] == "a"
    assert event.document["prediction"]["scores"] == [0.1, 0.9]


def test_round_trip_values_and_optional_fields() -> None:
    x = sample(2)
    doc = valid_doc()
    del doc["schema"], doc["timestamp_ms"], doc["prediction"]  # all optional
    doc["input"] = {"dtype": "<f4", "shape": list(SPEC.shape), "values": x.tolist()}
    event = decode_event(raw(doc), SPEC, MODEL)
    np.testing.assert_array_equal(event.x, x)
    assert event.timestamp_ms is None and event.served_label is None
    ints = np.arange(12).reshape(SPEC.shape)
    doc["input"]["values"] = ints.tolist()  # integers are numbers too
    np.testing.assert_array_equal(decode_event(raw(doc), SPEC, MODEL).x, ints.astype(np.float32))


def test_out_of_range_values_are_scored_not_rejected() -> None:
    x = sample() * 50 - 20
    assert (x < 0).any() and (x > 1).any()
    np.testing.assert_array_equal(decode_event(encode_event("e", x, MODEL, "1"), SPEC, MODEL).x, x)


def test_decoded_array_is_a_private_copy() -> None:
    payload = encode_event("e", sample(), MODEL, "1")
    first, second = decode_event(payload, SPEC, MODEL), decode_event(payload, SPEC, MODEL)
    first.x[...] = 0
    assert second.x.any()


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "bad_json"),
        (b'{"event_id": NaN}', "bad_json"),
        (b'{"event_id": -Infinity}', "bad_json"),
        (b"\xff\xfe\x00", "bad_json"),
        (b"[" * 200_000, "bad_json"),
        (b"[1, 2]", "schema"),
        (raw(valid_doc(schema="dknn.inference.v2")), "schema"),
        (raw(valid_doc(event_id="")), "schema"),
        (raw(valid_doc(event_id="x" * 129)), "schema"),
        (raw(valid_doc(event_id=17)), "schema"),
        (raw(valid_doc(extra_field=1)), "schema"),
        (raw(valid_doc(prediction={"label": "7"})), "schema"),
        (raw(valid_doc(attributes={f"k{i}": i for i in range(33)})), "schema"),
        (raw(valid_doc(attributes={"k" * 65: 1})), "schema"),
        (raw(valid_doc(attributes={"k": "v" * 257})), "schema"),
        (raw(valid_doc(attributes={"k": [1]})), "schema"),
        (raw(valid_doc(attributes={"k": 0})).replace(b'"k": 0', b'"k": 1e999'), "bad_json"),  # beyond a double
        (raw(valid_doc(model={"name": "other", "version": "1"})), "unknown_model"),
    ],
)
def test_each_reason(payload: bytes, reason: str) -> None:
    assert reason_of(payload) == reason


def test_input_level_reasons() -> None:
    def with_input(**fields: object) -> bytes:
        doc = valid_doc()
        doc["input"] = {"dtype": "float32", "shape": list(SPEC.shape), **fields}
        return raw(doc)

    good_b64 = valid_doc()["input"]["b64"]
    nested = sample().tolist()
    assert reason_of(with_input(b64=good_b64, dtype="float64")) == "dtype"
    assert reason_of(with_input(b64=good_b64, dtype=">f4")) == "dtype"
    assert reason_of(with_input(b64=good_b64, shape=[3, 4])) == "shape"
    assert reason_of(with_input(b64=good_b64[:-4])) == "shape"
    assert reason_of(with_input(b64="!" * len(good_b64))) == "schema"
    assert reason_of(with_input(b64=good_b64, values=nested)) == "schema"
    assert reason_of(with_input()) == "schema"
    assert reason_of(with_input(values=[nested[0][:2]])) == "shape"
    assert reason_of(with_input(values=[[row + [0.0] for row in nested[0]]])) == "shape"
    assert reason_of(with_input(values=nested[0])) == "shape"
    assert reason_of(with_input(values=[[[True] * 4] * 3])) == "schema"
    assert reason_of(with_input(values=[[["1.0"] * 4] * 3])) == "schema"
    assert reason_of(with_input(values=[[[1e39] * 4] * 3])) == "non_finite"  # finite JSON, inf as float32
    assert reason_of(with_input(values=[[[10**400] * 4] * 3])) == "bad_json"  # beyond a double: refused at parse
    bad = sample()
    bad[0, 1, 2] = np.nan
    nan_b64 = base64.b64encode(bad.astype("<f4").tobytes()).decode()
    assert reason_of(with_input(b64=nan_b64)) == "non_finite"


def test_oversize_is_rejected_before_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_parsing(_: bytes) -> None:
        raise AssertionError("parsed an oversize payload")

    monkeypatch.setattr(events, "_parse_json", no_parsing)
    huge = b'{"event_id": "' + b"x" * 10_000_000 + b'"}'
    assert reason_of(huge) == "too_large"  # `no_parsing` proves the JSON parser never saw it
    assert reason_of(b"{}" + b" " * 100, max_bytes=64) == "too_large"


def test_event_error_is_an_input_error_and_pickles() -> None:
    err = EventError("shape", "bad\nshape")
    assert isinstance(err, InputError) and isinstance(err, DknnError) and not err.retriable
    assert str(err) == "bad shape"
    again = pickle.loads(pickle.dumps(err))
    assert (again.reason, str(again)) == ("shape", "bad shape")
    with pytest.raises(ValueError):
        EventError("whatever", "unbounded reasons would explode the metric")


def test_encode_refuses_scores_without_label() -> None:
    with pytest.raises(ValueError):
        encode_event("e", sample(), MODEL, "1", scores=[0.5])


def assert_only_event_errors(payload: bytes) -> None:
    try:
        decode_event(payload, SPEC, MODEL)
    except EventError as exc:
        assert exc.reason in EVENT_ERROR_REASONS


@FAST
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_only_raise_event_error(payload: bytes) -> None:
    assert_only_event_errors(payload)


@FAST
@given(st.integers(min_value=0, max_value=10_000), st.integers(min_value=0, max_value=2**32 - 1))
def test_truncated_events_only_raise_event_error(cut: int, seed: int) -> None:
    payload = encode_event(f"e{seed}", sample(seed), MODEL, "1", served_label=seed % 10)
    cut %= len(payload)
    with pytest.raises(EventError):
        decode_event(payload[:cut], SPEC, MODEL)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30,
)


@FAST
@given(json_values)
def test_random_json_only_raises_event_error(value: object) -> None:
    assert_only_event_errors(json.dumps(value).encode())


@FAST
@given(
    st.sampled_from(["schema", "event_id", "model", "timestamp_ms", "input", "prediction", "attributes"]),
    st.sampled_from([None, "input.shape", "input.values", "input.b64", "input.dtype", "model.name"]),
    json_values,
)
def test_mutated_valid_events_only_raise_event_error(field: str, nested: str | None, value: object) -> None:
    doc = valid_doc()
    if nested is None:
        doc[field] = value
    else:
        outer, inner = nested.split(".")
        doc[outer][inner] = value
    assert_only_event_errors(json.dumps(doc).encode())
