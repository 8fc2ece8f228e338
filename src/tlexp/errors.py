"""Errors for bad user input, so the entry point can print each as one clear line.

Library code knows its own parameter names, not where a value came from in the config, so it
raises ``InvalidValue`` with the parameter's name; the config layer (``tlexp.config``), which
knows the node it instantiated, turns that into a ``ConfigError`` naming the full key.
"""

from __future__ import annotations

import sys
from typing import NoReturn


class InvalidValue(ValueError):
    """A parameter of a library class or function is outside what it accepts."""

    def __init__(self, name: str, value, accepted: str, detail: str = ""):
        self.name, self.value, self.accepted, self.detail = name, value, accepted, detail
        message = f"{name}={value!r} is not accepted; accepted: {accepted}"
        super().__init__(message + (f" ({detail})" if detail else ""))


class ConfigError(InvalidValue):
    """A config value is outside what tlexp accepts; ``key`` is its full config path."""

    def __init__(self, key: str, value, accepted: str, detail: str = ""):
        self.key = key
        super().__init__(key, value, accepted, detail)

    @classmethod
    def at(cls, node: str, error: InvalidValue) -> ConfigError:
        """The library's ``error`` about parameter ``name`` of the object built from config node ``node``."""
        if isinstance(error, ConfigError):
            return error
        return cls(f"{node}.{error.name}" if node else error.name, error.value, error.accepted, error.detail)


def report(message: object) -> None:
    """One ``tlexp: error: ...`` line on stderr: what users, scripts and the race's worker reports look for."""
    print(f"tlexp: error: {message}", file=sys.stderr)


def fail(message: object, code: int = 1) -> NoReturn:
    """The entry points' one way out on bad input or a failed job: its line (``report``) and a non-zero exit, no
    traceback."""
    report(message)
    sys.exit(code)
