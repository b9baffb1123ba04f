"""Resolving a model factory reference (`package.module:function`) into an `nn.Module`.

A bundle names code to import rather than shipping pickled code: importing an installed module
is auditable, unpickling bytes from a file is not.
"""

from __future__ import annotations

import importlib
from typing import Any

from torch import nn

from agent.errors import BundleError


def build_model(factory: str, kwargs: dict[str, Any] | None = None) -> nn.Module:
    module_name, _, function_name = factory.partition(":")
    if not module_name or not function_name:
        raise BundleError(f"model factory {factory!r} is not of the form package.module:function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BundleError(f"model factory {factory!r}: cannot import {module_name} ({exc})") from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise BundleError(f"model factory {factory!r}: {module_name} has no function {function_name}")
    model = function(**(kwargs or {}))
    if not isinstance(model, nn.Module):
        raise BundleError(f"model factory {factory!r} returned {type(model).__name__}, not nn.Module")
    return model
