"""`dknn-agent produce-demo`: publish v1 inference events built from the MNIST test set.

A mix of clean digits, uniform noise, rotated digits, FGSM examples (against the bundle's model)
and malformed events, so a running agent has something to accept, quarantine and dead-letter.
Events come from the evaluation split when a bundle is given, so none is a calibration point.

A stream is a sequence of phases, each a count and a mix: `make demo` publishes clean, then
shifted, then clean traffic again, so the drift signals have a change to fire on and a return to
normal to clear on (docs/design.md §5).
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from agent.errors import ConfigError
from agent.runtime.events import encode_event
from connectors.base import Sink

T = TypeVar("T")

KINDS = ("clean", "noise", "rotated", "fgsm", "malformed")


@dataclass(frozen=True)
class Phase:
    """`count` events drawn from `mix` (kind -> weight, summing to 1)."""

    count: int
    mix: dict[str, float]


@dataclass(frozen=True)
class DemoData:
    clean: np.ndarray  # (n, 1, 28, 28)
    labels: np.ndarray
    fgsm: np.ndarray | None
    model_name: str
    model_version: str


def load_demo_data(artifacts: Path | None, data_dir: Path | None, need_fgsm: bool, pool: int = 2000) -> DemoData:
    from dknn_lab.datasets import load_mnist

    mnist = load_mnist(data_dir)
    rows = np.arange(len(mnist.x_test))
    name, version, fgsm = "mnist-cnn", "demo", None
    if artifacts is not None:
        from agent.engine.bundle import verify_bundle
        from dknn_lab.reference import calibration_split

        bundle = verify_bundle(artifacts)
        model = bundle.build_classifier()
        bundle.close()
        rows = calibration_split(bundle.manifest, len(mnist.x_test)).evaluation
        name, version = bundle.manifest.model.name, bundle.manifest.model.version
    rows = np.random.default_rng(0).choice(rows, size=min(pool, len(rows)), replace=False)
    clean, labels = mnist.x_test[rows], mnist.y_test[rows]
    if need_fgsm:
        if artifacts is None:
            raise ConfigError("--mix with fgsm needs --artifacts (the attack targets the bundle's model)")
        from dknn_lab.attacks import fgsm as attack

        fgsm = attack(model, clean, labels, epsilon=0.25)
    return DemoData(clean, labels, fgsm, name, version)


def demo_events(data: DemoData, phase: Phase, number: int = 1, seed: int = 0) -> Iterator[tuple[str, bytes]]:
    """`phase.count` (kind, event bytes) pairs drawn from its mix; timestamps are set at creation, and
    each event's attributes name its kind and phase number (`demo_kind`, `demo_phase`)."""
    rng = np.random.default_rng([seed, number])
    for n, kind in enumerate(rng.choice(list(phase.mix), size=phase.count, p=list(phase.mix.values()))):
        yield _demo_event(data, str(kind), number, n, rng)


def _demo_event(data: DemoData, kind: str, phase: int, n: int, rng: np.random.Generator) -> tuple[str, bytes]:
    i = int(rng.integers(len(data.clean)))
    event_id = f"demo-{uuid.uuid4().hex[:12]}-{phase}-{n}"
    if kind == "malformed":
        return kind, _malformed(rng, event_id, data)
    x = _input_of_kind(kind, data, i, rng)
    return (
        kind,
        encode_event(
            event_id,
            x,
            data.model_name,
            data.model_version,
            timestamp_ms=int(time.time() * 1000),
            attributes={"demo_kind": kind, "demo_phase": phase},
        ),
    )


def _input_of_kind(kind: str, data: DemoData, i: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "clean":
        return data.clean[i]
    if kind == "noise":
        return rng.uniform(0, 1, size=data.clean.shape[1:]).astype(np.float32)
    if kind == "rotated":
        return np.ascontiguousarray(np.rot90(data.clean[i], k=1, axes=(-2, -1)))
    if kind == "fgsm" and data.fgsm is not None:
        return data.fgsm[i]
    raise ConfigError(f"no demo inputs of kind {kind!r}")


def _malformed(rng: np.random.Generator, event_id: str, data: DemoData) -> bytes:
    choice = int(rng.integers(4))
    if choice == 0:
        return b'{"event_id": "' + event_id.encode() + b'", "input": '  # truncated JSON
    if choice == 1:
        return encode_event(event_id, np.zeros((1, 27, 27), np.float32), data.model_name, data.model_version)
    if choice == 2:
        bad = data.clean[0].copy()
        bad[0, 0, 0] = np.nan
        return encode_event(event_id, bad, data.model_name, data.model_version)
    return bytes(rng.integers(0, 256, size=64, dtype=np.uint8))


def paced(items: Iterable[T], rate: float | None) -> Iterator[T]:
    """Yields `items` at `rate` per second (as fast as they come when None); each item is taken from
    the iterator only when its slot arrives, so timestamps made while producing it are fresh."""
    iterator = iter(items)
    started = time.monotonic()
    for n in itertools.count():
        if rate:
            delay = started + n / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        try:
            yield next(iterator)
        except StopIteration:
            return


def produce(sink: Sink, topic: str, events: Iterator[tuple[str, bytes]], rate: float | None) -> dict[str, int]:
    """Sends every event, paced at `rate` per second when given; flushes (confirms) at the end."""
    counts: dict[str, int] = {}
    for n, (kind, value) in enumerate(paced(events, rate)):
        sink.send(topic, value)
        counts[kind] = counts.get(kind, 0) + 1
        if n % 1000 == 999:
            sink.flush()
    sink.flush()
    return counts
