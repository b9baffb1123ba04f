"""No single event, however hostile, may stop the agent: each is scored or dead-lettered byte-exact.

Runs the real pipeline over the JSONL file source and sink (what `dknn-agent run --source file:
--sink file:` uses). Before, a 100,000-deep array or a lone surrogate escape crashed the file sink,
the batch was never committed, and every restart crashed again.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.runtime.events import encode_event
from agent.runtime.pipeline import Pipeline
from connectors.file import FileSink, FileSource, read_sink_file
from tests.conftest import TinyProblem, pipeline_for


def valid_document(x: np.ndarray) -> dict:
    return json.loads(encode_event("ok", x, "tiny", "1"))


def hostile_lines(x: np.ndarray) -> dict[str, bytes]:
    good = valid_document(x)
    spaced = json.dumps(good).encode()  # valid, but not compact: must come back byte-exact if dead-lettered
    return {
        "deep arrays": b"[" * 100_000 + b"]" * 100_000,
        "deep objects": b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
        "lone surrogate id": json.dumps({**good, "event_id": "\ud800"}).encode(),
        "lone surrogate attribute": spaced[:-1] + b', "attributes": {"k": "\\udfff"}}',
        "duplicate keys": spaced[:-1] + b', "event_id": "second"}',
        "overflowing number": spaced.replace(b'"shape": [8]', b'"shape": [1e999]'),
        "upper-case exponent": spaced.replace(b'"shape": [8]', b'"shape": [8E0]'),
        "5000-digit integer": spaced.replace(b'"shape": [8]', b'"shape": [' + b"9" * 5000 + b"]"),
        "trailing garbage": spaced + b" x",
        "not utf-8": b'{"event_id": "\xff\xfe"}',
        "nul bytes": b"\x00" * 64,
        "huge scores list": spaced[:-1] + b', "prediction": {"label": 1, "scores": [' + b"0.5," * 20_000 + b"0.5]}}",
        "valid but spaced": spaced,
    }


def run_over_files(bundle: Path, lines: list[bytes], tmp_path: Path, **options) -> tuple[Pipeline, Path]:
    source_path = tmp_path / "in.jsonl"
    source_path.write_bytes(b"\n".join(lines) + b"\n")
    source, sink = FileSource(source_path, topic="in"), FileSink(tmp_path / "out")
    pipeline = pipeline_for(bundle, source, sink, batch_size=8, retry_budget_s=2, **options)
    pipeline.run(threading.Event())  # returns once the file is consumed
    source.close()
    sink.close()
    return pipeline, tmp_path / "out"


def accounted(out: Path) -> tuple[dict[int, bytes], dict[int, dict]]:
    dead = {}
    for record in read_sink_file(out / "dlq.jsonl") if (out / "dlq.jsonl").exists() else []:
        dead[int(dict(record["headers"])["dknn.source.offset"])] = record
    scores = {}
    for record in read_sink_file(out / "scores.jsonl") if (out / "scores.jsonl").exists() else []:
        body = json.loads(record["value"])
        scores[body["source"]["offset"]] = body
    return dead, scores


def test_every_hostile_event_is_scored_or_dead_lettered_byte_exact(
    tiny_bundle: Path, tiny_problem: TinyProblem, tmp_path: Path
) -> None:
    cases = hostile_lines(tiny_problem.test.x[0])
    lines = list(cases.values())
    pipeline, out = run_over_files(tiny_bundle, lines, tmp_path)
    dead, scores = accounted(out)
    assert set(dead) | set(scores) == set(range(len(lines))) and not set(dead) & set(scores)
    for offset, record in dead.items():
        assert record["value"] == lines[offset], list(cases)[offset]
    assert {list(cases)[offset] for offset in scores} == {"duplicate keys", "valid but spaced"}
    reasons = {list(cases)[o]: dict(r["headers"])["dknn.error.class"].decode() for o, r in dead.items()}
    assert reasons["deep arrays"] == "bad_json" and reasons["not utf-8"] == "bad_json"
    assert reasons["huge scores list"] == "schema" and reasons["overflowing number"] == "bad_json"
    assert (tmp_path / "in.jsonl.offset").exists()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.one_of(
            st.binary(min_size=1, max_size=300).filter(lambda b: b"\n" not in b and b.strip()),
            json_values.map(lambda v: json.dumps(v, indent=None).encode()),
            st.builds(lambda n: b"[" * n + b"]" * n, st.integers(1_000, 60_000)),
            st.text(min_size=1, max_size=40).map(
                lambda s: json.dumps({"event_id": s}, ensure_ascii=False).encode("utf-8", "surrogatepass")
            ),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_fuzzed_lines_are_all_dead_lettered_byte_exact(
    tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory, lines: list[bytes]
) -> None:
    lines = [line for line in lines if b"\n" not in line and b"\r" not in line and line.strip()]
    if not lines:
        return
    tmp_path = tmp_path_factory.mktemp("fuzz")
    _, out = run_over_files(tiny_bundle, lines, tmp_path)
    dead, scores = accounted(out)
    assert not scores
    assert {offset: record["value"] for offset, record in dead.items()} == dict(enumerate(lines))
