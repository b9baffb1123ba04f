"""Publishing what dknn-agent reads, from a model server: standard library only.

dknn-agent scores a deployed classifier's inputs read from Kafka and recognises the form of each
record by itself (docs/schemas/ in its repository holds a JSON Schema of each). This package
writes those forms so that a model server can publish them without the agent's dependencies
(torch, pydantic, orjson) and without numpy: numpy arrays are taken when the caller has numpy
(and anything numpy reads, such as a CPU torch tensor), nested lists always.

Which function for which server:

- Your own server, or any Python code without a protocol of its own: `inference_event`, the
  agent's `dknn.inference.v1` event. One input as exact little-endian base64 (several by name
  with `inputs=`), and optionally the served label, so the agent compares its answer with yours.
- A server speaking the Open Inference Protocol v2 (KServe v2, Triton, MLServer, Seldon):
  publish the bodies it already handles, `oip_v2_request` (a batch is one scored input per row)
  and `oip_v2_response` (the served answers, paired with the request by `id`).
- A KServe v1 predictor: `kserve_v1_request` (`{"instances"}`) and `kserve_v1_response`
  (`{"predictions"}`).
- Publishing as KServe's payload logger does, a request and its response as CloudEvents in
  Kafka's binary mode sharing one id: wrap either body above in `cloudevent_record`, which returns
  `(value, headers)` for kafka-python's `producer.send(topic, value=value, headers=headers)`.

The body builders return the record value as UTF-8 JSON bytes. Every builder checks its arguments
against what the agent accepts and raises ValueError saying what is wrong, so a producer's mistake
fails in the producer instead of becoming a dead letter. What depends on the agent's model bundle
(the input shapes and dtypes, the model's name) is not known here: the agent checks it.
"""

from __future__ import annotations

from dknn_events._forms import (
    KSERVE_LOGGER_SOURCE,
    REQUEST_TYPE,
    RESPONSE_TYPE,
    SCHEMA,
    cloudevent_record,
    inference_event,
    kserve_v1_request,
    kserve_v1_response,
    oip_v2_request,
    oip_v2_response,
)

__version__ = "0.1.0"
__all__ = [
    "KSERVE_LOGGER_SOURCE",
    "REQUEST_TYPE",
    "RESPONSE_TYPE",
    "SCHEMA",
    "cloudevent_record",
    "inference_event",
    "kserve_v1_request",
    "kserve_v1_response",
    "oip_v2_request",
    "oip_v2_response",
]
