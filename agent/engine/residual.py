"""The residual term of the nonconformity: how much of an activation lies off the training data's
principal subspace at one layer (docs/design.md §2.2, `ResidualSpec`).

Neighbour distances live in the indexed layers, and a model trained to cluster its classes maps
uniform noise or a photograph close to some digit there. An earlier conv layer still shows that the
activation pattern is one the training data never made: most of its energy falls outside the few
directions that training activations span. The share outside is scale-free (a bright input and a
faint one with the same pattern score alike) and costs one projection per input, no index.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from agent.engine.conformal import distance_penalty
from agent.engine.manifest import ResidualSpec
from agent.engine.preprocess import Preprocessor
from agent.errors import BundleError

_EPS = 1e-12


def residual_share(activations: np.ndarray, mean: np.ndarray, components: np.ndarray) -> np.ndarray:
    """`(n, d)` activations -> `(n,)` float64 in [0, 1]: the fraction of each centred row's squared
    length outside the span of `components` (`(d, D)`, orthonormal columns); 0 for a row at the mean."""
    centred = np.asarray(activations, dtype=np.float32) - mean
    total = np.einsum("ij,ij->i", centred, centred, dtype=np.float64)
    projected = centred @ components
    inside = np.einsum("ij,ij->i", projected, projected, dtype=np.float64)
    return np.clip((total - inside) / np.maximum(total, _EPS), 0.0, 1.0)


@dataclass(frozen=True)
class ResidualTerm:
    """A fitted residual term: the layer's mean and principal directions, and the reference shares."""

    spec: ResidualSpec
    mean: np.ndarray  # (d,) float32
    components: np.ndarray  # (d, D) float32, orthonormal columns
    reference_sorted: np.ndarray  # (m,) float64, ascending

    @classmethod
    def fit(cls, spec: ResidualSpec, sample: np.ndarray, reference: np.ndarray, seed: int) -> ResidualTerm:
        """Principal directions from `sample`, reference shares from `reference`: activations of two
        disjoint sets of training points, so the reference is measured like a new input would be."""
        pca = Preprocessor(spec=f"pca:{spec.components}", input_dim=sample.shape[1]).fit(sample, seed)
        assert pca.mean is not None and pca.components is not None
        shares = residual_share(reference, pca.mean, pca.components)
        return cls(spec, pca.mean, pca.components, np.sort(shares))

    @classmethod
    def from_arrays(
        cls, spec: ResidualSpec, params: dict[str, np.ndarray], reference: np.ndarray | None
    ) -> ResidualTerm:
        """Rebuilds a bundle's term, checking every array against the spec; raises BundleError."""
        mean, components = params.get("mean"), params.get("components")
        if mean is None or components is None or mean.ndim != 1 or components.shape != (len(mean), spec.components):
            shapes = None if mean is None or components is None else (mean.shape, components.shape)
            raise BundleError(f"'mean' and 'components' have shapes {shapes}, expected (d,) and (d, {spec.components})")
        if spec.components >= len(mean):
            raise BundleError(f"{spec.components} components for a layer of {len(mean)} features leave no residual")
        if reference is None or reference.shape != (spec.reference_size,):
            shape = None if reference is None else reference.shape
            raise BundleError(f"'residual_reference' has shape {shape}, expected ({spec.reference_size},)")
        for name, values in (("mean", mean), ("components", components), ("residual_reference", reference)):
            if not np.issubdtype(values.dtype, np.floating) or not np.isfinite(values).all():
                raise BundleError(f"'{name}' must hold finite floats")
        if (reference < 0).any() or (reference > 1).any():
            raise BundleError("'residual_reference' holds shares outside [0, 1]")
        return cls(spec, mean.astype(np.float32), components.astype(np.float32), np.sort(reference.astype(np.float64)))

    @property
    def input_dim(self) -> int:
        return len(self.mean)

    def arrays(self) -> dict[str, np.ndarray]:
        """The parameters file's arrays (the reference goes to the calibration file)."""
        return {"mean": self.mean, "components": self.components}

    def share(self, activations: np.ndarray) -> np.ndarray:
        return residual_share(activations, self.mean, self.components)

    def penalty(self, activations: np.ndarray) -> np.ndarray:
        """`(n,)` int64 added to α for every label: floor(w · t(rank of the share in the reference))."""
        return distance_penalty(
            self.share(activations)[:, None], self.reference_sorted[:, None], self.spec.weight, self.spec.tail
        )
