"""The stream benchmark's load generator: freshly stamped events at a steady rate.

It runs in a process of its own, as a model server would, and nothing it imports loads torch
(a unit test checks): in the agent's process every event it encoded and sent would take the
interpreter lock from the agent, and with torch imported its own full garbage collections would
pause its producer for about 100 ms at a time. Either way the latency would measure the load
generator. It encodes with `dknn_events`, as a model server would, without the agent's check of
each event against its pydantic model (agent.runtime.events.encode_event), which would be the
load generator's own cost.
"""

from __future__ import annotations

import time

import numpy as np

from connectors.kafka import KafkaSink
from dknn_events import inference_event
from dknn_lab.demo_traffic import paced

WARM_UP_PREFIX = "warm-"


def publish_paced(
    inputs: np.ndarray,
    model_name: str,
    model_version: str,
    count: int,
    rate: float,
    bootstrap: str,
    topic: str,
    prefix: str,
    warm_up: int,
) -> None:
    """Publishes `warm_up` events (ids `warm-…`: the connections and the agent's fetch settle,
    and no one measures them), then `count` events with ids `<prefix><i>`, all at `rate` per
    second; each is stamped just before it is encoded and sent."""
    ids = [f"{WARM_UP_PREFIX}{i}" for i in range(warm_up)] + [f"{prefix}{i}" for i in range(count)]
    with KafkaSink(bootstrap) as sink:
        for i, event_id in paced(enumerate(ids), rate):
            stamp = int(time.time() * 1000)
            event = inference_event(
                event_id,
                inputs[i % len(inputs)],
                model_name=model_name,
                model_version=model_version,
                timestamp_ms=stamp,
            )
            sink.send(topic, event)
        sink.flush(120)
