"""Errors users see: each names the config key or file, what was expected, what was received, and the fix."""

from __future__ import annotations

import difflib
from typing import Any, Iterable

NOT_GIVEN: Any = type("NotGiven", (), {"__repr__": lambda self: "NOT_GIVEN"})()  # no `received:` line


class DynarchError(Exception):
    """Base of every error dynarch raises on purpose; the CLI prints these without a traceback.

    `received` is shown whenever it is passed, None included (as `null`, the YAML word users typed: an error
    about `trainer.compile_cache=null` must say what it got); leave it out when nothing was received."""

    def __init__(
        self, where: str, problem: str, *, expected: Any = None, received: Any = NOT_GIVEN, fix: str | None = None
    ):
        # `received` stays NOT_GIVEN when not given: an error re-raised with `received=e.received` keeps that
        self.where, self.problem, self.expected, self.received, self.fix = (where, problem, expected, received, fix)
        lines = [f"{where}: {problem}"]
        if expected is not None:
            lines.append(f"  expected: {expected}")
        if received is not NOT_GIVEN:
            text = "null" if received is None else received if isinstance(received, str) else repr(received)
            lines.append(f"  received: {text}")
        if fix:
            lines.append(f"  fix: {fix}")
        super().__init__("\n".join(lines))


class ConfigError(DynarchError, ValueError):
    """A config value, key or block layout is invalid (raised before TensorFlow is imported)."""


class DataError(DynarchError):
    """A dataset cannot be loaded: missing, truncated or malformed files, or no network."""


class CheckpointError(DynarchError):
    """A checkpoint is missing, corrupted, foreign or incompatible."""


def shown(value: Any, limit: int = 200) -> Any:
    """A user's value as an error shows it: a string with line breaks or other control characters as its repr
    (a newline in an override printed a line of its own, which could pass for the message's `fix:`), anything
    longer than `limit` characters cut, with its length (a 100,000-character override was echoed whole)."""
    if isinstance(value, str):
        text = repr(value) if any(c < " " or c == "\x7f" for c in value) else value
    else:
        text = repr(value)
        if len(text) <= limit:
            return value  # DynarchError shows its repr, as before
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def did_you_mean(name: str, options: Iterable[str]) -> str:
    """Return ' Did you mean 'x'?' for the closest option, or '' when nothing is close."""
    close = difflib.get_close_matches(str(name), list(options), n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


def unknown_key_error(
    where: str, key: str, allowed: Iterable[str], kind: type[DynarchError] = ConfigError
) -> DynarchError:
    allowed = sorted(allowed)
    return kind(
        f"{where}.{key}" if where else key,
        f"unknown key '{key}'.{did_you_mean(key, allowed)}",
        expected=f"one of {', '.join(allowed)}",
        received=key,
        fix=f"rename or remove '{key}'",
    )
