"""Why SNNL-trained references fail on scikit-learn's digits (`dknn-agent bench sharpness`).

Issue #10 measured a reference trained with SNNL (w = 10, T = 100) answering about 25% of
scikit-learn's 8×8 UCI digits correctly while it kept 95% on printed digits. The UCI digits differ
from MNIST in two ways at once: other writers, and 8×8 pixels upsampled to 28×28, so soft, blocky
strokes. This benchmark separates the two. It degrades MNIST's own evaluation digits (same
writers, less detail): Gaussian blur, and the UCI digits' path (averaged down to N×N, then framed
by `mnist_frame`). It reports each model's own accuracy on them, beside the two covariate-shift
sets and thicker strokes (more ink, same sharpness) as a control. Only the models' forward passes
run, so it takes seconds per bundle.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from agent.errors import ConfigError
from dknn_lab.bench.perturbations import blurred, thickened, through_resolution
from dknn_lab.bench.reports import now, save_report, table
from dknn_lab.datasets import load_mnist
from dknn_lab.evalset import EvalSet
from dknn_lab.natural_sets import font_digits, sklearn_digits
from dknn_lab.reference import reference_model

BLUR_SIGMAS = (0.5, 1.0, 1.5)
RESOLUTIONS = (16, 12, 8)


@dataclass(frozen=True)
class SharpnessOptions:
    bundles: Sequence[Path]
    count: int = 2000
    data_dir: Path | None = None
    out_dir: Path = Path("docs/results/natural-study")

    def command(self) -> str:
        bundles = " ".join(f"--artifacts {bundle}" for bundle in self.bundles)
        return f"dknn-agent bench sharpness {bundles} --count {self.count} --out {self.out_dir}"


@dataclass(frozen=True)
class SharpnessResult:
    benchmark: str = field(default="sharpness", init=False)
    created_at: str = field(default_factory=now, init=False)
    command: str
    inputs: dict[str, int]  # set -> inputs
    model_accuracy_percent: dict[str, dict[str, float]]  # model version -> set -> accuracy


def evaluation_sets(clean: EvalSet) -> list[EvalSet]:
    """Clean MNIST, its sharper-to-softer degradations, the control, then the natural digit sets."""
    return [
        clean,
        thickened(clean),
        *(blurred(clean, sigma) for sigma in BLUR_SIGMAS),
        *(through_resolution(clean, side) for side in RESOLUTIONS),
        sklearn_digits(),
        font_digits(),
    ]


@torch.no_grad()
def model_accuracy(model: torch.nn.Module, data: EvalSet, batch_size: int = 512) -> float:
    assert data.y is not None
    right = 0
    for start in range(0, len(data.x), batch_size):
        outputs = model(torch.as_tensor(data.x[start : start + batch_size], dtype=torch.float32))
        right += int((outputs.argmax(dim=1).numpy() == data.y[start : start + batch_size]).sum())
    return right / len(data.x)


def run_sharpness(options: SharpnessOptions) -> SharpnessResult:
    if not options.bundles or options.count < 1:
        raise ConfigError("give at least one --artifacts bundle and a positive --count")
    mnist = load_mnist(options.data_dir)
    accuracy: dict[str, dict[str, float]] = {}
    sets: list[EvalSet] = []
    for root in options.bundles:
        model, version, split = reference_model(root, len(mnist.x_test))
        if not sets:  # every bundle on the same inputs: the first bundle's evaluation rows
            rows = split.evaluation[: options.count]
            sets = evaluation_sets(EvalSet("MNIST", mnist.x_test[rows], mnist.y_test[rows]))
        accuracy[version] = {data.name: round(100 * model_accuracy(model.classifier(None), data), 1) for data in sets}
    result = SharpnessResult(
        command=options.command(), inputs={data.name: len(data.x) for data in sets}, model_accuracy_percent=accuracy
    )
    save_report(result, markdown(result), options.out_dir, "sharpness")
    return result


def markdown(result: SharpnessResult) -> str:
    accuracy = result.model_accuracy_percent
    lines = [
        "# Sharpness: each model's own accuracy as MNIST digits lose detail",
        "",
        f"Regenerate: `{result.command}`. MNIST rows are the first bundle's evaluation points; "
        "`through N×N` is the path scikit-learn's 8×8 digits take (averaged down, framed by `mnist_frame`).",
        "",
        *table(
            ["set", "inputs", *accuracy],
            [
                [name, f"{count:,}", *(f"{per_set[name]:.1f}%" for per_set in accuracy.values())]
                for name, count in result.inputs.items()
            ],
        ),
    ]
    return "\n".join(lines) + "\n"
