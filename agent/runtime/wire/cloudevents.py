"""CloudEvents in Kafka's binary content mode: the attributes are record headers named `ce_<attribute>`
(CloudEvents Kafka protocol binding), the data is the record value, `content-type` its media type.

This is how KServe's payload logger reaches Kafka through Knative Eventing (a KafkaSink): every
request and every response is one event, `ce_type` `org.kubeflow.serving.inference.request` or
`.response`, the two sharing `ce_id`. KServe adds its own extension attributes, read here and
kept with the event: `ce_inferenceservicename` (the model's name, matched like an event's model
name), `ce_namespace`, `ce_component` (predictor, transformer, ...), `ce_endpoint` (default or
canary), and `ce_metadata` / `ce_annotations` (JSON strings, kept as they are).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from agent.errors import EventError
from connectors.base import Headers

REQUEST_TYPE = "org.kubeflow.serving.inference.request"
RESPONSE_TYPE = "org.kubeflow.serving.inference.response"
KSERVE_EXTENSIONS = ("inferenceservicename", "namespace", "component", "endpoint", "metadata", "annotations")
MAX_ATTRIBUTE_BYTES = 4096


@dataclass(frozen=True)
class CloudEvent:
    """The context attributes of one binary-mode event."""

    id: str
    type: str
    source: str
    time_ms: int | None = None
    content_type: str | None = None
    extensions: dict[str, str] = field(default_factory=dict)

    @property
    def is_request(self) -> bool:
        return self.type == REQUEST_TYPE

    @property
    def is_response(self) -> bool:
        return self.type == RESPONSE_TYPE

    @property
    def model_name(self) -> str | None:
        return self.extensions.get("inferenceservicename") or None


def from_headers(headers: Headers) -> CloudEvent | None:
    """The event's attributes, or None when the record is not a binary-mode CloudEvent (no `ce_type`)."""
    attributes: dict[str, str] = {}
    content_type = None
    for name, value in headers:
        lowered = name.lower()
        if lowered == "content-type":
            content_type = _text(value, name)
        elif lowered.startswith(("ce_", "ce-")):
            attributes[lowered[3:]] = _text(value, name)
    if "type" not in attributes:
        return None
    missing = [name for name in ("specversion", "id", "source") if not attributes.get(name)]
    if missing:
        raise EventError("schema", f"a CloudEvent without {', '.join('ce_' + name for name in missing)}")
    if attributes["specversion"] != "1.0":
        raise EventError("schema", f"CloudEvents specversion {attributes['specversion'][:16]!r}; 1.0 is read")
    if content_type is not None and "json" not in content_type.lower():
        raise EventError("schema", f"CloudEvent data of type {content_type[:64]!r}; JSON is read")
    if len(attributes["id"]) > 128:
        raise EventError("schema", "ce_id is longer than 128 characters")
    extensions = {name: attributes[name] for name in KSERVE_EXTENSIONS if name in attributes}
    return CloudEvent(
        id=attributes["id"],
        type=attributes["type"],
        source=attributes["source"],
        time_ms=_time_ms(attributes.get("time")),
        content_type=content_type,
        extensions=extensions,
    )


def _text(value: bytes, name: str) -> str:
    if len(value) > MAX_ATTRIBUTE_BYTES:
        raise EventError("schema", f"header {name[:64]} is longer than {MAX_ATTRIBUTE_BYTES} bytes")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise EventError("schema", f"header {name[:64]} is not UTF-8") from None


def _time_ms(text: str | None) -> int | None:
    """RFC 3339 `ce_time` in milliseconds since the epoch; None where absent or unreadable (informational)."""
    if not text:
        return None
    try:
        return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        return None
