"""Hidden-layer activations of a model at named layers, captured with forward hooks.

One forward pass per batch yields the model's own output and every tapped layer's activation,
flattened to `(batch, features)` float32 numpy arrays — the form the indexes consume.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from agent.engine.manifest import COMPUTE_DTYPES
from agent.errors import ConfigError


@dataclass(frozen=True)
class Activations:
    """What one forward pass tells: the model's outputs and the activations of each tapped layer."""

    outputs: np.ndarray  # (n, classes) raw model outputs (logits)
    layers: dict[str, np.ndarray]  # layer name -> (n, features) float32

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


class LayerCapture:
    """Forward hooks that keep the latest output of each named layer, as the forward pass made it
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


class ActivationTap:
    """Runs batched, gradient-free passes and returns the named layers' activations as numpy.

    `compute_dtype="bfloat16"` runs the pass under `torch.autocast`: convolutions and matrix
    products in bfloat16, activations handed back as float32. On a CPU with native bfloat16
    (AVX512-BF16, AMX) that is about twice the float32 rate; elsewhere it is slower. A bundle
    records the precision it was fitted in (`ModelSpec.compute_dtype`), and scoring uses the same.
    """

    def __init__(self, model: nn.Module, layer_names: Sequence[str], compute_dtype: str = "float32") -> None:
        if compute_dtype not in COMPUTE_DTYPES:
            raise ConfigError(f"compute dtype {compute_dtype!r}: use {' or '.join(COMPUTE_DTYPES)}")
        self._capture = LayerCapture(model, layer_names)
        self.model = model.eval()
        self.layer_names = self._capture.layer_names
        self.compute_dtype = compute_dtype

    def close(self) -> None:
        """Removes the hooks, leaving the model as it was."""
        self._capture.close()

    @torch.no_grad()
    def __call__(self, x: np.ndarray | torch.Tensor) -> Activations:
        """Activations for one batch; the batch is assumed to fit in memory."""
        tensor = torch.as_tensor(x, dtype=torch.float32)
        self._capture.outputs.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.compute_dtype == "bfloat16"):
            outputs = self.model(tensor)
        layers = {
            name: self._capture.outputs[name].reshape(tensor.shape[0], -1).float().cpu().numpy()
            for name in self.layer_names
        }
        return Activations(outputs=outputs.float().cpu().numpy(), layers=layers)

    def batches(self, x: np.ndarray, batch_size: int) -> Iterator[Activations]:
        """Activations for `x` in consecutive batches of `batch_size` rows."""
        for start in range(0, len(x), batch_size):
            yield self(x[start : start + batch_size])
