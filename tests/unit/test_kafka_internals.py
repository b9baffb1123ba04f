"""`KafkaSource._unstick_join` reaches into kafka-python 3.0.x internals; fail loudly if they move.

The workaround reads every attribute with getattr, so after a client upgrade that renamed them it
would silently stop working and the group-join hang it exists for would come back. This test
builds a real consumer (no broker needed: api_version is given, so nothing is probed) and checks
every name the workaround relies on.
"""

from __future__ import annotations

import inspect

import kafka
from kafka import KafkaConsumer
from kafka.structs import MemberState

from connectors.kafka import KafkaSource


def test_the_pinned_minor_version_is_installed() -> None:
    assert kafka.__version__.startswith("3.0."), (
        f"kafka-python {kafka.__version__}: re-check KafkaSource._unstick_join against the new client, "
        "then update the pin in pyproject.toml"
    )


def test_every_internal_the_join_workaround_reads_still_exists() -> None:
    consumer = KafkaConsumer(
        bootstrap_servers="127.0.0.1:1", group_id="internals-check", api_version=(2, 5, 0), enable_auto_commit=False
    )
    try:
        coordinator = consumer._coordinator
        assert hasattr(coordinator, "_join_task"), "BaseCoordinator._join_task is gone"
        assert hasattr(coordinator, "state"), "BaseCoordinator.state is gone"
        assert callable(coordinator.need_rejoin) and callable(coordinator.request_rejoin)
        assert coordinator.state != MemberState.REBALANCING, "a fresh consumer should not be rebalancing"
    finally:
        consumer.close(autocommit=False)
    source_text = inspect.getsource(KafkaSource._unstick_join)
    for name in ("_coordinator", "_join_task", "is_done", "state", "need_rejoin", "request_rejoin"):
        assert name in source_text, f"the workaround no longer reads {name}; update this test with it"
