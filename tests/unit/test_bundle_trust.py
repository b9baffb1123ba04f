"""A bundle is untrusted data: it may not pick the code that runs, blow up memory, or change after it
was verified (docs/security.md). Each test here is an attack that worked before the trust boundary."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from agent.engine.bundle import BundleTrust, bundle_digest, verify_bundle
from agent.engine.dknn import DkNN
from agent.errors import BundleError
from tests.conftest import TinyProblem


def copy_bundle(bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(bundle, tmp_path / "bundle"))


def edit_manifest(root: Path, edit) -> None:
    path = root / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def test_a_manifest_cannot_name_arbitrary_code(
    tiny_factory_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = copy_bundle(tiny_factory_bundle, tmp_path)
    monkeypatch.chdir(tmp_path)
    edit_manifest(root, lambda m: m["model"].update(factory="subprocess:run", factory_kwargs={"args": "touch pwned"}))
    with pytest.raises(BundleError, match=r"'subprocess:run' is outside the trusted modules"):
        DkNN.from_bundle(root)
    edit_manifest(root, lambda m: m["model"].update(factory_kwargs={"args": ["touch", "pwned"]}))
    with pytest.raises(BundleError, match=r"invalid manifest at model\.factory_kwargs"):
        DkNN.from_bundle(root)
    assert not (tmp_path / "pwned").exists()


def test_a_trusted_module_can_be_added_by_the_operator(tiny_factory_bundle: Path, tmp_path: Path) -> None:
    root = copy_bundle(tiny_factory_bundle, tmp_path)
    # Out of the box nothing is trusted: a factory bundle needs its package named.
    with pytest.raises(BundleError, match=r"outside the trusted modules \(\(none\)\)"):
        DkNN.from_bundle(root)
    with pytest.raises(BundleError, match="outside the trusted modules"):
        DkNN.from_bundle(root, trust=BundleTrust(factory_modules=("mypkg.models",)))
    # A prefix must match whole module names: "agent.res" does not trust "dknn_lab.models".
    with pytest.raises(BundleError, match="outside the trusted modules"):
        DkNN.from_bundle(root, trust=BundleTrust(factory_modules=("agent.res",)))
    assert DkNN.from_bundle(root, trust=BundleTrust(factory_modules=("dknn_lab",))).num_classes == 3


def test_a_pinned_digest_admits_exactly_that_bundle(tiny_bundle: Path, tmp_path: Path) -> None:
    root = copy_bundle(tiny_bundle, tmp_path)
    digest = bundle_digest(root)
    assert digest == "sha256:" + hashlib.sha256((root / "manifest.json").read_bytes()).hexdigest()
    assert DkNN.from_bundle(root, trust=BundleTrust(digest=digest)).digest == digest
    edit_manifest(root, lambda m: m["model"].update(version="2"))  # any edit: another digest
    with pytest.raises(BundleError, match=f"is not the pinned {digest}"):
        DkNN.from_bundle(root, trust=BundleTrust(digest=digest))


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda m: m["model"].update(num_classes=1_000_000), "model.num_classes"),
        (lambda m: m.update(k=1_000_000), "k"),
        (lambda m: m["inputs"][0].update(shape=[1_000_000_000, 1_000_000_000]), "inputs.0.shape"),
        (lambda m: m["inputs"][0].update(shape=[10_000, 10_000, 10]), "inputs.0.shape"),
        (lambda m: m["layers"][0].update(dim=10**7), "layers.0.dim"),
        (lambda m: m["index"].update(n_trees=10**9), "index.n_trees"),
        (lambda m: m["model"].update(name="x" * 10_000), "model.name"),
        (lambda m: m["files"].update({f"f{i}": "0" * 64 for i in range(2000)}), "files"),
    ],
)
def test_manifest_values_out_of_bounds_are_refused(tiny_bundle: Path, tmp_path: Path, edit, field: str) -> None:
    root = copy_bundle(tiny_bundle, tmp_path)
    edit_manifest(root, edit)
    with pytest.raises(BundleError, match=rf"invalid manifest at {field}"):
        verify_bundle(root)


@pytest.mark.parametrize(
    "text",
    ["[" * 100_000 + "]" * 100_000, '{"k": ' + "9" * 5000 + "}", '{"k": 1e999}', "\x00\xff"],
    ids=["deep", "5000-digit", "overflow", "binary"],
)
def test_hostile_manifest_text_is_one_bundle_error(tiny_bundle: Path, tmp_path: Path, text: str) -> None:
    root = copy_bundle(tiny_bundle, tmp_path)
    (root / "manifest.json").write_text(text, encoding="latin-1")
    with pytest.raises(BundleError, match="manifest.json"):
        verify_bundle(root)


def test_an_oversized_manifest_is_not_read(tiny_bundle: Path, tmp_path: Path) -> None:
    root = copy_bundle(tiny_bundle, tmp_path)
    with (root / "manifest.json").open("r+b") as handle:
        handle.truncate(17 * 1024 * 1024)
    with pytest.raises(BundleError, match="more than the"):
        verify_bundle(root)


def test_symlinks_inside_the_bundle_are_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    root = copy_bundle(tiny_bundle, tmp_path)
    outside = tmp_path / "elsewhere.ann"
    shutil.move(root / "layers/relu1.ann", outside)
    os.symlink(outside, root / "layers/relu1.ann")
    with pytest.raises(BundleError, match=r"relu1\.ann: cannot be opened as a plain file \(symlinks are refused\)"):
        verify_bundle(root)
    shutil.move(root / "layers", tmp_path / "layers-elsewhere")
    os.symlink(tmp_path / "layers-elsewhere", root / "layers")
    with pytest.raises(BundleError, match="is not a plain directory"):
        verify_bundle(root)


def test_a_symlinked_bundle_root_is_the_deployment_switch_and_is_fine(tiny_bundle: Path, tmp_path: Path) -> None:
    os.symlink(tiny_bundle, tmp_path / "current")
    assert DkNN.from_bundle(tmp_path / "current").num_classes == 3


def test_files_swapped_after_verification_are_not_what_gets_used(
    tiny_bundle: Path, tiny_problem: TinyProblem, tmp_path: Path
) -> None:
    """Verification keeps each index open; replacing the path afterwards changes nothing that is read."""
    root = copy_bundle(tiny_bundle, tmp_path)
    expected = DkNN.from_bundle(root).score(tiny_problem.test.x[:20]).neighbor_ids
    bundle = verify_bundle(root)
    try:
        for layer in bundle.manifest.layers:  # an attacker swaps every index for zeros of the same size
            path = root / layer.index_file
            swapped = path.with_name(path.name + ".new")
            swapped.write_bytes(b"\0" * path.stat().st_size)
            os.replace(swapped, path)
        verified = {
            layer.name: hashlib.sha256(Path(bundle.index_path(layer.name)).read_bytes()).hexdigest()
            for layer in bundle.manifest.layers
        }
        assert all(verified[layer.name] == bundle.manifest.files[layer.index_file] for layer in bundle.manifest.layers)
    finally:
        bundle.close()
    # and a scorer opened from the swapped directory refuses it
    with pytest.raises(BundleError, match="sha256 mismatch"):
        DkNN.from_bundle(root)
    assert expected.shape == (20, 3, 10) and np.all(expected >= 0)


def test_a_model_that_does_not_fit_the_manifest_is_refused_at_load(tiny_bundle: Path, tmp_path: Path) -> None:
    root = copy_bundle(tiny_bundle, tmp_path)
    edit_manifest(root, lambda m: m["inputs"][0].update(shape=[9]))
    with pytest.raises(BundleError, match=r"does not accept inputs \[\[9\]\]"):
        DkNN.from_bundle(root)
