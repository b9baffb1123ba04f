"""FileSource / FileSink: JSONL in and out, resume after commit, byte-exact non-JSON values."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from agent.errors import ConnectorError
from connectors.base import next_offsets
from connectors.file import FileSink, FileSource, read_sink_file


def write_events(path: Path, n: int, start: int = 0) -> None:
    with path.open("a") as f:
        for i in range(start, start + n):
            f.write(json.dumps({"event_id": f"e{i}", "input": {"values": [i]}}) + "\n")


def test_source_reads_lines_as_offsets_and_resumes_after_commit(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    write_events(events, 5)
    with events.open("a") as f:
        f.write("\n")  # blank line: skipped, but it still has a line number
    write_events(events, 4, start=5)

    assigned: list[set] = []
    source = FileSource(events, topic="events")
    source.on_assign(assigned.append)
    first = source.poll(max_records=3, timeout_s=0)
    assert [r.offset for r in first] == [0, 1, 2]
    assert assigned == [{("events", 0)}] and source.assignment() == {("events", 0)}
    assert json.loads(first[0].value) == {"event_id": "e0", "input": {"values": [0]}}
    assert (first[0].topic, first[0].partition, first[0].key, first[0].headers) == ("events", 0, None, [])
    source.commit(next_offsets(first))
    source.poll(max_records=2, timeout_s=0)  # read but never committed: must come again
    source.close()

    again = FileSource(events, topic="events")
    assert again.committed() == 3
    rest = again.poll(max_records=100, timeout_s=0)
    assert [r.offset for r in rest] == [3, 4, 6, 7, 8, 9]
    assert [json.loads(r.value)["event_id"] for r in rest] == ["e3", "e4", "e5", "e6", "e7", "e8"]
    assert again.poll(timeout_s=0) == [] and again.exhausted
    again.close()


def test_following_source_waits_for_complete_lines(tmp_path: Path) -> None:
    events = tmp_path / "live.jsonl"
    events.write_text('{"event_id": "a"}\n{"event_')
    source = FileSource(events, follow=True)
    assert [r.value for r in source.poll(timeout_s=0.05)] == [b'{"event_id": "a"}']
    assert source.poll(timeout_s=0.05) == [] and not source.exhausted  # half a line is not a line
    with events.open("a") as f:
        f.write('id": "b"}\n')
    got = source.poll(timeout_s=0.5)
    assert [(r.offset, r.value) for r in got] == [(1, b'{"event_id": "b"}')]
    source.close()


def test_sink_round_trips_json_binary_keys_and_headers(tmp_path: Path) -> None:
    sink = FileSink(tmp_path / "out")
    headers = [("dknn.source", b"events/0/3"), ("binary", b"\xff\x00")]
    sink.send("inference-quarantine", b'{"event_id":"e1","dknn":{"credibility":0.02}}', key=b"e1", headers=headers)
    raw_bad = b'{"event_id": "e2", "input": NaN'  # malformed: must stay byte-exact
    sink.send("inference-dead-letter", raw_bad, key=b"\x80\x81")
    sink.send("inference-dead-letter", b'{"x": NaN}')  # NaN is not JSON: kept as raw bytes too
    spaced = b'{"event_id": "e3"}'  # valid JSON, but not in the agent's compact form: stored as base64
    sink.send("inference-dead-letter", spaced)
    sink.flush()
    sink.close()

    quarantine = read_sink_file(tmp_path / "out" / "inference-quarantine.jsonl")
    assert len(quarantine) == 1
    q = quarantine[0]
    assert q["value"] == b'{"event_id":"e1","dknn":{"credibility":0.02}}'
    assert (q["topic"], q["key"], q["headers"]) == ("inference-quarantine", b"e1", headers)
    on_disk = json.loads((tmp_path / "out" / "inference-quarantine.jsonl").read_text())
    assert on_disk["value"]["dknn"]["credibility"] == 0.02  # readable as JSON, not base64

    dead = read_sink_file(tmp_path / "out" / "inference-dead-letter.jsonl")
    assert [(d["key"], d["value"]) for d in dead] == [(b"\x80\x81", raw_bad), (None, b'{"x": NaN}'), (None, spaced)]


def test_sink_appends_across_restarts_and_rejects_path_like_topics(tmp_path: Path) -> None:
    for i in range(2):
        with FileSink(tmp_path) as sink:
            sink.send("scores", json.dumps({"i": i}, separators=(",", ":")).encode())
            sink.flush()
    assert [json.loads(m["value"]) for m in read_sink_file(tmp_path / "scores.jsonl")] == [{"i": 0}, {"i": 1}]
    with FileSink(tmp_path) as sink, pytest.raises(ConnectorError):
        sink.send("../escape", b"{}")


def test_pipeline_style_replay_is_at_least_once(tmp_path: Path) -> None:
    """Crash between flush and commit: the restarted run repeats the tail, never loses it."""
    events = tmp_path / "events.jsonl"
    write_events(events, 10)
    out = tmp_path / "out"

    source, sink = FileSource(events), FileSink(out)
    batch = source.poll(max_records=4, timeout_s=0)
    for r in batch:
        sink.send("scores", r.value)
    sink.flush()
    source.commit(next_offsets(batch))
    batch = source.poll(max_records=4, timeout_s=0)
    for r in batch:
        sink.send("scores", r.value)
    sink.flush()  # ...and the process dies before committing this batch
    source.close()
    sink.close()

    source, sink = FileSource(events), FileSink(out)
    while not source.exhausted:
        batch = source.poll(max_records=4, timeout_s=0)
        for r in batch:
            sink.send("scores", r.value)
        sink.flush()
        source.commit(next_offsets(batch))
    source.close()
    sink.close()

    ids = [json.loads(m["value"])["event_id"] for m in read_sink_file(out / "scores.jsonl")]
    assert set(ids) == {f"e{i}" for i in range(10)}
    assert len(ids) == 14  # e4..e7 twice: replayed, not lost
    assert FileSource(events).committed() == 10


def test_a_replaced_source_file_is_refused_instead_of_read_from_a_stale_offset(tmp_path: Path) -> None:
    events = tmp_path / "in.jsonl"
    events.write_bytes(b"".join(b'{"n": %d}\n' % i for i in range(10)))
    source = FileSource(events)
    first = source.poll(max_records=4)
    source.commit(next_offsets(first))
    source.close()

    resumed = FileSource(events)  # same file, appended to: resumes at line 4 (by byte position)
    with events.open("ab") as f:
        f.write(b'{"n": 10}\n')
    assert [r.offset for r in resumed.poll(max_records=100)] == list(range(4, 11))
    resumed.close()

    replacement = tmp_path / "new.jsonl"
    replacement.write_bytes(b'{"other": 1}\n' * 20)
    os.replace(replacement, events)  # a new file under the old name
    with pytest.raises(ConnectorError, match="was replaced or truncated since offset 4"):
        FileSource(events).poll()


def test_an_overlong_line_is_cut_not_held_in_memory(tmp_path: Path) -> None:
    events = tmp_path / "in.jsonl"
    events.write_bytes(b'{"a": 1}\n' + b"x" * 5_000_000 + b"\n" + b'{"b": 2}\n')
    source = FileSource(events, max_line_bytes=1000)
    got = source.poll(max_records=10)
    assert [(r.offset, len(r.value)) for r in got] == [(0, 8), (1, 1001), (2, 8)]
    assert got[2].value == b'{"b": 2}'
