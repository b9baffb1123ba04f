"""`dknn-agent`: run the monitoring agent; train, fit, score, inspect and benchmark bundles.

One module per command, each a typed options model (`agent.cli.flags.Command`) whose fields are its
flags; this module assembles them, with the lab's commands where the lab is installed (an entry
point: the product never imports the lab). Every deliberate failure prints one line and exits with a code that says what kind of
failure it was (`EXIT_CODES`), so a supervisor (Kubernetes, systemd, a CI job) can tell a typo
from a bad bundle from a broker it cannot reach from a bug.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import textwrap
from collections.abc import Sequence

from agent import __version__
from agent.cli.flags import Command, Registrable, add_commands, options_from
from agent.cli.logs import configure_logging
from agent.errors import ConnectorError, DknnError

EXIT_CRASH = 1  # a bug: the traceback is printed
EXIT_USAGE = 2  # the command line is wrong (argparse's own code)
EXIT_CONFIG = 3  # a setting, the bundle or a data file is wrong (ConfigError, BundleError, DataError, ...)
EXIT_BROKER = 4  # the source or sink cannot be reached or refuses: Kafka, a file connector's path (ConnectorError)
EXIT_CODES = f"""\
exit codes:
  0    done (run, review: stopped by SIGTERM or SIGINT after finishing their work in hand)
  {EXIT_CRASH}    a bug: the traceback is printed
  {EXIT_USAGE}    bad usage: the command line is wrong
  {EXIT_CONFIG}    bad configuration, bundle or data: one line says which setting or file
  {EXIT_BROKER}    the source or sink is unreachable or refuses: the Kafka brokers (after the
       retry budget), or a file connector's path
  130  interrupted (Ctrl-C); 143 stopped by SIGTERM (commands other than run)
"""

EPILOG = """\
examples:
  dknn-agent run --artifacts artifacts/mnist-cnn --bootstrap-servers localhost:9092
  dknn-agent layers model.pt2
  dknn-agent fit --model model.pt2 --train train.npz --calibration calibration.npz --out bundle/
  dknn-agent info bundle/
  dknn-agent score --artifacts bundle/ --input x.npy --output scores.jsonl
  dknn-agent extend --artifacts bundle/ --reviews reviews.jsonl --calibration calibration.npz --clean test.npz --out bundle-2/
  dknn-agent review --artifacts bundle/ --bootstrap-servers localhost:9092 --quarantine-topic inference-quarantine --reviews-topic inference-reviews
"""


class Terminated(BaseException):
    """SIGTERM before a command installed its own handler (the agent's start-up, a long fit)."""


def _terminate(_signum: int, _frame: object) -> None:
    raise Terminated


# The commands whose hot path alternates torch's forward pass with the k-NN index threads.
SCORING_COMMANDS = (("run",), ("score",), ("bench", "perf"), ("bench", "stream"))


def _let_torch_threads_sleep(arguments: Sequence[str]) -> None:
    """Sets OMP_WAIT_POLICY=PASSIVE for the scoring commands, unless the environment says otherwise.

    Why: after each forward pass, torch's OpenMP threads busy-wait for the next parallel region
    and keep the cores the Annoy threads then need: on 2 cores the k-NN step took 85-90 µs per
    input right after a forward pass against 55-60 µs alone, and passive threads bring it back
    (scoring +10%, docs/design.md §2.7). Training is the other way round (7% slower passive), so
    only the scoring commands ask. It must happen before torch is imported: the OpenMP runtime
    reads the variable once, when it loads.
    """
    if any(tuple(arguments[: len(command)]) == command for command in SCORING_COMMANDS):
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    _let_torch_threads_sleep(arguments)
    # From here on SIGTERM unwinds (closing what was opened) instead of killing the process; the
    # agent replaces this with a graceful stop once its loop runs.
    signal.signal(signal.SIGTERM, _terminate)
    try:
        parser = build_parser()
        missing = _missing_lab_command(parser, arguments)
        if missing is not None:
            print(f"dknn-agent: {missing} {LAB_HINT}", file=sys.stderr)
            return EXIT_USAGE
        options = parse_command(arguments, parser)
        configure_logging(options.log_format, options.log_level)
        return int(options.run() or 0)
    except DknnError as exc:
        print(f"dknn-agent: error: {exc}", file=sys.stderr)
        return EXIT_BROKER if isinstance(exc, ConnectorError) else EXIT_CONFIG
    except KeyboardInterrupt:
        print("dknn-agent: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        # Stopping the agent or the review console before it started is a clean stop (a rollout, a
        # scale-down); any other command was cut short and says so with the conventional 128 + SIGTERM.
        stopping_agent = bool(arguments) and arguments[0] in ("run", "review")
        print("dknn-agent: stopped by SIGTERM" + (" during start-up" if stopping_agent else ""), file=sys.stderr)
        return 0 if stopping_agent else 128 + signal.SIGTERM


def parse_command(arguments: Sequence[str], parser: argparse.ArgumentParser | None = None) -> Command:
    """The typed options of the command `arguments` name: SystemExit(2) where argparse cannot read
    them, ConfigError where the options model refuses them."""
    namespace = (parser or build_parser()).parse_args(arguments)
    return options_from(namespace, namespace.command_class)


def product_commands() -> list[type[Command]]:
    from agent.cli.evaluate import EvaluateCommand
    from agent.cli.extend import ExtendCommand
    from agent.cli.fit import FitCommand
    from agent.cli.info import InfoCommand
    from agent.cli.layers import LayersCommand
    from agent.cli.review import ReviewCommand
    from agent.cli.run import RunCommand
    from agent.cli.score import ScoreCommand

    return [
        RunCommand,
        LayersCommand,
        FitCommand,
        ScoreCommand,
        InfoCommand,
        EvaluateCommand,
        ExtendCommand,
        ReviewCommand,
    ]


def plugin_commands() -> list[Registrable]:
    """Commands other distributions add through the `dknn_agent.commands` entry point: the lab's
    benchmarks and reference training. The product never imports them by name."""
    from importlib.metadata import entry_points

    return [command for entry in entry_points(group="dknn_agent.commands") for command in entry.load()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dknn-agent",
        description="Deep k-Nearest-Neighbours credibility for a deployed classifier: fit per-layer "
        "nearest-neighbour indexes of its training data, then score how much the training data "
        "agrees, layer by layer, with the label of every new input.",
        epilog=EPILOG + "\n" + EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_commands(commands, [*product_commands(), *plugin_commands()], ParagraphFormatter, EXIT_CODES)
    return parser


LAB_HINT = "is a lab command: install the lab from a clone of the repository (pip install ./lab; make setup does)"
LAB_COMMANDS = ("bench", "train-reference", "demo", "produce-demo")


def _missing_lab_command(parser: argparse.ArgumentParser, arguments: Sequence[str]) -> str | None:
    """The lab command `arguments` asks for when the lab is not installed (the image), else None."""
    if not arguments or arguments[0] not in LAB_COMMANDS:
        return None
    groups = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    return None if arguments[0] in groups[0].choices else arguments[0]


class ParagraphFormatter(argparse.RawDescriptionHelpFormatter):
    """Wraps a description's or epilog's plain paragraphs to the terminal; keeps the ones laid out by
    hand (examples, tables: any paragraph with a line break) exactly as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = text.split("\n\n")
        filled = [
            paragraph
            if "\n" in paragraph.strip("\n")
            else textwrap.fill(paragraph, width, initial_indent=indent, subsequent_indent=indent)
            for paragraph in paragraphs
        ]
        return "\n\n".join(filled)
