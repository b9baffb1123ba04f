"""Shared fixtures: a tiny synthetic classification problem and a bundle fitted on it."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from agent.engine.dknn import DkNN
from agent.engine.drift import DriftMonitor
from agent.engine.fit import Dataset, FitOptions, fit_bundle
from agent.engine.manifest import PROGRAM_FILE, InputSpec, ModelSpec
from agent.engine.program import export_program
from agent.runtime.events import DEFAULT_MAX_EVENT_BYTES, DecodedEvent, Expectations, decode_record
from agent.runtime.pipeline import Pipeline, PipelineOptions
from agent.runtime.routing import Topics
from agent.runtime.telemetry import Telemetry
from connectors.base import Sink, Source
from dknn_lab.models.tiny import build_model
from dknn_lab.training import TrainOptions, train_classifier

TINY_FACTORY = "dknn_lab.models.tiny:build_model"
TINY_LAYERS = {"relu1": "none", "relu2": "l2", "logits": "pca:2"}


@dataclass(frozen=True)
class TinyProblem:
    train: Dataset
    calibration: Dataset
    test: Dataset
    weights: Path


def blobs(n: int, seed: int, num_classes: int = 3, dim: int = 8) -> Dataset:
    """Well-separated Gaussian blobs: easy enough that the tiny MLP is nearly always right."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(1234).normal(0.0, 4.0, size=(num_classes, dim))
    y = rng.integers(0, num_classes, size=n)
    x = centres[y] + rng.normal(0.0, 1.0, size=(n, dim))
    return Dataset(x=x.astype(np.float32), y=y.astype(np.int64), source=f"blobs:seed{seed}")


@pytest.fixture(scope="session")
def tiny_problem(tmp_path_factory: pytest.TempPathFactory) -> TinyProblem:
    torch.manual_seed(0)
    train, calibration, test = blobs(600, seed=1), blobs(200, seed=2), blobs(100, seed=3)
    model = train_classifier(build_model(), train.x, train.y, TrainOptions(epochs=15, batch_size=32, progress=False))
    weights = tmp_path_factory.mktemp("tiny") / "model.pt"
    torch.save(model.state_dict(), weights)
    return TinyProblem(train=train, calibration=calibration, test=test, weights=weights)


def tiny_model(problem: TinyProblem) -> torch.nn.Module:
    model = build_model()
    model.load_state_dict(torch.load(problem.weights, weights_only=True))
    return model.eval()


def fit_tiny(problem: TinyProblem, out: Path, *, factory: bool = False, **options) -> Path:
    """The tiny model's bundle: its model as a serialized program (as users ship it), or, with
    `factory`, named by its factory (a bundle only a trusting agent opens)."""
    model = tiny_model(problem)
    source = model if factory else export_program(model, (torch.zeros(2, 8),))
    spec = (
        ModelSpec(name="tiny", version="1", factory=TINY_FACTORY, num_classes=3)
        if factory
        else ModelSpec(name="tiny", version="1", program=PROGRAM_FILE, num_classes=3)
    )
    fit_bundle(
        model=source,
        model_spec=spec,
        layers=TINY_LAYERS,
        train=problem.train,
        calibration=problem.calibration,
        out=out,
        options=FitOptions(k=10, n_trees=10, progress=False, **options),
    )
    return out


def decode_one(payload: bytes, spec: InputSpec, model: str, max_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> DecodedEvent:
    """The one input a single-input record holds (the agent's decoder, for a bundle of `spec`)."""
    (event,) = decode_record(payload, (), Expectations((spec,), frozenset({model}), 10, max_bytes)).events
    return event


def assert_held_out_p_values_valid(p_values: np.ndarray, labels: np.ndarray) -> None:
    """Conformal validity on the tiny problem's 100 held-out points: the true label's p-value is
    ≤ τ at most τ + 0.08 of the time (sampling noise allowed for)."""
    p = p_values[np.arange(len(labels)), labels]
    for tau in (0.05, 0.1, 0.2):
        assert (p <= tau).mean() <= tau + 0.08, tau


TEST_TOPICS = Topics(quarantine="q", dead_letter="dlq", scores="scores")


def pipeline_for(bundle: Path, source: Source, sink: Sink, **options) -> Pipeline:
    """The agent's pipeline over any source and sink, with fresh telemetry and drift monitor."""
    scorer = DkNN.from_bundle(bundle)
    drift = DriftMonitor(scorer.calibration_alpha, scorer.calibration_label_free, threshold=0.1)
    return Pipeline(scorer, source, sink, TEST_TOPICS, Telemetry(), drift, PipelineOptions(**options))


@pytest.fixture(scope="session")
def tiny_bundle(tiny_problem: TinyProblem, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle fitted once per session; tests that corrupt a bundle copy it first."""
    return fit_tiny(tiny_problem, tmp_path_factory.mktemp("bundle") / "tiny")


@pytest.fixture(scope="session")
def tiny_factory_bundle(tiny_problem: TinyProblem, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny bundle with its model named by a factory: opening it is a trust decision."""
    return fit_tiny(tiny_problem, tmp_path_factory.mktemp("bundle") / "tiny-factory", factory=True)


@pytest.fixture(scope="module")
def single_torch_thread() -> Iterator[None]:
    """For modules of tiny tensors: intra-op threads only add spin-wait contention on a busy 2-core box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def unfrozen_heap() -> Iterator[None]:
    """`Pipeline.run` freezes the heap; thawed after each test, so the session's garbage stays
    collectable (frozen objects outlive the interpreter and extension modules report them)."""
    yield
    gc.unfreeze()


@dataclass(frozen=True)
class Example:
    """A user-side example trained by its own script (examples/<family>/train.py): plain torch, no agent."""

    work: Path  # model.pt2, train/calibration/test .npz, ood/

    @property
    def bundle(self) -> Path:
        return self.work / "bundle"


def train_example(family: str, work: Path, *options: str, fit: tuple[str, ...] = ()) -> Example:
    """Runs the example's training script, then `dknn-agent fit` with its defaults (plus `fit`), as a user does."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    script = [sys.executable, str(root / "examples" / family / "train.py"), "--out", str(work), *options]
    trained = subprocess.run(script, capture_output=True, text=True, timeout=900, cwd=root)
    assert trained.returncode == 0, trained.stderr[-3000:]
    data = [f"--{split}" for split in ("train", "calibration")]
    command = [
        sys.executable, "-m", "agent.cli", "fit", "--model", str(work / "model.pt2"),
        data[0], str(work / "train.npz"), data[1], str(work / "calibration.npz"),
        "--out", str(work / "bundle"), "--model-name", family, "--quiet", *fit,
    ]  # fmt: skip
    fitted = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=root)
    assert fitted.returncode == 0, fitted.stderr[-3000:]
    return Example(work)


@pytest.fixture(scope="session")
def tabular_example(tmp_path_factory: pytest.TempPathFactory) -> Example:
    return train_example("tabular", tmp_path_factory.mktemp("tabular"))


@pytest.fixture(scope="session")
def resnet_example(tmp_path_factory: pytest.TempPathFactory) -> Example:
    """A quick ResNet (8,000 images, two epochs): the mechanics, not the committed quality numbers."""
    return train_example("resnet", tmp_path_factory.mktemp("resnet"), "--train-size", "8000", "--epochs", "2")


@pytest.fixture(scope="session")
def text_example(tmp_path_factory: pytest.TempPathFactory) -> Example:
    """A quick GRU on token ids (400 sequences per language, five epochs)."""
    work = tmp_path_factory.mktemp("text")
    fit = ("--output", "logits", "--vocabulary", str(work / "vocabulary.txt"))  # the example writes its vocabulary
    return train_example("text", work, "--per-language", "400", "--epochs", "5", fit=fit)
