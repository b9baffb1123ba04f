"""`dknn-agent fit`: a bundle for your own model, from its program (or factory) and your data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import Field, field_validator

from agent.cli.flags import Arg, Command
from agent.cli.options import IndexOptions, LayersOption, ModelSource, parse_layers
from agent.engine.recommend import Preset
from agent.errors import ConfigError, DataError, DknnError

PROBE_ROWS = 3  # rows of a probe pass (agent.engine.taps.PROBE_BATCH)


class FitCommand(ModelSource, IndexOptions, Command):
    """Build a bundle from a trained model: per-layer Annoy indexes of the training set's activations and
    calibration scores from a held-out labelled set.

    Without --layers it picks them the way the MNIST reference was tuned (--preset recommended): the last
    hidden layer (unit rows, 32 principal directions) and the logits, each voting with its k neighbours and
    adding distance, plus a residual term at the activation before the last hidden layer. `dknn-agent layers
    MODEL` shows the choice before you fit. --preset paper fits the DkNN paper's label vote over the hidden
    activations and the logits instead.

    Data (--train, --calibration): an .npz whose 'y' holds integer labels and whose other arrays are the
    model's inputs by name ('x' for a single input), or NAME=FILE.npy,...,y=FILE.npy; uncompressed archives
    and .npy files are memory-mapped.
    """

    command_name: ClassVar[str] = "fit"
    summary: ClassVar[str] = "fit a bundle for your own model"
    examples: ClassVar[tuple[str, ...]] = (
        "dknn-agent fit --model model.pt2 --train train.npz --calibration calibration.npz --out bundle/",
        "dknn-agent fit --factory mypkg.models:build --weights model.pt --layers features.3=pca:64,classifier "
        "--train train.npz --calibration calibration.npz --out bundle/ --model-name my-model",
    )

    train: Annotated[str, Arg(metavar="DATA")] = Field(description="training inputs and labels")
    calibration: Annotated[str, Arg(metavar="DATA")] = Field(description="inputs and labels held out from training")
    out: Path = Field(description="bundle directory to write")
    preset: Preset = Field("recommended", description="the configuration options leave unsaid (default: recommended)")
    layers: LayersOption = Field(
        None,
        description="comma-separated tap names (dknn-agent layers lists them), each optionally =PREPROCESSING "
        "(none, l2, pca:D, or a +chain such as l2+pca:32) (default: the preset's)",
    )
    input_range: Annotated[list[str] | None, Arg(repeat=True, metavar="NAME=LOW:HIGH")] = Field(
        None,
        description="the values an integer input accepts (token ids up to the vocabulary size); events outside are "
        "dead-lettered (default: the range seen in the data)",
    )
    vocabulary: Annotated[Path | None, Arg(metavar="FILE")] = Field(
        None,
        description="a text model's token table, kept in the bundle so a reviewer reads tokens, not ids: one token "
        "per line (line i is token id i, like BERT's vocab.txt) or, for a .json name, a JSON array of strings; at "
        "most 1,000,000 tokens of at most 256 characters, UTF-8; needs an integer input (default: none)",
    )
    model_name: str = Field("model", description="name recorded in the manifest and matched against events")
    model_version: str = Field("1", description="version recorded in the manifest")
    seed: int = Field(0, description="seed for PCA sampling and Annoy (default: 0)")

    @field_validator("input_range")
    @classmethod
    def _ranges_parse(cls, items: list[str] | None) -> list[str] | None:
        input_ranges(items)
        return items

    def run(self) -> int:
        from agent.engine.data_files import load_dataset
        from agent.engine.fit import fit_bundle, input_specs
        from agent.engine.manifest import PROGRAM_FILE, ModelSpec, NonconformitySpec
        from agent.engine.program import Program
        from agent.engine.recommend import recommended_nonconformity, suggest
        from agent.engine.vocabulary import read as read_vocabulary

        vocabulary = read_vocabulary(self.vocabulary) if self.vocabulary is not None else None  # before any work
        model = self.load_model()
        train = load_dataset(self.train, labelled=True)
        calibration = load_dataset(self.calibration, labelled=True)
        inputs = input_specs(model, train, calibration, input_ranges=input_ranges(self.input_range))  # reads all rows
        probe = [array[:PROBE_ROWS] for array in train.arrays_for([spec.name for spec in inputs])]
        points, num_classes = probe_model(model, probe, self.output)
        suggestion = suggest(points, num_classes)
        preset = (
            NonconformitySpec() if self.preset == "paper" else recommended_nonconformity(suggestion.residual_spec())
        )
        layers = parse_layers(self.layers) if self.layers is not None else suggestion.layers(self.preset)
        is_program = isinstance(model, Program)
        spec = ModelSpec(
            name=self.model_name,
            version=self.model_version,
            program=PROGRAM_FILE if is_program else None,
            factory=None if is_program else self.factory,
            factory_kwargs={} if is_program else self.factory_arguments(),
            output=self.output,
            num_classes=num_classes,
        )
        manifest = fit_bundle(
            model=model,
            model_spec=spec,
            layers=layers,
            train=train,
            calibration=calibration,
            out=self.out,
            options=self.fit_options(preset),
            inputs=inputs,
            vocabulary=vocabulary,
            force=self.force,
        )
        residual = manifest.nonconformity.residual
        print(
            f"wrote {self.out}: layers "
            + ", ".join(f"{layer.name}={layer.preprocessing}" for layer in manifest.layers)
            + f"; {manifest.nonconformity.kind}"
            + (f", residual term at {residual.layer}" if residual else "")
            + (f"; vocabulary of {manifest.vocabulary.size} tokens" if manifest.vocabulary else "")
        )
        return 0


def input_ranges(items: list[str] | None) -> dict[str, tuple[float, float]]:
    """`input_ids=0:30521` -> {"input_ids": (0.0, 30521.0)}."""
    ranges: dict[str, tuple[float, float]] = {}
    for item in items or ():
        name, _, bounds = item.partition("=")
        low, _, high = bounds.partition(":")
        try:
            ranges[name] = (float(low), float(high))
        except ValueError:
            raise ConfigError(f"--input-range {item!r}: use NAME=LOW:HIGH, e.g. input_ids=0:30521") from None
        if not name or ranges[name][0] > ranges[name][1]:
            raise ConfigError(f"--input-range {item!r}: use NAME=LOW:HIGH with LOW <= HIGH")
    return ranges


def probe_model(model: Any, probe: list[Any], output: str | None) -> tuple[list[Any], int]:
    """The model's tap points and its number of classes, from one pass on a few rows."""
    import torch

    from agent.engine.taps import as_tappable, as_tensors

    tappable = as_tappable(model)
    tensors = as_tensors(probe)
    try:
        points = tappable.tap_points(tensors, output)
    except DknnError:
        raise
    except Exception as exc:  # the model's own error on these inputs
        raise DataError(f"the model fails on the data's first rows: {type(exc).__name__}: {exc}") from None
    with torch.no_grad():
        out = tappable.classifier(output)(*tensors)
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        raise ConfigError("the model's output is not (batch, classes) logits: name them with --output")
    return points, int(out.shape[1])
