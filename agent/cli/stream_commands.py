"""The streaming commands: `run` (the agent) and `produce-demo` (traffic for it).

`run`'s flags are generated from the settings model, so every setting has a flag, an environment
variable and a YAML key with the same name and the same help, and a new setting cannot be
forgotten here. Secrets get no flag: a password on a command line is visible to every user of
the machine.
"""

from __future__ import annotations

import argparse
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo

from agent.runtime.settings import AgentSettings

ENV_PREFIX = "DKNN_"
DEFAULT_MIX = "clean=0.8,noise=0.05,rotated=0.05,fgsm=0.05,malformed=0.05"


def register(commands: argparse._SubParsersAction) -> None:
    run = commands.add_parser(
        "run",
        help="run the monitoring agent on a stream of inference events",
        description="Consume v1 inference events, score their DkNN credibility, quarantine low-credibility "
        "events, dead-letter malformed ones and serve Prometheus metrics. Every setting is a flag, a DKNN_* "
        "environment variable (nested with __: DKNN_KAFKA_SECURITY__SASL_MECHANISM) and a key of the YAML "
        "file given with --config; flags win over the environment, which wins over the file.",
    )
    run.add_argument("--config", type=Path, default=None, help="YAML settings file")
    run.add_argument(
        "--strict-config",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="refuse unknown DKNN_* environment variables, which would otherwise do nothing "
        "(default: refuse; --no-strict-config only warns)",
    )
    _add_setting_flags(run, AgentSettings)
    run.add_argument(
        "--summary-every",
        type=float,
        default=None,
        metavar="SECONDS",
        help="print a one-line live summary to stderr every N seconds",
    )
    run.set_defaults(handler=_run)


def _add_setting_flags(parser: argparse.ArgumentParser, model: type[BaseModel], path: tuple[str, ...] = ()) -> None:
    """One `--a-b` flag per field (nested models become `--model-field`), dest `a.b` for nesting."""
    group = parser.add_argument_group("settings" if not path else " ".join(path).replace("_", " "))
    for name, info in model.model_fields.items():
        nested = _nested_model(info)
        if nested is not None:
            _add_setting_flags(parser, nested, (*path, name))
            continue
        if _is_secret(info):
            continue
        full = (*path, name)
        env = ENV_PREFIX + "__".join(full).upper()
        help_text = f"{info.description or name} (env {env})"
        if not info.is_required() and info.default is not None:
            help_text = f"{help_text}; default: {info.default}"
        kwargs: dict[str, Any] = {"dest": ".".join(full), "default": None, "help": help_text.replace("%", "%%")}
        choices = _literal_choices(info)
        if choices:
            kwargs["choices"] = choices
        else:
            kwargs["metavar"] = name.upper()
        if typing.get_origin(_unwrap_optional(info.annotation)) in (tuple, list):
            kwargs["help"] += " (comma-separated)"
        group.add_argument("--" + "-".join(full).replace("_", "-"), **kwargs)


def _unwrap_optional(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _nested_model(info: FieldInfo) -> type[BaseModel] | None:
    annotation = _unwrap_optional(info.annotation)
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _is_secret(info: FieldInfo) -> bool:
    return _unwrap_optional(info.annotation) is SecretStr


def _literal_choices(info: FieldInfo) -> list[str] | None:
    annotation = _unwrap_optional(info.annotation)
    return [str(v) for v in typing.get_args(annotation)] if typing.get_origin(annotation) is typing.Literal else None


def setting_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The flags that were given, nested the way the settings model is (`a.b` -> {"a": {"b": ...}})."""
    overrides: dict[str, Any] = {}
    for dest, value in vars(args).items():
        if value is None or dest in (
            "config",
            "strict_config",
            "summary_every",
            "handler",
            "command",
            "log_format",
            "log_level",
        ):
            continue
        *parents, leaf = dest.split(".")
        target = overrides
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = value
    return overrides


def _run(args: argparse.Namespace) -> int:
    from agent.runtime.app import run_agent
    from agent.runtime.settings import load_settings

    settings = load_settings(args.config, setting_overrides(args), strict=args.strict_config)
    return run_agent(settings, summary_every_s=args.summary_every)
