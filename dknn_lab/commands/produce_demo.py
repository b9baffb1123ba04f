"""`dknn-agent produce-demo`: publish demo inference events built from MNIST."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, ClassVar

from pydantic import Field, model_validator

from agent.cli.flags import Arg, Command
from agent.cli.options import split_list
from agent.errors import ConfigError
from dknn_lab.commands.common import MNIST_DATA, DataDir

DEFAULT_MIX = "clean=0.8,noise=0.05,rotated=0.05,fgsm=0.05,malformed=0.05"


def parse_mix(text: str, kinds: tuple[str, ...]) -> dict[str, float]:
    """`clean=0.7,noise=0.1,...` -> weights normalised to sum 1; unknown kinds are a ConfigError."""
    weights: dict[str, float] = {}
    for item in split_list(text):
        kind, _, value = item.partition("=")
        if kind not in kinds:
            raise ConfigError(f"--mix: unknown kind {kind!r}; use {', '.join(kinds)}")
        try:
            weights[kind] = float(value)
        except ValueError:
            raise ConfigError(f"--mix: {item!r} needs a number, e.g. {kind}=0.1") from None
        if not weights[kind] >= 0:
            raise ConfigError(f"--mix: {kind} weight must be a non-negative number")
    total = sum(weights.values())
    if not total > 0:
        raise ConfigError("--mix: at least one weight must be positive")
    return {kind: weight / total for kind, weight in weights.items()}


def parse_phase(text: str, kinds: tuple[str, ...]) -> tuple[int, dict[str, float]]:
    """`1500:clean=0.95,malformed=0.05` -> (1500, normalised weights), for `produce-demo --phase`."""
    count, sep, mix = text.partition(":")
    if not sep or not count.strip().isdigit():
        raise ConfigError(f"--phase: {text!r} is not COUNT:MIX, e.g. 1000:clean=0.9,noise=0.1")
    return int(count), parse_mix(mix, kinds)


class ProduceDemoCommand(Command):
    """Publish v1 events from the MNIST test set: clean digits, uniform noise, rotated digits, FGSM examples
    against the bundle's model, and malformed events. One phase (--count, --mix) or several in order (--phase,
    repeated), e.g. clean, then shifted, then clean again for the drift signals: --phase
    1500:clean=0.95,malformed=0.05 --phase 1000:clean=0.4,noise=0.15,rotated=0.2,fgsm=0.2,malformed=0.05
    --phase 1500:clean=0.95,malformed=0.05
    """

    command_name: ClassVar[str] = "produce-demo"
    summary: ClassVar[str] = "publish demo inference events built from MNIST"

    bootstrap_servers: str = Field(description="Kafka bootstrap servers")
    topic: str = Field("inference-events", description="topic to publish to (default: inference-events)")
    artifacts: Path | None = Field(None, description="bundle: events match its model; needed for fgsm")
    data_dir: DataDir = Field(None, description=MNIST_DATA)
    count: int | None = Field(None, ge=1, description="events to publish (default: 1000)")
    rate: float | None = Field(None, gt=0, description="events per second (default: as fast as possible)")
    mix: str | None = Field(None, description=f"weights per kind (default: {DEFAULT_MIX})")
    phase: Annotated[list[str] | None, Arg(repeat=True, metavar="COUNT:MIX")] = Field(
        None,
        description="publish COUNT events drawn from MIX, after the phases before it; repeat for several "
        "(instead of --count and --mix)",
    )
    seed: int = 0
    create_topic: Annotated[int | None, Arg(metavar="PARTITIONS")] = Field(
        None, ge=1, description="create the topic with this many partitions if it does not exist"
    )

    @model_validator(mode="after")
    def _phases_or_one_mix(self) -> ProduceDemoCommand:
        if self.phase and (self.count is not None or self.mix is not None):
            raise ValueError("--phase replaces --count and --mix: give either phases or one count and mix")
        return self

    def run(self) -> int:
        from connectors.kafka import KafkaSink, ensure_topics
        from dknn_lab.demo_traffic import KINDS, Phase, demo_events, load_demo_data, produce

        phases = [Phase(*parse_phase(text, KINDS)) for text in self.phase or ()] or [
            Phase(1000 if self.count is None else self.count, parse_mix(self.mix or DEFAULT_MIX, KINDS))
        ]
        if any(phase.count < 1 for phase in phases):
            raise ConfigError("--count (and every --phase COUNT) must be at least 1")
        need_fgsm = any(phase.mix.get("fgsm", 0) > 0 for phase in phases)
        data = load_demo_data(self.artifacts, self.data_dir, need_fgsm=need_fgsm)
        if self.create_topic:
            ensure_topics(self.bootstrap_servers, [self.topic], partitions=self.create_topic)
        counts: dict[str, int] = {}
        with KafkaSink(self.bootstrap_servers) as sink:
            for number, phase in enumerate(phases, start=1):
                if len(phases) > 1:
                    mix = ", ".join(f"{kind} {weight:.0%}" for kind, weight in phase.mix.items())
                    print(f"[produce-demo] phase {number} of {len(phases)}: {phase.count} events ({mix})", flush=True)
                events = demo_events(data, phase, number, self.seed)
                for kind, n in produce(sink, self.topic, events, self.rate).items():
                    counts[kind] = counts.get(kind, 0) + n
        print("published " + ", ".join(f"{kind}={n}" for kind, n in sorted(counts.items())) + f" to {self.topic}")
        return 0
