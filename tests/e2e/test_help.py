"""`dknn-agent --help` and the `--help` of every command, through the installed console script.

`--help` builds the whole parser, so a command module that no longer imports (the NameError that
once broke `train-reference` unnoticed) fails here first. The runs are independent processes, so
they are started together and the tests assert on their results.
"""

from __future__ import annotations

import os
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from agent import __version__
from tests.e2e.conftest import CONSOLE_SCRIPT, explain, run_cli

# Every command and the options the README, the Makefile or deploy/local/demo.sh rely on.
COMMANDS: dict[tuple[str, ...], tuple[str, ...]] = {
    (): ("run", "produce-demo", "train-reference", "fit", "score", "info", "extend", "demo", "bench", "--version"),
    ("run",): (
        "--config",
        "--artifacts",
        "--bootstrap-servers",
        "--input-topic",
        "--quarantine-topic",
        "--dead-letter-topic",
        "--scores-topic",
        "--group-id",
        "--metrics-port",
        "--threshold",
        "--batch-size",
        "--index",
        "--search-k",
        "--drift-arl-events",
        "--drift-window-events",
        "--source",
        "--sink",
        "--summary-every",
        "DKNN_THRESHOLD",
    ),
    ("produce-demo",): ("--bootstrap-servers", "--artifacts", "--count", "--rate", "--mix", "--phase", "--topic"),
    ("train-reference",): (
        "{mnist}",
        "--out",
        "--epochs",
        "--train-size",
        "--seed",
        "--quiet",
        "--k",
        "--force",
        "--index-size",
        "--recall-target",
    ),
    ("fit",): (
        "--factory",
        "--weights",
        "--layers",
        "--train",
        "--calibration",
        "--out",
        "--model-name",
        "--k",
        "--n-trees",
        "--search-k",
        "--recall-target",
        "--shifted-recall-target",
        "--quiet",
    ),
    ("score",): ("--artifacts", "--input", "--output", "--index", "{annoy,exact}", "--batch-size", "--search-k"),
    ("info",): ("artifacts", "--json"),
    ("extend",): ("--artifacts", "--reviews", "--calibration", "--clean", "--ood", "--out", "--report", "--force"),
    ("demo",): ("--artifacts", "--count", "--threshold", "--data"),
    ("bench",): ("quality", "snnl", "stream", "perf", "sharpness", "extend"),
    ("bench", "quality"): ("--artifacts", "--out", "--limit", "--extended"),
    ("bench", "snnl"): ("--seeds", "--out", "--snnl-weight", "--limit", "--name", "--epochs"),
    ("bench", "stream"): ("--artifacts", "--bootstrap-servers", "--out", "--count", "--latency-count"),
    ("bench", "perf"): ("--artifacts", "--out", "--count", "--exact-count", "--batch-size"),
    ("bench", "sharpness"): ("--artifacts", "--count", "--out"),
    ("bench", "extend"): ("--artifacts", "--reviews", "--held-out", "--clean", "--out"),
}


USAGE_ERRORS = [(), ("bench",), ("score", "--no-such-flag")]


@pytest.fixture(scope="module")
def runs() -> dict[tuple[str, ...], subprocess.CompletedProcess[str]]:
    """Every invocation of this module, keyed by its arguments, run side by side."""
    argvs = [(*command, "--help") for command in COMMANDS] + [("--version",), *USAGE_ERRORS]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 2)) as pool:
        futures = {argv: pool.submit(run_cli, *argv, timeout=120) for argv in argvs}
        return {argv: future.result() for argv, future in futures.items()}


@pytest.mark.parametrize("command", list(COMMANDS), ids=lambda c: " ".join(c) or "dknn-agent")
def test_help(runs: dict[tuple[str, ...], subprocess.CompletedProcess[str]], command: tuple[str, ...]) -> None:
    result = runs[(*command, "--help")]
    assert result.returncode == 0, explain(result)
    assert result.stdout.startswith(f"usage: {' '.join(['dknn-agent', *command])} "), explain(result)
    assert "Traceback" not in result.stderr, explain(result)
    missing = [option for option in COMMANDS[command] if option not in result.stdout]
    assert not missing, f"not in the help: {missing}\n{explain(result)}"


def test_console_script_is_installed_and_reports_the_version(
    runs: dict[tuple[str, ...], subprocess.CompletedProcess[str]],
) -> None:
    assert CONSOLE_SCRIPT.exists(), f"{CONSOLE_SCRIPT} missing: run make setup"
    result = runs[("--version",)]
    assert result.returncode == 0 and result.stdout.strip() == f"dknn-agent {__version__}", explain(result)


@pytest.mark.parametrize("argv", USAGE_ERRORS, ids=lambda a: " ".join(a) or "no-command")
def test_usage_errors_exit_2(
    runs: dict[tuple[str, ...], subprocess.CompletedProcess[str]], argv: tuple[str, ...]
) -> None:
    result = runs[argv]
    assert result.returncode == 2, explain(result)
    assert "usage: dknn-agent" in result.stderr and "Traceback" not in result.stderr, explain(result)
