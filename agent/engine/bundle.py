"""Reading an artifact bundle safely: verify every hash and dimension before trusting any file.

Annoy trusts its caller about the vector dimension and crashes or returns garbage otherwise, and
`torch.load` of untrusted data must never unpickle code, so nothing is opened until the manifest
validates, every listed file hashes to its recorded digest, and the shapes agree with each other.
Every failure is a `BundleError` whose message names the offending file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydantic
import torch
from torch import nn

from agent.engine.manifest import (
    CALIBRATION_FILE,
    MANIFEST_FILE,
    SCHEMA_VERSION,
    TRAIN_LABELS_FILE,
    Manifest,
)
from agent.engine.model_factory import build_model
from agent.engine.preprocess import Preprocessor
from agent.errors import BundleError

_ANNOY_EUCLIDEAN_NODE_OVERHEAD = 16  # n_descendants, bias, two children: 4 bytes each


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class VerifiedBundle:
    """A bundle whose files passed every check; the loaders below open them."""

    root: Path
    manifest: Manifest

    def path(self, relative: str) -> Path:
        return self.root / relative


def read_manifest(root: Path) -> Manifest:
    path = root / MANIFEST_FILE
    if not root.is_dir():
        raise BundleError(f"{root}: bundle directory does not exist")
    if not path.is_file():
        raise BundleError(f"{path}: missing (not a bundle, or fitting did not finish)")
    try:
        manifest = Manifest.model_validate(json.loads(path.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path}: not valid JSON ({exc})") from None
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise BundleError(f"{path}: invalid manifest at {where}: {first['msg']}") from None
    if manifest.schema_version != SCHEMA_VERSION:
        raise BundleError(f"{path}: schema_version {manifest.schema_version}, expected {SCHEMA_VERSION}")
    return manifest


def verify_bundle(root: str | Path) -> VerifiedBundle:
    """Manifest, hashes and dimensions; raises BundleError naming the first bad file."""
    root = Path(root)
    manifest = read_manifest(root)
    required = {manifest.model.weights, TRAIN_LABELS_FILE, CALIBRATION_FILE}
    for layer in manifest.layers:
        required.add(layer.index_file)
        if layer.params_file:
            required.add(layer.params_file)
    unlisted = sorted(required - manifest.files.keys())
    if unlisted:
        raise BundleError(f"{root / unlisted[0]}: not listed in {MANIFEST_FILE} with a sha256")
    for relative, expected in manifest.files.items():
        path = root / relative
        if Path(relative).is_absolute() or ".." in Path(relative).parts:
            raise BundleError(f"{MANIFEST_FILE}: file path {relative!r} escapes the bundle")
        if not path.is_file():
            raise BundleError(f"{path}: missing")
        if sha256_file(path) != expected:
            raise BundleError(f"{path}: sha256 mismatch (corrupted or modified after fitting)")
    bundle = VerifiedBundle(root=root, manifest=manifest)
    _check_dimensions(bundle)
    return bundle


def _check_dimensions(bundle: VerifiedBundle) -> None:
    n_train = len(load_train_labels(bundle))
    for layer in bundle.manifest.layers:
        ann = bundle.path(layer.index_file)
        node_size = _ANNOY_EUCLIDEAN_NODE_OVERHEAD + 4 * layer.dim
        size = ann.stat().st_size
        if size % node_size or size // node_size < n_train:
            raise BundleError(f"{ann}: size {size} bytes does not fit {n_train} vectors of dim {layer.dim}")
        load_preprocessor(bundle, layer.name)  # shape checks against the manifest


def load_train_labels(bundle: VerifiedBundle) -> np.ndarray:
    path = bundle.path(TRAIN_LABELS_FILE)
    labels = _load_npy(path)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise BundleError(f"{path}: expected a 1-d integer array, got {labels.dtype}{labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= bundle.manifest.model.num_classes):
        raise BundleError(f"{path}: labels outside 0..{bundle.manifest.model.num_classes - 1}")
    if len(labels) != bundle.manifest.train.size:
        raise BundleError(f"{path}: {len(labels)} labels, manifest says {bundle.manifest.train.size}")
    return labels.astype(np.int64)


def load_calibration(bundle: VerifiedBundle) -> tuple[np.ndarray, np.ndarray]:
    """Sorted calibration nonconformity (true labels) and label-free scores."""
    path = bundle.path(CALIBRATION_FILE)
    arrays = _load_npz(path)
    alpha, label_free = arrays.get("alpha"), arrays.get("label_free")
    expected = bundle.manifest.calibration.size
    for name, values in (("alpha", alpha), ("label_free", label_free)):
        if values is None or values.shape != (expected,):
            shape = None if values is None else values.shape
            raise BundleError(f"{path}: '{name}' has shape {shape}, expected ({expected},)")
    return np.sort(arrays["alpha"]), np.sort(arrays["label_free"])


def load_preprocessor(bundle: VerifiedBundle, layer_name: str) -> Preprocessor:
    layer = next(spec for spec in bundle.manifest.layers if spec.name == layer_name)
    arrays = _load_npz(bundle.path(layer.params_file)) if layer.params_file else {}
    try:
        pre = Preprocessor.from_arrays(layer.preprocessing, layer.input_dim, arrays)
    except BundleError as exc:
        raise BundleError(f"{bundle.path(layer.params_file or layer.index_file)}: {exc}") from None
    if pre.output_dim != layer.dim:
        raise BundleError(
            f"{bundle.path(layer.params_file or layer.index_file)}: preprocessing gives dim "
            f"{pre.output_dim}, manifest says {layer.dim}"
        )
    return pre


def load_model(bundle: VerifiedBundle) -> nn.Module:
    """Builds the model from its factory and loads weights without unpickling code."""
    spec = bundle.manifest.model
    model = build_model(spec.factory, spec.factory_kwargs)
    path = bundle.path(spec.weights)
    try:
        model.load_state_dict(load_state_dict(path), strict=True)
    except RuntimeError as exc:
        raise BundleError(f"{path}: weights do not fit {spec.factory}: {_first_line(exc)}") from None
    return model.eval()


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """`torch.load(weights_only=True)`: tensors and plain containers only, never code."""
    if not Path(path).is_file():
        raise BundleError(f"{path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file; all mean "unreadable"
        raise BundleError(f"{path}: not a loadable weights file: {_first_line(exc)}") from None
    if not isinstance(state, dict):
        raise BundleError(f"{path}: expected a state_dict, found {type(state).__name__}")
    return state


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise BundleError(f"{path}: unreadable array ({exc})") from None


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (ValueError, OSError, KeyError) as exc:
        raise BundleError(f"{path}: unreadable archive ({exc})") from None
