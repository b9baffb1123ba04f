"""Command lines generated from typed options: one pydantic model per command, its fields its flags.

Why generated: a flag declared by hand beside the options object it fills is declared twice, and
its checks end up in the CLI instead of on the type (docs/design.md §7). Here a command is a
`Command` subclass: each field is one flag (`batch_size` -> `--batch-size`), its `description` is
the help, a `Literal` gives the choices, a default makes it optional, and the field's constraints
and validators are the checks. `Arg` says what a field's type cannot: a positional argument, a
repeatable flag, a `--no-` form, a group, a metavar, a flag spelled otherwise.

Two kinds of failure keep their exit codes: a value argparse cannot even parse (`--k abc`) is a
usage error (2); a value that parses but is not allowed (`--k 0`, two options that exclude each
other) is a `ConfigError` (3) naming the flag.

Not pydantic-settings' CLI source: it would read every command's options from the environment
too, while only `run`'s settings are environment variables, and its help lists types instead of
the sentences below.
"""

from __future__ import annotations

import argparse
import inspect
import json
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pydantic
from pydantic import BaseModel, ConfigDict, SecretStr
from pydantic.fields import FieldInfo

from agent.errors import ConfigError


@dataclass(frozen=True)
class Arg:
    """How a field appears on the command line, where its type and default do not say it all."""

    flag: str | None = None  # the flag's name when it is not --field-name
    positional: bool = False
    metavar: str | None = None
    repeat: bool = False  # append every occurrence to a list
    negatable: bool = False  # --x and --no-x
    group: str | None = None  # the help section the flag is listed in


@dataclass(frozen=True)
class SettingFlags:
    """A field holding overrides of a settings model: one flag per setting (`--kafka-security-...`),
    its help naming the environment variable, collected as a nested dict the settings validate."""

    model: type[BaseModel]
    env_prefix: str


class Command(BaseModel):
    """A command's typed options; `run()` does the work and returns the exit status.

    A subclass's docstring is its `--help` description (`help_text`), its class variables name it
    and give its one-line summary and examples. Every command also takes the logging options, so a
    supervisor can ask any of them for JSON lines.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    command_name: ClassVar[str]
    summary: ClassVar[str]  # one line in `dknn-agent --help`
    examples: ClassVar[tuple[str, ...]] = ()  # command lines, shown under "examples:"

    log_format: typing.Annotated[typing.Literal["text", "json"], Arg(group="logging")] = pydantic.Field(
        "text", description="text lines, or one JSON object per line (default: text)"
    )
    log_level: typing.Annotated[typing.Literal["debug", "info", "warning", "error"], Arg(group="logging")] = (
        pydantic.Field("info", description="least severe level logged (default: info)")
    )

    def run(self) -> int:
        raise NotImplementedError

    @classmethod
    def help_text(cls) -> str:
        """The docstring as paragraphs for the help formatter to fill (each on one line)."""
        doc = inspect.cleandoc(cls.__doc__ or cls.summary)
        return "\n\n".join(" ".join(paragraph.split()) for paragraph in doc.split("\n\n"))


@dataclass(frozen=True)
class CommandGroup:
    """Commands under one name (`dknn-agent bench quality`)."""

    name: str
    summary: str
    description: str
    metavar: str
    commands: tuple[type[Command], ...]


Registrable = type[Command] | CommandGroup


def add_commands(
    subparsers: argparse._SubParsersAction,
    commands: typing.Iterable[Registrable],
    formatter: type[argparse.HelpFormatter],
    epilog: str,
) -> None:
    """One sub-parser per command (and per group, with its own sub-parsers)."""
    for command in commands:
        if isinstance(command, CommandGroup):
            parser = subparsers.add_parser(
                command.name, help=command.summary, description=command.description, formatter_class=formatter
            )
            inner = parser.add_subparsers(dest=f"{command.name}_command", required=True, metavar=command.metavar)
            add_commands(inner, command.commands, formatter, epilog)
            continue
        parser = subparsers.add_parser(
            command.command_name,
            help=command.summary,
            description=command.help_text(),
            epilog=_examples(command.examples) + epilog,
            formatter_class=formatter,
        )
        add_flags(parser, command)
        parser.set_defaults(command_class=command)


def _examples(lines: tuple[str, ...]) -> str:
    return "examples:\n" + "".join(f"  {line}\n" for line in lines) + "\n" if lines else ""


def add_flags(parser: argparse.ArgumentParser, model: type[BaseModel]) -> None:
    groups: dict[str, argparse._ArgumentGroup] = {}
    for name, info in _own_fields_first(model):
        arg = _arg(info)
        target: Any = parser
        if arg.group is not None:
            target = groups.get(arg.group) or groups.setdefault(arg.group, parser.add_argument_group(arg.group))
        overrides = _setting_flags(info)
        if overrides is not None:
            _add_setting_flags(parser, overrides.model, overrides.env_prefix, (name,))
            continue
        _add_flag(target, name, info, arg)


def _own_fields_first(model: type[BaseModel]) -> Iterator[tuple[str, FieldInfo]]:
    """The command's own options, then those of the option sets it inherits, the logging ones last."""
    fields = model.model_fields
    own = [name for name in vars(model).get("__annotations__", {}) if name in fields]
    inherited = [name for name in fields if name not in own and name not in Command.model_fields]
    for name in own + inherited + [name for name in Command.model_fields if name not in own]:
        yield name, fields[name]


def _add_flag(target: Any, name: str, info: FieldInfo, arg: Arg) -> None:
    annotation = _unwrap_optional(info.annotation)
    kwargs: dict[str, Any] = {"help": (info.description or "").replace("%", "%%") or None}
    if arg.positional:
        kwargs["nargs"] = None if info.is_required() else "?"
        kwargs["default"] = argparse.SUPPRESS
        choices = _literal_choices(annotation)
        if choices is not None:
            kwargs["choices"] = choices
        else:
            kwargs["type"] = _scalar_type(annotation)
        if arg.metavar:
            kwargs["metavar"] = arg.metavar
        target.add_argument(name, **kwargs)
        return
    flag = arg.flag or "--" + name.replace("_", "-")
    kwargs["dest"] = name
    kwargs["default"] = argparse.SUPPRESS
    if annotation is bool:
        kwargs["action"] = argparse.BooleanOptionalAction if arg.negatable else "store_true"
        target.add_argument(flag, **kwargs)
        return
    if info.is_required():
        kwargs["required"] = True
    item = typing.get_args(annotation)[0] if arg.repeat else annotation
    if arg.repeat:
        kwargs["action"] = "append"
    choices = _literal_choices(item)
    if choices is not None:
        kwargs["choices"] = choices
    else:
        kwargs["type"] = _scalar_type(item)
        kwargs["metavar"] = arg.metavar or flag.lstrip("-").replace("-", "_").upper()
    target.add_argument(flag, **kwargs)


def _scalar_type(annotation: Any) -> Callable[[str], Any]:
    """argparse's converter: numbers and paths parse there (a usage error when they cannot); every
    other type arrives as the string and is the model's to read."""
    annotation = _unwrap_optional(annotation)
    return annotation if annotation in (int, float, Path) else str


def _arg(info: FieldInfo) -> Arg:
    return next((item for item in info.metadata if isinstance(item, Arg)), Arg())


def _setting_flags(info: FieldInfo) -> SettingFlags | None:
    return next((item for item in info.metadata if isinstance(item, SettingFlags)), None)


def _unwrap_optional(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _literal_choices(annotation: Any) -> list[str] | None:
    """The values of a `Literal`, or of a union of them (`IndexBackend | Literal["both"]`)."""
    annotation = _unwrap_optional(annotation)
    if typing.get_origin(annotation) is typing.Literal:
        return [str(value) for value in typing.get_args(annotation)]
    members = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else ()
    if members and all(typing.get_origin(member) is typing.Literal for member in members):
        return [str(value) for member in members for value in typing.get_args(member)]
    return None


def _nested_model(info: FieldInfo) -> type[BaseModel] | None:
    annotation = _unwrap_optional(info.annotation)
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _add_setting_flags(
    parser: argparse.ArgumentParser, model: type[BaseModel], env_prefix: str, path: tuple[str, ...]
) -> None:
    """One `--a-b` flag per setting (nested models become `--model-field`), dest `field.a.b`.

    Secrets get no flag: a password on a command line is visible to every user of the machine.
    """
    group = parser.add_argument_group("settings" if len(path) == 1 else " ".join(path[1:]).replace("_", " "))
    for name, info in model.model_fields.items():
        nested = _nested_model(info)
        if nested is not None:
            _add_setting_flags(parser, nested, env_prefix, (*path, name))
            continue
        if _unwrap_optional(info.annotation) is SecretStr:
            continue
        full = (*path[1:], name)
        env = env_prefix + "__".join(full).upper()
        help_text = f"{info.description or name} (env {env})"
        if not info.is_required() and info.default not in (None, {}):
            help_text = f"{help_text}; default: {info.default}"
        kwargs: dict[str, Any] = {
            "dest": ".".join((path[0], *full)),
            "default": argparse.SUPPRESS,
            "help": help_text.replace("%", "%%"),
        }
        choices = _literal_choices(info.annotation)
        if choices:
            kwargs["choices"] = choices
        else:
            kwargs["metavar"] = name.upper()
        origin = typing.get_origin(_unwrap_optional(info.annotation))
        if origin in (tuple, list):
            kwargs["help"] += " (comma-separated)"
        if origin is dict:
            kwargs.update(type=_json_object, metavar="JSON")
        group.add_argument("--" + "-".join(full).replace("_", "-"), **kwargs)


def _json_object(text: str) -> dict[str, Any]:
    """A JSON object flag (`--kafka-tuning-consumer '{"fetch_max_bytes": 1048576}'`); else a usage error."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc.msg})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def options_from(namespace: argparse.Namespace, command: type[Command]) -> Command:
    """The command's options from what argparse read: dotted destinations nest (`settings.kafka.x`);
    a value the model refuses is one `ConfigError` line naming its flag."""
    given: dict[str, Any] = {}
    for dest, value in vars(namespace).items():
        if dest == "command_class" or dest.endswith("_command") or dest == "command":
            continue
        *parents, leaf = dest.split(".")
        target = given
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = value
    try:
        return command.model_validate(given)
    except pydantic.ValidationError as exc:
        raise ConfigError(describe_error(exc, command)) from None


def describe_error(exc: pydantic.ValidationError, command: type[BaseModel]) -> str:
    """The first error as a sentence about the flag: `--k: input should be greater than or equal to 1`."""
    error = exc.errors(include_url=False, include_input=False)[0]
    message = str(error["msg"]).removeprefix("Value error, ")
    location = [part for part in error["loc"] if isinstance(part, str)]
    if not location:
        return message
    info = command.model_fields.get(location[0])
    arg = _arg(info) if info is not None else Arg()
    if info is not None and _setting_flags(info) is not None:
        name = "--" + "-".join(location[1:]).replace("_", "-")
    elif arg.positional:
        name = location[0].upper() if arg.metavar is None else arg.metavar
    else:
        name = arg.flag or "--" + location[0].replace("_", "-")
    return f"{name}: {message[:1].lower()}{message[1:]}"
