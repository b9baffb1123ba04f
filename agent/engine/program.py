"""Models as serialized programs: a `torch.export` archive (`.pt2`), read without running Python it carries.

Why a serialized program: a bundle that names a Python factory makes the operator trust code
(`--trust-factory`). A `.pt2` archive holds the model as a graph of ATen operations plus raw
weights, so it needs no code at all. TorchScript was the other candidate and was not taken: a
loaded TorchScript module cannot be hooked (`register_forward_hook is not supported on
ScriptModules`), so its layers cannot be tapped, and torch deprecates it.

`torch.export.load` itself is not safe for untrusted files: it unpickles tensors and constants with
`weights_only=False`, resolves node targets by walking attributes of `torch` (`torch.load` would
do), parses shape expressions with `sympy.sympify` (an `eval`), and `ExportedProgram.module()`
compiles the archive's `guards_code` strings. So this module reads the archive itself and hands
torch's deserializer only what it checked:

1. The archive is a zip with one program (`models/<name>.json`); nothing else in it is read: not the
   sample inputs (pickled), not compiled AOTInductor code, not extra files.
2. Every node's target is an ATen operator (`torch.ops.aten.*`, not `from_file`), `operator.getitem`,
   a symbolic-size helper from a short list, or nothing at all. Custom operators, higher-order
   operators (`torch.cond`, `while_loop`, ...), script objects and effect tokens are refused.
3. Every shape expression and symbol name is made of integers, operators, symbols `s0`, `u1`, ... and
   the sympy functions torch's serializer itself writes, so sympy's parser can call nothing else.
4. Weights and constants are raw tensors laid out by their metadata, or `torch.load(weights_only=True)`.
5. `guards_code` is dropped (inputs are checked against the manifest instead) and the program is
   run through its graph module, never through `ExportedProgram.module()`.

What is refused is documented in docs/security.md; each refusal is a `BundleError` naming the cause.
The program's batch dimension must be dynamic (`torch.export.export(..., dynamic_shapes=...)`),
or the agent could not score micro-batches.

Tap names (agent.engine.taps) come from the graph's `nn_module_stack` metadata: a module call's
output is the value that leaves the call; a module called twice gets `#1` for its second call; a
functional operation `add` inside `layer1.0` is `layer1.0:add`.
"""

from __future__ import annotations

import io
import json
import math
import operator
import re
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn

from agent.engine.taps import (
    TapName,
    TapPoint,
    TapSession,
    format_selectors,
    parse_output,
)
from agent.errors import BundleError, ConfigError, first_line

MAX_PROGRAM_BYTES = 4 * 1024**3
MAX_PROGRAM_JSON_BYTES = 512 * 1024**2

# Node targets a program may call, besides ATen operators.
_OPERATORS = {
    f"_operator.{name}": getattr(operator, name)
    for name in ("getitem", "add", "sub", "mul", "floordiv", "truediv", "mod", "neg", "pow", "abs")
    + ("eq", "ne", "lt", "le", "gt", "ge", "and_", "or_", "not_")
}
_SYMBOLIC = {
    **{f"torch.{name}": getattr(torch, name) for name in ("sym_max", "sym_min", "sym_float", "sym_int", "sym_not")},
    **{f"math.{name}": getattr(math, name) for name in ("ceil", "floor", "trunc")},
}
_ATEN = re.compile(r"^torch\.ops\.aten\.(?P<op>\w{1,128})\.(?P<overload>\w{1,64})$")
_DENIED_ATEN = {"from_file", "_print"}  # reads a file into a tensor; prints
# What a shape expression may contain. torch writes them with sympy's `srepr`, e.g.
# `Mul(Integer(2), Symbol('s0', positive=True, integer=True))`, and reads them with `sympy.sympify`
# (an eval): so only sympy constructors and the functions torch's serializer knows
# (GraphModuleDeserializer.sympy_functions), assumption keywords, integers, and quoted symbol names
# or numbers may appear — nothing that could reach a Python builtin.
_SYMPY_NAMES = {
    "Symbol", "Integer", "Rational", "Float", "Add", "Mul", "Max", "Min", "Abs", "floor", "ceiling",
    "sqrt", "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "StrictLessThan", "LessThan", "StrictGreaterThan",
    "GreaterThan", "Equality", "Unequality", "And", "Or", "Not", "oo", "zoo", "nan", "true", "false", "True",
    "False", "Infinity", "NegativeInfinity", "NaN", "BooleanTrue", "BooleanFalse",
    "FloorDiv", "ModularIndexing", "Where", "PythonMod", "Mod", "CleanDiv", "CeilToInt", "FloorToInt",
    "CeilDiv", "FloatTrueDiv", "IntTrueDiv",
    "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt", "RoundToInt", "RoundDecimal", "ToFloat",
    "FloatToInt", "Identity", "OpaqueUnaryFn_sqrt",
    "positive", "negative", "nonnegative", "nonpositive", "integer", "real", "finite", "infinite", "commutative",
    "zero", "nonzero", "even", "odd", "rational", "irrational", "prime", "composite", "extended_real",
    "extended_positive", "extended_negative", "extended_nonnegative", "extended_nonpositive", "precision",
}  # fmt: skip
_SYMBOL = re.compile(r"^[a-z]{1,8}\d{1,9}$")
_EXPRESSION_TOKEN = re.compile(
    r"\s*(?:(?P<name>[A-Za-z_]\w*)|(?P<number>\d+(?:\.\d+)?(?:e[-+]?\d+)?)"
    r"|(?P<string>'(?:[a-z]{1,8}\d{1,9}|[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?)')|(?P<op>[-+*/%(),<>=!&|~^]))"
)
# Operations that only reshape: the value the logits layer reads is the tap point before them.
_VIEWS = {"flatten", "view", "reshape", "_unsafe_view", "squeeze", "unsqueeze", "contiguous", "clone", "alias"}
_ALLOWED_INPUTS = {"parameter", "buffer", "tensor_constant", "user_input"}
_ALLOWED_OUTPUTS = {"user_output", "buffer_mutation"}


def _check_expression(text: Any, where: str) -> None:
    """Raises BundleError unless `text` is a shape expression sympy can parse without calling anything
    else, and cheaply: powers (`Pow`, `**`, shifts) and numbers of more than 18 digits are refused,
    since sympy would compute `10**10**12` exactly while loading."""
    if not isinstance(text, str) or len(text) > 4096:
        raise BundleError(f"{where}: a shape expression is not a short string")
    if "**" in text or "^" in text:
        raise BundleError(f"{where}: shape expression {text[:80]!r} raises to a power, which it may not")
    position = 0
    while position < len(text):
        match = _EXPRESSION_TOKEN.match(text, position)
        if match is None or match.end() == position:
            raise BundleError(f"{where}: shape expression {text[:80]!r} has a character it may not")
        name, number = match["name"], match["number"] or match["string"]
        if name is not None and name not in _SYMPY_NAMES and not _SYMBOL.fullmatch(name):
            raise BundleError(f"{where}: shape expression {text[:80]!r} names {name!r}, which it may not")
        if number is not None and sum(char.isdigit() for char in number) > 18:
            raise BundleError(f"{where}: shape expression {text[:80]!r} holds a number beyond 18 digits")
        position = match.end()


def _walk(value: Any) -> Iterator[tuple[str, Any]]:
    """Every (key, value) pair of a JSON document, depth first."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, inner in item.items():
                yield key, inner
                stack.append(inner)
        elif isinstance(item, list):
            stack.extend(item)


def _check_program_json(document: Any, where: str) -> None:
    if not isinstance(document, dict) or not isinstance(document.get("graph_module"), dict):
        raise BundleError(f"{where}: not a torch.export program")
    graph_module = document["graph_module"]
    graph = graph_module.get("graph") or {}
    for node in graph.get("nodes") or []:
        target = node.get("target") if isinstance(node, dict) else None
        if not isinstance(target, str):
            raise BundleError(f"{where}: a node has no operator")
        aten = _ATEN.fullmatch(target)
        if aten is not None:
            if aten["op"] in _DENIED_ATEN:
                raise BundleError(f"{where}: the program calls {target}, which is refused")
        elif target not in _OPERATORS and target not in _SYMBOLIC:
            raise BundleError(
                f"{where}: the program calls {target[:120]!r}; only ATen operators are accepted (custom and "
                "higher-order operators such as torch.cond are refused; docs/security.md)"
            )
    if graph.get("custom_obj_values"):
        raise BundleError(f"{where}: the program holds script objects, which are refused")
    signature = graph_module.get("signature") or {}
    for spec in signature.get("input_specs") or []:
        kind = next(iter(spec), None) if isinstance(spec, dict) else None
        if kind not in _ALLOWED_INPUTS:
            raise BundleError(f"{where}: the program has a {kind} input, which is refused")
    for spec in signature.get("output_specs") or []:
        kind = next(iter(spec), None) if isinstance(spec, dict) else None
        if kind not in _ALLOWED_OUTPUTS:
            raise BundleError(f"{where}: the program has a {kind} output, which is refused")
    for key, value in _walk(document):
        if key == "expr_str":
            _check_expression(value, where)
    for symbol in document.get("range_constraints") or {}:
        if not _SYMBOL.fullmatch(symbol):
            raise BundleError(f"{where}: symbol {symbol[:40]!r} is not a shape symbol")


def _json_member(archive: zipfile.ZipFile, name: str, where: str) -> Any:
    info = archive.getinfo(name)
    if info.file_size > MAX_PROGRAM_JSON_BYTES:
        raise BundleError(f"{where}: {name} is {info.file_size} bytes, more than a program may have")
    try:
        return json.loads(archive.read(info))
    except (ValueError, RecursionError) as exc:
        raise BundleError(f"{where}: {name} is not valid JSON ({type(exc).__name__})") from None


def _tensors(
    archive: zipfile.ZipFile, prefix: str, config_name: str, folder: str, where: str
) -> dict[str, torch.Tensor]:
    """The weights or constants of the program, each raw bytes laid out by its metadata (or a
    weights-only torch.load where the archive pickled it)."""
    from torch._export.serde.serialize import deserialize_scalar_type

    path = f"{prefix}data/{config_name}"
    if path not in archive.namelist():
        return {}
    config = _json_member(archive, path, where).get("config") or {}
    out: dict[str, torch.Tensor] = {}
    for fqn, meta in config.items():
        name = str(meta.get("path_name", ""))
        member = f"{prefix}data/{folder}/{name}"
        if not re.fullmatch(r"[\w.-]{1,128}", name) or member not in archive.namelist():
            raise BundleError(f"{where}: {folder} entry {fqn!r} names a file the archive does not hold")
        if folder == "constants" and not name.startswith("tensor_"):
            raise BundleError(f"{where}: constant {fqn!r} is not a tensor (script and opaque objects are refused)")
        data = archive.read(member)
        try:
            if meta.get("use_pickle"):
                tensor = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            else:
                tensor = _raw_tensor(data, meta["tensor_meta"], deserialize_scalar_type)
        except Exception as exc:  # a malformed payload fails in torch in many ways
            raise BundleError(f"{where}: {folder} entry {fqn!r} is unreadable ({type(exc).__name__}: {exc})") from None
        if not isinstance(tensor, torch.Tensor):
            raise BundleError(f"{where}: {folder} entry {fqn!r} is a {type(tensor).__name__}, not a tensor")
        tensor = tensor.detach()
        # The verifier wants parameters as Parameters; nothing here is ever trained.
        out[str(fqn)] = nn.Parameter(tensor, requires_grad=False) if meta.get("is_param") else tensor
    return out


def _raw_tensor(data: bytes, meta: dict[str, Any], scalar_type: Any) -> torch.Tensor:
    dtype = scalar_type(meta["dtype"])
    sizes = [int(size["as_int"]) for size in meta["sizes"]]
    strides = [int(stride["as_int"]) for stride in meta["strides"]]
    offset = int(meta["storage_offset"]["as_int"])
    if not data:
        if all(sizes):  # only a tensor without elements is stored as no bytes
            raise ValueError(f"a tensor of sizes {sizes} has no bytes")
        return torch.zeros(sizes, dtype=dtype)
    flat = torch.frombuffer(bytearray(data), dtype=dtype)
    span = offset + sum((size - 1) * stride for size, stride in zip(sizes, strides, strict=True) if size > 0)
    if min([offset, *sizes, *strides]) < 0 or (all(sizes) and span >= len(flat)):
        raise ValueError(f"a tensor of sizes {sizes} and strides {strides} runs past its {len(flat)} values")
    return torch.as_strided(flat, sizes, strides, offset).clone()


def _tree(spec: Any, fields: dict[str, list[str]]) -> Iterator[tuple[tuple[int | str, ...], None]]:
    """The leaves of a serialized pytree spec with the selectors that reach them."""

    def walk(node: Any, path: tuple[int | str, ...]) -> Iterator[tuple[tuple[int | str, ...], None]]:
        children = node.get("children_spec") or []
        if node.get("type") is None:
            yield path, None
            return
        context = json.loads(node["context"]) if isinstance(node.get("context"), str) else None
        names: list[Any] = []
        if isinstance(context, list) and all(isinstance(key, str) for key in context):
            names = context  # dict, OrderedDict, ModelOutput: keys
        elif isinstance(context, str) and context in fields:
            names = fields[context]  # a namedtuple's fields
        for index, child in enumerate(children):
            yield from walk(child, (*path, names[index] if index < len(names) else index))

    yield from walk(spec[1] if isinstance(spec, list) and len(spec) == 2 else spec, ())


def _flat_spec(count: int) -> str:
    """A serialized pytree spec of a flat tuple of `count` leaves (what the deserializer gets instead of
    output types it may not know, e.g. Hugging Face's ModelOutput classes)."""
    leaf: dict[str, Any] = {"type": None, "context": None, "children_spec": []}
    return json.dumps([1, {"type": "builtins.tuple", "context": "null", "children_spec": [leaf] * count}])


def load_program(data: bytes, where: Path | str) -> Program:
    """A checked `torch.export` program from the bytes of a `.pt2` archive; BundleError otherwise."""
    if len(data) > MAX_PROGRAM_BYTES:
        raise BundleError(f"{where}: {len(data)} bytes, more than a program may have")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        names = archive.namelist()
    except (zipfile.BadZipFile, ValueError) as exc:
        raise BundleError(f"{where}: not a torch.export archive ({exc})") from None
    formats = [name for name in names if name.endswith("archive_format") and name.count("/") <= 1]
    if len(formats) != 1 or archive.read(formats[0]).strip() != b"pt2":
        raise BundleError(f"{where}: not a torch.export archive (save it with torch.export.save)")
    prefix = formats[0][: -len("archive_format")]
    programs = [name for name in names if re.fullmatch(re.escape(prefix) + r"models/[\w.-]+\.json", name)]
    if len(programs) != 1:
        raise BundleError(f"{where}: holds {len(programs)} programs; one is expected")
    model = programs[0][len(prefix) + len("models/") : -len(".json")]
    document = _json_member(archive, programs[0], str(where))
    _check_program_json(document, str(where))
    signature = document["graph_module"].get("module_call_graph") or [{}]
    root = (signature[0] or {}).get("signature") or {}
    fields = document["graph_module"].get("treespec_namedtuple_fields") or {}
    try:
        out_paths = [path for path, _ in _tree(json.loads(root.get("out_spec") or "null"), fields)]
    except (ValueError, TypeError, AttributeError, IndexError):
        raise BundleError(f"{where}: the program's output structure is unreadable") from None
    for entry in signature:
        if isinstance(entry, dict) and isinstance(entry.get("signature"), dict) and entry["signature"].get("out_spec"):
            entry["signature"]["out_spec"] = _flat_spec(len(out_paths))
    document["guards_code"] = []  # code strings: never run (inputs are checked against the manifest)
    state = _tensors(archive, prefix, f"weights/{model}_weights_config.json", "weights", str(where))
    constants = _tensors(archive, prefix, f"constants/{model}_constants_config.json", "constants", str(where))
    try:
        from torch._export.serde import schema
        from torch._export.serde.serialize import ExportedProgramDeserializer, _dict_to_dataclass

        serialized = _dict_to_dataclass(schema.ExportedProgram, document)  # type: ignore[no-untyped-call]
        exported = ExportedProgramDeserializer(None).deserialize(serialized, state, constants, None)
    except BundleError:
        raise
    except Exception as exc:  # the deserializer's own checks (versions, shapes, missing weights)
        raise BundleError(f"{where}: torch cannot read the program ({type(exc).__name__}: {first_line(exc)})") from None
    _check_graph(exported.graph_module.graph, where)
    return Program(exported, tuple(out_paths), where, data)


def _check_graph(graph: fx.Graph, where: Path | str) -> None:
    """Belt and braces: what the deserializer built calls only what the JSON check allowed."""
    allowed = {*_OPERATORS.values(), *_SYMBOLIC.values()}
    for node in graph.nodes:
        if node.op in ("placeholder", "output"):
            continue
        if node.op != "call_function":
            raise BundleError(f"{where}: the program has a {node.op} node, which is refused")
        target = node.target
        if isinstance(target, torch._ops.OpOverload):
            if target.namespace != "aten" or target._opname in _DENIED_ATEN:
                raise BundleError(f"{where}: the program calls {target}, which is refused")
        elif target not in allowed:
            raise BundleError(f"{where}: the program calls {target!r}, which is refused")


# -- tap sites: names for the graph's values ---------------------------------------------------------


@dataclass(frozen=True)
class _Site:
    name: str  # tap name without selectors (`layer1.0.relu#1`, `layer1.0:add`)
    kind: str
    nodes: tuple[tuple[tuple[int | str, ...], fx.Node], ...]  # (selectors, node): one, or a tuple's parts


def _module_stack(node: fx.Node) -> list[tuple[str, str, str]]:
    """`(call key, module path, module type)` from the outermost module call to the innermost."""
    stack = node.meta.get("nn_module_stack") or {}
    return [
        (str(key), str(value[0]), str(value[1]).rsplit(".", 1)[-1])
        for key, value in stack.items()
        if isinstance(value, tuple) and len(value) == 2 and not str(key).startswith("_empty")
    ]


def _is_tensor(node: fx.Node) -> bool:
    return isinstance(node.meta.get("val"), torch.Tensor)


def _sites(graph: fx.Graph) -> dict[str, _Site]:
    """Every tappable value of the graph, by tap name, in execution order."""
    nodes = [node for node in graph.nodes if node.op == "call_function"]
    members: dict[str, list[fx.Node]] = {}
    call_name: dict[str, str] = {}
    call_kind: dict[str, str] = {}
    calls_of_path: dict[str, int] = {}
    depth_of: dict[str, int] = {}  # how deep a call is nested: an inner call's output is listed first
    for node in nodes:
        for depth, (key, path, kind) in enumerate(_module_stack(node)):
            if key not in call_name:
                count = calls_of_path.get(path, 0)
                calls_of_path[path] = count + 1
                call_name[key] = path + (f"#{count}" if count else "")
                call_kind[key] = kind
                depth_of[call_name[key]] = depth
            members.setdefault(key, []).append(node)
    sites: dict[str, _Site] = {}
    order: dict[fx.Node, int] = {node: index for index, node in enumerate(graph.nodes)}
    for key, inside in members.items():
        name = call_name[key]
        if not name or name.startswith("#"):
            continue  # the root module: its output is the model's output
        inside_set = set(inside)
        leaving = [node for node in inside if _is_tensor(node) and any(user not in inside_set for user in node.users)]
        if not leaving:
            continue
        sources = {node.args[0] for node in leaving if node.target is operator.getitem}
        source = next(iter(sources)) if len(sources) == 1 else None
        if isinstance(source, fx.Node) and all(node.target is operator.getitem for node in leaving):
            # Parts of a tuple made inside the call (an RNN's (output, h_n)): every part, by index.
            getitems = [user for user in source.users if user.target is operator.getitem and user in inside_set]
            parts: tuple[tuple[tuple[int | str, ...], fx.Node], ...] = tuple(
                ((int(str(user.args[1])),), user) for user in sorted(getitems, key=order.__getitem__)
            )
        elif len(leaving) == 1:
            parts = (((), leaving[0]),)
        else:
            parts = tuple(((index,), node) for index, node in enumerate(leaving))
        sites[name] = _Site(name, call_kind[key], parts)
    op_counts: dict[str, int] = {}
    named = {node for site in sites.values() for _, node in site.nodes}
    for node in nodes:
        if (
            not _is_tensor(node)
            or node.target is operator.getitem
            or not isinstance(node.target, torch._ops.OpOverload)
        ):
            continue
        stack = _module_stack(node)
        inner = call_name.get(stack[-1][0], "") if stack else ""
        prefix = "" if inner.startswith("#") else inner
        op = node.target._opname
        key = f"{prefix}:{op}"
        count = op_counts.get(key, 0)
        op_counts[key] = count + 1
        name = key + (f"#{count}" if count else "")
        if node not in named:  # a module's output already has the module's name
            sites[name] = _Site(name, op, (((), node),))
    # Execution order; where calls end in the same value (a block's last relu), inner first, as hooks see them.
    return dict(
        sorted(
            sites.items(),
            key=lambda item: (min(order[node] for _, node in item[1].nodes), -depth_of.get(item[0], 0)),
        )
    )


# -- running the program -----------------------------------------------------------------------------


class Program:
    """A checked exported program: its inputs, its output structure and its tap sites.

    It implements `agent.engine.taps.TappableModel`: `open` builds a copy of the graph that also
    returns the tapped nodes, and runs it on the program's own weights.
    """

    def __init__(
        self, exported: Any, output_paths: tuple[tuple[int | str, ...], ...], where: Path | str, archive: bytes
    ) -> None:
        from torch.export.graph_signature import InputKind, OutputKind

        self.where = where
        self.archive = archive  # the checked bytes: what a bundle stores
        self._graph_module: fx.GraphModule = exported.graph_module
        signature = exported.graph_signature
        self._arguments: list[torch.Tensor | None] = []  # None: a user input's slot
        self.input_nodes: list[fx.Node] = []
        placeholders = {node.name: node for node in self._graph_module.graph.nodes if node.op == "placeholder"}
        for spec in signature.input_specs:
            if spec.kind == InputKind.USER_INPUT:
                self._arguments.append(None)
                self.input_nodes.append(placeholders[spec.arg.name])
            elif spec.kind in (InputKind.PARAMETER, InputKind.BUFFER) and spec.target in exported.state_dict:
                self._arguments.append(exported.state_dict[spec.target])
            else:
                self._arguments.append(exported.constants[spec.target])
        self._user_outputs = [
            index for index, spec in enumerate(signature.output_specs) if spec.kind == OutputKind.USER_OUTPUT
        ]
        if len(self._user_outputs) != len(output_paths):
            raise BundleError(
                f"{where}: {len(self._user_outputs)} outputs, its output structure has {len(output_paths)}"
            )
        self.output_paths = output_paths
        self.sites = _sites(self._graph_module.graph)
        # What `_reads` looks for, fixed with the sites: the nodes a tap reads, and those a module call makes.
        self._tapped_nodes = {node for site in self.sites.values() for _, node in site.nodes}
        self._module_nodes = {node for name, site in self.sites.items() if ":" not in name for _, node in site.nodes}

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(node.name for node in self.input_nodes)

    def input_meta(self) -> list[tuple[str, str, tuple[int | None, ...]]]:
        """(name, dtype, shape with None for every dynamic dimension) of each input."""
        out: list[tuple[str, str, tuple[int | None, ...]]] = []
        for node in self.input_nodes:
            value = node.meta.get("val")
            if not isinstance(value, torch.Tensor):
                raise BundleError(f"{self.where}: input {node.name} is not a tensor")
            shape = tuple(size if isinstance(size, int) else None for size in value.shape)
            out.append((node.name, str(value.dtype).removeprefix("torch."), shape))
        return out

    def classifier(self, output: str | None) -> nn.Module:
        self.select_output([None] * len(self.output_paths), output)  # a bad selector fails now
        return _ProgramModule(self, output)

    def run(self, inputs: Sequence[torch.Tensor], extra: Sequence[fx.Node] = ()) -> tuple[list[Any], list[Any]]:
        """The user outputs (flat) and the `extra` nodes' values of one forward pass."""
        graph_module = self._graph_module if not extra else self._with_outputs(tuple(extra))
        if len(inputs) != len(self.input_nodes):
            raise ConfigError(f"the program takes {len(self.input_nodes)} input(s), got {len(inputs)}")
        supplied = iter(inputs)
        arguments = [next(supplied) if value is None else value for value in self._arguments]
        flat = list(graph_module(*arguments))
        base = len(flat) - len(extra)
        return [flat[index] for index in self._user_outputs], flat[base:]

    def _with_outputs(self, extra: tuple[fx.Node, ...]) -> fx.GraphModule:
        cache = self.__dict__.setdefault("_tapped", {})
        if extra not in cache:
            graph = fx.Graph()
            env: dict[fx.Node, fx.Node] = {}
            original = graph.graph_copy(self._graph_module.graph, env)
            returned = tuple(original) if isinstance(original, (tuple, list)) else (original,)
            graph.output((*returned, *(env[node] for node in extra)))
            cache[extra] = fx.GraphModule(self._graph_module, graph)
        return cache[extra]

    def select_output(self, flat: list[Any], output: str | None) -> Any:
        """The output leaf the selector names (the only one when it is None)."""
        wanted = parse_output(output)
        matches = [index for index, path in enumerate(self.output_paths) if path[: len(wanted)] == wanted]
        if len(matches) == 1 and len(self.output_paths[matches[0]]) == len(wanted):
            return flat[matches[0]]
        choices = ", ".join(format_selectors(path) or "(the output)" for path in self.output_paths)
        what = f"output selector {output!r}" if wanted else "the model's output"
        raise ConfigError(f"{what} does not name one tensor of the program's outputs: {choices}")

    def tap_points(self, inputs: Sequence[torch.Tensor], output: str | None) -> list[TapPoint]:
        nodes = [node for site in self.sites.values() for _, node in site.nodes]
        with torch.no_grad():
            outputs, values = self.run(inputs, nodes)
        value_of = dict(zip(nodes, values, strict=True))
        logits_node = self._output_node(output)
        fed = self._reads(logits_node) if logits_node is not None else None
        batch = len(inputs[0]) if inputs else 0
        names = {
            node: site.name + format_selectors(selectors)
            for site in self.sites.values()
            for selectors, node in site.nodes
        }
        points = []
        for site in self.sites.values():
            for selectors, node in site.nodes:
                source = self._reads(self._first_op(node, site))
                value = value_of[node]
                shape = tuple(int(size) for size in value.shape)
                batch_first = len(shape) >= 1 and shape[0] == batch
                points.append(
                    TapPoint(
                        site.name + format_selectors(selectors),
                        site.kind,
                        shape[1:] if batch_first else shape,
                        str(value.dtype).removeprefix("torch."),
                        batch_first,
                        logits=node is logits_node,
                        feeds_logits=node is fed,
                        reads=(names[source],) if source is not None else (),
                    )
                )
        return points

    def _output_node(self, output: str | None) -> fx.Node | None:
        """The graph node that computes the logits."""
        returned = next(node for node in self._graph_module.graph.nodes if node.op == "output").args[0]
        flat = list(returned) if isinstance(returned, (tuple, list)) else [returned]
        node = self.select_output([flat[index] for index in self._user_outputs], output)
        return node if isinstance(node, fx.Node) else None

    @staticmethod
    def _first_op(node: fx.Node, site: _Site) -> fx.Node:
        """The first operation of a site's call (where its input comes in); the node itself for an
        operation or a module made of one."""
        inside = {inner for _, inner in site.nodes}
        current = node
        while True:
            previous = next((arg for arg in current.args if isinstance(arg, fx.Node) and _is_tensor(arg)), None)
            if (
                previous is None
                or not _module_stack(previous)
                or _module_stack(previous)[-1:] != _module_stack(current)[-1:]
            ):
                return current
            if previous in inside:
                return current
            current = previous

    def _reads(self, node: fx.Node) -> fx.Node | None:
        """The tappable node whose values the op making the logits reads, through flattens and views:
        a module's output where there is one in that chain (relu3, not the :flatten after it), the
        earliest where there are several (the ReLU, not the nn.Flatten module after it: as hooks see it)."""
        chain: list[fx.Node] = []
        argument = next((arg for arg in node.args if isinstance(arg, fx.Node) and _is_tensor(arg)), None)
        while argument is not None:
            chain.append(argument)
            if getattr(argument.target, "_opname", "") not in _VIEWS:
                break
            argument = next((arg for arg in argument.args if isinstance(arg, fx.Node)), None)
        modules = [inner for inner in chain if inner in self._module_nodes]
        if modules:
            return modules[-1]
        preferred = [inner for inner in chain if inner in self._tapped_nodes]
        return preferred[0] if preferred else None

    def open(self, layers: Sequence[str], output: str | None) -> TapSession:
        return _ProgramSession(self, layers, output)

    def node(self, name: str) -> fx.Node:
        """The graph node a tap name reads; ConfigError naming the known sites otherwise."""
        tap = TapName.parse(name)
        site = self.sites.get(tap.site)
        if site is None:
            modules = [site for site in self.sites if ":" not in site]
            raise ConfigError(
                f"the program has no tap {tap.site!r}; module calls: {', '.join(modules[:40]) or '(none)'} "
                "(dknn-agent layers lists every one, operations included)"
            )
        for selectors, node in site.nodes:
            if selectors == tap.selectors:
                return node
        choices = ", ".join(site.name + format_selectors(selectors) for selectors, _ in site.nodes)
        raise ConfigError(f"tap {name!r}: {site.name} gives {choices}")


class _ProgramSession:
    def __init__(self, program: Program, layers: Sequence[str], output: str | None) -> None:
        self._program = program
        self._names = tuple(layers)
        self._nodes = tuple(program.node(name) for name in self._names)
        self._output = output
        program.select_output([None] * len(program.output_paths), output)  # a bad selector fails now

    def __call__(self, inputs: Sequence[torch.Tensor]) -> tuple[Any, dict[str, torch.Tensor]]:
        outputs, values = self._program.run(inputs, self._nodes)
        return self._program.select_output(outputs, self._output), dict(zip(self._names, values, strict=True))

    def close(self) -> None:
        pass


class _ProgramModule(nn.Module):
    """The program as a module of its inputs returning its logits: differentiable, so attacks and
    checks can treat it like the model it was exported from."""

    def __init__(self, program: Program, output: str | None) -> None:
        super().__init__()
        self._program = program
        self._output = output

    def forward(self, *inputs: torch.Tensor) -> Any:
        outputs, _ = self._program.run(inputs)
        return self._program.select_output(outputs, self._output)


def export_program(module: nn.Module, example_inputs: Sequence[torch.Tensor], where: str = "model.pt2") -> Program:
    """A module exported as a program with a dynamic batch dimension, then read back through the
    same checks as any archive (what a user's own `torch.export.save` gives, done in one step)."""
    batch = torch.export.Dim("batch", min=1)
    try:
        exported = torch.export.export(
            module.eval(), tuple(example_inputs), dynamic_shapes=tuple({0: batch} for _ in example_inputs)
        )
    except Exception as exc:  # torch.export explains what it cannot trace
        raise ConfigError(f"the model cannot be exported: {type(exc).__name__}: {first_line(exc)}") from None
    archive = io.BytesIO()
    torch.export.save(exported, archive)
    return load_program(archive.getvalue(), where)
