"""Hidden-layer activations of a model at named tap points, and the model's logits, in one pass.

A *tap name* says where to read a value and which part of it:

    layer1.0.relu         the output of the module at that `named_modules()` path, first call
    layer1.0.relu#1       the same module's second call in the forward pass (#2 the third, ...):
                          torchvision's ResNet calls each block's `relu` twice
    gru[0]                one element of a tuple, list, dict or `ModelOutput` output: `[index]`
    encoder[last_hidden_state]   or `[key]`; selectors chain: `lstm[1][0]`
    layer1.0:add          (serialized programs only) a functional operation: the first `add` made
    :flatten#1            inside that module's call; `:op` at the top level; `#n` as for modules

Two kinds of model give the same names (`TappableModel`): a Python `nn.Module` from a factory,
tapped with forward hooks (`ModuleModel`, here), and a serialized `torch.export` program, tapped by
returning the named graph nodes as extra outputs (`agent.engine.program`). A tapped value must be a
floating tensor whose first dimension is the batch; it is flattened to `(batch, features)`.

One forward pass per batch yields the logits (the model's output, or the part of it the output
selector names) and every tapped activation as float32 numpy arrays — the form the indexes consume.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from agent.engine.manifest import COMPUTE_DTYPES, ComputeDtype
from agent.errors import ConfigError, InputError

Selector = int | str
_TAP = re.compile(r"^(?P<base>[^\[\]#]*?)(?:#(?P<call>\d{1,4}))?(?P<selectors>(?:\[[^\[\]]{1,128}\])*)$")
_SELECTOR = re.compile(r"\[([^\[\]]+)\]")


@dataclass(frozen=True)
class TapName:
    """A parsed tap name: where (`path`, `call`, `op`) and which part (`selectors`)."""

    path: str  # the module path ("" for the top level)
    call: int = 0  # which call of that module (0: the first)
    op: str | None = None  # a functional operation inside the call (serialized programs)
    op_call: int = 0
    selectors: tuple[Selector, ...] = ()

    @classmethod
    def parse(cls, text: str) -> TapName:
        """Raises ConfigError unless `text` follows the grammar of the module docstring."""
        module_part, colon, op_part = text.partition(":")
        match = _TAP.fullmatch(op_part if colon else module_part)
        if not text or len(text) > 256 or match is None:
            raise ConfigError(f"bad tap name {text!r}: use PATH, PATH#N, PATH[i], PATH[key] or PATH:OP")
        selectors = tuple(_selector(raw) for raw in _SELECTOR.findall(match["selectors"]))
        count = int(match["call"] or 0)
        if not colon:
            if not match["base"]:
                raise ConfigError(f"bad tap name {text!r}: no module path")
            return cls(match["base"], count, None, 0, selectors)
        module = _TAP.fullmatch(module_part)
        if module is None or module["selectors"] or not match["base"]:
            raise ConfigError(f"bad tap name {text!r}: an operation is MODULE:OP or :OP")
        return cls(module["base"], int(module["call"] or 0), match["base"], count, selectors)

    @property
    def site(self) -> str:
        """The call site without selectors: what a hook or a graph node is found by."""
        text = self.path + (f"#{self.call}" if self.call else "")
        if self.op is not None:
            text += f":{self.op}" + (f"#{self.op_call}" if self.op_call else "")
        return text


def _selector(raw: str) -> Selector:
    raw = raw.strip()
    return int(raw) if re.fullmatch(r"-?\d+", raw) else raw


def format_selectors(selectors: Sequence[Selector]) -> str:
    return "".join(f"[{part}]" for part in selectors)


def select(value: Any, selectors: Sequence[Selector], where: str) -> Any:
    """Applies `[i]` / `[key]` selectors to a model value (tuple, list, dict, `ModelOutput`, object)."""
    for depth, part in enumerate(selectors):
        here = where + format_selectors(selectors[:depth])
        if isinstance(part, int) and isinstance(value, (tuple, list)):
            if not -len(value) <= part < len(value):
                raise ConfigError(f"{here} has {len(value)} elements; [{part}] is out of range")
            value = value[part]
        elif isinstance(part, str) and isinstance(value, Mapping):
            if part not in value:
                raise ConfigError(f"{here} has no key {part!r}; keys: {sorted(map(str, value))}")
            value = value[part]
        elif isinstance(part, str) and not isinstance(value, (torch.Tensor, tuple, list)) and hasattr(value, part):
            value = getattr(value, part)
        else:
            raise ConfigError(f"{here} is a {_describe(value)}; [{part}] does not select from it")
    return value


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor of shape {list(value.shape)}"
    if isinstance(value, (tuple, list)):
        return f"{type(value).__name__} of {len(value)}"
    if isinstance(value, Mapping):
        return f"{type(value).__name__} with keys {sorted(map(str, value))[:8]}"
    return type(value).__name__


def leaves(value: Any, prefix: tuple[Selector, ...] = (), depth: int = 0) -> Iterator[tuple[tuple[Selector, ...], Any]]:
    """Every tensor inside a (nested) output with the selectors that reach it, in order."""
    if isinstance(value, torch.Tensor):
        yield prefix, value
    elif depth < 3 and isinstance(value, (tuple, list)):
        for index, item in enumerate(value):
            yield from leaves(item, (*prefix, index), depth + 1)
    elif depth < 3 and isinstance(value, Mapping):
        for key, item in value.items():
            if isinstance(key, str):
                yield from leaves(item, (*prefix, key), depth + 1)


@dataclass(frozen=True)
class TapPoint:
    """One tappable value, as `dknn-agent layers` lists it."""

    name: str
    kind: str  # the module's class, or the operation
    shape: tuple[int, ...]  # one input's value, without the batch dimension
    dtype: str
    batch_first: bool  # whether the first dimension is the batch (only those can be tapped)
    logits: bool = False  # the model's logits (its output, or the selected part of it)
    feeds_logits: bool = False  # what the layer that makes the logits reads: the last hidden representation
    reads: tuple[str, ...] = ()  # the tap points this value is computed from directly (its call's input)

    @property
    def width(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1

    @property
    def tappable(self) -> bool:
        return self.batch_first and self.dtype.startswith(("float", "bfloat"))


class TapSession(Protocol):
    """An opened set of taps: each call is one forward pass."""

    def __call__(self, inputs: Sequence[torch.Tensor]) -> tuple[Any, dict[str, torch.Tensor]]:
        """The model's output (logits, selected) and the raw tapped values, by tap name."""
        ...

    def close(self) -> None: ...


class TappableModel(Protocol):
    """A classifier the engine can run and read inside: a factory's module or a serialized program."""

    def classifier(self, output: str | None) -> nn.Module:
        """inputs -> logits (the output, or the part `output` selects) as a module: differentiable, for
        attacks and checks."""
        ...

    def tap_points(self, inputs: Sequence[torch.Tensor], output: str | None) -> list[TapPoint]:
        """Every tappable value of a forward pass on `inputs` (a batch of 3), in execution order;
        `output` selects the logits, which mark the points that make them and feed them."""
        ...

    def open(self, layers: Sequence[str], output: str | None) -> TapSession:
        """Taps on `layers`; ConfigError naming the first unknown one."""
        ...


# The batch size of a probe pass: 3 tells a batch dimension from a dimension of 1 or 2.
PROBE_BATCH = 3


class ModuleModel:
    """An `nn.Module` (from a trusted factory), tapped with forward hooks that count calls."""

    def __init__(self, module: nn.Module) -> None:
        self._module = module

    def classifier(self, output: str | None) -> nn.Module:
        selectors = parse_output(output)
        return _Selecting(self._module, selectors) if selectors else self._module

    def tap_points(self, inputs: Sequence[torch.Tensor], output: str | None) -> list[TapPoint]:
        recorded: list[tuple[str, str, Any, Any]] = []  # (site, module class, output, first input)
        calls: dict[str, int] = {}

        def hook(path: str, kind: str) -> Callable[[nn.Module, tuple[Any, ...], Any], None]:
            def record(_module: nn.Module, args: tuple[Any, ...], value: Any) -> None:
                count = calls.get(path, 0)
                calls[path] = count + 1
                recorded.append((path + (f"#{count}" if count else ""), kind, value, args[0] if args else None))

            return record

        handles = [
            module.register_forward_hook(hook(path, type(module).__name__))
            for path, module in self._module.named_modules()
            if path
        ]
        try:
            with torch.no_grad():
                logits = select(self._module.eval()(*inputs), parse_output(output), "the model's output")
        finally:
            for handle in handles:
                handle.remove()
        makers = [entry for entry in recorded if entry[2] is logits]
        fed = makers[-1][3] if makers and isinstance(makers[-1][3], torch.Tensor) else None
        batch = len(inputs[0]) if inputs else 0
        points: list[TapPoint] = []
        values: list[torch.Tensor] = []
        for site, kind, value_out, first_input in recorded:
            reads = tuple(
                earlier.name
                for earlier, earlier_value in zip(points, values, strict=True)
                if isinstance(first_input, torch.Tensor) and _same_values(earlier_value, first_input)
            )
            for selectors, value in leaves(value_out):
                point = _point(site + format_selectors(selectors), kind, value, batch)
                fed_here = fed is not None and _same_values(value, fed)
                points.append(replace(point, logits=value is logits, feeds_logits=fed_here, reads=reads))
                values.append(value)
        return points

    def open(self, layers: Sequence[str], output: str | None) -> TapSession:
        return _HookSession(self._module, layers, output)


def _same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors hold the same values in the same memory (a flatten is a view)."""
    return a.numel() == b.numel() and a.data_ptr() == b.data_ptr() and a.dtype == b.dtype


def _point(name: str, kind: str, value: torch.Tensor, batch: int) -> TapPoint:
    shape = tuple(int(size) for size in value.shape)
    batch_first = len(shape) >= 1 and shape[0] == batch
    return TapPoint(
        name, kind, shape[1:] if batch_first else shape, str(value.dtype).removeprefix("torch."), batch_first
    )


def parse_output(output: str | None) -> tuple[Selector, ...]:
    """The model-output selector (`[logits]`, `[0]`, or a bare key `logits`) as selectors."""
    if output is None or not output.strip():
        return ()
    text = output.strip()
    if not text.startswith("["):
        text = f"[{text}]"
    selectors = _SELECTOR.findall(text)
    if "".join(f"[{part}]" for part in selectors) != text:
        raise ConfigError(f"bad output selector {output!r}: use [0], [logits] or logits")
    return tuple(_selector(part) for part in selectors)


class _HookSession:
    """Forward hooks on the modules the taps name; each keeps the call the tap asks for."""

    def __init__(self, module: nn.Module, layers: Sequence[str], output: str | None) -> None:
        self._module = module.eval()
        self._output = parse_output(output)
        self._taps = {name: TapName.parse(name) for name in layers}
        modules = dict(module.named_modules())
        for name, tap in self._taps.items():
            if tap.op is not None:
                raise ConfigError(f"tap {name!r}: operations can be tapped in serialized programs only")
            if tap.path not in modules or not tap.path:
                known = ", ".join(path for path in modules if path) or "(none)"
                raise ConfigError(f"model has no layer {tap.path!r} (tap {name!r}); named modules are: {known}")
        self._wanted: dict[str, set[int]] = {}
        for tap in self._taps.values():
            self._wanted.setdefault(tap.path, set()).add(tap.call)
        self._calls: dict[str, int] = {}
        self._values: dict[tuple[str, int], Any] = {}
        self._handles = [modules[path].register_forward_hook(self._hook(path)) for path in self._wanted]

    def _hook(self, path: str) -> Callable[[nn.Module, object, Any], None]:
        wanted = self._wanted[path]

        def capture(_module: nn.Module, _inputs: object, output: Any) -> None:
            count = self._calls.get(path, 0)
            self._calls[path] = count + 1
            if count in wanted:
                self._values[(path, count)] = output

        return capture

    def __call__(self, inputs: Sequence[torch.Tensor]) -> tuple[Any, dict[str, torch.Tensor]]:
        self._calls.clear()
        self._values.clear()
        output = select(self._module(*inputs), self._output, "the model's output")
        tapped = {}
        for name, tap in self._taps.items():
            if (tap.path, tap.call) not in self._values:
                made = self._calls.get(tap.path, 0)
                raise ConfigError(f"tap {name!r}: {tap.path} was called {made} time(s) in the forward pass")
            tapped[name] = select(self._values[(tap.path, tap.call)], tap.selectors, tap.site)
        return output, tapped

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


class _Selecting(nn.Module):
    """A module whose output is one part of another module's output (its logits)."""

    def __init__(self, inner: nn.Module, selectors: tuple[Selector, ...]) -> None:
        super().__init__()
        self.inner = inner
        self._selectors = selectors

    def forward(self, *inputs: torch.Tensor) -> Any:
        return select(self.inner(*inputs), self._selectors, "the model's output")


def as_tappable(model: nn.Module | TappableModel) -> TappableModel:
    return ModuleModel(model) if isinstance(model, nn.Module) else model


@dataclass(frozen=True)
class Activations:
    """What one forward pass tells: the model's logits and the activations of each tapped layer."""

    outputs: np.ndarray  # (n, classes) the logits
    layers: dict[str, np.ndarray]  # tap name -> (n, features) float32

    @property
    def model_prediction(self) -> np.ndarray:
        return self.outputs.argmax(axis=1)


def native_bfloat16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU computes bfloat16 natively (the `avx512_bf16` or `amx_bf16` flag); False
    where /proc/cpuinfo does not say. Without it, a bfloat16 bundle scores slower than float32."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return False
    flags = {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[-1].split()}
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def as_tensors(inputs: np.ndarray | torch.Tensor | Sequence[np.ndarray | torch.Tensor]) -> list[torch.Tensor]:
    """One tensor per model input: a bare array is a single-input model's batch."""
    if isinstance(inputs, (np.ndarray, torch.Tensor)):
        inputs = [inputs]
    return [value if isinstance(value, torch.Tensor) else torch.from_numpy(_writable(value)) for value in inputs]


def _writable(value: Any) -> np.ndarray:
    """A writable array torch can share (a read-only memory map's rows are copied)."""
    array = np.asarray(value)
    return array if array.flags.writeable else np.array(array)


class ActivationTap:
    """Runs batched, gradient-free passes and returns the logits and the tapped layers as numpy.

    `compute_dtype="bfloat16"` runs the pass under `torch.autocast`: convolutions and matrix
    products in bfloat16, activations handed back as float32. On a CPU with native bfloat16
    (AVX512-BF16, AMX) that is about twice the float32 rate; elsewhere it is slower. A bundle
    records the precision it was fitted in (`ModelSpec.compute_dtype`), and scoring uses the same.
    """

    def __init__(
        self,
        model: nn.Module | TappableModel,
        layer_names: Sequence[str],
        compute_dtype: ComputeDtype = "float32",
        output: str | None = None,
    ) -> None:
        if compute_dtype not in COMPUTE_DTYPES:
            raise ConfigError(f"compute dtype {compute_dtype!r}: use {' or '.join(COMPUTE_DTYPES)}")
        self.source = as_tappable(model)
        self.layer_names = tuple(layer_names)
        self.compute_dtype = compute_dtype
        self.output = output
        self._session = self.source.open(self.layer_names, output)

    @property
    def model(self) -> nn.Module:
        """The model as a module of its inputs returning its logits (attacks and training read it)."""
        return self.source.classifier(self.output)

    def close(self) -> None:
        """Removes whatever the taps added, leaving the model as it was."""
        self._session.close()

    @torch.no_grad()
    def __call__(self, inputs: np.ndarray | torch.Tensor | Sequence[np.ndarray | torch.Tensor]) -> Activations:
        """Activations for one batch (one array per model input); the batch is assumed to fit in memory."""
        tensors = as_tensors(inputs)
        n = len(tensors[0])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.compute_dtype == "bfloat16"):
            output, tapped = self._session(tensors)
        layers = {name: _flat(tapped[name], n, name) for name in self.layer_names}
        return Activations(outputs=_logits(output, n), layers=layers)

    def batches(self, x: Any, batch_size: int) -> Iterator[Activations]:
        """Activations for `x` (an array, or one array per input) in consecutive batches of `batch_size` rows."""
        arrays = [x] if isinstance(x, np.ndarray) else list(x)
        for start in range(0, len(arrays[0]), batch_size):
            yield self([np.ascontiguousarray(array[start : start + batch_size]) for array in arrays])


def _flat(value: Any, n: int, name: str) -> np.ndarray:
    if not isinstance(value, torch.Tensor):
        raise ConfigError(f"tap {name!r} is a {_describe(value)}, not a tensor: add a selector such as {name}[0]")
    if value.ndim == 0 or value.shape[0] != n:
        raise ConfigError(f"tap {name!r} has shape {list(value.shape)}: its first dimension is not the batch ({n})")
    if not value.is_floating_point():
        raise ConfigError(f"tap {name!r} is {value.dtype}: only floating-point activations can be indexed")
    return value.reshape(n, -1).float().cpu().numpy()


def _logits(value: Any, n: int) -> np.ndarray:
    if not isinstance(value, torch.Tensor):
        raise ConfigError(f"the model's output is a {_describe(value)}: name the logits with --output, e.g. [0]")
    if value.ndim != 2 or value.shape[0] != n:
        raise InputError(f"the model's output has shape {list(value.shape)}, expected (batch, classes) = ({n}, C)")
    return value.float().cpu().numpy()


class LayerCapture:
    """Forward hooks that keep the latest output of each named module, as the forward pass made it
    (with its autograd graph when gradients are on: training reads them for the SNNL term)."""

    def __init__(self, model: nn.Module, layer_names: Sequence[str]) -> None:
        modules = dict(model.named_modules())
        missing = [name for name in layer_names if name not in modules]
        if missing:
            known = ", ".join(name for name in modules if name) or "(none)"
            raise ConfigError(f"model has no layer(s) {missing}; named modules are: {known}")
        self.layer_names = tuple(layer_names)
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles = [modules[name].register_forward_hook(self._hook(name)) for name in self.layer_names]

    def _hook(self, name: str) -> Callable[[nn.Module, object, torch.Tensor], None]:
        def capture(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
            self.outputs[name] = output

        return capture

    def close(self) -> None:
        """Removes the hooks, leaving the model as it was."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
