"""`train-reference`: its defaults are the adopted configuration, and only an MNIST reference
bundle's model can be refitted."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from agent.cli import parse_command
from agent.engine.manifest import NonconformitySpec
from agent.errors import ConfigError
from dknn_lab.commands.train_reference import TrainReferenceCommand
from dknn_lab.reference import REFERENCE_NONCONFORMITY, REFERENCE_TRAINING, train_reference_mnist


def parse(*options: str) -> TrainReferenceCommand:
    command = parse_command(["train-reference", "mnist", "--out", "x", *options])
    assert isinstance(command, TrainReferenceCommand)
    return command


def test_the_commands_defaults_are_the_adopted_configuration() -> None:
    args = parse()
    assert args.training() == REFERENCE_TRAINING
    assert args.fit_options(REFERENCE_NONCONFORMITY).nonconformity == REFERENCE_NONCONFORMITY


def test_options_change_only_what_they_name() -> None:
    args = parse("--snnl-weight", "0", "--blur-sigma", "0", "--seed", "3")
    assert args.training() == replace(REFERENCE_TRAINING, snnl_weight=0.0, blur_sigma=0.0, seed=3)
    labels = parse("--nonconformity", "labels")  # the kind changes; the residual term stays
    assert labels.fit_options(REFERENCE_NONCONFORMITY).nonconformity == NonconformitySpec(
        residual=REFERENCE_NONCONFORMITY.residual
    )
    lighter = parse("--distance-weight", "5").fit_options(REFERENCE_NONCONFORMITY).nonconformity
    assert lighter == REFERENCE_NONCONFORMITY.model_copy(update={"distance_weight": 5})
    paper = parse("--nonconformity", "labels", "--no-residual").fit_options(REFERENCE_NONCONFORMITY)
    assert paper.nonconformity == NonconformitySpec()


def test_distance_options_need_the_distance_nonconformity() -> None:
    with pytest.raises(ConfigError, match=r"need --nonconformity labels\+distance"):
        parse("--nonconformity", "labels", "--distance-weight", "5").fit_options(REFERENCE_NONCONFORMITY)


def test_refit_refuses_a_bundle_that_is_not_an_mnist_reference(tiny_bundle: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not an MNIST reference bundle"):
        train_reference_mnist(out=tmp_path / "out", refit=tiny_bundle)
    assert not (tmp_path / "out").exists()
