"""Reading an artifact bundle safely: every byte is verified before anything trusts it.

A bundle is data that names code (its model factory), so opening one is a trust decision
(docs/security.md). The order below is the point:

1. `manifest.json` is read once, bounded in size; its sha256 is the **bundle digest**. The
   manifest lists the sha256 of every other file, and step 4 checks each against it, so the
   digest covers the whole bundle. An operator who pins a digest gets exactly those bytes or a
   `BundleError`, before anything is parsed further.
2. The manifest is validated with bounds on every field (a manifest with a million classes or a
   shape of 1e18 is refused here, not discovered by dead-lettering every event).
3. A model given as a factory must live in a module the operator trusts
   (`BundleTrust.factory_modules`): the manifest picks the code that runs, so `weights_only=True`
   alone protects nothing. A model given as a serialized program (`model.pt2`) needs no trust: it
   is read as data (agent.engine.program), so the MNIST reference bundle trusts no Python module.
4. Every file is opened once, without following symlinks, and verified *as opened*: small files
   are read into memory, hashed and parsed from those same bytes; an Annoy file is hashed through
   its open descriptor, which stays open and is what Annoy maps (`/proc/self/fd/N`); an exemplar
   file is hashed the same way and memory-mapped from that descriptor. Swapping a
   file after verification therefore changes nothing. Truncating a mapped file in place still
   kills the process (SIGBUS): replace a bundle by writing a new directory and switching to it,
   never by editing files in place.
5. Shapes and dimensions are cross-checked, so Annoy (which trusts its caller about the vector
   dimension) never opens a file that does not fit.

Nothing is imported and no model is built until all of that passed. Every failure is a
`BundleError` whose message names the offending file.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydantic
import torch
from torch import nn

from agent.engine.conformal import REVIEWED_DISTANCE_REFERENCE, ReviewedDistances
from agent.engine.exemplars import Exemplars, map_exemplar_file
from agent.engine.manifest import (
    CALIBRATION_FILE,
    MANIFEST_FILE,
    MAX_MANIFEST_BYTES,
    SCHEMA_VERSION,
    TRAIN_LABELS_FILE,
    Manifest,
    ResidualSpec,
)
from agent.engine.model_factory import DEFAULT_FACTORY_MODULES, build_model, check_factory_allowed
from agent.engine.preprocess import Preprocessor
from agent.engine.program import load_program
from agent.engine.residual import ResidualTerm
from agent.engine.taps import ModuleModel, TappableModel
from agent.engine.vocabulary import MAX_VOCABULARY_BYTES, parse_stored
from agent.errors import BundleError, first_line

_ANNOY_EUCLIDEAN_NODE_OVERHEAD = 16  # n_descendants, bias, two children: 4 bytes each
_BLOCK = 1 << 20


@dataclass(frozen=True)
class BundleTrust:
    """What the operator lets a bundle do: which factory modules it may name, and, optionally, the
    exact bundle (its digest, `sha256:<hex>`, as `dknn-agent info` prints it)."""

    factory_modules: tuple[str, ...] = DEFAULT_FACTORY_MODULES
    digest: str | None = None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest_digest(manifest_bytes: bytes) -> str:
    return "sha256:" + hashlib.sha256(manifest_bytes).hexdigest()


@dataclass(frozen=True)
class VerifiedBundle:
    """A bundle whose every file passed every check, with the parsed contents scoring needs.

    Only `verify_bundle` builds one, once everything is checked: there is no half-read bundle to
    hand on. Index files stay open (see `index_path`) until `close`; exemplar files are mapped
    read-only (the mapping outlives `close`); everything else is in memory.
    """

    root: Path
    manifest: Manifest
    digest: str
    model_bytes: bytes  # the program archive, or the factory model's state_dict file
    train_labels: np.ndarray
    calibration_alpha: np.ndarray  # sorted
    calibration_label_free: np.ndarray  # sorted
    preprocessors: dict[str, Preprocessor]
    distance_reference: np.ndarray | None  # (m, distance layers), each column sorted; None without distances
    residual: ResidualTerm | None  # the nonconformity's residual term, when it has one
    reviewed_distances: ReviewedDistances | None  # an extended bundle's reviewed points (§3.3); None: not extended
    exemplars: Exemplars | None  # the training rows behind neighbour ids, memory-mapped; None: not kept
    vocabulary: tuple[str, ...] | None  # token id -> token for a text model (fit --vocabulary); None: not kept
    _index_fds: dict[str, int] = field(repr=False)  # layer name -> the verified file's descriptor

    def index_path(self, layer_name: str) -> str:
        """A path to the very Annoy file that was verified (its open descriptor, where /proc exists)."""
        fd = self._index_fds[layer_name]
        proc = f"/proc/self/fd/{fd}"
        return proc if os.path.exists(proc) else str(self.root / self.manifest.layer(layer_name).index_file)

    def build_model(self) -> TappableModel:
        """The model, from its serialized program or from its (trusted) factory with the verified weights."""
        spec = self.manifest.model
        if spec.program is not None:
            return load_program(self.model_bytes, self.root / spec.program)
        assert spec.factory is not None and spec.weights is not None  # ModelSpec guarantees it
        module = build_model(spec.factory, dict(spec.factory_kwargs))
        state = load_state_dict_bytes(self.model_bytes, self.root / spec.weights)
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise BundleError(
                f"{self.root / spec.weights}: weights do not fit {spec.factory}: {first_line(exc)}"
            ) from None
        return ModuleModel(module.eval())

    def build_classifier(self) -> nn.Module:
        """The model as a module of its inputs returning its logits (for attacks and demo traffic)."""
        return self.build_model().classifier(self.manifest.model.output).eval()

    def close(self) -> None:
        for fd in self._index_fds.values():
            os.close(fd)
        self._index_fds.clear()


def read_manifest(root: Path) -> tuple[Manifest, bytes]:
    """The validated manifest and its exact bytes (whose sha256 is the bundle digest)."""
    if not root.is_dir():
        raise BundleError(f"{root}: bundle directory does not exist")
    path = root / MANIFEST_FILE
    if not os.path.lexists(path):
        raise BundleError(f"{path}: missing (not a bundle, or fitting did not finish)")
    raw = _read_bounded(root, MANIFEST_FILE, MAX_MANIFEST_BYTES)
    return parse_manifest(raw, path), raw


def parse_manifest(raw: bytes, path: Path) -> Manifest:
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, 5000-digit ints
        raise BundleError(f"{path}: not valid JSON ({' '.join(str(exc).split())[:200]})") from None
    try:
        manifest = Manifest.model_validate(document)
    except pydantic.ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or "manifest"
        raise BundleError(f"{path}: invalid manifest at {where}: {first['msg']}") from None
    except (RecursionError, ValueError, TypeError) as exc:
        raise BundleError(f"{path}: invalid manifest ({type(exc).__name__})") from None
    if manifest.schema_version != SCHEMA_VERSION:  # version 1 was upgraded while validating
        raise BundleError(f"{path}: schema_version {manifest.schema_version}, expected {SCHEMA_VERSION}")
    return manifest


def bundle_digest(root: str | Path) -> str:
    """The digest `verify_bundle` would compare a pin against (the manifest is validated too)."""
    _, raw = read_manifest(Path(root))
    return manifest_digest(raw)


def verify_bundle(root: str | Path, trust: BundleTrust | None = None, *, importing: bool = True) -> VerifiedBundle:
    """Every check of the module docstring, in order; raises BundleError naming the first bad file.

    `importing=False` is for callers that never build the model (`dknn-agent info`): the factory
    allow-list is then not consulted, everything else is verified.
    """
    trust = trust or BundleTrust()
    root = Path(root).resolve()  # a symlinked bundle root is the "switch" of a deployment: fine
    manifest, raw = read_manifest(root)
    digest = manifest_digest(raw)
    if trust.digest is not None and digest != trust.digest:
        raise BundleError(f"{root / MANIFEST_FILE}: bundle digest {digest} is not the pinned {trust.digest}")
    if importing and manifest.model.factory is not None:
        check_factory_allowed(manifest.model.factory, trust.factory_modules)
    required = {*manifest.model.files, TRAIN_LABELS_FILE, CALIBRATION_FILE}
    index_files = {layer.index_file: layer.name for layer in manifest.layers}
    required |= set(index_files) | {layer.params_file for layer in manifest.layers if layer.params_file}
    residual_spec = manifest.nonconformity.residual
    if residual_spec is not None:
        required.add(residual_spec.params_file)
    exemplar_files = {one.file: one for one in manifest.exemplars.files} if manifest.exemplars else {}
    shared = sorted(required & exemplar_files.keys())
    if shared:
        raise BundleError(f"{root / shared[0]}: named as an exemplar file and as another bundle file")
    required |= set(exemplar_files)
    vocabulary_file = manifest.vocabulary.file if manifest.vocabulary is not None else None
    if vocabulary_file is not None:
        if vocabulary_file in required:
            raise BundleError(f"{root / vocabulary_file}: named as the vocabulary and as another bundle file")
        required.add(vocabulary_file)
    unlisted = sorted(required - manifest.files.keys())
    if unlisted:
        raise BundleError(f"{root / unlisted[0]}: not listed in {MANIFEST_FILE} with a sha256")

    contents: dict[str, bytes] = {}
    fds: dict[str, int] = {}
    exemplar_arrays: dict[str, np.ndarray] = {}
    try:
        for relative, expected in manifest.files.items():
            if relative in index_files:
                fd = _open_in_bundle(root, relative)
                fds[index_files[relative]] = fd
                actual = _hash_fd(fd)
            elif relative in exemplar_files:  # up to 2 GiB: hashed and mapped, never read into memory
                one, fd = exemplar_files[relative], _open_in_bundle(root, relative)
                try:
                    actual = _hash_fd(fd)
                    if actual == expected:
                        exemplar_arrays[one.input] = map_exemplar_file(fd, root / relative, one, manifest.train.size)
                finally:
                    os.close(fd)
            else:
                data = _read_bounded(root, relative, MAX_VOCABULARY_BYTES if relative == vocabulary_file else None)
                actual = hashlib.sha256(data).hexdigest()
                if relative in required:
                    contents[relative] = data
            if actual != expected:
                raise BundleError(f"{root / relative}: sha256 mismatch (corrupted or modified after fitting)")
        train_labels = _train_labels(contents[TRAIN_LABELS_FILE], root / TRAIN_LABELS_FILE, manifest)
        calibration = _load_npz(contents[CALIBRATION_FILE], root / CALIBRATION_FILE)
        alpha, label_free, distance_reference = _calibration(calibration, root / CALIBRATION_FILE, manifest)
        reviewed_distances = _reviewed_distances(calibration, root / CALIBRATION_FILE, manifest)
        residual = _residual(residual_spec, contents, calibration, root) if residual_spec is not None else None
        vocabulary = None
        if manifest.vocabulary is not None and vocabulary_file is not None:
            vocabulary = parse_stored(contents[vocabulary_file], root / vocabulary_file, manifest.vocabulary.size)
        preprocessors = {}
        for layer in manifest.layers:
            _check_index_size(fds[layer.name], root / layer.index_file, layer.dim, manifest.train.size)
            params = _load_npz(contents[layer.params_file], root / layer.params_file) if layer.params_file else {}
            preprocessors[layer.name] = _preprocessor(layer.name, params, root, manifest)
    except BaseException:
        for fd in fds.values():
            os.close(fd)
        raise
    return VerifiedBundle(
        root=root,
        manifest=manifest,
        digest=digest,
        model_bytes=contents[manifest.model.files[0]],
        train_labels=train_labels,
        calibration_alpha=alpha,
        calibration_label_free=label_free,
        preprocessors=preprocessors,
        distance_reference=distance_reference,
        residual=residual,
        reviewed_distances=reviewed_distances,
        exemplars=Exemplars(manifest.exemplars, exemplar_arrays) if manifest.exemplars else None,
        vocabulary=vocabulary,
        _index_fds=fds,
    )


# -- opening files inside the bundle, once, without following links --------------------------------


def _open_in_bundle(root: Path, relative: str) -> int:
    """An O_RDONLY descriptor of `root/relative`, refusing absolute paths, `..`, and symlinks in
    any component (a symlinked `.ann` could point anywhere on the machine)."""
    parts = Path(relative).parts
    if Path(relative).is_absolute() or ".." in parts or not parts:
        raise BundleError(f"{MANIFEST_FILE}: file path {relative!r} escapes the bundle")
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    directory = os.open(root, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        for part in parts[:-1]:
            try:
                inner = os.open(part, flags | getattr(os, "O_DIRECTORY", 0), dir_fd=directory)
            except FileNotFoundError:
                raise BundleError(f"{root / relative}: missing") from None
            except OSError:
                raise BundleError(
                    f"{root / relative}: {part!r} is not a plain directory (symlinks are refused)"
                ) from None
            os.close(directory)
            directory = inner
        try:
            fd = os.open(parts[-1], flags, dir_fd=directory)
        except FileNotFoundError:
            raise BundleError(f"{root / relative}: missing") from None
        except OSError as exc:
            raise BundleError(
                f"{root / relative}: cannot be opened as a plain file (symlinks are refused): {exc.strerror}"
            ) from None
    finally:
        os.close(directory)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise BundleError(f"{root / relative}: not a regular file")
    return fd


def _read_bounded(root: Path, relative: str, limit: int | None) -> bytes:
    with os.fdopen(_open_in_bundle(root, relative), "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if limit is not None and size > limit:
            raise BundleError(f"{root / relative}: {size} bytes, more than the {limit} a bundle may have here")
        return handle.read()


def _hash_fd(fd: int) -> str:
    digest = hashlib.sha256()
    for block in _blocks(fd):
        digest.update(block)
    return digest.hexdigest()


def _blocks(fd: int) -> Iterator[bytes]:
    offset = 0
    while block := os.pread(fd, _BLOCK, offset):
        offset += len(block)
        yield block


# -- parsing verified bytes ------------------------------------------------------------------------


def load_state_dict_bytes(data: bytes, path: Path) -> dict[str, torch.Tensor]:
    """`torch.load(weights_only=True)`: tensors and plain containers only, never code."""
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file; all mean "unreadable"
        raise BundleError(f"{path}: not a loadable weights file: {first_line(exc)}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BundleError(f"{path}: expected a state_dict of tensors, found {type(state).__name__}")
    return state


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Weights from a file the operator names (`dknn-agent fit --weights`)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise BundleError(f"{path}: cannot read weights ({exc.strerror or exc})") from None
    return load_state_dict_bytes(data, Path(path))


def _train_labels(data: bytes, path: Path, manifest: Manifest) -> np.ndarray:
    labels = _load_npy(data, path)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise BundleError(f"{path}: expected a 1-d integer array, got {labels.dtype}{labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= manifest.model.num_classes):
        raise BundleError(f"{path}: labels outside 0..{manifest.model.num_classes - 1}")
    if len(labels) != manifest.train.size:
        raise BundleError(f"{path}: {len(labels)} labels, manifest says {manifest.train.size}")
    return labels.astype(np.int64)


def _calibration(
    arrays: dict[str, np.ndarray], path: Path, manifest: Manifest
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Sorted calibration nonconformity (true labels) and label-free scores, and the distance
    reference (each column sorted) when the bundle's nonconformity uses distances."""
    expected = manifest.calibration.size
    out = []
    for name in ("alpha", "label_free"):
        values = arrays.get(name)
        if values is None or values.shape != (expected,) or not np.issubdtype(values.dtype, np.number):
            shape = None if values is None else values.shape
            raise BundleError(f"{path}: '{name}' has shape {shape}, expected ({expected},)")
        if not np.isfinite(values).all():
            raise BundleError(f"{path}: '{name}' holds NaN or infinity")
        out.append(np.sort(values))
    return out[0], out[1], _distance_reference(arrays, path, manifest)


def _distance_reference(arrays: dict[str, np.ndarray], path: Path, manifest: Manifest) -> np.ndarray | None:
    if not manifest.distance_layers:
        return None
    expected = (manifest.nonconformity.distance_reference_size, len(manifest.distance_layers))
    reference = arrays.get("distance_reference")
    if reference is None or reference.shape != expected or not np.issubdtype(reference.dtype, np.floating):
        shape = None if reference is None else reference.shape
        raise BundleError(f"{path}: 'distance_reference' has shape {shape}, expected {expected} floats")
    if np.isnan(reference).any() or (reference < 0).any():  # +inf: a reference point short of k neighbours
        raise BundleError(f"{path}: 'distance_reference' holds negative or NaN distances")
    return np.sort(reference.astype(np.float64), axis=0)


def _reviewed_distances(arrays: dict[str, np.ndarray], path: Path, manifest: Manifest) -> ReviewedDistances | None:
    """An extended bundle's reviewed points' own distances (§3.3): one row per reviewed point, which
    a bundle with reviews and a distance term must carry and no other may."""
    reference = arrays.get(REVIEWED_DISTANCE_REFERENCE)
    if manifest.reviews is None or not manifest.distance_layers:
        if reference is not None:
            raise BundleError(f"{path}: '{REVIEWED_DISTANCE_REFERENCE}' in a bundle without reviewed points")
        return None
    expected = (len(manifest.reviews.points), len(manifest.distance_layers))
    if reference is None or reference.shape != expected or not np.issubdtype(reference.dtype, np.floating):
        shape = None if reference is None else reference.shape
        raise BundleError(f"{path}: '{REVIEWED_DISTANCE_REFERENCE}' has shape {shape}, expected {expected} floats")
    if np.isnan(reference).any() or (reference < 0).any():
        raise BundleError(f"{path}: '{REVIEWED_DISTANCE_REFERENCE}' holds negative or NaN distances")
    first = manifest.train.size - len(manifest.reviews.points)
    return ReviewedDistances(first_item=first, reference_sorted=np.sort(reference.astype(np.float64), axis=0))


def _residual(
    spec: ResidualSpec, contents: dict[str, bytes], calibration: dict[str, np.ndarray], root: Path
) -> ResidualTerm:
    """The residual term from its parameters file and the calibration file's reference."""
    params = _load_npz(contents[spec.params_file], root / spec.params_file)
    try:
        return ResidualTerm.from_arrays(spec, params, calibration.get("residual_reference"))
    except BundleError as exc:
        raise BundleError(f"{root / spec.params_file} with {root / CALIBRATION_FILE}: {exc}") from None


def _preprocessor(layer_name: str, arrays: dict[str, np.ndarray], root: Path, manifest: Manifest) -> Preprocessor:
    layer = manifest.layer(layer_name)
    where = root / (layer.params_file or layer.index_file)
    try:
        pre = Preprocessor.from_arrays(layer.preprocessing, layer.input_dim, arrays)
    except BundleError as exc:
        raise BundleError(f"{where}: {exc}") from None
    if pre.output_dim != layer.dim:
        raise BundleError(f"{where}: preprocessing gives dim {pre.output_dim}, manifest says {layer.dim}")
    return pre


def _check_index_size(fd: int, path: Path, dim: int, n_train: int) -> None:
    node_size = _ANNOY_EUCLIDEAN_NODE_OVERHEAD + 4 * dim
    size = os.fstat(fd).st_size
    if size % node_size or size // node_size < n_train:
        raise BundleError(f"{path}: size {size} bytes does not fit {n_train} vectors of dim {dim}")


def _load_npy(data: bytes, path: Path) -> np.ndarray:
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise BundleError(f"{path}: unreadable array ({exc})") from None


def _load_npz(data: bytes, path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (ValueError, OSError, KeyError, EOFError) as exc:
        raise BundleError(f"{path}: unreadable archive ({exc})") from None
