"""A `.pt2` archive is untrusted data: reading one may not run Python it carries (docs/security.md).

Each test tampers with a real `torch.export` archive the way an attacker would and checks that
`load_program` refuses it with a message naming the cause, and that the payload never ran: every
payload would create a marker file, which must stay absent. Where torch's own `torch.export.load`
would run the payload, a control test shows it does, so the refusals are not refusals of duds.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from agent.engine.program import Program, _check_expression, load_program
from agent.errors import BundleError

PREFIX = "archive/"
MODEL_JSON = f"{PREFIX}models/model.json"
WEIGHTS_CONFIG = f"{PREFIX}data/weights/model_weights_config.json"
CONSTANTS_CONFIG = f"{PREFIX}data/constants/model_constants_config.json"


def tiny_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)).eval()


@pytest.fixture(scope="module")
def module() -> nn.Module:
    return tiny_mlp()


@pytest.fixture(scope="module")
def archive(module: nn.Module) -> bytes:
    """The module exported with a dynamic batch (example batch 2) and saved as torch.export.save does."""
    batch = torch.export.Dim("batch", min=1)
    exported = torch.export.export(module, (torch.zeros(2, 4),), dynamic_shapes=({0: batch},))
    buffer = io.BytesIO()
    torch.export.save(exported, buffer)
    return buffer.getvalue()


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    """The file every payload would create."""
    return tmp_path / "pwned"


def members(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def rezip(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def tamper(data: bytes, edit: Callable[[dict[str, Any]], None], member: str = MODEL_JSON) -> bytes:
    """The archive with one of its JSON members edited in place."""
    files = members(data)
    document = json.loads(files[member])
    edit(document)
    files[member] = json.dumps(document).encode()
    return rezip(files)


def nodes(document: dict[str, Any]) -> list[dict[str, Any]]:
    return document["graph_module"]["graph"]["nodes"]


def relu_node(document: dict[str, Any]) -> dict[str, Any]:
    return next(node for node in nodes(document) if node["target"] == "torch.ops.aten.relu.default")


def retarget(target: str) -> Callable[[dict[str, Any]], None]:
    return lambda document: relu_node(document).update(target=target)


def the_input_size(document: dict[str, Any]) -> dict[str, Any]:
    """The serialized batch size of the program's input: `{"expr_str": ..., "hint": ...}`."""
    return document["graph_module"]["graph"]["tensor_values"]["input"]["sizes"][0]["as_expr"]


def touch(marker: Path) -> str:
    return f"__import__('os').system('touch {marker}')"


class Exploit:
    """A pickle payload: unpickling it runs `touch` on the marker."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


# -- a clean archive ----------------------------------------------------------------------------------


def test_a_clean_program_computes_what_its_module_does_for_any_batch_size(module: nn.Module, archive: bytes) -> None:
    program = load_program(archive, "model.pt2")
    assert isinstance(program, Program)
    assert program.input_meta() == [("input", "float32", (None, 4))]
    x = torch.randn(7, 4)  # exported with a batch of 2
    with torch.no_grad():
        got = program.classifier(None)(x)
        want = module(x)
    assert got.shape == (7, 3)
    assert torch.allclose(got, want, atol=1e-6)


# -- node targets -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        "torch.load",
        "torch.serialization.os.system",
        "builtins.exec",
        "builtins.eval",
        "#my_namespace:evil",  # a custom operator through an extension handler
        "torch.ops.my_namespace.evil.default",
        "torch.ops.higher_order.cond",
        "torch.ops.higher_order.while_loop",
    ],
)
def test_a_node_may_call_only_aten_operators(archive: bytes, marker: Path, target: str) -> None:
    with pytest.raises(BundleError, match=r"only ATen operators are accepted") as refused:
        load_program(tamper(archive, retarget(target)), "model.pt2")
    assert repr(target)[:40] in str(refused.value)
    assert str(refused.value).startswith("model.pt2: ")
    assert not marker.exists()


@pytest.mark.parametrize("target", ["torch.ops.aten.from_file.default", "torch.ops.aten._print.default"])
def test_aten_operators_that_reach_outside_are_refused(archive: bytes, target: str) -> None:
    with pytest.raises(BundleError, match=f"calls {re.escape(target)}, which is refused"):
        load_program(tamper(archive, retarget(target)), "model.pt2")


def test_a_node_without_an_operator_is_refused(archive: bytes) -> None:
    with pytest.raises(BundleError, match="a node has no operator"):
        load_program(tamper(archive, lambda document: relu_node(document).update(target=None)), "model.pt2")


# -- shape expressions (sympy.sympify is an eval) -------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "named"),
    [
        ("__import__('os').system('touch {marker}')", "__import__"),
        ("exec(\"open('{marker}', 'w')\")", "exec"),
        ("Symbol('s0', positive=True) + eval('1')", "eval"),
        ("Symbol('s0').__class__", None),  # attribute access: '.' is no operator
        ('Symbol("{marker}")', None),  # a quoted string that is not a symbol name
    ],
)
def test_a_shape_expression_cannot_call_python(archive: bytes, marker: Path, payload: str, named: str | None) -> None:
    text = payload.format(marker=marker)
    cause = rf"names {named!r}, which it may not" if named else "has a character it may not"
    with pytest.raises(BundleError, match=cause):
        load_program(tamper(archive, lambda document: the_input_size(document).update(expr_str=text)), "model.pt2")
    assert not marker.exists()


def test_torch_s_own_loader_would_run_that_shape_expression(archive: bytes, marker: Path) -> None:
    """The control: torch.export.load hands expr_str to sympy.sympify, which evaluates it."""
    tampered = tamper(archive, lambda document: the_input_size(document).update(expr_str=touch(marker)))
    with contextlib.suppress(Exception):  # what fails after the payload ran does not matter
        torch.export.load(io.BytesIO(tampered))
    assert marker.exists()


def test_an_expression_anywhere_in_the_document_is_checked(archive: bytes, marker: Path) -> None:
    def edit(document: dict[str, Any]) -> None:
        # Not where torch put one: deep inside a node's metadata-free argument tree.
        relu_node(document)["inputs"][0]["arg"] = {"as_sym_int": {"as_expr": {"expr_str": touch(marker)}}}

    with pytest.raises(BundleError, match="names '__import__'"):
        load_program(tamper(archive, edit), "model.pt2")
    assert not marker.exists()


@pytest.mark.parametrize("symbol", ["__import__('os').system('true')", "s0 + 1", "Symbol", "x" * 9 + "1"])
def test_a_range_constraint_must_name_a_shape_symbol(archive: bytes, symbol: str) -> None:
    def edit(document: dict[str, Any]) -> None:
        constraints = document["range_constraints"]
        constraints[symbol] = constraints.pop(next(iter(constraints)))

    with pytest.raises(BundleError, match=r"is not a shape symbol"):
        load_program(tamper(archive, edit), "model.pt2")


# -- pickles ------------------------------------------------------------------------------------------


def pickled_weight(archive: bytes, payload: bytes) -> bytes:
    """The first weight replaced by `payload` and marked as pickled (`use_pickle`)."""
    files = members(archive)
    config = json.loads(files[WEIGHTS_CONFIG])
    entry = config["config"]["0.weight"]
    entry["use_pickle"] = True
    files[WEIGHTS_CONFIG] = json.dumps(config).encode()
    files[f"{PREFIX}data/weights/{entry['path_name']}"] = payload
    return rezip(files)


def torch_saved(value: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("form", ["torch.save", "pickle"])
def test_a_pickled_weight_is_loaded_weights_only(archive: bytes, marker: Path, form: str) -> None:
    exploit = Exploit(marker)
    payload = torch_saved(exploit) if form == "torch.save" else pickle.dumps(exploit, protocol=2)
    with pytest.raises(BundleError, match=r"weights entry '0\.weight' is unreadable"):
        load_program(pickled_weight(archive, payload), "model.pt2")
    assert not marker.exists()


def test_a_pickled_weight_that_is_a_tensor_is_accepted(module: nn.Module, archive: bytes) -> None:
    """weights_only still reads what torch itself pickles: the refusal above is of the payload."""
    weight = dict(module.named_parameters())["0.weight"].detach().clone()
    program = load_program(pickled_weight(archive, torch_saved(weight)), "model.pt2")
    x = torch.randn(3, 4)
    with torch.no_grad():
        assert torch.allclose(program.classifier(None)(x), module(x), atol=1e-6)


def test_a_pickled_weight_that_is_not_a_tensor_is_refused(archive: bytes) -> None:
    with pytest.raises(BundleError, match=r"weights entry '0\.weight' is a dict, not a tensor"):
        load_program(pickled_weight(archive, torch_saved({"a": 1})), "model.pt2")


def test_torch_s_own_loader_would_unpickle_that_weight(archive: bytes, marker: Path) -> None:
    """The control: torch.export.load falls back to weights_only=False and runs the payload."""
    tampered = pickled_weight(archive, torch_saved(Exploit(marker)))
    with contextlib.suppress(Exception):  # the payload returns an int, not a tensor
        torch.export.load(io.BytesIO(tampered))
    assert marker.exists()


def test_a_constant_that_is_not_a_tensor_file_is_refused(archive: bytes, marker: Path) -> None:
    files = members(archive)
    files[CONSTANTS_CONFIG] = json.dumps(
        {"config": {"obj": {"path_name": "custom_obj_0", "is_param": False, "use_pickle": True, "tensor_meta": None}}}
    ).encode()
    files[f"{PREFIX}data/constants/custom_obj_0"] = torch_saved(Exploit(marker))
    with pytest.raises(BundleError, match=r"constant 'obj' is not a tensor \(script and opaque objects are refused\)"):
        load_program(rezip(files), "model.pt2")
    assert not marker.exists()


@pytest.mark.parametrize("path_name", ["../../etc/passwd", "missing_0"])
def test_a_weight_must_name_a_file_inside_the_archive(archive: bytes, path_name: str) -> None:
    def edit(config: dict[str, Any]) -> None:
        config["config"]["0.weight"]["path_name"] = path_name

    with pytest.raises(BundleError, match=r"weights entry '0\.weight' names a file the archive does not hold"):
        load_program(tamper(archive, edit, WEIGHTS_CONFIG), "model.pt2")


def test_a_raw_weight_may_not_run_past_its_bytes(archive: bytes) -> None:
    def edit(config: dict[str, Any]) -> None:
        config["config"]["0.weight"]["tensor_meta"]["sizes"] = [{"as_int": 500}, {"as_int": 4}]

    with pytest.raises(
        BundleError, match=r"^model\.pt2: weights entry '0\.weight' is unreadable .*runs past its 20 values"
    ):
        load_program(tamper(archive, edit, WEIGHTS_CONFIG), "model.pt2")


def test_an_emptied_weight_file_is_refused_not_read_as_zeros(archive: bytes) -> None:
    files = members(archive)
    files[f"{PREFIX}data/weights/weight_0"] = b""
    with pytest.raises(BundleError, match=r"weights entry '0\.weight' is unreadable .*sizes \[5, 4\] has no bytes"):
        load_program(rezip(files), "model.pt2")


class WithEmptyBuffer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)
        self.nothing: torch.Tensor
        self.register_buffer("nothing", torch.zeros(0, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.cat([x, self.nothing]))


def test_a_tensor_without_elements_still_loads_from_no_bytes() -> None:
    module = WithEmptyBuffer().eval()
    exported = torch.export.export(module, (torch.zeros(2, 4),), dynamic_shapes=({0: torch.export.Dim("b", min=1)},))
    buffer = io.BytesIO()
    torch.export.save(exported, buffer)
    assert b"" in members(buffer.getvalue()).values()  # the empty buffer is stored as no bytes
    program = load_program(buffer.getvalue(), "model.pt2")
    x = torch.randn(3, 4)
    with torch.no_grad():
        assert torch.allclose(program.classifier(None)(x), module(x), atol=1e-6)


# -- signature and script objects --------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["custom_obj", "token", "constant_input"])
def test_an_input_other_than_tensors_and_weights_is_refused(archive: bytes, kind: str) -> None:
    def edit(document: dict[str, Any]) -> None:
        specs = document["graph_module"]["signature"]["input_specs"]
        specs.insert(0, {kind: {"arg": {"name": "obj"}, "custom_obj_name": "obj"}})

    with pytest.raises(BundleError, match=rf"the program has a {kind} input, which is refused"):
        load_program(tamper(archive, edit), "model.pt2")


@pytest.mark.parametrize("kind", ["user_input_mutation", "token", "loss_output"])
def test_an_output_other_than_results_is_refused(archive: bytes, kind: str) -> None:
    def edit(document: dict[str, Any]) -> None:
        document["graph_module"]["signature"]["output_specs"].append({kind: {"arg": {"as_tensor": {"name": "relu"}}}})

    with pytest.raises(BundleError, match=rf"the program has a {kind} output, which is refused"):
        load_program(tamper(archive, edit), "model.pt2")


def test_script_object_values_are_refused(archive: bytes) -> None:
    def edit(document: dict[str, Any]) -> None:
        document["graph_module"]["graph"]["custom_obj_values"] = {"obj": {"name": "obj", "class_fqn": "os.system"}}

    with pytest.raises(BundleError, match="holds script objects, which are refused"):
        load_program(tamper(archive, edit), "model.pt2")


# -- guards_code: dropped, never run ------------------------------------------------------------------


def guarded(archive: bytes, marker: Path) -> bytes:
    return tamper(archive, lambda document: document.update(guards_code=[f"{touch(marker)} >= 0"]))


def test_guards_code_is_dropped_and_never_run(module: nn.Module, archive: bytes, marker: Path) -> None:
    program = load_program(guarded(archive, marker), "model.pt2")
    x = torch.randn(5, 4)
    with torch.no_grad():
        assert torch.allclose(program.classifier(None)(x), module(x), atol=1e-6)
        program.open(["1"], None)([x])  # a tapped pass too
    assert not marker.exists()


def test_torch_s_own_loader_would_run_guards_code(archive: bytes, marker: Path) -> None:
    """The control: ExportedProgram.module() compiles guards_code into the forward pass."""
    exported = torch.export.load(io.BytesIO(guarded(archive, marker)))
    exported.module()(torch.randn(5, 4))
    assert marker.exists()


# -- the archive itself -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"not a zip at all",
        rezip({"hello.txt": b"hi"}),
        rezip({"archive/archive_format": b"zip", "archive/models/model.json": b"{}"}),
        rezip({"archive_format": b"pt2", "other/archive_format": b"pt2"}),  # two formats: which prefix?
    ],
)
def test_a_file_that_is_not_a_pt2_archive_is_refused(data: bytes) -> None:
    with pytest.raises(BundleError, match=r"^model\.pt2: not a torch\.export archive"):
        load_program(data, "model.pt2")


def test_an_archive_with_two_programs_is_refused(archive: bytes) -> None:
    files = members(archive)
    files[f"{PREFIX}models/other.json"] = files[MODEL_JSON]
    with pytest.raises(BundleError, match="holds 2 programs; one is expected"):
        load_program(rezip(files), "model.pt2")


def test_an_archive_with_no_program_is_refused(archive: bytes) -> None:
    files = {name: content for name, content in members(archive).items() if name != MODEL_JSON}
    with pytest.raises(BundleError, match="holds 0 programs; one is expected"):
        load_program(rezip(files), "model.pt2")


@pytest.mark.parametrize(
    ("content", "cause"), [(b"{not json", "is not valid JSON"), (b"[]", "not a torch.export program")]
)
def test_a_program_that_is_not_a_program_document_is_refused(archive: bytes, content: bytes, cause: str) -> None:
    files = members(archive)
    files[MODEL_JSON] = content
    with pytest.raises(BundleError, match=cause):
        load_program(rezip(files), "model.pt2")


def test_the_sample_inputs_pickle_is_never_read(module: nn.Module, archive: bytes, marker: Path) -> None:
    files = members(archive)
    files[f"{PREFIX}data/sample_inputs/model.pt"] = torch_saved(Exploit(marker))
    program = load_program(rezip(files), "model.pt2")
    x = torch.randn(2, 4)
    with torch.no_grad():
        assert torch.allclose(program.classifier(None)(x), module(x), atol=1e-6)
    assert not marker.exists()


@pytest.mark.parametrize(
    "expression",
    [
        "Pow(Integer(10), Pow(Integer(10), Integer(12)))",
        "Integer(10)**Integer(10)**Integer(12)",
        "PowByNatural(Integer(10), Integer(1000000000))",
        "Mul(Integer(1234567890123456789012), Symbol('s0', integer=True))",
    ],
)
def test_shape_expressions_that_would_take_forever_to_compute_are_refused(expression: str) -> None:
    with pytest.raises(BundleError, match="power|beyond 18 digits|names"):
        _check_expression(expression, "model.pt2")
