"""Reference-model training: the SNNL term does what its sign says."""

from __future__ import annotations

import pytest
import torch

from agent.engine.taps import ActivationTap
from agent.errors import ConfigError
from dknn_lab.models.tiny import build_model
from dknn_lab.reference import reference_version
from dknn_lab.snnl import soft_nearest_neighbor_loss
from dknn_lab.training import TrainOptions, train_classifier
from tests.conftest import blobs


def hidden_snnl(weight: float, distance: str = "euclidean", temperature: float = 10.0) -> tuple[float, torch.nn.Module]:
    data = blobs(400, seed=5)
    torch.manual_seed(0)
    model = build_model()
    options = TrainOptions(
        epochs=8,
        batch_size=64,
        progress=False,
        snnl_weight=weight,
        snnl_temperature=temperature,
        snnl_distance=distance,
        snnl_layers=("relu1",),
    )
    train_classifier(model, data.x, data.y, options)
    hidden = torch.as_tensor(ActivationTap(model, ["relu1"])(data.x).layers["relu1"])
    value = soft_nearest_neighbor_loss(hidden, torch.as_tensor(data.y), temperature=temperature, distance=distance)
    return float(value), model


def test_positive_snnl_weight_entangles_the_hidden_layer() -> None:
    """CE − w·SNNL with w > 0 leaves the hidden layer more entangled (higher SNNL) than CE alone."""
    plain, _ = hidden_snnl(0.0)
    entangled, model = hidden_snnl(1.0)
    assert entangled > plain
    assert all(not module._forward_hooks for name, module in model.named_modules() if name != "relu1")


def test_cosine_snnl_entangles_too() -> None:
    """The scale-invariant variant the SNNL study uses: shrinking activations cannot raise it."""
    plain, _ = hidden_snnl(0.0, distance="cosine", temperature=0.1)
    entangled, _ = hidden_snnl(1.0, distance="cosine", temperature=0.1)
    assert entangled > plain


def test_reference_version_names_the_training_configuration() -> None:
    plain = TrainOptions(seed=3, epochs=10, shift_px=2)
    snnl = TrainOptions(
        seed=3,
        epochs=10,
        shift_px=2,
        snnl_weight=1.0,
        snnl_temperature=0.1,
        snnl_distance="cosine",
        snnl_layers=("relu1", "relu2"),
    )
    assert reference_version(plain) == "seed3-e10"
    assert reference_version(snnl) == "seed3-e10-snnl1-cosine-T0.1-relu1+relu2"
    variants = {
        reference_version(options)
        for options in (
            plain,
            snnl,
            TrainOptions(seed=3, epochs=10, shift_px=0),
            TrainOptions(
                seed=3,
                epochs=10,
                shift_px=2,
                snnl_weight=1.0,
                snnl_temperature=0.1,
                snnl_distance="euclidean",
                snnl_layers=("relu1", "relu2"),
            ),
        )
    }
    assert len(variants) == 4


def test_unknown_snnl_layer_is_a_config_error() -> None:
    data = blobs(50, seed=1)
    with pytest.raises(ConfigError, match="conv9"):
        train_classifier(
            build_model(),
            data.x,
            data.y,
            TrainOptions(epochs=1, progress=False, snnl_weight=1.0, snnl_layers=("conv9",)),
        )
