"""argparse types shared by the experiment scripts: a bad flag is argparse's one-line usage error (exit 2),
before any data is generated or any model trained — never a traceback, never a finished benchmark whose
results cannot be written. Standard library only (experiments/gpu/bench_gpu.py runs on a box without the
project's dependencies)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable, Iterable


def _int(text: str, least: int) -> int:
    try:
        value = int(text, 10)  # not str.isdigit(): it says True for '²', which int() refuses
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"{value} is below {least}")
    return value


def at_least(least: int) -> Callable[[str], int]:
    """An integer >= least."""
    return lambda text: _int(text, least)


def positive_ints(text: str) -> str:
    """Comma-separated integers > 0 ('128,1024'), checked; the text is kept (the scripts split it)."""
    for part in text.split(","):
        _int(part.strip(), 1)
    return text


def fraction(text: str) -> float:
    """A number in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{value} is not in (0, 1]")
    return value


def choices(options: Iterable[str], allow_empty: bool = False) -> Callable[[str], str]:
    """Comma-separated names, each one of `options`, checked; the text is kept (the scripts split it)."""
    allowed = list(options)

    def parse(text: str) -> str:
        names = [n.strip() for n in text.split(",") if n.strip()]
        if not names and not allow_empty:
            raise argparse.ArgumentTypeError(f"give at least one of {', '.join(allowed)}")
        bad = [n for n in names if n not in allowed]
        if bad:
            raise argparse.ArgumentTypeError(f"{', '.join(bad)}: not one of {', '.join(allowed)}")
        return text

    return parse


def out_dir(text: str) -> Path:
    """A folder for the results: created now (with its parents) so that a bad path fails before the run."""
    path = Path(text)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise argparse.ArgumentTypeError(f"{text}: cannot be a results folder ({e.strerror or e})") from None
    return path
