"""Parsers for the option formats the commands accept; the CLI owns them, nothing imports them upward."""

from __future__ import annotations

import argparse
import json
from typing import Any

from agent.engine.preprocess import parse_spec
from agent.errors import ConfigError


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


# Training options a command may take, by their TrainOptions field (= argparse dest); None = not given.
TRAINING_OPTIONS = ("shift_px", "blur_sigma", "snnl_weight", "snnl_temperature", "snnl_distance", "snnl_layers")


def given_training_options(args: argparse.Namespace) -> dict[str, Any]:
    """The training options given on the command line, as TrainOptions fields: what the command's
    base configuration (`dataclasses.replace`) should change, and nothing else."""
    given = {name: getattr(args, name, None) for name in TRAINING_OPTIONS}
    if given["snnl_layers"] is not None:
        given["snnl_layers"] = split_list(given["snnl_layers"])
    return {name: value for name, value in given.items() if value is not None}


def parse_json_object(text: str, option: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{option}: not valid JSON ({exc.msg})") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{option}: expected a JSON object")
    return value


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


def parse_seeds(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(seed) for seed in split_list(text))
    except ValueError:
        raise ConfigError(f"--seeds must be comma-separated integers, got {text!r}") from None
