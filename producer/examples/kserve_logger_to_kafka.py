"""Publish one inference request and its response to Kafka as KServe's payload logger would.

    pip install ./producer kafka-python
    python producer/examples/kserve_logger_to_kafka.py --bootstrap-servers HOST:PORT --topic T
    python producer/examples/kserve_logger_to_kafka.py --topic T --dry-run   # print, send nothing

Two records, each a CloudEvent in Kafka's binary mode (the attributes as `ce_*` headers, the body
as the value): an Open Inference Protocol v2 request of a batch of two inputs, then the response
with the served labels, sharing one `ce_id` so that dknn-agent pairs them and compares the served
answers with the ones it recomputes. `--model-name` becomes `ce_inferenceservicename`, which the
agent matches against its model's names. The defaults (mnist-cnn, inputs of shape 1,28,28) are what
`make demo`'s agent serves. Replace the made-up inputs and labels with your server's.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import uuid
from typing import Any

from dknn_events import cloudevent_record, oip_v2_request, oip_v2_response


def records(
    model_name: str, shape: list[int], rows: int, classes: int, seed: int
) -> list[tuple[bytes, list[tuple[str, bytes]]]]:
    """A request of `rows` random inputs of `shape` and its response, as (value, headers) pairs."""
    rng = random.Random(seed)

    def values(dimensions: list[int]) -> Any:
        if not dimensions:
            return rng.random()
        return [values(dimensions[1:]) for _ in range(dimensions[0])]

    batch = values([rows, *shape])  # nested lists: numpy arrays work the same
    labels = [rng.randrange(classes) for _ in range(rows)]
    event_id = str(uuid.uuid4())
    request = oip_v2_request({"input-0": batch}, id=event_id)
    response = oip_v2_response({"label": labels}, model_name=model_name, id=event_id)
    extensions: dict[str, Any] = {"inference_service": model_name, "namespace": "default", "component": "predictor"}
    return [
        cloudevent_record(request, "request", event_id=event_id, **extensions),
        cloudevent_record(response, "response", event_id=event_id, **extensions),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--bootstrap-servers", default="localhost:9092", help="HOST:PORT[,HOST:PORT...]")
    parser.add_argument("--topic", required=True, help="the agent's input topic")
    parser.add_argument(
        "--model-name", default="mnist-cnn", help="the InferenceService's name (ce_inferenceservicename)"
    )
    parser.add_argument("--shape", default="1,28,28", help="one input's shape, without the batch dimension")
    parser.add_argument("--rows", type=int, default=2, help="inputs in the request's batch")
    parser.add_argument("--classes", type=int, default=10, help="the served labels are drawn from 0..classes-1")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dry-run", action="store_true", help="print the records as JSON lines instead of sending")
    args = parser.parse_args(argv)
    shape = [int(size) for size in args.shape.split(",") if size.strip()]
    pairs = records(args.model_name, shape, args.rows, args.classes, args.seed)
    if args.dry_run:
        for value, headers in pairs:
            shown = {
                "topic": args.topic,
                "headers": [[name, raw.decode()] for name, raw in headers],
                "value": value.decode(),
            }
            print(json.dumps(shown))
        return 0
    from kafka import KafkaProducer  # only when sending: dknn_events itself needs no client

    producer = KafkaProducer(bootstrap_servers=args.bootstrap_servers.split(","))
    try:
        for value, headers in pairs:
            metadata = producer.send(args.topic, value=value, headers=headers).get(timeout=30)
            print(
                f"sent {dict(headers)['ce_type'].decode()} to {metadata.topic}[{metadata.partition}]@{metadata.offset}"
            )
    finally:
        producer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
