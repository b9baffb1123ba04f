"""Do reviews teach a bundle? (`dknn-agent bench extend`, issue #24.)

Digits turned 30° are still digits to the model (it answers about 89% of them right), but the
MNIST reference bundle B quarantines about half of them: they lie farther from the training digits
than training digits lie from one another. That is the false alarm a reviewer clears. Here the
turned versions of half of the evaluation split form the review pool, and of those B quarantines,
`reviews` become `dknn.review.v1` records with their true labels (model_right where the model's
answer is the true label, else model_wrong), written to a JSONL file and read back by `dknn-agent
extend`'s own code (agent.evaluation.extension), which builds B2. Then, on data no review saw:

- turned digits from the other half of the evaluation split: the share quarantined by B and B2,
  split into false alarms (the model's answer right) and caught errors (wrong): B2 should raise
  fewer alarms on the reviewed pattern and still catch the model's mistakes on it;
- the clean digits of that half: accuracy and the validity of the p-values for both (are ordinary
  digits still scored as before, and B2's p-values still conformal?).

The reviewed events themselves are in B2's indexes, so their numbers are in-sample; they are in the
report, not in the verdict.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from agent.engine.bundle import read_manifest
from agent.engine.data_files import Dataset
from agent.engine.dknn import DkNN
from agent.errors import ConfigError
from agent.evaluation.extension import ExtendOptions, run_extension
from agent.evaluation.scoring import score_set
from agent.runtime.events import encode_event
from agent.runtime.wire.review import ReviewVerdict, review_record
from dknn_lab.bench.perturbations import EvalSet, turned
from dknn_lab.bench.reports import ModelVersion, now, num, pct, save_report, table
from dknn_lab.datasets import load_mnist
from dknn_lab.reference import calibration_split

HELD_OUT = "turned (held out)"
REVIEWED_AT = "2026-01-01T00:00:00Z"  # one review per event: the time orders nothing here


@dataclass(frozen=True)
class ExtendBenchOptions:
    artifacts: Path
    data_dir: Path | None = None
    out_dir: Path = Path("docs/results")
    reviews: int = 500  # quarantined turned digits reviewed
    held_out: int = 2000  # turned digits no review saw
    degrees: float = 30.0  # the turn: readable to the model, unusual to B
    clean: int = 3000  # clean digits for accuracy and validity
    threshold: float = 0.1
    seed: int = 0
    batch_size: int = 512
    work_dir: Path | None = None  # where B2 and the review file go (default: a temporary directory)

    def command(self) -> str:
        return (
            f"dknn-agent bench extend --artifacts {self.artifacts} --reviews {self.reviews} --held-out "
            f"{self.held_out} --clean {self.clean} --degrees {self.degrees:g} --seed {self.seed} --out {self.out_dir}"
        )


@dataclass(frozen=True)
class Side:
    """One bundle's numbers."""

    version: str
    indexed_points: int
    heldout_quarantined: float
    heldout_false_alarms: float  # quarantined where the model's answer is right
    heldout_caught: float  # quarantined where it is wrong
    heldout_dknn_accuracy: float
    clean_model_accuracy: float
    clean_dknn_accuracy: float
    clean_validity: dict[str, float]  # τ -> share of true labels with p ≤ τ
    clean_quarantined: float
    reviewed_quarantined: float  # the reviewed events (in B2's indexes: in-sample for B2)


@dataclass(frozen=True)
class ExtendResult:
    benchmark: str = field(default="extend", init=False)
    created_at: str = field(default_factory=now, init=False)
    command: str
    bundle: ModelVersion
    threshold: float
    reviews: dict[str, int]  # offered, model_right, model_wrong, added
    held_out: int
    clean: int
    degrees: float
    heldout_model_accuracy: float
    pool_quarantined_by_b: float  # share of the review pool's turned digits B quarantined
    extend_seconds: float
    before: Side
    after: Side


def run_extend_bench(options: ExtendBenchOptions) -> ExtendResult:
    if min(options.reviews, options.held_out, options.clean) < 1:
        raise ConfigError("--reviews, --held-out and --clean must be positive")
    manifest, _ = read_manifest(options.artifacts)
    mnist = load_mnist(options.data_dir)
    split = calibration_split(manifest, len(mnist.x_test))
    if manifest.calibration.source != "mnist:t10k" or not len(split.calibration):
        raise ConfigError(f"{options.artifacts}: not an MNIST reference bundle (calibration source unknown)")
    rows = np.random.default_rng(options.seed).permutation(split.evaluation)
    pool_rows, heldout_rows = rows[: len(rows) // 2], rows[len(rows) // 2 :]
    if options.held_out > len(heldout_rows) or options.clean > len(heldout_rows):
        raise ConfigError(f"--held-out and --clean may be at most {len(heldout_rows)} (half the evaluation split)")
    pool = turned(EvalSet("pool", mnist.x_test[pool_rows], mnist.y_test[pool_rows]), options.degrees)
    held = heldout_rows[: options.held_out]
    heldout = turned(EvalSet(HELD_OUT, mnist.x_test[held], mnist.y_test[held]), options.degrees)
    clean_rows = heldout_rows[: options.clean]
    clean = Dataset(mnist.x_test[clean_rows], mnist.y_test[clean_rows], source="mnist:t10k evaluation")

    base = DkNN.from_bundle(options.artifacts)
    pool_scores = score_set(base, pool.x, options.batch_size, "pool", progress=False)
    quarantined = np.flatnonzero(pool_scores.credibility < options.threshold)
    if len(quarantined) < options.reviews:
        raise ConfigError(f"B quarantines {len(quarantined)} turned digits of the pool, fewer than --reviews")
    chosen = quarantined[: options.reviews]
    assert pool.y is not None and heldout.y is not None
    with tempfile.TemporaryDirectory(dir=options.work_dir) as work:
        reviews_file = Path(work) / "reviews.jsonl"
        right = _write_reviews(reviews_file, manifest.model.name, manifest.model.version, pool, pool_scores, chosen)
        started = time.perf_counter()
        report = run_extension(
            ExtendOptions(
                artifacts=options.artifacts,
                reviews=str(reviews_file),
                calibration=Dataset(
                    mnist.x_test[split.calibration], mnist.y_test[split.calibration], source="mnist:t10k"
                ),
                out=Path(work) / "b2",
                clean=clean,
                ood={HELD_OUT: Dataset(heldout.x, heldout.y, source=HELD_OUT)},
                report_dir=Path(work),
                threshold=options.threshold,
                batch_size=options.batch_size,
                progress=False,
            )
        )
        seconds = time.perf_counter() - started
    result = ExtendResult(
        command=options.command(),
        bundle=ModelVersion(manifest.model.name, manifest.model.version),
        threshold=options.threshold,
        reviews={
            "offered": len(chosen),
            "model_right": right,
            "model_wrong": len(chosen) - right,
            "added": report["reviews"]["added"],
        },
        held_out=options.held_out,
        clean=options.clean,
        degrees=options.degrees,
        heldout_model_accuracy=report["sets"][HELD_OUT]["before"]["model_accuracy"],
        pool_quarantined_by_b=float(len(quarantined) / len(pool.x)),
        extend_seconds=round(seconds, 1),
        before=_side(report, "before"),
        after=_side(report, "after"),
    )
    save_report(result, markdown(result), options.out_dir, f"extend-{manifest.model.name}")
    return result


def _write_reviews(path: Path, model: str, version: str, pool: EvalSet, scores: Any, chosen: np.ndarray) -> int:
    """One review per chosen digit, through the producer helper from a quarantine record of it (a v1
    event as the agent would have quoted it); returns how many say model_right."""
    assert pool.y is not None
    right = 0
    with path.open("wb") as sink:
        for index in chosen:
            event = orjson.loads(encode_event(f"turned-{index}", pool.x[index], model, version))
            answer, truth = int(scores.model_prediction[index]), int(pool.y[index])
            quarantine = {
                "event": event,
                "dknn": {"prediction": int(scores.prediction[index]), "model_prediction": answer},
            }
            verdict: ReviewVerdict = "model_right" if answer == truth else "model_wrong"
            right += verdict == "model_right"
            sink.write(
                review_record(
                    quarantine,
                    verdict=verdict,
                    label=None if verdict == "model_right" else truth,
                    reviewer="bench",
                    model_name=model,
                    model_version=version,
                    reviewed_at=REVIEWED_AT,
                )
                + b"\n"
            )
    return right


def _side(report: dict[str, Any], side: str) -> Side:
    sets = report["sets"]
    clean, heldout = sets["clean"][side], sets[HELD_OUT][side]
    reviewed = [one for name, one in sets.items() if name.startswith("reviewed ")]
    n = sum(one["n"] for one in reviewed)
    return Side(
        version=report[side]["version"],
        indexed_points=report[side]["train_size"],
        heldout_quarantined=heldout["quarantined"],
        heldout_false_alarms=heldout["quarantined_model_right"],
        heldout_caught=heldout["quarantined_model_wrong"],
        heldout_dknn_accuracy=heldout["dknn_accuracy"],
        clean_model_accuracy=clean["model_accuracy"],
        clean_dknn_accuracy=clean["dknn_accuracy"],
        clean_validity=clean["validity"],
        clean_quarantined=clean["quarantined"],
        reviewed_quarantined=sum(one[side]["quarantined"] * one["n"] for one in reviewed) / n,
    )


def markdown(result: ExtendResult) -> str:
    b, b2 = result.before, result.after
    reviews = result.reviews
    rows = [
        ["turned digits held out: quarantined at τ", pct(b.heldout_quarantined), pct(b2.heldout_quarantined)],
        ["↳ where the model is right (false alarms)", pct(b.heldout_false_alarms), pct(b2.heldout_false_alarms)],
        ["↳ where the model is wrong (caught)", pct(b.heldout_caught), pct(b2.heldout_caught)],
        ["turned digits held out: DkNN accuracy", pct(b.heldout_dknn_accuracy), pct(b2.heldout_dknn_accuracy)],
        ["clean digits: model accuracy", pct(b.clean_model_accuracy), pct(b2.clean_model_accuracy)],
        ["clean digits: DkNN accuracy", pct(b.clean_dknn_accuracy), pct(b2.clean_dknn_accuracy)],
        *(
            [f"clean digits: validity, p ≤ {tau} (about {tau})", num(b.clean_validity[tau]), num(b2.clean_validity[tau])]
            for tau in b.clean_validity
        ),
        ["clean digits: quarantined at τ", pct(b.clean_quarantined), pct(b2.clean_quarantined)],
        ["reviewed digits: quarantined at τ (B2: in-sample)", pct(b.reviewed_quarantined), pct(b2.reviewed_quarantined)],
        ["indexed points", f"{b.indexed_points:,}", f"{b2.indexed_points:,}"],
    ]  # fmt: skip
    lines = [
        f"# Extending {result.bundle.model} with reviewed digits turned {result.degrees:g}°",
        "",
        f"Regenerate: `{result.command}`. B is `{result.bundle.version}`; B2 is `{b2.version}`, built by "
        f"`dknn-agent extend`'s code from {reviews['offered']} reviews of turned evaluation digits B quarantined "
        f"({reviews['model_right']} model_right, {reviews['model_wrong']} model_wrong with the true label; B "
        f"quarantined {pct(result.pool_quarantined_by_b)} of the review pool), in {result.extend_seconds:g} s with "
        f"both bundles' scoring. Held out: {result.held_out:,} turned digits (the model answers "
        f"{pct(result.heldout_model_accuracy)} of them right) and {result.clean:,} clean digits from the other half "
        f"of the evaluation split; τ = {result.threshold}.",
        "",
        *table(["", "B", "B2"], rows),
        "",
        "B2's calibration points are B's, scored against B2's indexes. At each distance layer, an input whose "
        "nearest neighbour is a reviewed point labelled with the model's answer for it is ranked among the reviewed "
        "points' own neighbour distances, every other input among the training points' (docs/design.md §3.3); the "
        "residual term is B's.",
        "",
    ]
    return "\n".join(lines)
