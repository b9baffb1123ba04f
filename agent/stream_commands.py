"""The streaming subcommands: `run` (the agent) and `produce-demo` (traffic for it)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

RUN_FLAGS: list[tuple[str, type, str]] = [
    ("artifacts", Path, "bundle directory (fit or train-reference output)"),
    ("bootstrap-servers", str, "Kafka bootstrap servers, host:port[,host:port]"),
    ("input-topic", str, "topic of v1 inference events (default: inference-events)"),
    ("quarantine-topic", str, "where low-credibility events go (default: inference-quarantine)"),
    ("dead-letter-topic", str, "where malformed events go, bytes untouched (default: inference-dead-letter)"),
    ("scores-topic", str, "optional: a compact score record for every valid event"),
    ("group-id", str, "consumer group; replicas with one group share partitions (default: dknn-agent)"),
    ("metrics-port", int, "port of /metrics, /healthz, /readyz (default: 9108; 0 = any free port)"),
    ("threshold", float, "quarantine below this credibility (default: 0.1, flags ~10%% of clean traffic)"),
    ("batch-size", int, "events per micro-batch (default: 64)"),
    ("index", str, "neighbour backend: annoy (default) or exact"),
    ("source", str, "file:PATH reads JSONL events instead of Kafka"),
    ("sink", str, "file:DIR writes one JSONL file per output topic instead of Kafka"),
]


def register(commands: argparse._SubParsersAction) -> None:
    run = commands.add_parser(
        "run",
        help="run the monitoring agent on a stream of inference events",
        description="Consume v1 inference events, score their DkNN credibility, quarantine low-credibility "
        "events, dead-letter malformed ones and serve Prometheus metrics. Every flag can also be set as a "
        "DKNN_* environment variable (DKNN_INPUT_TOPIC, DKNN_KAFKA_SECURITY__SASL_MECHANISM, ...) or in a "
        "YAML file given with --config; flags win over the environment, which wins over the file.",
    )
    run.add_argument("--config", type=Path, default=None, help="YAML settings file")
    for flag, kind, help_text in RUN_FLAGS:
        run.add_argument(f"--{flag}", type=kind, default=None, help=help_text)
    run.add_argument("--summary-every", type=float, default=None, metavar="SECONDS",
                     help="print a one-line live summary to stderr every N seconds")
    run.set_defaults(handler=_run)

    demo = commands.add_parser(
        "produce-demo",
        help="publish demo inference events built from MNIST",
        description="Publish v1 events from the MNIST test set: clean digits, uniform noise, rotated digits, "
        "FGSM examples against the bundle's model, and malformed events.",
    )
    demo.add_argument("--bootstrap-servers", required=True, help="Kafka bootstrap servers")
    demo.add_argument("--topic", default="inference-events", help="topic to publish to (default: inference-events)")
    demo.add_argument("--artifacts", type=Path, default=None, help="bundle: events match its model; needed for fgsm")
    demo.add_argument("--data", type=Path, default=None, help="MNIST IDX directory (default: the shared copy)")
    demo.add_argument("--count", type=int, default=1000, help="events to publish (default: 1000)")
    demo.add_argument("--rate", type=float, default=None, help="events per second (default: as fast as possible)")
    demo.add_argument("--mix", default="clean=0.8,noise=0.05,rotated=0.05,fgsm=0.05,malformed=0.05",
                      help="weights per kind (default: clean=0.8,noise=0.05,rotated=0.05,fgsm=0.05,malformed=0.05)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--create-topic", type=int, default=None, metavar="PARTITIONS",
                      help="create the topic with this many partitions if it does not exist")
    demo.set_defaults(handler=_produce_demo)


def _run(args: argparse.Namespace) -> int:
    from agent.runner import run_agent
    from agent.settings import load_settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)  # the client's INFO lines are per-connection chatter
    overrides = {flag.replace("-", "_"): getattr(args, flag.replace("-", "_")) for flag, _, _ in RUN_FLAGS}
    settings = load_settings(args.config, {k: v for k, v in overrides.items() if v is not None})
    return run_agent(settings, summary_every_s=args.summary_every)


def _produce_demo(args: argparse.Namespace) -> int:
    from agent.demo_producer import demo_events, load_demo_data, parse_mix, produce
    from agent.errors import ConfigError
    from connectors.kafka import KafkaSink, ensure_topics

    if args.count < 1 or (args.rate is not None and args.rate <= 0):
        raise ConfigError("--count must be at least 1 and --rate positive")
    mix = parse_mix(args.mix)
    data = load_demo_data(args.artifacts, args.data, need_fgsm=mix.get("fgsm", 0) > 0)
    if args.create_topic:
        ensure_topics(args.bootstrap_servers, [args.topic], partitions=args.create_topic)
    with KafkaSink(args.bootstrap_servers) as sink:
        counts = produce(sink, args.topic, demo_events(data, mix, args.count, args.seed), args.rate)
    print("published " + ", ".join(f"{kind}={n}" for kind, n in sorted(counts.items())) + f" to {args.topic}")
    return 0
