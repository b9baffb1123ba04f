"""The bundle manifest: one validated JSON document describing everything in the bundle."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
WEIGHTS_FILE = "model.pt"
TRAIN_LABELS_FILE = "train_labels.npy"
CALIBRATION_FILE = "calibration.npz"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelSpec(_Frozen):
    name: str = Field(min_length=1, max_length=128)
    version: str = Field(min_length=1, max_length=64)
    factory: str = Field(pattern=r"^[\w.]+:\w+$", description="importable `package.module:function`")
    factory_kwargs: dict[str, Any] = Field(default_factory=dict)
    num_classes: int = Field(ge=2)
    weights: str = WEIGHTS_FILE


class InputSpec(_Frozen):
    shape: tuple[int, ...] = Field(description="one input, without the batch dimension")
    dtype: str = "float32"
    value_range: tuple[float, float] | None = None


class LayerSpec(_Frozen):
    name: str = Field(min_length=1)
    input_dim: int = Field(ge=1, description="flattened activation size")
    dim: int = Field(ge=1, description="size after preprocessing: what the index stores")
    preprocessing: str = "none"
    index_file: str
    params_file: str | None = None


class IndexSpec(_Frozen):
    kind: str = "annoy"
    metric: str = "euclidean"
    n_trees: int = Field(ge=1)
    search_k: int = Field(ge=-1, description="-1: Annoy's default, n_trees * k")
    seed: int = 0


class SplitSpec(_Frozen):
    size: int = Field(ge=1)
    source: str = ""
    source_indices: list[int] | None = Field(
        default=None, description="rows of the source data set used; the rest is free for evaluation"
    )


class Manifest(_Frozen):
    schema_version: int = SCHEMA_VERSION
    created_at: str
    model: ModelSpec
    input: InputSpec
    layers: tuple[LayerSpec, ...] = Field(min_length=1)
    k: int = Field(ge=1)
    index: IndexSpec
    train: SplitSpec
    calibration: SplitSpec
    libraries: dict[str, str]
    files: dict[str, str] = Field(description="relative path -> sha256 hex digest")

    @property
    def layer_names(self) -> tuple[str, ...]:
        return tuple(layer.name for layer in self.layers)
