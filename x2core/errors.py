"""Exceptions with messages meant for people.

Every error the framework raises on bad input derives from :class:`X2Error`, so
the CLI can print one clear line instead of a stack trace.
"""
from __future__ import annotations

import difflib
from typing import Iterable


class X2Error(Exception):
    """Base class of every user-facing error."""


class ConfigError(X2Error, ValueError):
    """A configuration value or field is wrong (names the dotted field)."""


class UnknownNameError(X2Error, KeyError):
    """A plugin name (encoder, head, dataset, ...) is not registered."""

    def __str__(self) -> str:  # KeyError would wrap the message in quotes
        return str(self.args[0]) if self.args else ""


class DuplicateNameError(X2Error, ValueError):
    """Two plugins registered the same name for the same kind."""


class InputError(X2Error, ValueError):
    """A tensor, box, text or record handed to the model or a packer is invalid."""


class CheckpointError(X2Error, RuntimeError):
    """A checkpoint does not fit the model (lists offending keys and shapes)."""


def did_you_mean(word: str, options: Iterable[str], n: int = 3) -> str:
    """``"; did you mean 'a' or 'b'?"`` with up to ``n`` closest options, or ``""``."""
    close = difflib.get_close_matches(word, list(options), n=n)
    if not close:
        return ""
    quoted = [f"'{c}'" for c in close]
    listed = quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]
    return f"; did you mean {listed}?"
