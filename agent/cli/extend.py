"""`dknn-agent extend`: a new bundle version whose indexes also hold reviewed quarantined inputs."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated, ClassVar

from pydantic import Field, field_validator

from agent.cli.flags import Arg, Command
from agent.cli.options import OodSets, TrustOptions, load_ood


class ExtendCommand(TrustOptions, Command):
    """Build a new version of a bundle whose per-layer indexes also hold the inputs people reviewed
    (dknn.review.v1 records, docs/design.md §5.2): model_right reviews under the model's answer, model_wrong
    ones under the label given; out_of_scope ones stay out of the indexes and are written as a data set the
    report scores. The latest review of an event wins. The calibration points stay the same and are scored
    again against the new indexes, so the p-values stay conformal; the model, the preprocessing and the
    distance and residual references stay as in the bundle. The manifest names the review behind every
    added point; the version becomes <version>+reviews.<points>.

    --calibration is the set the bundle was calibrated on (bundles do not carry it): it must reproduce the
    bundle's calibration scores. Malformed reviews are skipped and counted by reason; without one usable
    review to add, nothing is written.

    Then B and B2 score --clean (and each --ood set, and the reviewed events) and the report says, side by
    side: accuracy, validity of the p-values, the share quarantined at the threshold, and how many reviewed
    events are still quarantined. DATA as for evaluate.
    """

    command_name: ClassVar[str] = "extend"
    summary: ClassVar[str] = "add reviewed quarantined inputs to a new bundle version, and compare the two"
    examples: ClassVar[tuple[str, ...]] = (
        "dknn-agent extend --artifacts bundle/ --reviews reviews.jsonl --calibration calibration.npz "
        "--clean test.npz --out bundle-2/",
        "dknn-agent extend --artifacts bundle/ --reviews kafka://kafka:9092/inference-reviews --calibration "
        "calibration.npz --clean test.npz --ood noise=noise.npy --out bundle-2/ --report reports/",
    )

    artifacts: Path = Field(description="the bundle to extend")
    reviews: Annotated[str, Arg(metavar="SOURCE")] = Field(
        description="dknn.review.v1 records: a JSONL file (one per line) or a whole Kafka topic (read to its end, "
        "no consumer group; plaintext listener)"
    )
    calibration: Annotated[str, Arg(metavar="DATA")] = Field(
        description="the labelled set the bundle was calibrated on"
    )
    clean: Annotated[str, Arg(metavar="DATA")] = Field(description="labelled held-out inputs for the report")
    ood: OodSets = Field([], description="an out-of-distribution set for the report (repeatable)")
    out: Path = Field(description="directory of the new bundle")
    report: Path | None = Field(None, description="directory for the report (default: beside --out)")
    model_version: str | None = Field(
        None, min_length=1, max_length=64, description="the new bundle's version (default: <version>+reviews.<points>)"
    )
    threshold: float = Field(0.1, gt=0, lt=1, description="the agent's quarantine threshold (default: 0.1)")
    batch_size: int = Field(256, ge=1, description="inputs per forward pass (default: 256)")
    force: bool = Field(False, description="replace an existing --out directory")
    quiet: bool = Field(False, description="no progress bars")

    @field_validator("reviews")
    @classmethod
    def _review_source(cls, text: str) -> str:
        from agent.runtime.reviews import source_uri

        source_uri(text)
        return text

    def run(self) -> int:
        from agent.engine.data_files import load_dataset
        from agent.evaluation.extension import ExtendOptions, markdown, run_extension

        options = ExtendOptions(
            artifacts=self.artifacts,
            reviews=self.reviews,
            calibration=load_dataset(self.calibration, labelled=True),
            out=self.out,
            clean=load_dataset(self.clean, labelled=True),
            ood=load_ood(self.ood),
            report_dir=self.report,
            threshold=self.threshold,
            batch_size=self.batch_size,
            trust=self.bundle_trust(),
            model_version=self.model_version,
            force=self.force,
            command="dknn-agent " + " ".join(shlex.quote(arg) for arg in sys.argv[1:]),
            progress=not self.quiet,
        )
        result = run_extension(options)
        print(markdown(result))
        print(f"wrote {self.out} and {options.where / options.stem}.md and .json", file=sys.stderr)
        return 0
