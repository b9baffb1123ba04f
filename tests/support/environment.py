"""The environment an agent under test starts with: the tests' own, less every `DKNN_*` variable.

Why: the agent knows only its own variables and refuses any other `DKNN_*` one (a misspelt
DKNN_TRESHOLD would otherwise do nothing; agent/runtime/settings.py). The tests and the project's
scripts have knobs of that prefix (DKNN_TEST_KAFKA, DKNN_MNIST_DIR, the local broker's
DKNN_KAFKA_HOME, ...), and a setting exported in a developer's shell (DKNN_THRESHOLD) would change
what a test measures. So the agent gets none of them, and a test passes the settings it means.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import pytest

PREFIX = "DKNN_"


def agent_environment(
    extra: Mapping[str, str] | None = None, environ: Mapping[str, str] = os.environ
) -> dict[str, str]:
    """`environ` without its `DKNN_*` variables, plus `extra` (which may set any)."""
    env = {name: value for name, value in environ.items() if not name.upper().startswith(PREFIX)}
    env.update(extra or {})
    return env


def clear_agent_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same for settings loaded in this process: unsets every `DKNN_*` variable until the test ends."""
    for name in [name for name in os.environ if name.upper().startswith(PREFIX)]:
        monkeypatch.delenv(name)
