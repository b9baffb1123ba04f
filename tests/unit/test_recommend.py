"""What `fit` indexes when told nothing (agent.engine.recommend): the reference study's layers, found
by role in any model's tap points, the same whether the model is a Python module or its program."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from agent.engine.program import export_program
from agent.engine.recommend import HIDDEN_DIMENSIONS, RESIDUAL_COMPONENTS, Suggestion, suggest
from agent.engine.taps import ModuleModel, TappableModel
from agent.errors import ConfigError
from dknn_lab.models.mnist import INPUT_SHAPE, build_model


def as_source(module: nn.Module, kind: str, example: torch.Tensor) -> TappableModel:
    return ModuleModel(module) if kind == "module" else export_program(module, (example[:2],))


def suggestion(module: nn.Module, kind: str, example: torch.Tensor, num_classes: int) -> Suggestion:
    return suggest(as_source(module.eval(), kind, example).tap_points([example[:3]], None), num_classes)


@pytest.fixture(scope="module")
def mnist() -> dict[str, Suggestion]:
    """The reference CNN's suggestions by kind of model (untrained: only the architecture matters)."""
    torch.manual_seed(0)
    model = build_model().eval()
    return {kind: suggestion(model, kind, torch.zeros(3, *INPUT_SHAPE), 10) for kind in ("module", "program")}


@pytest.mark.parametrize("kind", ["module", "program"])
def test_the_mnist_reference_gets_the_layers_the_reference_study_chose(mnist: dict[str, Suggestion], kind: str) -> None:
    chosen = mnist[kind]
    assert (chosen.hidden, chosen.residual, chosen.logits) == ("relu3", "relu2", "logits")
    assert chosen.layers("recommended") == {"relu3": f"l2+pca:{HIDDEN_DIMENSIONS}", "logits": "none"}
    residual = chosen.residual_spec()
    assert residual is not None and (residual.layer, residual.components) == ("relu2", RESIDUAL_COMPONENTS)


@pytest.mark.parametrize("kind", ["module", "program"])
def test_the_paper_preset_indexes_the_hidden_activations_and_the_logits(
    mnist: dict[str, Suggestion], kind: str
) -> None:
    chosen = mnist[kind]
    assert chosen.paper == ("relu1", "relu2", "relu3")
    assert chosen.layers("paper") == {"relu1": "pca:32", "relu2": "pca:32", "relu3": "pca:32", "logits": "none"}
    assert list(chosen.layers("paper")) == ["relu1", "relu2", "relu3", "logits"]  # in execution order


def tabular(width: int, depth: int = 2, features: int = 8, classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for index in range(depth):
        layers += [nn.Linear(features if index == 0 else width, width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, classes)).eval()


@pytest.mark.parametrize("kind", ["module", "program"])
def test_a_tabular_mlp_s_second_relu_is_hidden_and_its_first_the_residual(kind: str) -> None:
    chosen = suggestion(tabular(64), kind, torch.randn(3, 8), 3)
    assert (chosen.hidden, chosen.residual, chosen.logits) == ("3", "1", "4")
    assert chosen.layers("recommended") == {"3": "l2+pca:32", "4": "none"}
    residual = chosen.residual_spec()
    assert residual is not None and residual.components == 32  # half of 64, under the cap of 64
    assert chosen.layers("paper") == {"1": "pca:32", "3": "pca:32", "4": "none"}


@pytest.mark.parametrize("kind", ["module", "program"])
def test_a_narrow_layer_keeps_its_width_and_half_of_it_as_residual_components(kind: str) -> None:
    chosen = suggestion(tabular(12), kind, torch.randn(3, 8), 3)
    assert chosen.layers("recommended") == {"3": "l2", "4": "none"}  # 12 wide: no PCA to 32
    residual = chosen.residual_spec()
    assert residual is not None and (residual.layer, residual.components) == ("1", 6)


def test_a_wide_layer_s_residual_components_are_capped() -> None:
    residual = suggestion(tabular(300), "module", torch.randn(3, 8), 3).residual_spec()
    assert residual is not None and residual.components == RESIDUAL_COMPONENTS


def test_a_layer_barely_wider_than_the_classes_gets_no_residual_term() -> None:
    chosen = suggestion(tabular(6), "module", torch.randn(3, 8), 3)  # 6 = 2 x 3 classes
    assert chosen.hidden == "3" and chosen.residual is None and chosen.residual_spec() is None
    assert chosen.layers("recommended") == {"3": "l2", "4": "none"}


@pytest.mark.parametrize("kind", ["module", "program"])
def test_a_deep_mlp_s_paper_layers_are_spread_over_its_activations(kind: str) -> None:
    chosen = suggestion(tabular(16, depth=6), kind, torch.randn(3, 8), 3)
    relus = [str(index) for index in range(1, 12, 2)]  # 1, 3, ..., 11
    assert chosen.hidden == "11" and chosen.residual == "9"
    assert len(chosen.paper) == 4 and chosen.paper[-1] == "11"
    assert set(chosen.paper) <= set(relus)
    assert list(chosen.paper) == sorted(chosen.paper, key=relus.index)
    assert list(chosen.layers("paper")) == [*chosen.paper, "12"]


@pytest.mark.parametrize("kind", ["module", "program"])
def test_a_model_without_a_hidden_layer_still_indexes_its_logits(kind: str) -> None:
    model = nn.Sequential(nn.Linear(8, 3))
    chosen = suggestion(model, kind, torch.randn(3, 8), 3)
    assert (chosen.hidden, chosen.residual, chosen.paper) == (None, None, ())
    assert chosen.layers("recommended") == {"0": "none"}
    assert chosen.layers("paper") == {"0": "none"}


def test_a_model_with_nothing_to_index_is_a_config_error_that_says_what_to_do() -> None:
    # A bare module has no named submodule: hooks see nothing but its output.
    chosen = suggestion(nn.Linear(8, 3), "module", torch.randn(3, 8), 3)
    assert chosen == Suggestion(None, None, None, (), {})
    for preset in ("recommended", "paper"):
        with pytest.raises(ConfigError, match=r"no layer to index was found: name them with --layers"):
            chosen.layers(preset)


def test_the_same_bare_module_as_a_program_indexes_its_linear_operation() -> None:
    chosen = suggestion(nn.Linear(8, 3), "program", torch.randn(3, 8), 3)
    assert chosen.layers("recommended") == {":linear": "none"}


def test_untappable_points_are_never_chosen() -> None:
    """A GRU's h_n is (layers, batch, hidden): not batch-first, so never hidden nor residual."""

    class Recurrent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gru = nn.GRU(4, 16, batch_first=True)
            self.act = nn.Tanh()
            self.head = nn.Linear(16, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            _, h = self.gru(x)
            return self.head(self.act(h[-1]))

    torch.manual_seed(0)
    chosen = suggestion(Recurrent(), "module", torch.randn(3, 5, 4), 3)
    assert chosen.hidden == "act" and chosen.residual == "gru[0]"
    assert "gru[1]" not in chosen.widths


class Block(nn.Module):
    """torchvision's BasicBlock in small: one relu module called twice, the second after the skip."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv = nn.Linear(width, width)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.relu(self.conv(x)) + x)


def residual_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), Block(16), nn.Linear(16, 3)).eval()


def cnn_with_flatten_module() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 2 * 2, 3)
    ).eval()


@pytest.mark.parametrize(
    ("build", "example", "expected"),
    [
        (residual_net, torch.randn(3, 8), ("1.relu#1", "1.relu")),
        (cnn_with_flatten_module, torch.randn(3, 1, 6, 6), ("3", "1")),
    ],
    ids=["residual-block", "nn-flatten"],
)
def test_a_module_and_its_program_get_the_same_layers(
    build: Callable[[], nn.Module], example: torch.Tensor, expected: tuple[str, str]
) -> None:
    module, program = (suggestion(build(), kind, example, 3) for kind in ("module", "program"))
    assert (module.hidden, module.residual) == expected
    assert (program.hidden, program.residual) == expected
    assert program.layers("recommended") == module.layers("recommended")
    assert program.layers("paper") == module.layers("paper")
    assert program.residual_spec() == module.residual_spec()


def test_the_mnist_reference_gets_the_same_layers_as_module_and_as_program(mnist: dict[str, Suggestion]) -> None:
    for preset in ("recommended", "paper"):
        assert mnist["module"].layers(preset) == mnist["program"].layers(preset)
    assert mnist["module"].residual_spec() == mnist["program"].residual_spec()


class _PooledGru(torch.nn.Module):
    """Token ids -> embedding -> GRU -> mean over time -> Linear -> ReLU -> logits: no activation
    before the hidden layer but that layer's own pre-activation."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = torch.nn.Embedding(20, 8)
        self.gru = torch.nn.GRU(8, 16, batch_first=True)
        self.head = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU())
        self.classifier = torch.nn.Linear(16, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        outputs, _ = self.gru(self.embedding(ids))
        return self.classifier(self.head(outputs.mean(dim=1)))


def test_the_residual_term_never_looks_at_the_hidden_layers_own_pre_activation() -> None:
    module = _PooledGru().eval()
    ids = torch.randint(0, 20, (3, 5))
    for model in (ModuleModel(module), export_program(module, (torch.randint(0, 20, (2, 5)),))):
        suggestion = suggest(model.tap_points([ids], None), 3)
        assert suggestion.hidden == "head.1"
        assert suggestion.residual == "gru[0]"  # not head.0, which head.1 reads directly
