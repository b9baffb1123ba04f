"""`dknn-agent layers`: what a model offers to tap, and what fit would choose."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import Field

from agent.cli.fit import PROBE_ROWS, probe_model
from agent.cli.flags import Arg, Command
from agent.cli.options import ModelSource, TrustOptions
from agent.errors import ConfigError

ModelInputs = list[tuple[str, str, tuple[int | None, ...]]]


class LayersCommand(ModelSource, TrustOptions, Command):
    """Run the model once on a few inputs and list every value a bundle can tap: module calls by their
    named_modules() path (a module called twice gets #1 for its second call), parts of tuple or dict outputs
    as [i] / [key], and, in a serialized program, functional operations as MODULE:OP (--all). Marks the layers
    `fit --preset recommended` (and paper) would index and where the residual term would look.
    """

    command_name: ClassVar[str] = "layers"
    summary: ClassVar[str] = "list a model's tappable layers and the ones fit would choose"
    examples: ClassVar[tuple[str, ...]] = (
        "dknn-agent layers model.pt2",
        "dknn-agent layers --factory mypkg.models:build --weights model.pt --data train.npz",
        "dknn-agent layers bundle/",
    )

    source: Annotated[Path | None, Arg(positional=True)] = Field(
        None, description="a .pt2 program or a bundle directory (or use --factory)"
    )
    data: Annotated[str | None, Arg(metavar="DATA")] = Field(
        None,
        description="inputs to run the model on (the first rows; needed for a factory, or for a program whose "
        "inputs have dynamic sizes besides the batch)",
    )
    all: bool = Field(False, description="also list operations and values that cannot be tapped")
    json_output: Annotated[bool, Arg(flag="--json")] = Field(False, description="print the list as JSON")

    def run(self) -> int:
        import numpy as np

        from agent.engine.data_files import load_dataset
        from agent.engine.recommend import suggest

        model, output, manifest_inputs = self._model()
        probe: list[np.ndarray]
        if self.data is not None:
            data = load_dataset(self.data, labelled=False)
            names = [name for name, _, _ in manifest_inputs] if manifest_inputs else list(data.inputs)
            probe = [array[:PROBE_ROWS] for array in data.arrays_for(names)]
        elif manifest_inputs is not None:
            probe = []
            for name, dtype, shape in manifest_inputs:
                if any(size is None for size in shape[1:]):
                    raise ConfigError(f"input {name!r} has dynamic sizes {list(shape)}: give inputs with --data")
                probe.append(np.zeros((PROBE_ROWS, *[int(size) for size in shape[1:] if size is not None]), dtype))
        else:
            raise ConfigError("a factory's inputs are unknown: give a few with --data")
        points, num_classes = probe_model(model, probe, output)
        suggestion = suggest(points, num_classes)
        recommended, paper = suggestion.layers("recommended"), suggestion.layers("paper")
        residual = suggestion.residual_spec()

        def role(name: str) -> str:
            marks = []
            if name in recommended:
                marks.append(f"recommended {recommended[name]}")
            if residual is not None and name == residual.layer:
                marks.append(f"residual ({residual.components} components)")
            if name in paper:
                marks.append("paper")
            return ", ".join(marks)

        shown = [p for p in points if self.all or (p.tappable and (":" not in p.name or role(p.name)))]
        if self.json_output:
            rows = [
                {
                    "name": point.name,
                    "kind": point.kind,
                    "shape": list(point.shape),
                    "features": point.width,
                    "dtype": point.dtype,
                    "tappable": point.tappable,
                    "suggested": role(point.name) or None,
                }
                for point in shown
            ]
            print(json.dumps({"classes": num_classes, "layers": rows}, indent=2))
            return 0
        width = max([len(point.name) for point in shown] + [5])
        print(f"{'layer':<{width}}  {'kind':<18} {'shape':<18} {'features':>9}  suggested")
        for point in shown:
            mark = role(point.name) if point.tappable else "(not batch-first or not floating: cannot be tapped)"
            size = "x".join(str(dim) for dim in point.shape) or "scalar"
            print(f"{point.name:<{width}}  {point.kind[:18]:<18} {size[:18]:<18} {point.width:>9,}  {mark}")
        print(
            f"\n{num_classes} classes. fit without --layers indexes: "
            + ", ".join(f"{k}={v}" for k, v in recommended.items())
        )
        return 0

    def _model(self) -> tuple[Any, str | None, ModelInputs | None]:
        """The model, its output selector, and its inputs as (name, dtype, shape) where known."""
        from agent.engine.program import Program

        if self.source is not None and (self.model is not None or self.factory is not None):
            raise ConfigError("give the model once: a path, or --model, or --factory")
        if self.source is not None and self.source.is_dir():
            from agent.engine.bundle import verify_bundle

            bundle = verify_bundle(self.source, self.bundle_trust())
            bundle.close()
            inputs = [(spec.name, spec.dtype, (None, *spec.shape)) for spec in bundle.manifest.inputs]
            return bundle.build_model(), self.output or bundle.manifest.model.output, list(inputs)
        model = self.load_model(program=self.source)
        return model, self.output, model.input_meta() if isinstance(model, Program) else None
