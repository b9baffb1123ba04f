"""`dknn-agent train-reference`: train the MNIST reference model and fit its bundle."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import Field

from agent.cli.flags import Arg, Command
from agent.cli.options import FITTING, IndexOptions, LayersOption, parse_layers
from agent.engine.manifest import ExemplarKind, NonconformitySpec
from agent.errors import ConfigError
from dknn_lab.commands.common import DataDir, SnnlOptions
from dknn_lab.training import TrainOptions


class TrainReferenceCommand(SnnlOptions, IndexOptions, Command):
    """Train the DkNN paper's MNIST CNN with the configuration the project adopted (SNNL w=1 and blur
    augmentation; README "Measured quality"), then fit a bundle over its relu3 and logits layers: k=75, the
    distance-aware nonconformity (docs/design.md §2.2), 750 calibration points held out from the MNIST test
    set (recorded in the manifest; the other 9,250 are the evaluation split).

    --paper-dknn fits the paper's DkNN instead (relu1, relu2, relu3 and logits vote; neighbour labels only);
    --snnl-weight 0 --blur-sigma 0 trains the plain model.
    """

    command_name: ClassVar[str] = "train-reference"
    summary: ClassVar[str] = "train a reference model and fit its bundle"
    examples: ClassVar[tuple[str, ...]] = (
        "dknn-agent train-reference mnist --out artifacts/mnist-cnn",
        "dknn-agent train-reference mnist --refit artifacts/mnist-cnn --paper-dknn --out artifacts/mnist-cnn-paper",
    )

    dataset: Annotated[Literal["mnist"], Arg(positional=True)] = Field(description="which reference model to train")
    data_dir: DataDir = Field(
        None, description="directory of the MNIST IDX .gz files (default: $DKNN_MNIST_DIR, else ../shared/data/mnist)"
    )
    out: Path = Field(description="bundle directory to write")
    epochs: int = Field(10, ge=1, description="training epochs (default: 10)")
    train_size: Annotated[int | None, Arg(metavar="N")] = Field(
        None,
        description="train and index a seeded random N of the 60,000 training images (quick checks; default: all)",
    )
    seed: int = Field(0, description="seed for training, split and index (default: 0)")
    shift_px: int | None = Field(
        None, ge=0, description="augment training with random translations of up to N pixels (default: 2; 0 = off)"
    )
    blur_sigma: Annotated[float | None, Arg(metavar="S")] = Field(
        None,
        ge=0,
        le=5,
        description="augment training with a Gaussian blur of σ drawn from [0, S] pixels per image; SNNL-trained "
        "models need it on soft digits (bench sharpness; default: 1.5; 0 = off)",
    )
    snnl_weight: float | None = Field(
        None, description="train with CE − W × Σ SNNL over --snnl-layers; W > 0 entangles classes (default: 1; 0 = off)"
    )
    snnl_temperature: float | None = Field(None, gt=0, description="SNNL temperature (default: 100)")
    snnl_learn_temperature: bool = Field(
        False, description="let the temperature follow argmin_T SNNL per batch instead of staying fixed"
    )
    snnl_distance: Literal["euclidean", "cosine"] | None = Field(
        None,
        description="pairwise distance inside the SNNL: squared Euclidean (the paper's) or cosine, which is scale "
        "invariant (default: euclidean)",
    )
    layers: LayersOption = Field(
        None,
        description="layers and their preprocessing, as for fit (default: relu3=l2+pca:32,logits; with "
        "--paper-dknn: relu1=pca:32,relu2=pca:32,relu3=pca:32,logits)",
    )
    paper_dknn: bool = Field(
        False, description="fit the DkNN paper's way: every layer votes, neighbour labels only (docs/design.md §2.2)"
    )
    refit: Annotated[Path | None, Arg(metavar="BUNDLE")] = Field(
        None,
        description="do not train: fit a new bundle around this reference bundle's model (same version and "
        "calibration split), e.g. to compare --nonconformity choices on one model",
    )
    index_size: Annotated[int | None, Arg(metavar="N")] = Field(
        None,
        ge=1,
        description="index N points: the training images plus seeded rotated, scaled and shifted copies of them "
        "(the scale benchmark's 1,000,000-point reference; default: the training images only)",
    )

    exemplars: Annotated[ExemplarKind, Arg(group=FITTING)] = Field(
        "thumbnails",
        description="keep the indexed digits in the bundle for a reviewer: thumbnails (uint8 28x28, 784 bytes a "
        "point, 47 MB for all 60,000), inputs (float32, four times that) or none (default: thumbnails)",
    )

    def training(self) -> TrainOptions:
        """The adopted training (`REFERENCE_TRAINING`) with whatever the options change."""
        from dknn_lab.reference import REFERENCE_TRAINING

        return replace(
            REFERENCE_TRAINING,
            epochs=self.epochs,
            seed=self.seed,
            progress=not self.quiet,
            snnl_learn_temperature=self.snnl_learn_temperature,
            **self.training_changes(),
        )

    def run(self) -> int:
        from dknn_lab.reference import PAPER_LAYERS, REFERENCE_LAYERS, REFERENCE_NONCONFORMITY, train_reference_mnist

        if self.train_size is not None and self.train_size < self.k:
            raise ConfigError(f"--train-size must be at least --k ({self.k}): every layer needs k neighbours")
        if self.paper_dknn and self.nonconformity is not None:
            raise ConfigError("--paper-dknn fixes the nonconformity; leave out --nonconformity")
        default_layers = PAPER_LAYERS if self.paper_dknn else REFERENCE_LAYERS
        manifest = train_reference_mnist(
            out=self.out,
            data_dir=self.data_dir,
            train_size=self.train_size,
            train_options=self.training(),
            fit_options=self.fit_options(NonconformitySpec() if self.paper_dknn else REFERENCE_NONCONFORMITY),
            force=self.force,
            refit=self.refit,
            layers=parse_layers(self.layers) if self.layers is not None else default_layers,
            index_size=self.index_size,
        )
        print(
            f"wrote {self.out} ({manifest.model.name} {manifest.model.version}, "
            f"layers {', '.join(manifest.layer_names)})"
        )
        return 0
