"""Tap names say where to read a value and which part of it (agent.engine.taps): the grammar, the
selectors over model outputs, and the promise that a Python module and the program exported from it
answer the same names with the same values."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from agent.engine.program import Program, export_program
from agent.engine.taps import ActivationTap, ModuleModel, TapName, TappableModel, TapPoint, parse_output, select
from agent.errors import ConfigError

# -- the grammar --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("layer1.0.relu", TapName("layer1.0.relu")),
        ("layer1.0.relu#1", TapName("layer1.0.relu", call=1)),
        ("gru[0]", TapName("gru", selectors=(0,))),
        ("enc[last_hidden_state]", TapName("enc", selectors=("last_hidden_state",))),
        ("lstm[1][0]", TapName("lstm", selectors=(1, 0))),
        ("x[-1]", TapName("x", selectors=(-1,))),
        ("a[ 1 ]", TapName("a", selectors=(1,))),
        ("lstm#2[1]", TapName("lstm", call=2, selectors=(1,))),
        ("layer1.0:add", TapName("layer1.0", op="add")),
        (":flatten#1", TapName("", op="flatten", op_call=1)),
        ("block#1:add#2", TapName("block", call=1, op="add", op_call=2)),
        ("gru:split[0]", TapName("gru", op="split", selectors=(0,))),
    ],
)
def test_a_valid_tap_name_parses_into_its_parts(text: str, parsed: TapName) -> None:
    assert TapName.parse(text) == parsed


@pytest.mark.parametrize(
    ("text", "site"),
    [
        ("layer1.0.relu", "layer1.0.relu"),
        ("layer1.0.relu#1[0]", "layer1.0.relu#1"),
        ("layer1.0.relu#0", "layer1.0.relu"),  # the first call, spelled out
        ("block#1:add#2[x]", "block#1:add#2"),
        (":flatten", ":flatten"),
    ],
)
def test_the_site_of_a_tap_is_its_name_without_selectors(text: str, site: str) -> None:
    assert TapName.parse(text).site == site


@pytest.mark.parametrize(
    ("text", "cause"),
    [
        ("", "use PATH, PATH#N"),
        ("a#b", "use PATH, PATH#N"),
        ("a#1#2", "use PATH, PATH#N"),
        ("a#12345", "use PATH, PATH#N"),  # at most four digits of call count
        ("a[", "use PATH, PATH#N"),
        ("a]", "use PATH, PATH#N"),
        ("a[0", "use PATH, PATH#N"),
        ("a[]", "use PATH, PATH#N"),
        ("a[0]b", "use PATH, PATH#N"),
        ("x" * 257, "use PATH, PATH#N"),
        ("#1", "no module path"),
        ("[0]", "no module path"),
        ("a[0]:add", "an operation is MODULE:OP or :OP"),
        ("a:", "an operation is MODULE:OP or :OP"),
        (":", "an operation is MODULE:OP or :OP"),
        ("a:#1", "an operation is MODULE:OP or :OP"),
    ],
)
def test_a_malformed_tap_name_is_a_config_error_that_says_how_to_spell_one(text: str, cause: str) -> None:
    with pytest.raises(ConfigError, match=rf"^bad tap name .*{cause}"):
        TapName.parse(text)


@pytest.mark.parametrize(
    ("text", "selectors"),
    [(None, ()), ("", ()), ("logits", ("logits",)), ("[logits]", ("logits",)), ("[0][1]", (0, 1))],
)
def test_an_output_selector_may_be_bracketed_or_a_bare_key(text: str | None, selectors: tuple[Any, ...]) -> None:
    assert parse_output(text) == selectors


@pytest.mark.parametrize("text", ["[logits", "logits]", "[a]b", "[]"])
def test_a_malformed_output_selector_is_refused(text: str) -> None:
    with pytest.raises(ConfigError, match=r"bad output selector .*use \[0\], \[logits\] or logits"):
        parse_output(text)


# -- selectors over model values ----------------------------------------------------------------------


class FakeModelOutput(OrderedDict[str, Any]):
    """What Hugging Face returns: a dict whose set fields are also attributes."""

    def __init__(self, **fields: Any) -> None:
        super().__init__({key: value for key, value in fields.items() if value is not None})
        for key, value in fields.items():
            setattr(self, key, value)


@dataclass
class Plain:
    logits: torch.Tensor


def test_selectors_reach_into_tuples_dicts_model_outputs_and_objects() -> None:
    a, b, c = torch.zeros(2, 1), torch.ones(2, 2), torch.full((2, 3), 2.0)
    assert select((a, b), [1], "m") is b
    assert select((a, b), [-1], "m") is b
    assert select([a, (b, c)], [1, 0], "m") is b
    assert select({"x": a, "y": {"z": c}}, ["y", "z"], "m") is c
    output = FakeModelOutput(logits=c, hidden_states=(a, b), attentions=None)
    assert select(output, ["logits"], "m") is c
    assert select(output, ["hidden_states", 0], "m") is a
    assert select(Plain(logits=b), ["logits"], "m") is b
    assert select(a, [], "m") is a


@pytest.mark.parametrize(
    ("value", "selectors", "message"),
    [
        ((torch.zeros(2), torch.zeros(2)), [5], r"^m has 2 elements; \[5\] is out of range$"),
        ((torch.zeros(2), torch.zeros(2)), [-3], r"^m has 2 elements; \[-3\] is out of range$"),
        ({"a": 1, "b": 2}, ["c"], r"^m has no key 'c'; keys: \['a', 'b'\]$"),
        ({"a": 1}, [0], r"^m is a dict with keys \['a'\]; \[0\] does not select from it$"),
        ((torch.zeros(2, 3),), [0, 1], r"^m\[0\] is a tensor of shape \[2, 3\]; \[1\] does not select from it$"),
        ((torch.zeros(2, 3),), [0, "x"], r"^m\[0\] is a tensor of shape \[2, 3\]; \[x\] does not select from it$"),
        ((torch.zeros(2),), ["logits"], r"^m is a tuple of 1; \[logits\] does not select from it$"),
        (Plain(torch.zeros(1)), ["hidden"], r"^m is a Plain; \[hidden\] does not select from it$"),
        (Plain(torch.zeros(1)), [0], r"^m is a Plain; \[0\] does not select from it$"),
        # A ModelOutput field that is None is no key, though it is an attribute.
        (FakeModelOutput(logits=torch.zeros(1), attentions=None), ["attentions"], r"has no key 'attentions'"),
    ],
)
def test_a_selector_that_does_not_fit_the_value_says_what_the_value_is(
    value: Any, selectors: list[Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        select(value, selectors, "m")


# -- a ResNet-style block: one relu module called twice ------------------------------------------------


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Linear(4, 4)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.conv(x))
        return self.relu(y + x - 0.5)


class ResidualNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = Block()
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(x))


@pytest.fixture(scope="module")
def residual_net() -> ResidualNet:
    torch.manual_seed(0)
    return ResidualNet().eval()


@pytest.fixture(scope="module")
def residual_program(residual_net: ResidualNet) -> Program:
    return export_program(residual_net, (torch.zeros(2, 4),))


def by_hand(net: ResidualNet, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The block's values computed without the tap machinery."""
    with torch.no_grad():
        conv = x @ net.block.conv.weight.T + net.block.conv.bias
        first = conv.clamp(min=0)
        added = first + x
        second = (added - 0.5).clamp(min=0)
        return {"first": first, "added": added, "second": second, "logits": net(x)}


def tapped(model: TappableModel | nn.Module, layers: list[str], x: torch.Tensor, output: str | None = None) -> Any:
    tap = ActivationTap(model, layers, output=output)
    try:
        return tap(x)
    finally:
        tap.close()


@pytest.mark.parametrize("kind", ["module", "program"])
def test_a_module_called_twice_gives_each_call_its_own_name(
    residual_net: ResidualNet, residual_program: Program, kind: str
) -> None:
    x = torch.randn(5, 4)  # neither the export example's batch nor the probe's
    source = ModuleModel(residual_net) if kind == "module" else residual_program
    got = tapped(source, ["block.relu", "block.relu#1", "block"], x)
    want = by_hand(residual_net, x)
    assert not np.allclose(want["first"].numpy(), want["second"].numpy())  # the two calls differ
    np.testing.assert_allclose(got.layers["block.relu"], want["first"].numpy(), atol=1e-6)
    np.testing.assert_allclose(got.layers["block.relu#1"], want["second"].numpy(), atol=1e-6)
    np.testing.assert_allclose(got.layers["block"], want["second"].numpy(), atol=1e-6)
    np.testing.assert_allclose(got.outputs, want["logits"].numpy(), atol=1e-6)


def test_a_call_that_did_not_happen_says_how_many_there_were(residual_net: ResidualNet) -> None:
    tap = ActivationTap(residual_net, ["block.relu#2"])
    with pytest.raises(ConfigError, match=r"tap 'block\.relu#2': block\.relu was called 2 time\(s\)"):
        tap(torch.randn(3, 4))
    tap.close()


def test_a_program_without_that_call_names_the_calls_it_has(residual_program: Program) -> None:
    with pytest.raises(ConfigError, match=r"no tap 'block\.relu#2'; module calls: .*block\.relu, .*block\.relu#1"):
        residual_program.open(["block.relu#2"], None)


def test_a_module_path_that_does_not_exist_lists_the_named_modules(residual_net: ResidualNet) -> None:
    with pytest.raises(ConfigError, match=r"model has no layer 'block\.conv2' .*named modules are: block, block\.conv"):
        ActivationTap(residual_net, ["block.conv2"])


def test_operations_are_tapped_in_programs_with_their_values(
    residual_net: ResidualNet, residual_program: Program
) -> None:
    x = torch.randn(4, 4)
    got = tapped(residual_program, ["block:add", "block:sub"], x)
    want = by_hand(residual_net, x)
    np.testing.assert_allclose(got.layers["block:add"], want["added"].numpy(), atol=1e-6)
    np.testing.assert_allclose(got.layers["block:sub"], (want["added"] - 0.5).numpy(), atol=1e-6)


def test_operations_cannot_be_tapped_through_hooks(residual_net: ResidualNet) -> None:
    with pytest.raises(ConfigError, match="operations can be tapped in serialized programs only"):
        ActivationTap(residual_net, ["block:add"])


def test_tap_points_list_both_calls_with_the_same_names_for_module_and_program(
    residual_net: ResidualNet, residual_program: Program
) -> None:
    x = torch.randn(3, 4)
    module_points = {point.name: point for point in ModuleModel(residual_net).tap_points([x], None)}
    program_points = {point.name: point for point in residual_program.tap_points([x], None)}
    modules = {"block", "block.conv", "block.relu", "block.relu#1", "head"}
    assert set(module_points) == modules
    assert set(program_points) == modules | {"block:add", "block:sub"}
    for name in modules:
        assert (module_points[name].kind, module_points[name].shape) == (
            program_points[name].kind,
            program_points[name].shape,
        )
    assert module_points["head"].logits and program_points["head"].logits


def test_module_calls_are_listed_in_the_same_order_by_module_and_program(
    residual_net: ResidualNet, residual_program: Program
) -> None:
    """The block and its second relu end in the same value: the inner call comes first, as hooks see it."""
    x = torch.randn(3, 4)
    in_program = [point.name for point in residual_program.tap_points([x], None) if ":" not in point.name]
    in_module = [point.name for point in ModuleModel(residual_net).tap_points([x], None)]
    assert in_module == ["block.conv", "block.relu", "block.relu#1", "block", "head"]
    assert in_program == in_module


# -- tuple outputs: a GRU -----------------------------------------------------------------------------


class Recurrent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(4, 6, batch_first=True)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(x)
        return self.head(out[:, -1])


@pytest.fixture(scope="module")
def recurrent() -> Recurrent:
    torch.manual_seed(0)
    return Recurrent().eval()


@pytest.fixture(scope="module")
def recurrent_program(recurrent: Recurrent) -> Program:
    with pytest.warns(UserWarning, match="were assigned during export"):  # the GRU's flat weights
        return export_program(recurrent, (torch.zeros(2, 5, 4),))


@pytest.mark.parametrize("kind", ["module", "program"])
def test_a_gru_is_tapped_by_the_part_of_its_output_tuple(
    recurrent: Recurrent, recurrent_program: Program, kind: str
) -> None:
    source = ModuleModel(recurrent) if kind == "module" else recurrent_program
    x = torch.randn(3, 5, 4)
    with torch.no_grad():
        want, _ = recurrent.gru(x)
    got = tapped(source, ["gru[0]"], x)
    assert got.layers["gru[0]"].shape == (3, 5 * 6)
    np.testing.assert_allclose(got.layers["gru[0]"], want.reshape(3, -1).numpy(), atol=1e-5)
    # h_n is (layers, batch, hidden): its first dimension is not the batch.
    with pytest.raises(
        ConfigError, match=r"tap 'gru\[1\]' has shape \[1, 3, 6\]: its first dimension is not the batch"
    ):
        tapped(source, ["gru[1]"], x)
    # The whole tuple is no tensor: the message says which selector to add.
    if kind == "module":
        with pytest.raises(
            ConfigError, match=r"tap 'gru' is a tuple of 2, not a tensor: add a selector such as gru\[0\]"
        ):
            tapped(source, ["gru"], x)


def test_a_program_s_gru_offers_its_parts_and_nothing_else(recurrent_program: Program) -> None:
    with pytest.raises(ConfigError, match=r"tap 'gru\[2\]': gru gives gru\[0\], gru\[1\]"):
        recurrent_program.open(["gru[2]"], None)
    with pytest.raises(ConfigError, match=r"tap 'gru': gru gives gru\[0\], gru\[1\]"):
        recurrent_program.open(["gru"], None)


def test_tap_points_of_a_gru_say_which_parts_are_batch_first(recurrent: Recurrent, recurrent_program: Program) -> None:
    x = torch.randn(3, 5, 4)
    for source in (ModuleModel(recurrent), recurrent_program):
        points = {point.name: point for point in source.tap_points([x], None)}
        assert points["gru[0]"].batch_first and points["gru[0]"].shape == (5, 6)
        assert not points["gru[1]"].batch_first and not points["gru[1]"].tappable
        assert points["gru[1]"].shape == (1, 3, 6)


# -- dict outputs: the output selector ----------------------------------------------------------------


class DictOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 6)
        self.act = nn.ReLU()
        self.classifier = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        hidden = self.act(self.body(x))
        return {"hidden": hidden, "logits": self.classifier(hidden)}


@pytest.fixture(scope="module")
def dict_output() -> DictOutput:
    torch.manual_seed(0)
    return DictOutput().eval()


@pytest.mark.parametrize("kind", ["module", "program"])
def test_the_output_selector_picks_the_logits_out_of_a_dict(dict_output: DictOutput, kind: str) -> None:
    source: TappableModel = (
        ModuleModel(dict_output) if kind == "module" else export_program(dict_output, (torch.zeros(2, 4),))
    )
    x = torch.randn(5, 4)
    with torch.no_grad():
        want = dict_output(x)
    for selector in ("[logits]", "logits"):
        got = tapped(source, ["act"], x, output=selector)
        np.testing.assert_allclose(got.outputs, want["logits"].numpy(), atol=1e-6)
        np.testing.assert_allclose(got.layers["act"], want["hidden"].numpy(), atol=1e-6)
        with torch.no_grad():
            assert torch.allclose(source.classifier(selector)(x), want["logits"], atol=1e-6)
    points = {point.name: point for point in source.tap_points([x], "[logits]")}
    assert points["classifier"].logits and points["act"].feeds_logits
    assert not points["act"].logits


def test_a_dict_output_without_a_selector_asks_for_one(dict_output: DictOutput) -> None:
    with pytest.raises(ConfigError, match=r"the model's output is a dict with keys \['hidden', 'logits'\]: name the"):
        tapped(dict_output, ["act"], torch.randn(3, 4))


def test_a_program_refuses_an_output_selector_that_names_no_output(dict_output: DictOutput) -> None:
    program = export_program(dict_output, (torch.zeros(2, 4),))
    assert set(program.output_paths) == {("hidden",), ("logits",)}
    for selector in ("[probs]", None, "[0]"):
        with pytest.raises(ConfigError, match=r"does not name one tensor of the program's outputs: .*\[logits\]"):
            program.open(["act"], selector)
        with pytest.raises(ConfigError, match=r"does not name one tensor"):
            program.classifier(selector)


# -- which point makes the logits and which feeds them -------------------------------------------------


def marks(points: list[TapPoint]) -> tuple[list[str], list[str]]:
    return [point.name for point in points if point.logits], [point.name for point in points if point.feeds_logits]


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3)).eval()


class FunctionalFlatten(nn.Module):
    """The MNIST reference's shape: torch.flatten between the last activation and the classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.relu(self.conv(x)), 1))


def sequential_cnn() -> nn.Module:
    """The same with an nn.Flatten module: the flatten is a module of its own."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)).eval()


@pytest.mark.parametrize("kind", ["module", "program"])
def test_the_mlp_s_last_linear_makes_the_logits_and_the_relu_before_it_feeds_them(kind: str) -> None:
    model = mlp()
    x = torch.randn(3, 8)
    source = ModuleModel(model) if kind == "module" else export_program(model, (torch.zeros(2, 8),))
    logits, fed = marks(source.tap_points([x], None))
    assert logits == ["4"]
    assert fed == ["3"]


@pytest.mark.parametrize("kind", ["module", "program"])
def test_a_cnn_s_logits_are_fed_by_the_module_before_a_functional_flatten(kind: str) -> None:
    torch.manual_seed(0)
    model = FunctionalFlatten().eval()
    x = torch.randn(3, 1, 6, 6)
    source = ModuleModel(model) if kind == "module" else export_program(model, (torch.zeros(2, 1, 6, 6),))
    points = source.tap_points([x], None)
    logits, fed = marks(points)
    assert logits == ["fc"]
    assert fed == ["relu"]  # not the program's ':flatten'
    if kind == "program":
        assert ":flatten" in {point.name for point in points}


@pytest.mark.parametrize("kind", ["module", "program"])
def test_a_cnn_s_logits_are_fed_by_the_module_before_an_nn_flatten(kind: str) -> None:
    model = sequential_cnn()
    x = torch.randn(3, 1, 6, 6)
    source = ModuleModel(model) if kind == "module" else export_program(model, (torch.zeros(2, 1, 6, 6),))
    points = {point.name: point for point in source.tap_points([x], None)}
    assert [name for name, point in points.items() if point.logits] == ["3"]
    assert points["1"].feeds_logits  # the ReLU, not only the Flatten after it
    assert points["1"].kind == "ReLU" and points["2"].kind == "Flatten"
