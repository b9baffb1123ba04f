"""Per-layer preprocessing fitted once at fit time and applied identically at score time.

A spec is a `+`-joined chain of steps, applied left to right:

- `none`     identity;
- `pca:D`    centre, then project on the top D principal directions of the training activations
             (randomised PCA on a sample; makes 12,544-dim conv activations indexable);
- `l2`       scale every vector to unit length (Euclidean neighbours become cosine neighbours).

Fitted parameters live in `layers/<layer>.npz` of the bundle (plain arrays, no pickle).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from agent.errors import BundleError, ConfigError, FitError

_EPS = 1e-12


def parse_spec(spec: str) -> list[tuple[str, int | None]]:
    """`"pca:64+l2"` -> `[("pca", 64), ("l2", None)]`; raises ConfigError on anything else."""
    steps: list[tuple[str, int | None]] = []
    for raw in spec.strip().lower().split("+"):
        name, _, arg = raw.partition(":")
        if name == "none" and not arg:
            continue
        if name == "l2" and not arg:
            steps.append(("l2", None))
        elif name == "pca" and arg.isdigit() and int(arg) > 0:
            steps.append(("pca", int(arg)))
        else:
            raise ConfigError(f"bad preprocessing step {raw!r} in {spec!r}; use none, l2 or pca:D")
    if [name for name, _ in steps].count("pca") > 1:
        raise ConfigError(f"at most one pca step per layer: {spec!r}")
    return steps


@dataclass
class Preprocessor:
    """A fitted preprocessing chain for one layer: `input_dim` features in, `output_dim` out."""

    spec: str
    input_dim: int
    mean: np.ndarray | None = None  # (input_dim,) when a pca step is present
    components: np.ndarray | None = None  # (input_dim, D)
    steps: list[tuple[str, int | None]] = field(init=False)

    def __post_init__(self) -> None:
        self.steps = parse_spec(self.spec)

    @property
    def output_dim(self) -> int:
        return self.components.shape[1] if self.components is not None else self.input_dim

    @property
    def has_params(self) -> bool:
        return self.components is not None

    def fit(self, sample: np.ndarray, seed: int = 0) -> Preprocessor:
        """Fits the pca step (if any) on a sample of training activations `(n, input_dim)`,
        after whatever steps precede it in the chain."""
        current = np.asarray(sample, dtype=np.float32)
        for name, dim in self.steps:
            if name == "l2":
                current = unit_rows(current)
                continue
            assert dim is not None
            if dim > min(current.shape):
                raise FitError(f"pca:{dim} needs at least {dim} samples and features, got {current.shape}")
            data = torch.as_tensor(current)
            mean = data.mean(dim=0)
            generator_state = torch.random.get_rng_state()
            torch.manual_seed(seed)
            try:
                _, _, v = torch.pca_lowrank(data - mean, q=min(dim + 10, *data.shape), center=False)
            finally:
                torch.random.set_rng_state(generator_state)
            self.mean = mean.numpy()
            self.components = np.ascontiguousarray(v[:, :dim].numpy())
            current = (current - self.mean) @ self.components
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        out = np.asarray(x, dtype=np.float32)
        for name, _ in self.steps:
            if name == "pca":
                if self.components is None or self.mean is None:
                    raise BundleError(f"preprocessing {self.spec!r} used before it was fitted")
                out = (out - self.mean) @ self.components
            else:
                out = unit_rows(out)
        return np.ascontiguousarray(out, dtype=np.float32)

    def arrays(self) -> dict[str, np.ndarray]:
        """Parameters to save; empty when the chain has nothing fitted."""
        if self.components is None or self.mean is None:
            return {}
        return {"mean": self.mean, "components": self.components}

    @classmethod
    def from_arrays(cls, spec: str, input_dim: int, arrays: dict[str, np.ndarray]) -> Preprocessor:
        """Rebuilds a fitted chain, checking that the stored arrays match the spec's shapes."""
        pre = cls(spec=spec, input_dim=input_dim)
        pca_dims = [dim for name, dim in pre.steps if name == "pca"]
        if not pca_dims:
            return pre
        mean, components = arrays.get("mean"), arrays.get("components")
        if mean is None or components is None:
            raise BundleError(f"preprocessing {spec!r} needs 'mean' and 'components' arrays")
        if mean.shape != (input_dim,) or components.shape != (input_dim, pca_dims[0]):
            raise BundleError(
                f"preprocessing {spec!r}: arrays have shapes {mean.shape} and {components.shape}, "
                f"expected ({input_dim},) and ({input_dim}, {pca_dims[0]})"
            )
        pre.mean = mean.astype(np.float32)
        pre.components = components.astype(np.float32)
        return pre


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length; an all-zero row stays zero instead of becoming NaN."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), _EPS)
