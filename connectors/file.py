"""JSONL source and sink: runs without a broker (replays, air-gapped checks) and the basis of a replay tool.

FileSource reads one event per line. The "offset" of a record is its 0-based line number, and a
commit writes the next line number to a sidecar file (`<file>.offset`), so a restarted agent
resumes exactly where the last commit left it: the same at-least-once contract as Kafka.

FileSink writes one file per topic, `<dir>/<topic>.jsonl`, one JSON object per message:

    {"topic": "inference-quarantine", "timestamp_ms": 1764000000000,
     "key": "abc" | "key_b64": "AAE=" | "key": null,
     "headers": [{"name": "dknn.source", "value": "events/0/17"}, {"name": "x", "value_b64": "/w=="}],
     "value": {...the message, parsed...}  |  "value_b64": "...raw bytes..."}

A value that is strict UTF-8 JSON (no NaN/Infinity) is stored parsed, so the file is readable and
`jq`-able; it round-trips to an equal JSON document, not necessarily to the same bytes. Anything
else (malformed input bound for the dead-letter topic, binary) is stored as `value_b64`, byte-exact.
Keys and header values follow the same rule with UTF-8 text instead of JSON. `read_sink_file`
decodes it back. `flush` fsyncs, which is the durability the pipeline waits for before committing.
"""

from __future__ import annotations

import base64
import json
import os
import re
import time
from pathlib import Path
from typing import IO, Any

from agent.errors import ConnectorError
from connectors.base import Headers, Offsets, Record, Sink, Source, TopicPartition

_TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")  # Kafka's rule; also keeps paths inside the dir


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _text_field(name: str, data: bytes) -> dict[str, str]:
    try:
        return {name: data.decode("utf-8")}
    except UnicodeDecodeError:
        return {f"{name}_b64": base64.b64encode(data).decode("ascii")}


def _field_bytes(obj: dict[str, Any], name: str) -> bytes | None:
    if f"{name}_b64" in obj:
        return base64.b64decode(obj[f"{name}_b64"])
    value = obj.get(name)
    return None if value is None else str(value).encode("utf-8")


class FileSource(Source):
    """Reads a JSONL file as partition 0 of one pseudo-topic; blank lines are skipped.

    With `follow=True` it behaves like `tail -f`: at the end of the file `poll` waits up to
    `timeout_s` for more, and a last line without its newline is held back until it is complete.
    Without it, the file is read once and `exhausted` turns true at the end.
    """

    def __init__(
        self, path: str | Path, *, topic: str = "file", offset_path: str | Path | None = None, follow: bool = False
    ) -> None:
        super().__init__()
        self.path = Path(path)
        self.offset_path = Path(offset_path) if offset_path else self.path.with_name(self.path.name + ".offset")
        self._topic = topic
        self._follow = follow
        self._fh: IO[bytes] | None = None
        self._line_no = 0  # number of the next line to read
        self._partial = b""
        self._at_eof = False

    @property
    def position(self) -> TopicPartition:
        return (self._topic, 0)

    @property
    def exhausted(self) -> bool:
        """True once a non-following source has handed out its last line."""
        return not self._follow and self._at_eof

    def committed(self) -> int:
        """Next line to read after a restart, from the sidecar (0 when there is none)."""
        try:
            return int(json.loads(self.offset_path.read_text())["offset"])
        except FileNotFoundError:
            return 0
        except (ValueError, KeyError, TypeError) as exc:
            raise ConnectorError(f"unreadable offset file {self.offset_path}: {exc}") from exc

    def _open(self) -> IO[bytes]:
        if self._fh is None:
            try:
                self._fh = self.path.open("rb")
            except OSError as exc:
                raise ConnectorError(f"cannot read {self.path}: {exc}", retriable=self._follow) from exc
            start = self.committed()
            while self._line_no < start and self._fh.readline():
                self._line_no += 1
            self._fire(self._assign_hooks, {self.position})
        return self._fh

    def _read_line(self, fh: IO[bytes]) -> bytes | None:
        """The next complete line without its newline, or None at (for now) the end."""
        chunk = fh.readline()
        if chunk.endswith(b"\n") or (chunk and not self._follow):
            line, self._partial = self._partial + chunk, b""
            return line.rstrip(b"\r\n")
        self._partial += chunk
        return None

    def poll(self, max_records: int = 500, timeout_s: float = 1.0) -> list[Record]:
        if self._fh is None and self._follow and not self.path.exists():
            time.sleep(timeout_s)
            return []
        fh = self._open()
        deadline = time.monotonic() + timeout_s
        out: list[Record] = []
        while len(out) < max_records:
            line = self._read_line(fh)
            if line is None:
                self._at_eof = True
                if out or not self._follow or time.monotonic() >= deadline:
                    break
                time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
                continue
            self._at_eof = False
            offset, self._line_no = self._line_no, self._line_no + 1
            if line.strip():
                now_ms = int(time.time() * 1000)
                out.append(Record(self._topic, 0, offset, None, line, [], now_ms))
        return out

    def commit(self, offsets: Offsets) -> None:
        if self.position not in offsets:
            return
        tmp = self.offset_path.with_name(self.offset_path.name + ".tmp")
        try:
            with tmp.open("w") as f:
                json.dump({"path": str(self.path), "offset": int(offsets[self.position])}, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.offset_path)  # atomic: a crash leaves the old or the new offset
        except OSError as exc:
            raise ConnectorError(f"cannot write offset file {self.offset_path}: {exc}") from exc

    def assignment(self) -> set[TopicPartition]:
        return {self.position} if self._fh is not None else set()

    def close(self) -> None:
        if self._fh is not None:
            self._fire(self._revoke_hooks, {self.position})
            self._fh.close()
            self._fh = None


class FileSink(Sink):
    """Appends each message to `<directory>/<topic>.jsonl` in the format described above."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._files: dict[str, IO[bytes]] = {}

    def path_for(self, topic: str) -> Path:
        if not _TOPIC_NAME.match(topic) or topic in (".", ".."):
            raise ConnectorError(f"invalid topic name for a file sink: {topic!r}")
        return self.directory / f"{topic}.jsonl"

    def send(self, topic: str, value: bytes, key: bytes | None = None, headers: Headers = ()) -> None:
        line: dict[str, Any] = {"topic": topic, "timestamp_ms": int(time.time() * 1000)}
        line.update({"key": None} if key is None else _text_field("key", key))
        line["headers"] = [{"name": name, **_text_field("value", data)} for name, data in headers]
        try:
            line["value"] = json.loads(value.decode("utf-8"), parse_constant=_reject_constant)
        except ValueError:  # UnicodeDecodeError and JSONDecodeError are both ValueErrors
            line["value_b64"] = base64.b64encode(value).decode("ascii")
        data = (json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
        try:
            fh = self._files.get(topic)
            if fh is None:
                fh = self._files[topic] = self.path_for(topic).open("ab")
            fh.write(data)
        except OSError as exc:
            raise ConnectorError(f"cannot write to {self.path_for(topic)}: {exc}") from exc

    def flush(self, timeout_s: float = 30.0) -> None:
        for topic, fh in self._files.items():
            try:
                fh.flush()
                os.fsync(fh.fileno())
            except OSError as exc:
                raise ConnectorError(f"cannot flush {self.path_for(topic)}: {exc}") from exc

    def close(self) -> None:
        for fh in self._files.values():
            fh.close()
        self._files.clear()


def read_sink_file(path: str | Path) -> list[dict[str, Any]]:
    """Decode a FileSink file: dicts with topic, timestamp_ms, key, value (bytes) and headers.

    A parsed-JSON value comes back as compact JSON bytes: equal as JSON, maybe not byte-equal.
    """
    out = []
    with Path(path).open("rb") as f:
        for raw in f:
            obj = json.loads(raw)
            if "value_b64" in obj:
                value = base64.b64decode(obj["value_b64"])
            else:
                value = json.dumps(obj["value"], ensure_ascii=False, separators=(",", ":")).encode("utf-8")
            out.append(
                {
                    "topic": obj["topic"],
                    "timestamp_ms": obj["timestamp_ms"],
                    "key": _field_bytes(obj, "key"),
                    "value": value,
                    "headers": [(h["name"], _field_bytes(h, "value") or b"") for h in obj["headers"]],
                }
            )
    return out
