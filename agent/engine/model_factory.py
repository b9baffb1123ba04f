"""Resolving a model factory reference (`package.module:function`) into an `nn.Module`.

A bundle names code to import rather than shipping pickled code: importing an installed module
is auditable, unpickling bytes from a file is not. But a bundle's manifest is data, so *which*
module it may name is the operator's decision: `check_factory_allowed` refuses any factory
outside the trusted module prefixes before anything is imported (docs/security.md). By default
no module is trusted (the reference bundle carries a serialized program); a deployment that
ships its model as code names its own package.
"""

from __future__ import annotations

import importlib
from typing import Any

from torch import nn

from agent.errors import BundleError

# Out of the box no module is trusted: bundles carry their model as a serialized program
# (agent.engine.program), and a factory is trusted only when the operator names its package.
DEFAULT_FACTORY_MODULES: tuple[str, ...] = ()


def check_factory_allowed(factory: str, trusted_modules: tuple[str, ...]) -> None:
    """Raises BundleError unless `factory`'s module is one of `trusted_modules` or inside one."""
    module_name = factory.partition(":")[0]
    if not any(module_name == prefix or module_name.startswith(prefix + ".") for prefix in trusted_modules):
        trusted = ", ".join(trusted_modules) or "(none)"
        raise BundleError(
            f"model factory {factory!r} is outside the trusted modules ({trusted}); "
            "trust its package with --trust-factory / DKNN_TRUSTED_FACTORIES if this bundle is yours"
        )


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
    try:
        model = function(**(kwargs or {}))
    except TypeError as exc:
        raise BundleError(f"model factory {factory!r} rejects its arguments: {exc}") from None
    if not isinstance(model, nn.Module):
        raise BundleError(f"model factory {factory!r} returned {type(model).__name__}, not nn.Module")
    return model
