"""One root error class for faults, so callers can catch everything the agent raises on purpose.

A low-credibility input is a normal result, never an exception. Exceptions are for faults:
a corrupted bundle, an input of the wrong shape, a bad setting. `retriable` tells a supervisor
whether trying again can help (a broker hiccup) or not (a corrupted file).
"""

from __future__ import annotations


class DknnError(Exception):
    """Root of every error the agent raises deliberately; its message is one line for a human."""

    retriable: bool = False


class BundleError(DknnError):
    """The artifact bundle is missing, corrupted or inconsistent; names the offending file."""


class InputError(DknnError):
    """An input array or file does not match what the bundle's model expects."""


class ConfigError(DknnError):
    """A setting or command-line option is invalid."""
