"""Keeps the README honest: every command it shows parses, every `make` target it names exists.

Only parsing is checked here (paths in the README need not exist); the commands themselves run for
real, on small data, in the other modules of this directory. The Makefile's own `dknn-agent` recipes
(what `make demo-table`, `make bench-quality`, ... run) are checked the same way.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.cli import build_parser, parse_command
from agent.errors import ConfigError
from tests.e2e.conftest import ROOT

README = ROOT / "README.md"
MAKEFILE = ROOT / "Makefile"
# `[--flag a|b]` in a command: the flag is optional and takes one of the values.
OPTIONAL = re.compile(r"\[(--[^\]]*)\]")
INLINE_COMMAND = re.compile(r"`(dknn-agent\s[^`]*)`")
INLINE_MAKE = re.compile(r"`make ([A-Za-z0-9_.-]+)")


@dataclass(frozen=True)
class Snippet:
    where: str  # file:line
    text: str


def fenced_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, line) for every line inside a ``` fence."""
    inside, out = False, []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            inside = not inside
        elif inside:
            out.append((number, line))
    return out


def fenced_commands(path: Path, program: str) -> list[Snippet]:
    """Lines of fenced blocks whose first word is `program`, with backslash continuations joined."""
    out: list[Snippet] = []
    start, text = 0, ""
    for number, line in fenced_lines(path):
        stripped = line.strip().removeprefix("$ ")
        if text:
            text = f"{text} {stripped}"
        elif stripped.split()[:1] == [program]:
            start, text = number, stripped
        else:
            continue
        if text.endswith("\\"):
            text = text[:-1].rstrip()
            continue
        out.append(Snippet(f"{path.name}:{start}", text.removesuffix("&").rstrip()))  # a background job
        text = ""
    assert not text, f"{path.name}:{start}: a continuation line runs off the end of its block"
    return out


def variants(command: str) -> list[str]:
    """The command with each `[--flag a|b]` left out and with each of its values."""
    match = OPTIONAL.search(command)
    if match is None:
        return [command]
    head, tail = command[: match.start()], command[match.end() :]
    flag, _, values = match.group(1).partition(" ")
    choices = [f"{flag} {value}" for value in values.split("|")] if values else [flag]
    return [expanded for choice in ["", *choices] for expanded in variants(f"{head}{choice}{tail}")]


def parse_error(argv: list[str]) -> str | None:
    """None when `dknn-agent ARGV` parses into a command's options, else what argparse or the
    options model said."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            parse_command(argv)
        except SystemExit as exc:
            return f"exit {exc.code}: {stderr.getvalue().strip()}"
        except ConfigError as exc:
            return f"refused: {exc}"
    return None


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def mention_problems(tokens: list[str]) -> list[str]:
    """For a command named in prose (maybe partial): unknown commands and unknown options."""
    parser, problems = build_parser(), []
    for token in tokens[1:]:
        commands = subcommands(parser)
        if token in commands:
            parser = commands[token]
        elif token.startswith("-"):
            if token.split("=")[0] not in parser._option_string_actions:
                problems.append(f"{parser.prog} has no option {token}")
        elif commands and not token.isupper():  # COMMAND, FILE: placeholders
            problems.append(f"{parser.prog} has no command {token}")
            break
    return problems


def makefile_variables() -> dict[str, str]:
    return dict(re.findall(r"^([A-Z][A-Z0-9_]*)\s*[:?]?=\s*(.*?)\s*$", MAKEFILE.read_text(), re.M))


def makefile_commands() -> list[Snippet]:
    """The `$(BIN)/dknn-agent ...` recipe lines, with make variables and shell variables filled in."""
    values = makefile_variables()
    out = []
    logical: list[tuple[int, str]] = []  # recipe lines with their backslash continuations joined
    for number, line in enumerate(MAKEFILE.read_text().splitlines(), 1):
        if logical and logical[-1][1].endswith("\\"):
            logical[-1] = (logical[-1][0], logical[-1][1][:-1] + " " + line.strip())
        else:
            logical.append((number, line))
    for number, line in logical:
        if "$(BIN)/dknn-agent " not in line:
            continue
        command = "dknn-agent " + line.split("$(BIN)/dknn-agent ", 1)[1]
        command = re.split(r";|&&|\|", command)[0]
        command = re.sub(r"\$\((\w+)\)", lambda m: values[m.group(1)], command)
        command = re.sub(r"\$\$\{?(\w+)\}?", "127.0.0.1:9092", command)  # the recipe's shell variables
        out.append(Snippet(f"Makefile:{number}", command.strip()))
    return out


README_COMMANDS = fenced_commands(README, "dknn-agent")
MAKEFILE_COMMANDS = makefile_commands()


def test_the_readme_shows_the_commands_this_module_checks() -> None:
    """Guards against an extractor that silently finds nothing."""
    shown = {shlex.split(s.text, comments=True)[1] for s in README_COMMANDS}
    assert {"run", "fit", "info", "score"} <= shown, README_COMMANDS
    recipes = {" ".join(shlex.split(s.text)[1:3]) for s in MAKEFILE_COMMANDS}
    assert {
        "train-reference mnist",
        "demo --artifacts",
        "bench quality",
        "bench snnl",
        "bench stream",
        "bench perf",
    } <= recipes


@pytest.mark.parametrize("snippet", README_COMMANDS + MAKEFILE_COMMANDS, ids=lambda s: s.where)
def test_command_parses(snippet: Snippet) -> None:
    for command in variants(snippet.text):
        argv = shlex.split(command, comments=True)
        assert argv[0] == "dknn-agent"
        error = parse_error(argv[1:])
        assert error is None, f"{snippet.where}: `{command}` does not parse: {error}"


def test_commands_named_in_prose_exist() -> None:
    text = README.read_text()
    mentions = [
        (text.count("\n", 0, m.start()) + 1, " ".join(m.group(1).split())) for m in INLINE_COMMAND.finditer(text)
    ]
    assert len(mentions) >= 5, mentions
    problems = [
        f"README.md:{line}: `{command}`: {p}" for line, command in mentions for p in mention_problems(command.split())
    ]
    assert not problems, "\n".join(problems)


def makefile_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", MAKEFILE.read_text(), re.M))


def test_every_make_target_in_the_readme_exists() -> None:
    named = {(s.where, shlex.split(s.text, comments=True)[1]) for s in fenced_commands(README, "make")}
    text = README.read_text()
    named |= {(f"README.md:{text.count(chr(10), 0, m.start()) + 1}", m.group(1)) for m in INLINE_MAKE.finditer(text)}
    assert {"demo", "test"} <= {target for _, target in named}, named
    targets = makefile_targets()
    missing = sorted(f"{where}: make {target}" for where, target in named if target not in targets)
    assert not missing, f"not targets of the Makefile ({sorted(targets)}):\n" + "\n".join(missing)


def test_variants_expand_optional_flags() -> None:
    assert variants("dknn-agent score --input x.npy [--index annoy|exact]") == [
        "dknn-agent score --input x.npy ",
        "dknn-agent score --input x.npy --index annoy",
        "dknn-agent score --input x.npy --index exact",
    ]
    assert parse_error(["score", "--artifacts", "b", "--input", "x.npy", "--no-such-flag"]) is not None
