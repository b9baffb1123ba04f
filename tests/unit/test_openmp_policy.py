"""The scoring commands let torch's OpenMP threads sleep between forward passes (design §2.7).

The OpenMP runtime reads OMP_WAIT_POLICY once, when torch loads it, so each case runs in a fresh
interpreter, and the first test guards the precondition: importing the CLI must not import torch.
The stream benchmark's load generator must not either (its module docstring says why).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = """
import os, sys
from agent.cli import main
try:
    main(sys.argv[1:] + ["--help"])
except SystemExit:
    pass
print(os.environ.get("OMP_WAIT_POLICY"))
"""


def policy_after(command: list[str], environment_policy: str | None = None) -> str:
    env = {key: value for key, value in os.environ.items() if key != "OMP_WAIT_POLICY"}
    if environment_policy is not None:
        env["OMP_WAIT_POLICY"] = environment_policy
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *command], env=env, capture_output=True, text=True, check=True, timeout=120
    )
    return done.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("module", ["agent.cli", "dknn_lab.bench.paced_producer"])
def test_importing_leaves_torch_unloaded(module: str) -> None:
    probe = f"import sys, {module}; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120)
    assert done.stdout.strip() == "False"


@pytest.mark.parametrize("command", [["run"], ["score"], ["bench", "perf"], ["bench", "stream"]])
def test_scoring_commands_ask_for_passive_threads(command: list[str]) -> None:
    assert policy_after(command) == "PASSIVE"


@pytest.mark.parametrize("command", [["train-reference"], ["fit"], ["bench", "quality"]])
def test_other_commands_leave_the_default(command: list[str]) -> None:
    assert policy_after(command) == "None"


def test_an_explicit_policy_wins() -> None:
    assert policy_after(["run"], environment_policy="ACTIVE") == "ACTIVE"
