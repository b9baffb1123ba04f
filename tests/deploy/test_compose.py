"""deploy/compose/compose.yaml through the real Compose v2 (`docker-compose config`): the file is valid,
the services are the stack the README promises, and what it mounts from the repository exists (the
rules and dashboards come from dashboards/, not from a copy)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.conftest import ROOT, Tools
from tests.support.environment import clear_agent_environment

COMPOSE = ROOT / "deploy" / "compose" / "compose.yaml"


def config(tools: Tools, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tools.docker_compose, "-f", str(path), "config"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin", "HOME": str(path.parent)},
    )


def test_compose_config_accepts_the_stack(tools: Tools) -> None:
    proc = config(tools, COMPOSE)
    assert proc.returncode == 0, proc.stderr
    resolved = yaml.safe_load(proc.stdout)
    assert set(resolved["services"]) == {"kafka", "topics", "agent", "prometheus", "alertmanager", "grafana"}
    mounts = {
        volume["target"]: Path(volume["source"])
        for service in resolved["services"].values()
        for volume in service.get("volumes", [])
        if volume["type"] == "bind"
    }
    dashboards = ROOT / "dashboards"
    assert mounts["/etc/prometheus/rules/dknn-agent.yml"] == dashboards / "prometheus" / "rules.yml"
    assert mounts["/var/lib/grafana/dashboards/dknn-agent"] == dashboards / "grafana"
    assert mounts["/etc/alertmanager/alertmanager.yml"] == dashboards / "alertmanager" / "alertmanager.yml"
    for target, source in mounts.items():
        if target != "/bundle":  # the bundle is trained by `make demo` or brought by the user
            assert source.exists(), f"{target} mounts {source}, which does not exist"
    agent = resolved["services"]["agent"]
    assert agent["read_only"] is True and agent["user"] == "10001:10001" and agent["cap_drop"] == ["ALL"]


def test_the_agents_compose_config_is_a_valid_settings_file(monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.runtime.settings import load_settings

    clear_agent_environment(monkeypatch)
    monkeypatch.setenv("DKNN_BOOTSTRAP_SERVERS", "kafka:19092")
    settings = load_settings(ROOT / "deploy" / "compose" / "agent-config.yaml", strict=True)
    assert settings.artifacts == Path("/bundle") and settings.metrics.port == 9108


def test_compose_config_rejects_a_broken_file(tools: Tools, tmp_path: Path) -> None:
    broken = yaml.safe_load(COMPOSE.read_text())
    broken["services"]["agent"]["read_only"] = "sometimes"
    broken["services"]["agent"]["restart_policy"] = "always"  # not a Compose key
    path = tmp_path / "compose.yaml"
    path.write_text(yaml.safe_dump(broken))
    proc = config(tools, path)
    assert proc.returncode != 0
    assert "restart_policy" in proc.stderr or "read_only" in proc.stderr, proc.stderr
