"""README "Use it on your own model", run command by command as a newcomer would type it.

Every line of the section's fenced blocks runs, in order, from the repository root: the example's
training script, `layers`, `fit`, `info`, `evaluate`, `score`, then a real local broker, the agent in
the background, the torch-free producer imitating KServe's payload logger, and the checks on the
agent's metrics. The only changes: `work/` becomes a temporary directory, the metrics port a free
one, and `127.0.0.1:PORT` the broker's address once `kafka.sh start` prints it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from tests.e2e.conftest import ROOT, clean_env, free_port
from tests.support.environment import agent_environment

SECTION = "## Use it on your own model"


def walkthrough() -> list[str]:
    """The section's command lines, continuations joined, comments dropped."""
    text = (ROOT / "README.md").read_text()
    start = text.index(SECTION)
    end = text.index("\n## ", start + len(SECTION))
    commands, inside, pending = [], False, ""
    for line in text[start:end].splitlines():
        if line.lstrip().startswith("```"):
            inside = not inside
            continue
        if not inside:
            continue
        line = re.sub(r"\s+#\s.*$", "", line).rstrip()  # a trailing comment (never inside quotes here)
        pending = f"{pending} {line.strip()}" if pending else line.strip()
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        if pending:
            commands.append(pending)
        pending = ""
    return commands


def test_the_walkthrough_has_the_commands_a_newcomer_needs() -> None:
    commands = walkthrough()
    for needed in ("examples/tabular/train.py", "dknn-agent layers", "dknn-agent fit", "dknn-agent evaluate"):
        assert any(needed in command for command in commands), needed
    assert any(command.startswith("dknn-agent run") and command.endswith("&") for command in commands)
    assert any("kserve_logger_to_kafka.py" in command for command in commands)


def test_every_walkthrough_command_runs(tmp_path: Path) -> None:
    port = str(free_port())
    env = clean_env({"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"})
    bootstrap = None
    agent: subprocess.Popen[str] | None = None
    outputs: list[str] = []
    data_dir = tmp_path / "work" / "kafka"
    try:
        for command in walkthrough():
            command = command.replace("work/", f"{tmp_path}/work/").replace("9108", port)
            command = re.sub(r"^python ", f"{sys.executable} ", command)
            if bootstrap is not None:
                command = command.replace("127.0.0.1:PORT", bootstrap)
            if command.endswith("&"):
                log = (tmp_path / "agent.log").open("w")
                agent = subprocess.Popen(
                    ["bash", "-c", f"exec {command[:-1]}"],
                    cwd=ROOT,
                    env=agent_environment(environ=env),  # the agent: without the scripts' DKNN_* knobs
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
                continue
            if command.startswith("kill %1"):
                assert agent is not None and agent.poll() is None, (tmp_path / "agent.log").read_text()[-3000:]
                agent.send_signal(signal.SIGTERM)
                assert agent.wait(60) == 0, (tmp_path / "agent.log").read_text()[-3000:]
                command = command.split("&&", 1)[1].strip()
            result = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", command],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=900,
                check=False,
            )
            log_tail = (tmp_path / "agent.log").read_text()[-3000:] if (tmp_path / "agent.log").exists() else ""
            assert result.returncode == 0, f"$ {command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}\n{log_tail}"
            outputs.append(result.stdout)
            found = re.search(r"^BOOTSTRAP=(\S+)$", result.stdout, re.M)
            if found:
                bootstrap = found.group(1)
    finally:
        if agent is not None and agent.poll() is None:
            agent.kill()
        if data_dir.exists():
            subprocess.run(
                ["bash", "deploy/local/kafka.sh", "stop", "--data-dir", str(data_dir)], cwd=ROOT, check=False
            )
    work = tmp_path / "work" / "tabular"
    assert (work / "report" / "evaluation-tabular.md").is_file()
    assert len((work / "scores.jsonl").read_text().splitlines()) > 100
    metrics = next(output for output in reversed(outputs) if "dknn_served" in output)
    assert re.search(r"^dknn_served_answers_compared_total 3\.0$", metrics, re.M), metrics
    assert re.search(r'^dknn_events_scored_total\{verdict="\w+"\} [1-3]\.0$', metrics, re.M), metrics
