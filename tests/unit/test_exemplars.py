"""Exemplars in the bundle: the training rows behind neighbour ids, kept, verified and mapped; and the
quarantine record's bounded label histogram per layer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import orjson
import pytest
import torch
from torch import nn

from agent.engine import exemplars as exemplars_module
from agent.engine.bundle import verify_bundle
from agent.engine.dknn import DkNN, ScoreBatch
from agent.engine.exemplars import thumbnail_size, thumbnails
from agent.engine.fit import Dataset, FitOptions, fit_bundle
from agent.engine.manifest import PROGRAM_FILE, ModelSpec
from agent.engine.program import export_program
from agent.errors import BundleError, ConfigError, InputError
from agent.runtime.events import DecodedEvent
from agent.runtime.routing import LABELS_COUNTED, Outcome, label_counts, quarantine_record
from connectors.base import Record
from tests.conftest import TinyProblem, fit_tiny
from tests.unit.test_bundle import rehash, rewrite_manifest

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def inputs_bundle(tiny_problem: TinyProblem, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fit_tiny(tiny_problem, tmp_path_factory.mktemp("exemplars") / "tiny", exemplars="inputs")


def test_inputs_are_the_training_rows_listed_hashed_and_mapped(inputs_bundle: Path, tiny_problem: TinyProblem) -> None:
    document = json.loads((inputs_bundle / "manifest.json").read_text())
    assert document["exemplars"] == {
        "kind": "inputs",
        "files": [{"input": "x", "file": "exemplars/x.npy", "shape": [8], "dtype": "float32", "value_range": None}],
    }
    assert "exemplars/x.npy" in document["files"]
    bundle = verify_bundle(inputs_bundle)
    bundle.close()
    assert bundle.exemplars is not None and bundle.exemplars.kind == "inputs"
    stored = bundle.exemplars.arrays["x"]
    assert isinstance(stored, np.memmap) and not stored.flags.writeable
    np.testing.assert_array_equal(stored, tiny_problem.train.x)  # the mapping outlives close()
    rows = bundle.exemplars.rows([5, 0, 599])
    np.testing.assert_array_equal(rows["x"], tiny_problem.train.x[[5, 0, 599]])
    assert ("exemplars", "inputs of the 600 training rows: x float32 [8], 0.0 MB") in bundle.manifest.describe()


def test_a_neighbour_id_s_exemplar_is_the_row_the_index_holds_under_that_id(
    inputs_bundle: Path, tiny_problem: TinyProblem
) -> None:
    """Fit adds training row i to every index as item i: the exemplar row of an id, mapped through the
    model and the layer's preprocessing, is the vector the index holds under that id."""
    bundle = verify_bundle(inputs_bundle)
    scorer = DkNN(bundle)
    bundle.close()
    assert bundle.exemplars is not None
    queries = tiny_problem.train.x[[3, 250, 597]]
    scores = scorer.score(queries)
    for layer, name in enumerate(scorer.manifest.layer_names):
        assert list(scores.neighbor_ids[:, layer, 0]) == [3, 250, 597]  # a training row's nearest is itself
        ids = scores.neighbor_ids[:, layer].ravel()
        rows = bundle.exemplars.rows(ids)["x"]
        np.testing.assert_array_equal(rows, tiny_problem.train.x[ids])
        stored = scorer.indexes[name].item_vectors()[ids]  # type: ignore[union-attr]
        again = scorer.preprocessors[name].transform(scorer.tap([rows]).layers[name])
        np.testing.assert_allclose(again, stored, atol=1e-4)
        np.testing.assert_array_equal(scorer.train_labels[ids], scores.neighbor_labels[:, layer].ravel())


def test_ids_from_a_record_are_checked(inputs_bundle: Path) -> None:
    bundle = verify_bundle(inputs_bundle)
    bundle.close()
    assert bundle.exemplars is not None
    for bad in ([-1], [600], [[1, 2]], [0.5]):
        with pytest.raises(InputError):
            bundle.exemplars.rows(bad)
    assert bundle.exemplars.rows([])["x"].shape == (0, 8)
    with pytest.raises(InputError, match="at most"):
        bundle.exemplars.rows(np.zeros(exemplars_module.MAX_ROWS_PER_CALL + 1, np.int64))


def test_a_bundle_without_exemplars_says_nothing_of_them(tiny_bundle: Path) -> None:
    """The key is left out, so agents from before the field (strict manifests) read the bundle too."""
    assert "exemplars" not in json.loads((tiny_bundle / "manifest.json").read_text())
    bundle = verify_bundle(tiny_bundle)
    bundle.close()
    assert bundle.exemplars is None and bundle.manifest.exemplar_bytes == 0
    assert not any(heading == "exemplars" for heading, _ in bundle.manifest.describe())


def copy(bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(bundle, tmp_path / "bundle"))


def test_a_tampered_exemplar_file_is_refused(inputs_bundle: Path, tmp_path: Path) -> None:
    root = copy(inputs_bundle, tmp_path)
    path = root / "exemplars" / "x.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"x\.npy: sha256 mismatch"):
        verify_bundle(root)


def test_an_exemplar_file_that_does_not_fit_the_manifest_is_refused(inputs_bundle: Path, tmp_path: Path) -> None:
    root = copy(inputs_bundle, tmp_path)
    np.save(root / "exemplars" / "x.npy", np.zeros((600, 8), np.float64))  # re-hashed: only the header is wrong
    rehash(root, "exemplars/x.npy")
    with pytest.raises(BundleError, match=r"x\.npy: holds float64\[600, 8\], the manifest says float32\[600, 8\]"):
        verify_bundle(root)
    np.save(root / "exemplars" / "x.npy", np.zeros((600, 8), object), allow_pickle=True)
    rehash(root, "exemplars/x.npy")
    with pytest.raises(BundleError, match="x.npy"):  # never unpickled
        verify_bundle(root)


def test_exemplar_files_must_be_listed_and_apart_from_the_bundle_s_own(inputs_bundle: Path, tmp_path: Path) -> None:
    root = copy(inputs_bundle, tmp_path)
    rewrite_manifest(root, lambda m: m["files"].pop("exemplars/x.npy"))
    with pytest.raises(BundleError, match="not listed"):
        verify_bundle(root)
    rewrite_manifest(root, lambda m: m["exemplars"]["files"][0].__setitem__("file", "train_labels.npy"))
    with pytest.raises(BundleError, match="named as an exemplar file and as another"):
        verify_bundle(root)


def test_a_manifest_cannot_ask_for_more_than_the_bound(inputs_bundle: Path, tmp_path: Path) -> None:
    root = copy(inputs_bundle, tmp_path)
    rewrite_manifest(root, lambda m: m["train"].__setitem__("size", 100_000_000))  # 3.2 GB of exemplars
    with pytest.raises(BundleError, match="exemplars of 3200000000 bytes exceed"):
        verify_bundle(root)


def test_thumbnails_are_refused_for_a_vector_model(tiny_problem: TinyProblem, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"input 'x' is float32 \[8\]: use --exemplars inputs"):
        fit_tiny(tiny_problem, tmp_path / "out", exemplars="thumbnails")
    assert not (tmp_path / "out").exists()


def test_exemplars_over_the_bound_are_refused_before_fitting(
    tiny_problem: TinyProblem, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(exemplars_module, "MAX_EXEMPLAR_BYTES", 1000)
    with pytest.raises(ConfigError, match=r"more than the 0 GiB a bundle may hold: use --exemplars thumbnails"):
        fit_tiny(tiny_problem, tmp_path / "out", exemplars="inputs")
    assert not (tmp_path / "out").exists()


def test_fit_keeps_none_unless_asked_and_train_reference_keeps_thumbnails() -> None:
    from agent.cli import parse_command
    from agent.engine.manifest import NonconformitySpec

    fit = ["fit", "--model", "m.pt2", "--train", "t.npz", "--calibration", "c.npz", "--out", "b"]
    assert parse_command(fit).fit_options(NonconformitySpec()).exemplars == "none"  # type: ignore[attr-defined]
    chosen = parse_command([*fit, "--exemplars", "inputs"])
    assert chosen.fit_options(NonconformitySpec()).exemplars == "inputs"  # type: ignore[attr-defined]
    reference = ["train-reference", "mnist", "--out", "b"]
    assert parse_command(reference).fit_options(NonconformitySpec()).exemplars == "thumbnails"  # type: ignore[attr-defined]
    with pytest.raises(SystemExit):  # argparse's choices
        parse_command([*reference, "--exemplars", "pixels"])


# -- thumbnails ------------------------------------------------------------------------------------


def test_thumbnails_scale_from_the_data_s_range_and_shrink_to_32() -> None:
    assert thumbnail_size(28, 28) == (28, 28) and thumbnail_size(64, 64) == (32, 32)
    assert thumbnail_size(224, 200) == (32, 29) and thumbnail_size(1, 500) == (1, 32)
    pixels = np.array([[[[-1.0, 0.0], [1.0, 3.0]]]], np.float32)
    np.testing.assert_array_equal(thumbnails(pixels, (-1.0, 3.0), (1, 2, 2)), [[[[0, 64], [128, 255]]]])
    blocks = np.kron(np.arange(32 * 32, dtype=np.float32).reshape(32, 32), np.ones((2, 2), np.float32))
    small = thumbnails(blocks[None, None], (0.0, 1023.0), (1, 32, 32))  # 2x2 blocks average to themselves
    np.testing.assert_array_equal(small[0, 0], np.rint(np.arange(1024).reshape(32, 32) * 255 / 1023))
    assert thumbnails(np.ones((2, 3, 4, 4), np.float32), (1.0, 1.0), (3, 4, 4)).max() == 0  # a constant input


class SmallConv(nn.Module):
    def __init__(self, channels: int, height: int, width: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.flatten = nn.Flatten()
        self.logits = nn.Linear(4 * height * width, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(self.flatten(self.relu(self.conv(x))))


def fit_images(out: Path, shape: tuple[int, int, int], kind: str) -> tuple[Dataset, Path]:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    train = Dataset(rng.uniform(-1, 3, (60, *shape)).astype(np.float32), rng.integers(0, 3, 60), source="noise")
    calibration = Dataset(rng.uniform(-1, 3, (20, *shape)).astype(np.float32), rng.integers(0, 3, 20))
    fit_bundle(
        model=export_program(SmallConv(*shape).eval(), (torch.zeros(2, *shape),)),
        model_spec=ModelSpec(name="images", version="1", program=PROGRAM_FILE, num_classes=3),
        layers={"relu": "pca:4", "logits": "none"},
        train=train,
        calibration=calibration,
        out=out,
        options=FitOptions(k=5, n_trees=2, search_k=-1, progress=False, exemplars=kind),  # type: ignore[arg-type]
    )
    return train, out


def test_fit_keeps_thumbnails_of_an_image_model(tmp_path: Path) -> None:
    train, root = fit_images(tmp_path / "images", (3, 40, 36), "thumbnails")
    bundle = verify_bundle(root)
    bundle.close()
    assert bundle.exemplars is not None and bundle.exemplars.kind == "thumbnails"
    (spec,) = bundle.manifest.exemplars.files  # type: ignore[union-attr]
    assert (spec.shape, spec.dtype) == ((3, 32, 29), "uint8")
    low, high = float(train.x.min()), float(train.x.max())  # type: ignore[union-attr]
    assert spec.value_range == (low, high)
    rows = bundle.exemplars.rows([7, 59])["x"]
    assert rows.dtype == np.uint8 and rows.shape == (2, 3, 32, 29)
    np.testing.assert_array_equal(rows, thumbnails(train.x[[7, 59]], (low, high), (3, 32, 29)))  # type: ignore[index]
    assert bundle.manifest.exemplar_bytes == 60 * 3 * 32 * 29


def test_an_mnist_shaped_input_stays_28_by_28(tmp_path: Path) -> None:
    train, root = fit_images(tmp_path / "digits", (1, 28, 28), "thumbnails")
    bundle = verify_bundle(root)
    bundle.close()
    assert bundle.exemplars is not None
    stored = bundle.exemplars.arrays["x"]
    assert stored.shape == (60, 1, 28, 28) and stored.dtype == np.uint8
    x = np.asarray(train.x)
    np.testing.assert_array_equal(stored, np.rint((x - x.min()) * 255 / (x.max() - x.min())).astype(np.uint8))


# -- the quarantine record's label histogram -------------------------------------------------------


def test_label_counts_are_the_most_frequent_first_ties_by_label_and_bounded() -> None:
    assert label_counts(np.array([2, 7, 7, -1, 2, 7, 0])) == {"7": 3, "2": 2, "-1": 1, "0": 1}
    assert list(label_counts(np.array([2, 7, 7, -1, 2, 7, 0]))) == ["7", "2", "-1", "0"]  # the order on the wire
    many = np.repeat(np.arange(40), np.arange(40) % 4 + 1)  # labels 3, 7, 11, ... four times each
    counted = label_counts(many)
    assert len(counted) == LABELS_COUNTED == 10
    assert counted == {str(label): 4 for label in range(3, 40, 4)}


def test_the_quarantine_record_holds_each_layer_s_label_histogram() -> None:
    """A model with 1,000 classes and k = 300: the histogram stays at 10 entries per layer."""
    n, layers, k, classes = 1, 2, 300, 1000
    rng = np.random.default_rng(0)
    labels = rng.integers(0, classes, (n, layers, k))
    labels[0, 1, :200] = 42
    scores = ScoreBatch(
        prediction=np.array([42]),
        credibility=np.array([0.01]),
        confidence=np.array([0.5]),
        p_values=np.zeros((n, classes)),
        alpha=np.zeros((n, classes)),
        label_free_score=np.zeros(n),
        model_prediction=np.array([42]),
        model_outputs=np.zeros((n, classes)),
        neighbor_ids=np.arange(n * layers * k).reshape(n, layers, k),
        neighbor_labels=labels,
        neighbor_distances=np.zeros((n, layers, k)),
    )
    event = DecodedEvent(event_id="e", form="dknn.inference.v1", inputs=(np.zeros(1),), document={"event_id": "e"})
    outcome = Outcome(Record("in", 0, 7, None, b"{}"), event, scores, 0, quarantined=True)
    block = orjson.loads(quarantine_record(outcome, 0.1, ("a", "b"), max_bytes=1_000_000))["dknn"]
    for name, layer in (("a", 0), ("b", 1)):
        counts = block["neighbors"][name]["label_counts"]
        assert len(counts) == LABELS_COUNTED and sum(counts.values()) <= k
        assert counts == label_counts(labels[0, layer])
        assert len(block["neighbors"][name]["ids"]) == 5
    assert next(iter(block["neighbors"]["b"]["label_counts"].items())) == (
        "42",
        200 + int((labels[0, 1, 200:] == 42).sum()),
    )
