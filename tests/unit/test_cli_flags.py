"""agent.cli.flags: a command's flags come from its options model, and the model's checks are the
command line's: argparse refuses what it cannot parse (exit 2), the model what it does not allow
(one ConfigError line naming the flag)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import pytest
from pydantic import BaseModel, Field, SecretStr, model_validator

from agent.cli import ParagraphFormatter
from agent.cli.flags import Arg, Command, CommandGroup, SettingFlags, add_commands, options_from
from agent.errors import ConfigError


class Inner(BaseModel):
    port: int = Field(9108, description="the port")
    password: SecretStr | None = None


class Settings(BaseModel):
    threshold: float = Field(0.1, description="quarantine below")
    inner: Inner = Inner()


class Example(Command):
    """An example command.

    Its second paragraph, wrapped in the source, is one line for the formatter.
    """

    command_name: ClassVar[str] = "example"
    summary: ClassVar[str] = "an example"
    examples: ClassVar[tuple[str, ...]] = ("dknn-agent example SOURCE --count 2",)

    source: Annotated[Path, Arg(positional=True)] = Field(description="where from")
    count: int = Field(1, ge=1, description="how many")
    kind: Literal["a", "b"] = Field("a", description="which")
    tag: Annotated[list[str] | None, Arg(repeat=True, metavar="TAG")] = Field(None, description="repeatable")
    strict: Annotated[bool, Arg(negatable=True)] = Field(True, description="refuse more")
    quiet: bool = Field(False, description="say less")
    json_output: Annotated[bool, Arg(flag="--json", group="output")] = Field(False, description="as JSON")
    settings: Annotated[dict[str, Any], SettingFlags(Settings, "X_")] = Field({}, description="overrides")

    @model_validator(mode="after")
    def _not_both(self) -> Example:
        if self.quiet and self.json_output:
            raise ValueError("--quiet and --json exclude each other")
        return self

    def run(self) -> int:
        return self.count


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="t")
    commands = root.add_subparsers(dest="command", required=True)
    group = CommandGroup(name="group", summary="grouped", description="d", metavar="G", commands=(Example,))
    add_commands(commands, [Example, group], ParagraphFormatter, "exit codes: ...")
    return root


def parse(*arguments: str) -> Example:
    namespace = parser().parse_args(arguments)
    options = options_from(namespace, namespace.command_class)
    assert isinstance(options, Example)
    return options


def test_absent_flags_take_the_models_defaults_and_given_ones_its_types() -> None:
    options = parse("example", "src")
    assert (options.source, options.count, options.kind, options.tag, options.strict) == (
        Path("src"),
        1,
        "a",
        None,
        True,
    )
    options = parse("example", "src", "--count", "3", "--kind", "b", "--tag", "x", "--tag", "y", "--no-strict")
    assert (options.count, options.kind, options.tag, options.strict, options.run()) == (3, "b", ["x", "y"], False, 3)
    assert parse("group", "example", "src", "--json").json_output


def test_setting_flags_nest_and_name_their_variables_and_secrets_get_none() -> None:
    options = parse("example", "src", "--threshold", "0.5", "--inner-port", "1")
    assert options.settings == {"threshold": "0.5", "inner": {"port": "1"}}  # the settings model converts them
    example = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction)).choices["example"]
    text = example.format_help()
    assert "(env X_INNER__PORT); default: 9108" in text and "--inner-password" not in text
    assert "An example command.\n\nIts second paragraph, wrapped in the source, is one line" in text
    assert "examples:\n  dknn-agent example SOURCE --count 2" in text and text.rstrip().endswith("exit codes: ...")


@pytest.mark.parametrize("arguments", [("--count", "many"), ("--kind", "c"), ("--tag",), ("--unknown",)])
def test_what_argparse_cannot_read_is_a_usage_error(arguments: tuple[str, ...]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse("example", "src", *arguments)
    assert exit_info.value.code == 2


def test_what_the_model_refuses_is_one_line_naming_the_flag() -> None:
    with pytest.raises(ConfigError, match=r"^--count: input should be greater than or equal to 1$"):
        parse("example", "src", "--count", "0")
    with pytest.raises(ConfigError, match=r"^--quiet and --json exclude each other$"):
        parse("example", "src", "--quiet", "--json")
