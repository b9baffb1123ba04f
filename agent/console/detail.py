"""An event page's content, read out of a stored quarantine record (docs/design.md §5.5).

The record came off a topic anyone with write access can fill, so nothing in it is assumed: every
field is checked for its type and bounded before it is shown, a field that is not what the agent
writes is shown as missing, and the input is decoded by the agent's own decoders against the
bundle's inputs (`agent.runtime.reviews.event_inputs`), so an input the agent would refuse is
not rendered either. Strings stay strings: the template escapes them.

Per layer the page shows how the k neighbours' labels split (`label_counts`) with the majority's
share, and the nearest training rows from the bundle's exemplars: the layer where the neighbours
stop agreeing with each other, or with the prediction, is what a reviewer looks for first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import orjson

from agent.console.render import Bar, Rendered, p_value_bars, render_array
from agent.console.store import QuarantinedEvent, StoredReview
from agent.console.untrusted import as_list, as_object, integer, number, text
from agent.engine.bundle import VerifiedBundle
from agent.errors import InputError, ReviewError
from agent.runtime.reviews import event_inputs

MAX_LAYERS: Final = 64
MAX_NEIGHBOURS: Final = 16
MAX_COUNTS: Final = 10
OMITTED: Final = "the quarantine record left the input out (it was too large); it stays on the input topic"


@dataclass(frozen=True)
class Shown:
    """One model input as rendered, under its name."""

    name: str
    rendered: Rendered


@dataclass(frozen=True)
class Neighbour:
    row: int
    label: int | None
    inputs: tuple[Shown, ...]  # empty without exemplars


@dataclass(frozen=True)
class LabelShare:
    label: str
    count: int
    percent: float
    majority: bool
    predicted: bool  # the DkNN prediction's label


@dataclass(frozen=True)
class Layer:
    name: str
    shares: tuple[LabelShare, ...]
    majority_percent: float
    agrees: bool  # the majority label is the DkNN prediction
    neighbours: tuple[Neighbour, ...]


@dataclass(frozen=True)
class EventView:
    event_id: str
    quarantined_ms: int
    model: str  # the model and version that quarantined it
    prediction: int | None
    model_prediction: int | None
    served_label: int | None
    credibility: float | None
    confidence: float | None
    reason: str
    source: str
    bars: list[Bar]
    inputs: tuple[Shown, ...]
    input_problem: str | None  # why the input is not shown
    layers: tuple[Layer, ...]
    exemplars: bool
    reviewable: str | None  # why a verdict cannot be given, None when it can
    attributes: tuple[tuple[str, str], ...]
    review: StoredReview | None
    labels: tuple[int, ...] = field(default=())  # the bundle's classes, for the verdict's label


def event_view(stored: QuarantinedEvent, review: StoredReview | None, bundle: VerifiedBundle) -> EventView:
    manifest = bundle.manifest
    document = as_object(orjson.loads(stored.record))
    event, block = as_object(document.get("event")), as_object(document.get("dknn"))
    num_classes = manifest.model.num_classes
    p_values = as_list(block.get("p_values"))
    numbers = [float(p) for p in p_values] if _numbers(p_values, num_classes) else []
    omitted = document.get("input_omitted") is True  # the agent's mark of a record over max_output_bytes
    inputs, problem = ((), OMITTED) if omitted else _inputs(event, bundle)
    mismatch = stored.model_name and stored.model_name != manifest.model.name
    reviewable = None
    if omitted:
        reviewable = "the quarantine record left the input out (it was too large): a review needs the input"
    elif mismatch:
        reviewable = f"quarantined by model {stored.model_name!r}; this console serves {manifest.model.name!r}"
    source = as_object(block.get("source"))
    return EventView(
        event_id=stored.event_id,
        quarantined_ms=stored.quarantined_ms,
        model=f"{stored.model_name or '?'} {stored.model_version or '?'}",
        prediction=stored.prediction,
        model_prediction=stored.model_prediction,
        served_label=integer(block.get("served_label")),
        credibility=stored.credibility,
        confidence=number(block.get("confidence")),
        reason=stored.reason,
        source=" ".join(f"{key} {text(source.get(key), 256)}" for key in ("topic", "partition", "offset")),
        bars=p_value_bars(numbers, stored.prediction, stored.model_prediction),
        inputs=inputs,
        input_problem=problem,
        layers=_layers(block.get("neighbors"), stored.prediction, bundle),
        exemplars=bundle.exemplars is not None,
        reviewable=reviewable,
        attributes=tuple(
            (text(key, 64), text(value, 256)) for key, value in list(as_object(event.get("attributes")).items())[:32]
        ),
        review=review,
        labels=tuple(range(num_classes)),
    )


def _inputs(event: dict[str, Any], bundle: VerifiedBundle) -> tuple[tuple[Shown, ...], str | None]:
    try:
        arrays = event_inputs(event, bundle.manifest)
    except ReviewError as exc:
        return (), str(exc)
    return _shown(arrays, bundle, thumbnails=False), None


def _shown(
    arrays: tuple[np.ndarray, ...] | list[np.ndarray], bundle: VerifiedBundle, *, thumbnails: bool
) -> tuple[Shown, ...]:
    vocabulary = bundle.vocabulary
    specs = bundle.manifest.inputs
    out = []
    for spec, array in zip(specs, arrays, strict=False):
        value_range = (0.0, 255.0) if thumbnails else spec.value_range
        out.append(
            Shown(
                spec.name,
                render_array(array, value_range=value_range, vocabulary=vocabulary, display=56 if thumbnails else 112),
            )
        )
    return tuple(out)


def _layers(neighbours: Any, prediction: int | None, bundle: VerifiedBundle) -> tuple[Layer, ...]:
    if not isinstance(neighbours, dict):
        return ()
    out = []
    for name, layer in list(neighbours.items())[:MAX_LAYERS]:
        layer = as_object(layer)
        counts = [
            (text(label, 32), count)
            for label, count in list(as_object(layer.get("label_counts")).items())[:MAX_COUNTS]
            if isinstance(count, int) and not isinstance(count, bool) and count >= 0
        ]
        total = sum(count for _, count in counts) or 1
        top = max(counts, key=lambda item: item[1]) if counts else None
        shares = tuple(
            LabelShare(label, count, round(100 * count / total, 1), (label, count) == top, label == str(prediction))
            for label, count in counts
        )
        ids = [integer(v) for v in as_list(layer.get("ids"))[:MAX_NEIGHBOURS]]
        labels = [integer(v) for v in as_list(layer.get("labels"))[:MAX_NEIGHBOURS]]
        out.append(
            Layer(
                name=text(name, 128),
                shares=shares,
                majority_percent=round(100 * top[1] / total, 1) if top else 0.0,
                agrees=top is not None and top[0] == str(prediction),
                neighbours=_neighbours(ids, labels, bundle),
            )
        )
    return tuple(out)


def _neighbours(ids: list[int | None], labels: list[int | None], bundle: VerifiedBundle) -> tuple[Neighbour, ...]:
    out = []
    for i, row in enumerate(ids):
        if row is None or row < 0:
            continue
        label = labels[i] if i < len(labels) else None
        shown: tuple[Shown, ...] = ()
        if bundle.exemplars is not None:
            try:
                rows = bundle.exemplars.rows([row])
            except InputError:
                rows = {}
            if rows:
                arrays = [rows[spec.name][0] for spec in bundle.manifest.inputs if spec.name in rows]
                shown = _shown(arrays, bundle, thumbnails=bundle.exemplars.kind == "thumbnails")
        out.append(Neighbour(row, label, shown))
    return tuple(out)


def _numbers(values: Any, limit: int) -> bool:
    return isinstance(values, list) and 0 < len(values) <= limit and all(number(v) is not None for v in values)
