"""The `observability` marker: Prometheus rules, Alertmanager config and runbook, checked with the real
promtool and amtool (on PATH; `make tools` fetches them, no root needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "observability: checks dashboards/ with promtool and amtool (on PATH: make tools)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.observability)
