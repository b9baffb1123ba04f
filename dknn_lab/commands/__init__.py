"""The lab's commands, added to `dknn-agent` through the `dknn_agent.commands` entry point."""

from __future__ import annotations

import argparse

from dknn_lab.commands import bench, demo, produce_demo, train_reference


def register(commands: argparse._SubParsersAction) -> None:
    produce_demo.register(commands)
    train_reference.register(commands)
    bench.register(commands)
    demo.register(commands)
