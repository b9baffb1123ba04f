"""The lab's commands, added to `dknn-agent` through the `dknn_agent.commands` entry point."""

from __future__ import annotations

from agent.cli.flags import Registrable
from dknn_lab.commands.bench import BENCH
from dknn_lab.commands.demo import DemoCommand
from dknn_lab.commands.produce_demo import ProduceDemoCommand
from dknn_lab.commands.train_reference import TrainReferenceCommand

COMMANDS: list[Registrable] = [ProduceDemoCommand, TrainReferenceCommand, BENCH, DemoCommand]
