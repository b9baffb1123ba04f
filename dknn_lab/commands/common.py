"""What the lab's commands share: the MNIST data directory flag, training flags, and handing a
command's options to the bench's own options object."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from agent.cli.flags import Arg
from agent.cli.options import CommaList, OptionSet
from agent.errors import ConfigError

DataDir = Annotated[Path | None, Arg(flag="--data")]
MNIST_DATA = "MNIST IDX directory (default: the shared copy)"


def parse_counts(text: str, option: str) -> tuple[int, ...]:
    """`0,1,2` -> (0, 1, 2)."""
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"{option} must be comma-separated integers, got {text!r}") from None


def options_for(command: BaseModel, options_class: type[Any], **extra: Any) -> Any:
    """The bench's options dataclass from the command's fields of the same names (plus `extra`)."""
    names = {field.name for field in dataclasses.fields(options_class)}
    values = {name: getattr(command, name) for name in names if name in type(command).model_fields}
    return options_class(**(values | extra))


class SnnlOptions(OptionSet):
    """The SNNL training flags: None leaves the command's base training configuration as it is."""

    snnl_weight: float | None = Field(None, description="W in CE − W × Σ SNNL (default: 1)")
    snnl_temperature: float | None = Field(None, gt=0, description="SNNL temperature (default: 0.1)")
    snnl_distance: Literal["euclidean", "cosine"] | None = Field(
        None, description="distance inside the SNNL (default: cosine, scale invariant)"
    )
    snnl_layers: CommaList | None = Field(None, description="layers the SNNL term acts on (default: relu1,relu2,relu3)")

    def training_changes(self) -> dict[str, Any]:
        """The training options given on the command line, as TrainOptions fields: what the base
        configuration (`dataclasses.replace`) should change, and nothing else."""
        names = ("shift_px", "blur_sigma", "snnl_weight", "snnl_temperature", "snnl_distance", "snnl_layers")
        return {name: getattr(self, name) for name in names if getattr(self, name, None) is not None}
