"""JSONL source and sink: runs without a broker (replays, air-gapped checks) and the basis of a replay tool.

FileSource reads one event per line. The "offset" of a record is its 0-based line number, and a
commit writes the next line number (and its byte position) to a sidecar file (`<file>.offset`), so
a restarted agent resumes exactly where the last commit left it: the same at-least-once contract as
Kafka. The sidecar also remembers which file it belongs to (device, inode and a fingerprint of the
first bytes): a file replaced since the last commit is refused with a clear error rather than read
from an offset that means nothing in it. A line longer than `max_line_bytes` is handed out cut to
`max_line_bytes + 1` bytes (so the pipeline dead-letters it as too large) and the rest of it is
skipped without being held in memory.

FileSink writes one file per topic, `<dir>/<topic>.jsonl`, one JSON object per message:

    {"topic": "inference-quarantine", "timestamp_ms": 1764000000000,
     "key": "abc" | "key_b64": "AAE=" | "key": null,
     "headers": [{"name": "dknn.source", "value": "events/0/17"}, {"name": "x", "value_b64": "/w=="}],
     "value": {...the message, parsed...}  |  "value_b64": "...raw bytes..."}

Values are byte-exact either way. A value is stored parsed (readable, `jq`-able) only when
re-serialising the parsed JSON compactly gives back exactly its bytes, which is true of every
record the agent writes itself; anything else (a dead letter's original bytes, with duplicate
keys, `1E5`, `1e999`, whitespace, lone surrogates, 100,000 nested arrays or binary) is stored as
`value_b64`. Keys and header values are stored as text when they are strict UTF-8, else as base64.
`read_sink_file` decodes it back. `flush` fsyncs, which is the durability the pipeline waits for
before committing.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import IO, Any

from agent.errors import ConnectorError
from connectors.base import Headers, Offsets, Record, Sink, Source, TopicPartition

_TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")  # Kafka's rule; also keeps paths inside the dir
_FINGERPRINT_BYTES = 4096
DEFAULT_MAX_LINE_BYTES = 1 << 20


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _compact(document: Any) -> bytes:
    """The one JSON form the agent writes (and the sink stores parsed): compact, ASCII-escaped."""
    return json.dumps(document, separators=(",", ":"), allow_nan=False).encode("ascii")


def _value_field(value: bytes) -> dict[str, Any]:
    try:
        parsed = json.loads(value, parse_constant=_reject_constant)
        if _compact(parsed) == value:
            return {"value": parsed}
    except (ValueError, RecursionError):  # not JSON, not UTF-8, too deep, or not in compact form
        pass
    return {"value_b64": base64.b64encode(value).decode("ascii")}


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
        self,
        path: str | Path,
        *,
        topic: str = "file",
        offset_path: str | Path | None = None,
        follow: bool = False,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    ) -> None:
        super().__init__()
        self.path = Path(path)
        self.offset_path = Path(offset_path) if offset_path else self.path.with_name(self.path.name + ".offset")
        self.max_line_bytes = max_line_bytes
        self._topic = topic
        self._follow = follow
        self._fh: IO[bytes] | None = None
        self._line_no = 0  # number of the next line to read
        self._byte_pos = 0  # where that line starts
        self._partial = b""
        self._skipping = False  # inside a line longer than max_line_bytes, after its head
        self._at_eof = False
        self._identity: dict[str, Any] = {}
        self._positions: dict[int, int] = {}  # line number -> byte position, for the next commit

    @property
    def position(self) -> TopicPartition:
        return (self._topic, 0)

    @property
    def exhausted(self) -> bool:
        """True once a non-following source has handed out its last line."""
        return not self._follow and self._at_eof

    def committed(self) -> int:
        """Next line to read after a restart, from the sidecar (0 when there is none)."""
        return int(self._read_sidecar().get("offset", 0))

    def _read_sidecar(self) -> dict[str, Any]:
        try:
            state = json.loads(self.offset_path.read_text())
            int(state["offset"])
            return dict(state)
        except FileNotFoundError:
            return {}
        except (ValueError, KeyError, TypeError, OSError) as exc:
            raise ConnectorError(f"unreadable offset file {self.offset_path}: {exc}") from exc

    @staticmethod
    def _fingerprint(fh: IO[bytes], length: int) -> str:
        fh.seek(0)
        return hashlib.sha256(fh.read(length)).hexdigest()

    def _open(self) -> IO[bytes]:
        if self._fh is None:
            try:
                fh = self.path.open("rb")
            except OSError as exc:
                raise ConnectorError(f"cannot read {self.path}: {exc}", retriable=self._follow) from exc
            info = os.fstat(fh.fileno())
            length = min(info.st_size, _FINGERPRINT_BYTES)
            self._identity = {
                "device": info.st_dev,
                "inode": info.st_ino,
                "fingerprint_bytes": length,
                "fingerprint": self._fingerprint(fh, length),
            }
            self._resume(fh, self._read_sidecar(), info.st_size)
            self._fh = fh
            self.announce_assigned({self.position})
        return self._fh

    def _resume(self, fh: IO[bytes], state: dict[str, Any], size: int) -> None:
        """Seeks to the committed line, after checking that the sidecar describes this very file."""
        fh.seek(0)
        if not state:
            return
        offset, byte_pos = int(state["offset"]), int(state.get("byte", -1))
        replaced = byte_pos > size or any(
            key in state and state[key] != self._identity[key] for key in ("device", "inode")
        )
        if "fingerprint" in state and not replaced:
            length = int(state.get("fingerprint_bytes", _FINGERPRINT_BYTES))
            replaced = length > size or self._fingerprint(fh, length) != state["fingerprint"]
            self._identity["fingerprint_bytes"], self._identity["fingerprint"] = length, state["fingerprint"]
        if replaced:
            fh.close()
            raise ConnectorError(
                f"{self.path} was replaced or truncated since offset {offset} was committed to "
                f"{self.offset_path}; resuming there would skip or repeat unknown events. Remove the offset "
                "file to read the new file from its start."
            )
        if byte_pos >= 0:
            fh.seek(byte_pos)
            self._line_no, self._byte_pos = offset, byte_pos
            return
        fh.seek(0)  # a sidecar from before byte positions were kept: count lines
        while self._line_no < offset and fh.readline():
            self._line_no += 1
        self._byte_pos = fh.tell()

    def _read_line(self, fh: IO[bytes]) -> bytes | None:
        """The next complete line without its newline (cut after max_line_bytes + 1), or None at (for now) the end."""
        if not self._skipping:
            chunk = fh.readline(self.max_line_bytes + 1 - len(self._partial))
            self._partial += chunk
            if len(self._partial) <= self.max_line_bytes or self._partial.endswith(b"\n"):
                if not chunk.endswith(b"\n") and (self._follow or not chunk):
                    return None  # (for now) the end of the file
                return self._take_line(fh)
            self._partial = self._partial[: self.max_line_bytes + 1]  # too long: keep the head, skip the rest
            self._skipping = True
        if not self._skip_rest_of_line(fh):
            return None
        self._skipping = False
        return self._take_line(fh)

    def _take_line(self, fh: IO[bytes]) -> bytes:
        line, self._partial = self._partial, b""
        self._byte_pos = fh.tell()
        return line.rstrip(b"\r\n")

    def _skip_rest_of_line(self, fh: IO[bytes]) -> bool:
        while chunk := fh.readline(1 << 16):
            if chunk.endswith(b"\n"):
                return True
        return not self._follow  # a non-following source ends the line at the end of the file

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
            self._positions[self._line_no] = self._byte_pos
            if line.strip():
                now_ms = int(time.time() * 1000)
                out.append(Record(self._topic, 0, offset, None, line, [], now_ms))
        return out

    def commit(self, offsets: Offsets) -> None:
        if self.position not in offsets:
            return
        offset = int(offsets[self.position])
        state = {"path": str(self.path), "offset": offset, "byte": self._positions.get(offset, -1), **self._identity}
        tmp = self.offset_path.with_name(self.offset_path.name + ".tmp")
        try:
            with tmp.open("w") as f:
                json.dump(state, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.offset_path)  # atomic: a crash leaves the old or the new offset
        except OSError as exc:
            raise ConnectorError(f"cannot write offset file {self.offset_path}: {exc}") from exc
        self._positions = {line: byte for line, byte in self._positions.items() if line > offset}

    def assignment(self) -> set[TopicPartition]:
        return {self.position} if self._fh is not None else set()

    def close(self) -> None:
        if self._fh is not None:
            self.announce_revoked({self.position})
            self._fh.close()
            self._fh = None


class FileSink(Sink):
    """Appends each message to `<directory>/<topic>.jsonl` in the format described above."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConnectorError(
                f"cannot use {self.directory} as the output directory: {exc.strerror or exc}"
            ) from None
        self._files: dict[str, IO[bytes]] = {}

    def path_for(self, topic: str) -> Path:
        if not _TOPIC_NAME.match(topic) or topic in (".", ".."):
            raise ConnectorError(f"invalid topic name for a file sink: {topic!r}")
        return self.directory / f"{topic}.jsonl"

    def send(self, topic: str, value: bytes, key: bytes | None = None, headers: Headers = ()) -> None:
        line: dict[str, Any] = {"topic": topic, "timestamp_ms": int(time.time() * 1000)}
        line.update({"key": None} if key is None else _text_field("key", key))
        line["headers"] = [{"name": name, **_text_field("value", data)} for name, data in headers]
        line.update(_value_field(value))
        data = _compact(line) + b"\n"
        try:
            fh = self._files.get(topic)
            if fh is None:
                fh = self._files[topic] = self.path_for(topic).open("ab")
            fh.write(data)
        except OSError as exc:
            raise ConnectorError(f"cannot write to {self.path_for(topic)}: {exc}", retriable=True) from exc

    def flush(self, timeout_s: float = 30.0) -> None:
        for topic, fh in self._files.items():
            try:
                fh.flush()
                os.fsync(fh.fileno())
            except OSError as exc:
                raise ConnectorError(f"cannot flush {self.path_for(topic)}: {exc}", retriable=True) from exc

    def close(self) -> None:
        for fh in self._files.values():
            fh.close()
        self._files.clear()


def read_sink_file(path: str | Path) -> list[dict[str, Any]]:
    """Decode a FileSink file: dicts with topic, timestamp_ms, key, value (bytes) and headers.

    Every value comes back byte-exact (see the module docstring).
    """
    out = []
    with Path(path).open("rb") as f:
        for raw in f:
            obj = json.loads(raw)
            value = base64.b64decode(obj["value_b64"]) if "value_b64" in obj else _compact(obj["value"])
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
