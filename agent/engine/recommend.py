"""The configuration `fit` uses when told nothing: what the MNIST reference taught, applied to any model.

The reference study (docs/quality-history.md) found, for a classifier's credibility, that

- two indexed layers do better than the paper's every-layer vote: the **last hidden
  representation** (what the layer making the logits reads), as unit rows projected on 32 principal
  directions, and the **logits** themselves;
- their neighbours' *distances* count beside their labels (`labels+distance`: up to 600 when the
  nearest 5 are farther than for half the training points), which catches inputs that land near
  no class;
- a **residual term** at an earlier layer catches what the late layers map close to some class
  anyway (noise, photographs): the hidden activation just before the last hidden layer (not the
  last hidden layer's own pre-activation, which is the same representation), else the module
  output before it, with up to 64 principal directions and never more than half the layer's width.

`suggest` finds those layers in any model's tap points (agent.engine.taps): the logits are the
model's output, the last hidden layer is what the logits layer reads (a module's name where a
flatten or view stands between them), and the residual layer is the last activation before it
that it does not read directly (else the last module output before it).
The paper's DkNN (`--preset paper`) is the label vote over hidden activations and the logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from agent.engine.manifest import NonconformitySpec, ResidualSpec
from agent.engine.taps import TapPoint
from agent.errors import ConfigError

Preset = Literal["recommended", "paper"]
PRESETS: tuple[str, ...] = get_args(Preset)

HIDDEN_DIMENSIONS = 32  # principal directions kept of the last hidden layer
PAPER_DIMENSIONS = 32
PAPER_MAX_HIDDEN = 4  # hidden layers the paper preset indexes at most (evenly spread)
RESIDUAL_COMPONENTS = 64
# What counts as an activation: module classes, and functional operations in serialized programs.
ACTIVATIONS = {
    "ReLU", "ReLU6", "LeakyReLU", "PReLU", "RReLU", "ELU", "SELU", "CELU", "GELU", "SiLU", "Mish", "Tanh",
    "Sigmoid", "Hardswish", "Hardsigmoid", "Hardtanh", "Softplus", "Softsign", "Tanhshrink", "LogSigmoid",
    "relu", "relu_", "gelu", "silu", "tanh", "sigmoid", "elu", "leaky_relu", "hardtanh", "hardswish", "mish",
    "softplus", "relu6",
}  # fmt: skip


def recommended_nonconformity(residual: ResidualSpec | None) -> NonconformitySpec:
    """The reference's α: labels and distances over every indexed layer, plus the residual term."""
    return NonconformitySpec(
        kind="labels+distance",
        distance_weight=600,
        distance_reference_size=5000,
        distance_statistic="mean",
        distance_neighbors=5,
        distance_tail=0.5,
        residual=residual,
    )


@dataclass(frozen=True)
class Suggestion:
    """The layers `fit` would choose for a model, by role."""

    logits: str | None  # the logits' tap point, when a module or operation makes them
    hidden: str | None  # the last hidden representation
    residual: str | None  # where the residual term looks
    paper: tuple[str, ...]  # the hidden layers the paper preset indexes
    widths: dict[str, int]

    def layers(self, preset: Preset) -> dict[str, str]:
        """Layer -> preprocessing for a preset; ConfigError when the model offers nothing to index."""
        if preset == "paper":
            hidden = {name: _reduced(self.widths[name], PAPER_DIMENSIONS, "") for name in self.paper}
        else:
            hidden = {self.hidden: _reduced(self.widths[self.hidden], HIDDEN_DIMENSIONS, "l2")} if self.hidden else {}
        chosen = {**hidden, **({self.logits: "none"} if self.logits else {})}
        if not chosen:
            raise ConfigError("no layer to index was found: name them with --layers (dknn-agent layers lists them)")
        return chosen

    def residual_spec(self) -> ResidualSpec | None:
        if self.residual is None:
            return None
        return ResidualSpec(layer=self.residual, components=min(RESIDUAL_COMPONENTS, self.widths[self.residual] // 2))


def _reduced(width: int, dimensions: int, first: str) -> str:
    """Unit rows then PCA where the layer is wider than the kept directions."""
    steps = [step for step in (first, f"pca:{dimensions}" if width > dimensions else "") if step]
    return "+".join(steps) or "none"


def suggest(points: list[TapPoint], num_classes: int) -> Suggestion:
    """The recommended and the paper's layers among `points` (execution order, as `tap_points` gives)."""
    usable = [point for point in points if point.tappable]
    widths = {point.name: point.width for point in usable}
    logits = next((point.name for point in reversed(usable) if point.logits), None)
    end = next((index for index, point in enumerate(usable) if point.logits), len(usable))
    before = usable[:end]
    fed = [point for point in before if point.feeds_logits]
    # Prefer a module's name over an operation's for the same values (relu3, not :flatten).
    hidden_point = next((point for point in fed if ":" not in point.name), fed[-1] if fed else None)
    if hidden_point is None:
        modules = [point for point in before if ":" not in point.name and point.width != num_classes]
        hidden_point = modules[-1] if modules else None
    hidden = hidden_point.name if hidden_point else None
    start = before.index(hidden_point) if hidden_point else len(before)
    # An earlier representation, not the hidden layer's own pre-activation (what it reads directly).
    own_input = set(hidden_point.reads) if hidden_point else set()
    earlier = [
        point
        for point in before[:start]
        if point.width > 2 * num_classes and point.width > 1 and point.name not in own_input
    ]
    activations = [point for point in earlier if point.kind in ACTIVATIONS]
    candidates = activations or [point for point in earlier if ":" not in point.name] or earlier
    residual = candidates[-1].name if candidates and candidates[-1].width >= 4 else None
    hidden_activations = [point.name for point in activations]
    paper = _spread(hidden_activations, PAPER_MAX_HIDDEN - 1) + ([hidden] if hidden else [])
    return Suggestion(logits, hidden, residual, tuple(dict.fromkeys(paper)), widths)


def _spread(names: list[str], count: int) -> list[str]:
    """Up to `count` names evenly spread over the list, the last one included."""
    if len(names) <= count:
        return names
    step = len(names) / count
    return [names[min(len(names) - 1, int(round((index + 1) * step)) - 1)] for index in range(count)]
