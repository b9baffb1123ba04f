"""Reference-model training: the SNNL term does what its sign says."""

from __future__ import annotations

import pytest
import torch

from agent.errors import ConfigError
from agent.models.tiny import build_model
from agent.snnl import soft_nearest_neighbor_loss
from agent.taps import ActivationTap
from agent.training import TrainOptions, train_classifier
from tests.conftest import blobs


def hidden_snnl(weight: float) -> tuple[float, torch.nn.Module]:
    data = blobs(400, seed=5)
    torch.manual_seed(0)
    model = build_model()
    options = TrainOptions(epochs=8, batch_size=64, progress=False, snnl_weight=weight, snnl_temperature=10.0,
                           snnl_layers=("relu1",))
    train_classifier(model, data.x, data.y, options)
    hidden = torch.as_tensor(ActivationTap(model, ["relu1"])(data.x).layers["relu1"])
    return float(soft_nearest_neighbor_loss(hidden, torch.as_tensor(data.y), temperature=10.0)), model


def test_positive_snnl_weight_entangles_the_hidden_layer() -> None:
    """CE − w·SNNL with w > 0 leaves the hidden layer more entangled (higher SNNL) than CE alone."""
    plain, _ = hidden_snnl(0.0)
    entangled, model = hidden_snnl(1.0)
    assert entangled > plain
    assert all(not module._forward_hooks for name, module in model.named_modules() if name != "relu1")


def test_unknown_snnl_layer_is_a_config_error() -> None:
    data = blobs(50, seed=1)
    with pytest.raises(ConfigError, match="conv9"):
        train_classifier(build_model(), data.x, data.y,
                         TrainOptions(epochs=1, progress=False, snnl_weight=1.0, snnl_layers=("conv9",)))
