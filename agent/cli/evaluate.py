"""`dknn-agent evaluate`: measure a bundle on your own held-out data and out-of-distribution sets."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import Field

from agent.cli.flags import Arg, Command
from agent.cli.options import OodSets, TrustOptions, load_ood
from agent.engine.index import BACKENDS, IndexBackend


class EvaluateCommand(TrustOptions, Command):
    """Score held-out data and out-of-distribution sets with the bundle and write a Markdown + JSON report with
    plots: the accuracy of the model and of DkNN, the validity of the p-values, AUROC and the share flagged at
    1% / 5% false alarms for credibility against the softmax and energy scores on every set, how well each
    tells the model's right answers from its wrong ones (with a bootstrap interval), the share quarantined at
    the threshold, and inputs/s per core for Annoy and exact search.

    DATA as for fit: an .npz with named inputs (and 'y' labels), or NAME=FILE.npy,... An OOD set with labels
    (digits from another population, say) also gets accuracy and right-vs-wrong.
    """

    command_name: ClassVar[str] = "evaluate"
    summary: ClassVar[str] = (
        "measure a bundle on your own data: accuracy, validity, OOD detection, right vs wrong, speed"
    )
    examples: ClassVar[tuple[str, ...]] = (
        "dknn-agent evaluate --artifacts bundle/ --clean test.npz --ood noise=noise.npy --ood letters=letters.npz "
        "--out reports/",
    )

    artifacts: Path = Field(description="bundle directory")
    clean: Annotated[str, Arg(metavar="DATA")] = Field(description="labelled held-out inputs (not used by fit)")
    ood: OodSets = Field([], description="an out-of-distribution set to separate from the clean one (repeatable)")
    out: Path = Field(description="directory for the report")
    name: str | None = Field(None, description="file name stem of the report (default: evaluation-<model>)")
    threshold: float = Field(
        0.1, gt=0, lt=1, description="the agent's quarantine threshold (default: 0.1, the agent's)"
    )
    batch_size: int = Field(256, ge=1, description="inputs per forward pass (default: 256)")
    index: IndexBackend | Literal["both"] = Field(
        "both", description="neighbour backends to measure (default: both; exact is slow on large bundles)"
    )
    bootstrap: int = Field(2000, ge=100, description="bootstrap resamples (default: 2000)")
    quiet: bool = Field(False, description="no progress bars")

    def run(self) -> int:
        from agent.engine.data_files import load_dataset
        from agent.evaluation.report import EvaluationOptions, run_evaluation

        ood = load_ood(self.ood)
        options = EvaluationOptions(
            artifacts=self.artifacts,
            clean=load_dataset(self.clean, labelled=True),
            ood=ood,
            out_dir=self.out,
            name=self.name,
            threshold=self.threshold,
            batch_size=self.batch_size,
            backends=BACKENDS if self.index == "both" else (self.index,),
            trust=self.bundle_trust(),
            bootstrap=self.bootstrap,
            command="dknn-agent " + " ".join(shlex.quote(arg) for arg in sys.argv[1:]),
            progress=not self.quiet,
        )
        result = run_evaluation(options)
        stem = self.name or f"evaluation-{result['bundle']['model']}"
        print((self.out / f"{stem}.md").read_text())
        print(f"wrote {self.out / stem}.md and .json", file=sys.stderr)
        return 0
