"""`dknn-agent run --source file:... --sink file:...` end to end: no broker, a real process, real files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from agent.runtime.events import encode_event
from connectors.file import read_sink_file
from tests.conftest import TinyProblem
from tests.e2e.conftest import SMOKE_LAYERS, Digits, explain, run_cli, summaries


def test_run_on_files_routes_every_event(tiny_bundle: Path, tiny_problem: TinyProblem, tmp_path: Path) -> None:
    events = [encode_event(f"e{i}", x, "tiny", "1") for i, x in enumerate(tiny_problem.test.x[:30])]
    events.insert(7, b'{"event_id": "broken"')
    events.insert(12, encode_event("wrong-shape", np.zeros(5, np.float32), "tiny", "1"))
    (tmp_path / "in.jsonl").write_bytes(b"\n".join(events) + b"\n")
    (tmp_path / "cfg.yaml").write_text("scores_topic: scores\nthreshold: 0.2\n")
    result = run_cli(
        "run",
        "--config",
        tmp_path / "cfg.yaml",
        "--artifacts",
        tiny_bundle,
        "--source",
        f"file:{tmp_path / 'in.jsonl'}",
        "--sink",
        f"file:{tmp_path / 'out'}",
        "--metrics-port",
        "0",
        timeout=120,
    )
    assert result.returncode == 0, explain(result)
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


def test_run_with_bad_settings_exits_2_with_one_line(tiny_bundle: Path) -> None:
    result = run_cli(
        "run", "--artifacts", tiny_bundle, "--threshold", "1.5", "--bootstrap-servers", "127.0.0.1:1", timeout=60
    )
    assert result.returncode == 3 and "threshold" in result.stderr and "Traceback" not in result.stderr, explain(result)


def test_run_on_files_with_the_mnist_smoke_bundle(mnist_bundle: Path, mnist_digits: Digits, tmp_path: Path) -> None:
    """The README's replay mode on the reference model: clean digits, noise and malformed events from a
    JSONL file, every output checked, the summary line at exit counting all of them."""
    version = json.loads((mnist_bundle / "manifest.json").read_text())["model"]["version"]
    noise = np.random.default_rng(0).random((8, 1, 28, 28), dtype=np.float32)
    events = [
        encode_event(f"digit-{i}", x, "mnist-cnn", version, timestamp_ms=1_700_000_000_000 + i, served_label=int(y))
        for i, (x, y) in enumerate(zip(mnist_digits.x[:40], mnist_digits.y[:40], strict=True))
    ]
    events += [encode_event(f"noise-{i}", x, "mnist-cnn", version) for i, x in enumerate(noise)]
    events += [
        encode_event("other-model", mnist_digits.x[0], "some-other-model", "1"),
        encode_event("flat", mnist_digits.x[0].ravel(), "mnist-cnn", version),
        b"not json",
    ]
    (tmp_path / "events.jsonl").write_bytes(b"\n".join(events) + b"\n")
    result = run_cli(
        "run",
        "--artifacts",
        mnist_bundle,
        "--source",
        f"file:{tmp_path / 'events.jsonl'}",
        "--sink",
        f"file:{tmp_path / 'out'}",
        "--scores-topic",
        "inference-scores",
        "--metrics-port",
        "0",
        "--batch-size",
        "16",
        "--summary-every",
        "60",
        timeout=180,
    )
    assert result.returncode == 0, explain(result)

    scores = [json.loads(r["value"]) for r in read_sink_file(tmp_path / "out/inference-scores.jsonl")]
    assert [s["event_id"] for s in scores] == [f"digit-{i}" for i in range(40)] + [f"noise-{i}" for i in range(8)]
    assert {s["source"]["offset"] for s in scores} == set(range(48))
    for s in scores:
        assert 0 <= s["prediction"] < 10 and 0 <= s["model_prediction"] < 10
        assert 0.0 <= s["credibility"] <= 1.0 and 0.0 <= s["confidence"] <= 1.0
        assert s["verdict"] == ("quarantined" if s["credibility"] < 0.1 else "accepted")
    digits = scores[:40]
    accuracy = np.mean([s["prediction"] == y for s, y in zip(digits, mnist_digits.y[:40], strict=True)])
    assert accuracy >= 0.5, f"DkNN accuracy {accuracy:.2f} on clean digits"  # a one-epoch model; chance is 0.1

    dead = read_sink_file(tmp_path / "out/inference-dead-letter.jsonl")
    assert [dict(d["headers"])["dknn.error.class"] for d in dead] == [b"unknown_model", b"shape", b"bad_json"]
    assert dead[2]["value"] == b"not json"

    quarantined = [s["event_id"] for s in scores if s["verdict"] == "quarantined"]
    held = (
        read_sink_file(tmp_path / "out/inference-quarantine.jsonl")
        if (tmp_path / "out/inference-quarantine.jsonl").exists()
        else []
    )
    assert [json.loads(h["value"])["event"]["event_id"] for h in held] == quarantined
    for h in held:
        record = json.loads(h["value"])["dknn"]
        assert record["verdict"] == "quarantined" and set(record["neighbors"]) == set(SMOKE_LAYERS)

    final = summaries(result.stderr)[-1]  # printed at exit
    assert final["events"] == 51 and final["scored"] == 48 and final["dead"] == 3, explain(result)
    assert final["quarantined"] == len(quarantined)
    assert (tmp_path / "events.jsonl.offset").exists()
