"""`dknn-agent produce-demo`: publish demo inference events built from MNIST (the lab's)."""

from __future__ import annotations

import argparse
from pathlib import Path

from agent.cli.options import parse_mix, parse_phase
from agent.errors import ConfigError

DEFAULT_MIX = "clean=0.8,noise=0.05,rotated=0.05,fgsm=0.05,malformed=0.05"


def register(commands: argparse._SubParsersAction) -> None:
    demo = commands.add_parser(
        "produce-demo",
        help="publish demo inference events built from MNIST",
        description="Publish v1 events from the MNIST test set: clean digits, uniform noise, rotated digits, "
        "FGSM examples against the bundle's model, and malformed events. One phase (--count, --mix) or several "
        "in order (--phase, repeated), e.g. clean, then shifted, then clean again for the drift signals: "
        "--phase 1500:clean=0.95,malformed=0.05 --phase 1000:clean=0.4,noise=0.15,rotated=0.2,fgsm=0.2,"
        "malformed=0.05 --phase 1500:clean=0.95,malformed=0.05",
    )
    demo.add_argument("--bootstrap-servers", required=True, help="Kafka bootstrap servers")
    demo.add_argument("--topic", default="inference-events", help="topic to publish to (default: inference-events)")
    demo.add_argument("--artifacts", type=Path, default=None, help="bundle: events match its model; needed for fgsm")
    demo.add_argument("--data", type=Path, default=None, help="MNIST IDX directory (default: the shared copy)")
    demo.add_argument("--count", type=int, default=None, help="events to publish (default: 1000)")
    demo.add_argument("--rate", type=float, default=None, help="events per second (default: as fast as possible)")
    demo.add_argument(
        "--mix",
        default=None,
        help=f"weights per kind (default: {DEFAULT_MIX})",
    )
    demo.add_argument(
        "--phase",
        action="append",
        default=None,
        metavar="COUNT:MIX",
        help="publish COUNT events drawn from MIX, after the phases before it; repeat for several "
        "(instead of --count and --mix)",
    )
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument(
        "--create-topic",
        type=int,
        default=None,
        metavar="PARTITIONS",
        help="create the topic with this many partitions if it does not exist",
    )
    demo.set_defaults(handler=_produce_demo)


def _produce_demo(args: argparse.Namespace) -> int:
    from connectors.kafka import KafkaSink, ensure_topics
    from dknn_lab.demo_traffic import KINDS, Phase, demo_events, load_demo_data, produce

    if args.phase and (args.count is not None or args.mix is not None):
        raise ConfigError("--phase replaces --count and --mix: give either phases or one count and mix")
    if args.rate is not None and args.rate <= 0:
        raise ConfigError("--rate must be positive")
    phases = [Phase(*parse_phase(text, KINDS)) for text in args.phase or ()] or [
        Phase(1000 if args.count is None else args.count, parse_mix(args.mix or DEFAULT_MIX, KINDS))
    ]
    if any(phase.count < 1 for phase in phases):
        raise ConfigError("--count (and every --phase COUNT) must be at least 1")
    data = load_demo_data(args.artifacts, args.data, need_fgsm=any(phase.mix.get("fgsm", 0) > 0 for phase in phases))
    if args.create_topic:
        ensure_topics(args.bootstrap_servers, [args.topic], partitions=args.create_topic)
    counts: dict[str, int] = {}
    with KafkaSink(args.bootstrap_servers) as sink:
        for number, phase in enumerate(phases, start=1):
            if len(phases) > 1:
                mix = ", ".join(f"{kind} {weight:.0%}" for kind, weight in phase.mix.items())
                print(f"[produce-demo] phase {number} of {len(phases)}: {phase.count} events ({mix})", flush=True)
            for kind, n in produce(sink, args.topic, demo_events(data, phase, number, args.seed), args.rate).items():
                counts[kind] = counts.get(kind, 0) + n
    print("published " + ", ".join(f"{kind}={n}" for kind, n in sorted(counts.items())) + f" to {args.topic}")
    return 0
