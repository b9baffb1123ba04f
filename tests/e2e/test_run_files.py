"""`dknn-agent run` end to end with the JSONL connectors: no broker, a real process, real files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from agent.events import encode_event
from connectors.file import read_sink_file
from tests.conftest import TinyProblem


def test_run_on_files_routes_every_event(tiny_bundle: Path, tiny_problem: TinyProblem, tmp_path: Path) -> None:
    events = [encode_event(f"e{i}", x, "tiny", "1") for i, x in enumerate(tiny_problem.test.x[:30])]
    events.insert(7, b'{"event_id": "broken"')
    events.insert(12, encode_event("wrong-shape", np.zeros(5, np.float32), "tiny", "1"))
    (tmp_path / "in.jsonl").write_bytes(b"\n".join(events) + b"\n")
    (tmp_path / "cfg.yaml").write_text("scores_topic: scores\nthreshold: 0.2\n")
    result = subprocess.run(
        [sys.executable, "-m", "agent.cli", "run", "--config", str(tmp_path / "cfg.yaml"),
         "--artifacts", str(tiny_bundle), "--source", f"file:{tmp_path / 'in.jsonl'}",
         "--sink", f"file:{tmp_path / 'out'}", "--metrics-port", "0"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    scores = [json.loads(r["value"]) for r in read_sink_file(tmp_path / "out/scores.jsonl")]
    dead = read_sink_file(tmp_path / "out/inference-dead-letter.jsonl")
    assert len(scores) == 30 and {s["source"]["offset"] for s in scores} == set(range(32)) - {7, 12}
    assert [dict(d["headers"])["dknn.error.class"] for d in dead] == [b"bad_json", b"shape"]
    assert dead[0]["value"] == b'{"event_id": "broken"'  # not JSON, so stored byte-exact
    quarantined = {s["event_id"] for s in scores if s["verdict"] == "quarantined"}
    assert all(s["credibility"] < 0.2 for s in scores if s["event_id"] in quarantined)
    if quarantined:
        held = read_sink_file(tmp_path / "out/inference-quarantine.jsonl")
        assert {json.loads(h["value"])["event"]["event_id"] for h in held} == quarantined
    assert (tmp_path / "in.jsonl.offset").exists()  # the file source committed its position


def test_run_with_bad_settings_exits_2_with_one_line(tiny_bundle: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "agent.cli", "run", "--artifacts", str(tiny_bundle), "--threshold", "1.5",
         "--bootstrap-servers", "127.0.0.1:1"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "threshold" in result.stderr and "Traceback" not in result.stderr
