"""What every small dynarch command shares: an argparse parser whose errors are DynarchErrors, a `main`
wrapper that prints one `error:` message with its `fix:` line and exits 2 — never a traceback, whatever the
user typed (Hydra/OmegaConf errors and bugs included) — and the output rules: never replace an existing
output without --force, write to a temp sibling and rename it into place.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable, Sequence

from .errors import CheckpointError, ConfigError, DynarchError


class ArgParser(argparse.ArgumentParser):
    """argparse, but a bad argument raises ConfigError (one message and a fix) instead of printing usage
    and calling sys.exit itself."""

    def __init__(self, *args, usage_line: str = "", **kwargs):
        super().__init__(*args, **kwargs)
        self.usage_line = usage_line

    def error(self, message: str):
        raise ConfigError(self.prog, message, expected=self.usage_line or None, fix=f"see {self.prog} --help")


def run_main(run: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Call `run(argv)`; turn every failure into one `error:` message on stderr and exit status 2
    (130 on Ctrl-C). `--help` still exits 0 through argparse's SystemExit."""
    try:
        return run(argv)
    except DynarchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; nothing was written", file=sys.stderr)
        return 130
    except OSError as e:  # a path the command was given: unreadable, no space, no permission
        print(
            f"error: {e.filename or 'file system'}: {e.strerror or e}\n"
            "  fix: check the path, its permissions and free disk space",
            file=sys.stderr,
        )
        return 2
    except Exception as e:  # noqa: BLE001  Hydra/OmegaConf errors compose_run does not wrap, and bugs
        first = str(e).splitlines()[0][:300] if str(e) else ""
        print(
            f"error: {type(e).__name__}: {first}\n"
            "  fix: check the arguments; if they are right, report this as a dynarch bug",
            file=sys.stderr,
        )
        return 2


def check_batch_size(batch_size: int) -> None:
    """`--batch-size` of the evaluate / predict CLIs: a positive integer."""
    if batch_size < 1:
        raise ConfigError(
            "--batch-size",
            "must be a positive integer",
            expected=">= 1",
            received=batch_size,
            fix="pass e.g. --batch-size 256",
        )


def check_new_output(path: Path, force: bool, what: str, flag: str = "--out") -> None:
    """`path` is where a command will write: refuse an existing one unless `force` (then it is replaced
    atomically at the end), and a missing parent folder (nothing is created outside the output)."""
    path = Path(path)
    if path.is_symlink():
        raise CheckpointError(
            str(path),
            f"{flag} is a symlink",
            expected=f"a new path for the {what}",
            received="a symlink",
            fix=f"pass {flag} a new path",
        )
    if path.exists() and not force:
        raise CheckpointError(
            str(path),
            f"{flag} already exists",
            expected=f"a new path for the {what}",
            received="an existing " + ("folder" if path.is_dir() else "file"),
            fix="pass --force to replace it (atomically), or a new path; nothing was changed",
        )
    if not path.parent.is_dir():
        raise CheckpointError(
            str(path),
            f"the folder of {flag} does not exist",
            expected="an existing folder",
            received=str(path.parent),
            fix=f"create {path.parent} first, or pass another path",
        )


def temp_sibling(path: Path, suffix: str = "") -> Path:
    """A unique, not yet existing temp name next to `path` (`.NAME.tmp-XXXXXXXX[suffix]`): writing there
    and renaming keeps a half-written output from ever appearing under its final name."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", suffix=suffix, dir=path.parent)
    os.close(fd)
    os.unlink(name)
    return Path(name)


def move_into_place(tmp: Path, path: Path) -> Path:
    """Rename the finished `tmp` (file or folder) to `path`, replacing an existing one only once `tmp` is
    complete: the old output is renamed aside first and removed after."""
    old = None
    if path.exists() or path.is_symlink():
        old = temp_sibling(path, ".old")
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()
    return path


def remove_temp(tmp: Path | None) -> None:
    if tmp is not None and (tmp.exists() or tmp.is_symlink()):
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() and not tmp.is_symlink() else tmp.unlink()
