"""`dknn-agent score`: score a data set from files, one JSON line per input."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, ClassVar

from pydantic import Field

from agent.cli.flags import Arg, Command
from agent.cli.options import TrustOptions
from agent.engine.index import IndexBackend
from agent.errors import DataError


class ScoreCommand(TrustOptions, Command):
    """Score every input of a data set (an .npy array in the model's input layout, e.g. (N, 1, 28, 28) float32
    for MNIST; an .npz of named inputs; or NAME=FILE.npy,...) and write one JSON object per input: index,
    prediction, credibility, confidence, model_prediction, p_values.
    """

    command_name: ClassVar[str] = "score"
    summary: ClassVar[str] = "score a batch of inputs from files"

    artifacts: Path = Field(description="bundle directory")
    input: Annotated[str, Arg(metavar="DATA")] = Field(description="the inputs (labels, if any, are ignored)")
    output: Path | None = Field(None, description="JSONL file to write (default: stdout)")
    index: IndexBackend = Field("annoy", description="neighbour backend (default: annoy; exact = brute force)")
    batch_size: int = Field(256, ge=1, description="inputs per forward pass (default: 256)")
    search_k: int | None = Field(None, description="override the bundle's Annoy search_k")

    def run(self) -> int:
        from agent.engine.batch_scoring import write_jsonl
        from agent.engine.data_files import load_dataset
        from agent.engine.dknn import DkNN

        data = load_dataset(self.input, labelled=False)
        scorer = DkNN.from_bundle(self.artifacts, backend=self.index, search_k=self.search_k, trust=self.bundle_trust())
        scorer.check_layout(data.arrays_for([spec.name for spec in scorer.manifest.inputs]))
        if self.output is None:
            write_jsonl(scorer, data, self.batch_size, sys.stdout)
            return 0
        if self.output.is_dir():
            raise DataError(f"--output {self.output} is a directory; name the JSONL file to write")
        partial = self.output.with_name(self.output.name + ".partial")
        try:
            self.output.parent.mkdir(parents=True, exist_ok=True)
            with partial.open("w") as sink:
                count = write_jsonl(scorer, data, self.batch_size, sink)
            partial.replace(self.output)
        except OSError as exc:
            raise DataError(f"cannot write {self.output}: {exc.strerror or exc}") from None
        print(f"scored {count} inputs -> {self.output}", file=sys.stderr)
        return 0
