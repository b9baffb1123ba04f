"""`dknn-agent demo`: what DkNN credibility looks like on clean and shifted MNIST, in one table."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field

from agent.cli.flags import Command
from agent.runtime.routing import DEFAULT_THRESHOLD
from dknn_lab.commands.common import MNIST_DATA, DataDir


class DemoCommand(Command):
    """Score MNIST evaluation digits and three kinds of shifted input (uniform noise, digits rotated 90°, FGSM
    ε=0.25) with a reference bundle, and show accuracy and credibility for each.
    """

    command_name: ClassVar[str] = "demo"
    summary: ClassVar[str] = "score clean and shifted MNIST with a reference bundle and print a table"

    artifacts: Path = Field(description="MNIST reference bundle (make demo trains one)")
    data_dir: DataDir = Field(None, description=MNIST_DATA)
    count: int = Field(1000, ge=1, description="evaluation digits to score (default: 1000)")
    threshold: float = Field(
        DEFAULT_THRESHOLD, gt=0, lt=1, description=f"quarantine below this credibility (default: {DEFAULT_THRESHOLD})"
    )

    def run(self) -> int:
        from dknn_lab.demo_table import print_demo_table

        print_demo_table(self.artifacts, self.data_dir, self.count, self.threshold)
        return 0
