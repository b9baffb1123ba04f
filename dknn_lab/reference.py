"""The MNIST reference bundle: the DkNN paper's CNN, trained here, and the fit the project adopted.

The bundle carries the trained model as a serialized program (agent.engine.program), so the agent
serving it trusts no Python module: the model code here is needed to train, not to serve.

Calibration uses 750 points held out from the MNIST test set (the paper's choice), drawn with the
seed and recorded in the manifest; the other 9,250 test points are the evaluation split. The fit
is the one issue #10's study adopted (README "Measured quality", docs/quality-history.md,
docs/design.md §2.2); the paper's (`PAPER_LAYERS` with the label-count nonconformity) stays one
option away, for comparison on the same model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from agent.engine.bundle import verify_bundle
from agent.engine.fit import Dataset, FitOptions, fit_bundle
from agent.engine.manifest import PROGRAM_FILE, Manifest, ModelSpec, ResidualSpec
from agent.engine.program import Program, export_program
from agent.engine.recommend import recommended_nonconformity
from agent.errors import ConfigError
from dknn_lab.augment import with_variants
from dknn_lab.datasets import Mnist, load_mnist
from dknn_lab.models import mnist as mnist_model
from dknn_lab.training import TrainOptions, train_classifier

CALIBRATION_SIZE = 750
# The paper's DkNN: every layer votes. The conv layers are far too wide to index raw (12,544 and
# 3,200 features); PCA keeps the directions the training data actually uses. 32 of them per hidden
# layer: exact DkNN scores as well as with 128 (docs/results/perf-mnist-cnn.md), and Annoy reaches
# higher recall at a given search_k on smaller vectors. The 10 logits are indexed as they are.
PAPER_LAYERS = {"relu1": "pca:32", "relu2": "pca:32", "relu3": "pca:32", "logits": "none"}
# The adopted fit: the last hidden layer (unit rows, as deep-kNN reads it, then 32 PCA directions)
# and the logits, each voting with its 75 neighbours and adding up to 600 when its 5 nearest are
# farther than for half the training points. Votes from relu1 and relu2 cost accuracy on digits
# from other populations and added nothing on attacks or far-OOD sets once the distance term was
# there (two seeds, docs/quality-history.md), so those layers are not indexed at all.
REFERENCE_LAYERS = {"relu3": "l2+pca:32", "logits": "none"}
# The adopted training: ±2 px shifts, SNNL w = 1 (squared Euclidean, T = 100) on the hidden layers,
# which made the attacks' credibility AUROC ≥ 0.98 once distance counts, and per-image blur of up to
# 1.5 px, without which the SNNL model fails on soft digits (docs/quality-history.md, bench sharpness).
REFERENCE_TRAINING = TrainOptions(
    shift_px=2,
    blur_sigma=1.5,
    snnl_weight=1.0,
    snnl_temperature=100.0,
    snnl_distance="euclidean",
    snnl_layers=("relu1", "relu2", "relu3"),
)
# The recommended nonconformity (agent.engine.recommend, what `fit` uses by default) with the
# residual term at relu2: `dknn-agent layers` suggests exactly these layers for this model.
REFERENCE_NONCONFORMITY = recommended_nonconformity(ResidualSpec(layer="relu2"))


@dataclass(frozen=True)
class Split:
    """Row indices of the MNIST test set: calibration and evaluation."""

    calibration: np.ndarray
    evaluation: np.ndarray


def calibration_split(manifest: Manifest, test_size: int) -> Split:
    """The split a bundle was calibrated with, read back from its manifest."""
    rows = np.asarray(manifest.calibration.source_indices or [], dtype=np.int64)
    evaluation = np.setdiff1d(np.arange(test_size), rows)
    return Split(calibration=rows, evaluation=evaluation)


def draw_split(test_size: int, seed: int, calibration_size: int = CALIBRATION_SIZE) -> Split:
    rows = np.sort(np.random.default_rng(seed).choice(test_size, size=calibration_size, replace=False))
    return Split(calibration=rows, evaluation=np.setdiff1d(np.arange(test_size), rows))


def reference_version(options: TrainOptions) -> str:
    """The manifest's model version: names the training configuration, so bundles trained differently
    never pass for one another (the SNNL study reuses a cached bundle only on an exact match)."""
    version = f"seed{options.seed}-e{options.epochs}"
    if options.shift_px != 2:
        version += f"-shift{options.shift_px}"
    if options.blur_sigma:
        version += f"-blur{options.blur_sigma:g}"
    if options.snnl_weight:
        temperature = "learned" if options.snnl_learn_temperature else f"{options.snnl_temperature:g}"
        version += (
            f"-snnl{options.snnl_weight:g}-{options.snnl_distance}-T{temperature}-{'+'.join(options.snnl_layers)}"
        )
    return version


def reference_model(root: Path, test_size: int) -> tuple[Program, str, Split]:
    """The model (as a program), version and calibration split of an MNIST reference bundle (for
    refitting, and for benchmarks that evaluate its model on the evaluation split). A bundle from
    before models were shipped as programs has its factory's model exported."""
    bundle = verify_bundle(root)
    bundle.close()
    if bundle.manifest.calibration.source != "mnist:t10k" or not bundle.manifest.calibration.source_indices:
        raise ConfigError(f"{root}: not an MNIST reference bundle (calibration source unknown)")
    model = bundle.build_model()
    if not isinstance(model, Program):
        model = export_program(model.classifier(None), (torch.zeros(2, *mnist_model.INPUT_SHAPE),))
    return model, bundle.manifest.model.version, calibration_split(bundle.manifest, test_size)


def train_reference_mnist(
    out: Path,
    data_dir: Path | None = None,
    train_options: TrainOptions | None = None,
    fit_options: FitOptions | None = None,
    force: bool = False,
    data: Mnist | None = None,
    train_size: int | None = None,
    refit: Path | None = None,
    layers: dict[str, str] | None = None,
    index_size: int | None = None,
) -> Manifest:
    """Trains the reference CNN and fits its bundle into `out`.

    Without `layers` and `fit_options` it fits the adopted configuration (`REFERENCE_LAYERS`,
    `REFERENCE_NONCONFORMITY`). `train_size` trains and indexes a seeded random subset of that
    many training images (smoke tests and the end-to-end suite); the bundle's version then says so (`-n<size>`). `refit` skips
    training: the model, its version and the calibration split come from that (verified) reference
    bundle, so two bundles differing only in how they are fitted can be compared on one model.
    """
    train_options = train_options or REFERENCE_TRAINING
    data = data or load_mnist(data_dir)
    x_train, y_train, source = data.x_train, data.y_train, "mnist:train"
    version = reference_version(train_options)
    if train_size is not None and train_size < len(x_train):
        rows = np.sort(np.random.default_rng(train_options.seed).choice(len(x_train), train_size, replace=False))
        x_train, y_train = x_train[rows], y_train[rows]
        source, version = f"mnist:train[{train_size} seeded rows]", f"{version}-n{train_size}"
    if refit is None:
        trained = train_classifier(mnist_model.build_model(), x_train, y_train, train_options)
        model = export_program(trained, (torch.zeros(2, *mnist_model.INPUT_SHAPE),))
        split = draw_split(len(data.x_test), train_options.seed)
    else:
        model, version, split = reference_model(refit, len(data.x_test))
    if index_size is not None and index_size > len(x_train):
        progress = fit_options.progress if fit_options else True
        x_train, y_train = with_variants(x_train, y_train, index_size, train_options.seed, progress)
        source = f"{source}+{index_size - len(data.x_train)} variants"
    return fit_bundle(
        model=model,
        model_spec=ModelSpec(name="mnist-cnn", version=version, program=PROGRAM_FILE, num_classes=10),
        layers=layers or REFERENCE_LAYERS,
        train=Dataset(x_train, y_train, source=source),
        calibration=Dataset(
            data.x_test[split.calibration],
            data.y_test[split.calibration],
            source="mnist:t10k",
            source_indices=split.calibration.tolist(),
        ),
        out=out,
        options=fit_options or FitOptions(nonconformity=REFERENCE_NONCONFORMITY),
        value_range=(0.0, 1.0),
        force=force,
    )
