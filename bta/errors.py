"""Error classes of bta and the one helper that formats parameter errors.

Every error bta raises on purpose derives from :class:`BtaError`; each specific class
also inherits the builtin a caller would expect (``SchemaError`` is a ``ValueError``),
so ``except ValueError`` keeps working for code that does not know bta.

Messages name the parameter or column, what was expected and what was got.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

__all__ = [
    "BtaError",
    "SchemaError",
    "ConfigError",
    "NotFittedError",
    "UnknownNameError",
    "RuleSyntaxError",
    "StoreError",
    "check_param",
    "check_paths",
]


class BtaError(Exception):
    """Root of every error raised by bta."""


class SchemaError(BtaError, ValueError):
    """Input data has a missing, mistyped or invalid column or row."""


class ConfigError(BtaError, ValueError):
    """A parameter or configuration object is invalid."""


class NotFittedError(BtaError, AttributeError):
    """An estimator was used before ``fit``."""


class UnknownNameError(BtaError, KeyError):
    """A feature, segment, column or arm name is not known.

    ``KeyError`` quotes its message in ``str()``; this class prints it plainly.
    """

    def __str__(self) -> str:  # pragma: no cover - trivial
        return str(self.args[0]) if self.args else ""


class RuleSyntaxError(BtaError, ValueError):
    """A segment rule expression could not be parsed.

    Attributes
    ----------
    position : int
        0-based character offset in the expression where parsing failed.
    """

    def __init__(self, message: str, position: int = -1):
        super().__init__(message)
        self.position = position


class StoreError(BtaError, RuntimeError):
    """A profile store could not be reached or answered garbage."""


def check_param(name: str, value: Any, ok: bool, expected: str, cls: type = ConfigError, *,
                got: str | None = None) -> None:
    """Raise ``cls`` with the house message template unless ``ok``.

    The template, ``"<name> must be <expected>, got <got>"``, is the one message of every
    parameter check in bta (the declared constraints of :mod:`bta._params` raise through it).

    Parameters
    ----------
    name : str
        Parameter name as the caller wrote it.
    value : object
        The value that was passed.
    ok : bool
        Result of the check.
    expected : str
        What was expected, in words ("a positive number of days").
    got : str, optional
        What to show after "got" instead of ``repr(value)`` (e.g. the type name of a value
        whose repr is long).

    Examples
    --------
    >>> check_param("half_life", -1.0, False, "a positive duration")
    Traceback (most recent call last):
    ...
    bta.errors.ConfigError: half_life must be a positive duration, got -1.0
    """
    if not ok:
        raise cls(f"{name} must be {expected}, got {repr(value) if got is None else got}")


def check_paths(name: str, value: Any, expected: str) -> str | list[str]:
    """A path, or a non-empty list of paths, as ``str`` / list of ``str``.

    Raises :class:`ConfigError` with the :func:`check_param` message otherwise (``expected``
    says what the parameter takes, e.g. "a path or a non-empty list of paths").
    """
    if isinstance(value, (str, os.PathLike)):
        return os.fspath(value)
    ok = isinstance(value, Sequence) and bool(value) and all(
        isinstance(p, (str, os.PathLike)) for p in value)
    check_param(name, value, ok, expected)
    return [os.fspath(p) for p in value]
