"""`produce-demo`'s traffic: phases in order, each drawn from its own mix, events that decode."""

from __future__ import annotations

import numpy as np
import pytest

from agent.engine.manifest import InputSpec
from agent.errors import ConfigError, EventError
from dknn_lab.commands.produce_demo import parse_phase
from dknn_lab.demo_traffic import KINDS, DemoData, Phase, demo_events
from tests.conftest import decode_one as decode_event

DATA = DemoData(
    clean=np.random.default_rng(0).uniform(0, 1, (20, 1, 28, 28)).astype(np.float32),
    labels=np.arange(20) % 10,
    fgsm=None,
    model_name="mnist-cnn",
    model_version="demo",
)


def test_parse_phase_reads_a_count_and_a_normalised_mix() -> None:
    count, mix = parse_phase("1500:clean=3,noise=1", KINDS)
    assert count == 1500 and mix == {"clean": 0.75, "noise": 0.25}


@pytest.mark.parametrize("text", ["clean=1", "x:clean=1", "-5:clean=1", "10:weird=1", "10:"])
def test_parse_phase_refuses_what_is_not_count_colon_mix(text: str) -> None:
    with pytest.raises(ConfigError, match="--phase|--mix"):
        parse_phase(text, KINDS)


def test_each_phase_draws_from_its_own_mix_and_names_itself() -> None:
    spec = InputSpec(shape=(1, 28, 28), dtype="float32")
    clean = list(demo_events(DATA, Phase(200, {"clean": 1.0}), number=1))
    shifted = list(demo_events(DATA, Phase(200, {"noise": 0.5, "rotated": 0.5}), number=2))
    assert {kind for kind, _ in clean} == {"clean"}
    assert {kind for kind, _ in shifted} == {"noise", "rotated"}
    for number, events in ((1, clean), (2, shifted)):
        for kind, value in events:
            event = decode_event(value, spec, "mnist-cnn")
            assert event.document["attributes"] == {"demo_kind": kind, "demo_phase": number}


def test_malformed_events_fail_decoding() -> None:
    spec = InputSpec(shape=(1, 28, 28), dtype="float32")
    events = list(demo_events(DATA, Phase(40, {"malformed": 1.0}), number=1))
    for _, value in events:
        with pytest.raises(EventError):
            decode_event(value, spec, "mnist-cnn")
