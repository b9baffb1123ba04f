"""`train-reference --refit`: only an MNIST reference bundle's model can be refitted."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.errors import ConfigError
from agent.research.reference import train_reference_mnist


def test_refit_refuses_a_bundle_that_is_not_an_mnist_reference(tiny_bundle: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not an MNIST reference bundle"):
        train_reference_mnist(out=tmp_path / "out", refit=tiny_bundle)
    assert not (tmp_path / "out").exists()
