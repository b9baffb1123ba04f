"""Start-up failures as an operator meets them: one line on stderr and an exit code that says which kind
(3: configuration, bundle or data; 4: the source or sink); SIGTERM while starting: exit 0."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import TinyProblem
from tests.e2e.conftest import ROOT, cli_command, explain, free_port, run_cli
from tests.support.environment import agent_environment


def assert_one_line(result: subprocess.CompletedProcess[str], fragment: str, code: int = 3) -> None:
    assert result.returncode == code, explain(result)
    assert "Traceback" not in result.stderr, explain(result)
    errors = [line for line in result.stderr.splitlines() if line.startswith("dknn-agent: error:")]
    assert len(errors) == 1 and fragment in errors[0], explain(result)


def run_on_files(bundle: Path, tmp_path: Path, *extra: str, env: dict[str, str] | None = None):
    (tmp_path / "in.jsonl").write_text("")
    return run_cli(
        "run",
        "--artifacts",
        bundle,
        "--source",
        f"file:{tmp_path / 'in.jsonl'}",
        "--sink",
        f"file:{tmp_path / 'out'}",
        *extra,
        timeout=120,
        env=env,
    )


def test_a_metrics_port_in_use(tiny_bundle: Path, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_on_files(tiny_bundle, tmp_path, "--metrics-host", "127.0.0.1", "--metrics-port", str(port))
    assert_one_line(result, f"cannot serve metrics on 127.0.0.1:{port}")


def test_an_unresolvable_metrics_host(tiny_bundle: Path, tmp_path: Path) -> None:
    result = run_on_files(tiny_bundle, tmp_path, "--metrics-host", "no-such-host.invalid", "--metrics-port", "0")
    assert_one_line(result, "cannot serve metrics on no-such-host.invalid")


def test_a_sink_path_that_is_a_file(tiny_bundle: Path, tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_text("")
    (tmp_path / "out").write_text("a file, not a directory")
    result = run_cli(
        "run",
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
    assert_one_line(result, "as the output directory", code=4)


def test_a_misspelt_environment_variable(tiny_bundle: Path, tmp_path: Path) -> None:
    result = run_on_files(tiny_bundle, tmp_path, "--metrics-port", "0", env={"DKNN_TRESHOLD": "0.9"})
    assert_one_line(result, "did you mean DKNN_THRESHOLD?")


def test_reading_its_own_outputs_is_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    result = run_cli(
        "run",
        "--artifacts",
        tiny_bundle,
        "--bootstrap-servers",
        "127.0.0.1:1",
        "--dead-letter-topic",
        "inference-events",
        timeout=120,
    )
    assert_one_line(result, "is also an output topic")


def test_score_output_that_is_a_directory(tiny_bundle: Path, tiny_problem: TinyProblem, tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", tiny_problem.test.x[:5])
    result = run_cli("score", "--artifacts", tiny_bundle, "--input", tmp_path / "x.npy", "--output", tmp_path)
    assert_one_line(result, "is a directory")


def test_fit_refuses_nan_training_inputs(tiny_problem: TinyProblem, tmp_path: Path) -> None:
    x = tiny_problem.train.x.copy()
    x[7, 3] = np.nan
    np.savez(tmp_path / "train.npz", x=x, y=tiny_problem.train.y)
    np.savez(tmp_path / "cal.npz", x=tiny_problem.calibration.x, y=tiny_problem.calibration.y)
    result = run_cli(
        "fit",
        "--factory",
        "dknn_lab.models.tiny:build_model",
        "--weights",
        tiny_problem.weights,
        "--layers",
        "relu1",
        "--train",
        tmp_path / "train.npz",
        "--calibration",
        tmp_path / "cal.npz",
        "--out",
        tmp_path / "b",
        "--k",
        "5",
        "--quiet",
    )
    assert_one_line(result, "contains NaN or infinity")


def test_an_unreachable_broker_exits_4(tiny_bundle: Path) -> None:
    result = run_cli(
        "run",
        "--artifacts",
        tiny_bundle,
        "--bootstrap-servers",
        f"127.0.0.1:{free_port()}",
        "--metrics-port",
        "0",
        timeout=300,
    )
    assert_one_line(result, "127.0.0.1", code=4)


@pytest.mark.parametrize("delay_s", [0.2, 3.0], ids=["while importing", "while connecting"])
def test_sigterm_during_start_up_is_a_clean_stop(tiny_bundle: Path, delay_s: float) -> None:
    """A rollout may stop a pod before it ever became ready: that is not a failure (exit 0, not 143)."""
    process = subprocess.Popen(
        [
            *cli_command(),
            "run",
            "--artifacts",
            str(tiny_bundle),
            "--bootstrap-servers",
            f"127.0.0.1:{free_port()}",
            "--metrics-port",
            "0",
        ],
        cwd=ROOT,
        env=agent_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(delay_s)
    process.send_signal(signal.SIGTERM)
    try:
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0, stderr[-3000:]
    assert "Traceback" not in stderr and "stopped by SIGTERM during start-up" in stderr, stderr[-3000:]
