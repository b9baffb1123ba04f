"""`dknn-agent`: run the monitoring agent; train, fit, score, inspect and benchmark bundles.

Every deliberate failure (bad file, wrong shape, bad option) prints one line and exits 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from agent import __version__
from agent.errors import ConfigError, DknnError
from agent.preprocess import parse_spec

EXIT_USAGE = 2

EPILOG = """\
examples:
  dknn-agent run --artifacts artifacts/mnist-cnn --bootstrap-servers localhost:9092
  dknn-agent train-reference mnist --out artifacts/mnist-cnn
  dknn-agent info artifacts/mnist-cnn
  dknn-agent score --artifacts artifacts/mnist-cnn --input x.npy --output scores.jsonl
  dknn-agent bench quality --artifacts artifacts/mnist-cnn --out docs/results
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except DknnError as exc:
        print(f"dknn-agent: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("dknn-agent: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dknn-agent",
        description="Deep k-Nearest-Neighbours credibility for a deployed classifier: fit per-layer "
        "nearest-neighbour indexes of its training data, then score how much the training data "
        "agrees, layer by layer, with the label of every new input.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    from agent.commands import register_all

    register_all(commands)
    return parser


def split_list(text: str) -> tuple[str, ...]:
    """`a, b,,c` -> ("a", "b", "c"): a comma-separated option, blanks and empty items dropped."""
    return tuple(filter(None, (part.strip() for part in text.split(","))))


def parse_layers(text: str) -> dict[str, str]:
    """`relu1=pca:128,relu2,logits=l2` -> {"relu1": "pca:128", "relu2": "none", "logits": "l2"}."""
    layers: dict[str, str] = {}
    for item in split_list(text):
        name, _, spec = item.partition("=")
        if name in layers:
            raise ConfigError(f"layer {name!r} given twice in --layers")
        layers[name] = spec or "none"
        parse_spec(layers[name])  # fail before any data is loaded
    if not layers:
        raise ConfigError("--layers needs at least one layer name")
    return layers


def parse_json_object(text: str, option: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{option}: not valid JSON ({exc.msg})") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{option}: expected a JSON object")
    return value


if __name__ == "__main__":
    sys.exit(main())
