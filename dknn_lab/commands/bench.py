"""`dknn-agent bench ...`: benchmarks that print their numbers and save them as JSON + Markdown.

Each command's fields carry the names of its bench's options (`QualityOptions`, ...), which it
fills with `options_for`; `--data` and `--out` are the fields data_dir and out_dir.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated, ClassVar

from pydantic import Field

from agent.cli.flags import Arg, Command, CommandGroup
from agent.errors import ConfigError
from dknn_lab.commands.common import MNIST_DATA, DataDir, SnnlOptions, options_for, parse_counts

Artifacts = Annotated[Path, Arg(flag="--artifacts")]
Out = Annotated[Path, Arg(flag="--out")]
RESULTS = Path("docs/results")
WHERE = "where to write JSON + Markdown"


class BenchQuality(Command):
    """Score the evaluation split of a bundle's calibration source (MNIST test minus the calibration rows) and
    shifted versions of it (uniform noise, digits rotated 90°, FGSM ε=0.25 against the bundle's model) with
    both the annoy and exact backends.
    """

    command_name: ClassVar[str] = "quality"
    summary: ClassVar[str] = "DkNN accuracy, credibility, AUROC, validity and Annoy recall on MNIST"

    artifacts: Path = Field(description="MNIST reference bundle")
    data_dir: DataDir = Field(None, description=MNIST_DATA)
    out_dir: Out = Field(RESULTS, description=WHERE)
    limit: int | None = Field(
        None, ge=1, description="score a seeded random subset of N evaluation points (default: all 9,250)"
    )
    epsilon: float = Field(0.25, gt=0, description="FGSM step (default: 0.25)")
    seed: int = Field(0, description="seed for the noise inputs (default: 0)")
    batch_size: int = Field(512, ge=1)
    extended: bool = Field(
        False,
        description="also Gaussian noise, inverted digits, BIM and PGD; softmax, Mahalanobis and deep-kNN baselines "
        "with AUROC and FPR@95%TPR; a reliability diagram and credibility histograms (PNG)",
    )

    def run(self) -> int:
        from dknn_lab.bench.quality import QualityOptions, run_quality

        run_quality(options_for(self, QualityOptions))
        return 0


class BenchSnnl(SnnlOptions, Command):
    """For each seed, train the MNIST reference model twice with the same budget — plain cross-entropy, and
    cross-entropy − W × SNNL — fit both bundles, run the extended quality benchmark on each (annoy backend)
    and compare DkNN credibility's AUROC and FPR@95%TPR on every shifted and adversarial set. Bundles are
    cached in --work-dir, one per training configuration, and reused. Per-model tables and plots go to
    OUT/NAME/, the comparison to OUT/NAME.{json,md}. --adopted compares the reference configuration the
    project adopted (train-reference's defaults: SNNL, blur augmentation, the distance-aware fit over relu3
    and logits) with the previous one (the plain model, the paper's DkNN), natural sets included.
    """

    command_name: ClassVar[str] = "snnl"
    summary: ClassVar[str] = "does entangling help? reference models with and without SNNL, compared seed by seed"

    seeds: str = Field("0,1,2", description="comma-separated training seeds (default: 0,1,2)")
    epochs: int = Field(10, ge=1, description="training epochs for both conditions (default: 10)")
    adopted: bool = Field(
        False, description="the adopted reference configuration against the previous reference (no --snnl-* options)"
    )
    work_dir: Path = Field(Path("artifacts/snnl-study"), description="where the bundles are kept")
    data_dir: DataDir = Field(None, description=MNIST_DATA)
    out_dir: Out = Field(RESULTS)
    limit: int | None = Field(None, ge=1, description="evaluation points per model (default: all 9,250)")
    retrain: bool = Field(False, description="ignore cached bundles")
    name: str | None = Field(
        None,
        description="results name: OUT/NAME.{json,md} and OUT/NAME/ (default: snnl-study; with --adopted: "
        "adopted-study)",
    )

    def run(self) -> int:
        from dknn_lab.bench.snnl_study import StudyOptions, run_study
        from dknn_lab.reference import REFERENCE_TRAINING

        given = self.training_changes()
        if self.adopted and given:
            raise ConfigError("--adopted trains the adopted configuration; leave out the --snnl-* options")
        base = REFERENCE_TRAINING if self.adopted else StudyOptions().training
        training = replace(base, epochs=self.epochs, **given)
        if training.snnl_weight <= 0 or not training.snnl_layers:
            raise ConfigError("--snnl-weight > 0 and at least one --snnl-layers")
        study = options_for(
            self,
            StudyOptions,
            seeds=parse_counts(self.seeds, "--seeds"),
            training=training,
            name=self.name or ("adopted-study" if self.adopted else "snnl-study"),
        )
        run_study(study)
        return 0


class BenchShift(Command):
    """Score the evaluation split and shifted versions of it (rotated, uniform and Gaussian noise, inverted,
    FGSM) once, then run the agent's drift monitor on streams drawn from those scores: mean run length to a
    false alarm at thresholds of 1e3/1e4/1e5 events against the guarantee, detection delay at the default
    threshold after a long clean stretch for 5/20/50/100% shifted traffic, and how fast the shifted state
    clears after the shift ends. Saves OUT/shift-MODEL.{json,md} and OUT/shift-delays.png.
    """

    command_name: ClassVar[str] = "shift"
    summary: ClassVar[str] = "drift signals: false-alarm run lengths, detection delay, resolution"

    artifacts: Path = Field(description="MNIST reference bundle")
    data_dir: DataDir = Field(None, description=MNIST_DATA)
    out_dir: Out = Field(RESULTS, description="where to write the report")
    onsets: int = Field(200, ge=1, description="shift onsets per kind and share (default: 200)")
    prefix: int = Field(20_000, ge=0, description="clean events before each onset (default: 20000)")
    arl_runs: str = Field(
        "300,200,100", description="clean runs per false-alarm threshold 1e3,1e4,1e5 (default: 300,200,100)"
    )
    seed: int = 0
    save_scores: Annotated[Path | None, Arg(metavar="NPZ")] = Field(
        None,
        description="also save the per-input scores the streams draw from (make bench-shift-peer replays them "
        "through alibi-detect's detectors)",
    )
    scores_only: bool = Field(False, description="stop after --save-scores (a minute, not 15)")

    def run(self) -> int:
        from dknn_lab.bench.shift import ShiftOptions, run_shift

        runs = parse_counts(self.arl_runs, "--arl-runs")
        if len(runs) != 3 or min(runs) < 1:
            raise ConfigError("--arl-runs needs three positive counts")
        if self.scores_only and self.save_scores is None:
            raise ConfigError("--scores-only needs --save-scores NPZ")
        run_shift(options_for(self, ShiftOptions, arl_runs=runs))
        return 0


class BenchStream(Command):
    """Publish MNIST events to a fresh topic, drain them with one in-process agent (throughput), then publish at
    a steady --latency-rate and measure each event's latency from its timestamp to its score record. The
    broker, the publisher and the agent share this machine's cores.
    """

    command_name: ClassVar[str] = "stream"
    summary: ClassVar[str] = "events/s and p50/p99 event latency through a real Kafka broker"

    artifacts: Path = Field(description="bundle to score with")
    bootstrap_servers: str = Field(description="Kafka broker (deploy/local/kafka.sh start prints one)")
    count: int = Field(5000, ge=1, description="events for the throughput phase (default: 5000)")
    latency_count: int = Field(2000, ge=1, description="events for the latency phase (default: 2000)")
    latency_rate: float = Field(1000.0, gt=0, description="events/s in the latency phase (default: 1000)")
    batch_size: int = Field(256, ge=1, description="the agent's events per batch (default: 256)")
    out_dir: Out = Field(RESULTS)

    def run(self) -> int:
        from dknn_lab.bench.stream import StreamOptions, run_stream

        run_stream(options_for(self, StreamOptions))
        return 0


class BenchPerf(Command):
    """In one run on MNIST evaluation inputs: the model's plain forward pass (the floor), each stage of the
    scoring path timed alone (decode, activations, preprocessing and k-NN per layer, the residual term,
    conformal, output encoding), DkNN scoring with Annoy and with exact search, and the quality Annoy trades:
    accuracy, credibility AUROC against FGSM, noise and rotated digits, recall@k per layer on clean and
    shifted inputs.
    """

    command_name: ClassVar[str] = "perf"
    summary: ClassVar[str] = (
        "scoring inputs/s against the model's own forward pass, stage by stage, Annoy against exact"
    )

    artifacts: Path = Field(description="MNIST reference bundle")
    data_dir: DataDir = Field(None, description=MNIST_DATA)
    count: int = Field(4096, ge=1, description="clean evaluation inputs (default: 4096)")
    exact_count: int = Field(1024, ge=1, description="inputs for the exact backend's rate (default: 1024)")
    batch_size: int = Field(256, ge=1, description="inputs per forward pass (default: 256)")
    seed: int = Field(0, description="seed for the input sample and the noise (default: 0)")
    out_dir: Out = Field(RESULTS, description=WHERE)

    def run(self) -> int:
        from dknn_lab.bench.perf import PerfOptions, run_perf

        run_perf(options_for(self, PerfOptions))
        return 0


class BenchSharpness(Command):
    """The model's own accuracy (forward passes only, seconds per bundle) on MNIST evaluation digits blurred
    (Gaussian σ 0.5, 1, 1.5) and passed through 16x16, 12x12 and 8x8 the way scikit-learn's 8x8 digits reach
    the model, with thicker strokes as a control and the two covariate-shift sets beside them. Give several
    bundles to compare their models on the same inputs.
    """

    command_name: ClassVar[str] = "sharpness"
    summary: ClassVar[str] = (
        "each model's accuracy as MNIST digits are blurred or pass through 8x8: why SNNL models fail on UCI digits"
    )

    bundles: Annotated[list[Path], Arg(flag="--artifacts", repeat=True)] = Field(
        description="a bundle; repeat to compare models"
    )
    count: int = Field(2000, ge=1, description="MNIST evaluation digits (default: 2000)")
    data_dir: DataDir = Field(None, description=MNIST_DATA)
    out_dir: Out = Field(Path("docs/results/natural-study"), description=WHERE)

    def run(self) -> int:
        from dknn_lab.bench.sharpness import SharpnessOptions, run_sharpness

        run_sharpness(options_for(self, SharpnessOptions))
        return 0


class BenchExtend(Command):
    """Do reviews teach a bundle? Evaluation digits turned --degrees (30°: the model still reads most of them)
    that the bundle quarantines are reviewed with their true labels (dknn.review.v1 records in a JSONL file),
    `dknn-agent extend`'s own code builds B2 from them, and both bundles are measured on data no review saw: the
    share of other turned digits quarantined — false alarms (the model right) and caught errors (the model
    wrong) — and clean digits' accuracy and p-value validity. Prints the numbers; saves
    OUT/extend-MODEL.{json,md}.
    """

    command_name: ClassVar[str] = "extend"
    summary: ClassVar[str] = "reviewed turned digits added to the reference bundle: held-out quarantine rate, validity"

    artifacts: Path = Field(description="MNIST reference bundle (read only)")
    data_dir: DataDir = Field(None, description=MNIST_DATA)
    out_dir: Out = Field(RESULTS, description=WHERE)
    reviews: int = Field(500, ge=1, description="quarantined turned digits reviewed (default: 500)")
    held_out: int = Field(2000, ge=1, description="turned digits no review saw (default: 2000)")
    degrees: float = Field(30.0, gt=-360, lt=360, description="how far the digits are turned (default: 30)")
    clean: int = Field(3000, ge=1, description="clean evaluation digits for accuracy and validity (default: 3000)")
    threshold: float = Field(0.1, gt=0, lt=1, description="the quarantine threshold (default: 0.1)")
    seed: int = Field(0, description="seed for splitting the evaluation digits (default: 0)")
    batch_size: int = Field(512, ge=1)
    work_dir: Path | None = Field(None, description="where B2 is built (default: a temporary directory)")

    def run(self) -> int:
        from dknn_lab.bench.extend import ExtendBenchOptions, run_extend_bench

        run_extend_bench(options_for(self, ExtendBenchOptions))
        return 0


class BenchConsole(Command):
    """Produce --count quarantine records shaped as the agent writes them for the bundle's model (and reviews
    of one in twenty) to fresh topics, start the review console (`dknn-agent review`'s code) on them, and time
    its ingest (start to /readyz) and its pages over HTTP: the first page, a filtered page (model prediction 3,
    credibility below 0.05), a page 20 pages deep and an event page, --requests times each (p50, p95, max).
    Saves OUT/console-MODEL.{json,md}.
    """

    command_name: ClassVar[str] = "console"
    summary: ClassVar[str] = "the review console's ingest time and page latency over 100,000 quarantined events"

    artifacts: Path = Field(description="bundle the records are for (its inputs, classes, layers)")
    bootstrap_servers: str = Field(description="Kafka broker (deploy/local/kafka.sh start prints one)")
    count: int = Field(100_000, ge=1, description="quarantine records (default: 100000)")
    requests: int = Field(200, ge=1, description="requests per page (default: 200)")
    seed: int = Field(0, description="seed for the records' predictions and credibilities (default: 0)")
    out_dir: Out = Field(RESULTS, description=WHERE)

    def run(self) -> int:
        from dknn_lab.bench.console import ConsoleBenchOptions, run_console_bench

        run_console_bench(options_for(self, ConsoleBenchOptions))
        return 0


BENCH = CommandGroup(
    name="bench",
    summary="quality and performance benchmarks",
    description="Benchmarks print their numbers and save them as JSON and Markdown.",
    metavar="BENCHMARK",
    commands=(BenchQuality, BenchSnnl, BenchShift, BenchStream, BenchPerf, BenchSharpness, BenchExtend, BenchConsole),
)
