"""What every small dynarch command shares: an argparse parser whose errors are DynarchErrors, and a
`main` wrapper that prints one `error:` message with its `fix:` line and exits 2 — never a traceback,
whatever the user typed (Hydra/OmegaConf errors and bugs included).
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from .errors import ConfigError, DynarchError


class ArgParser(argparse.ArgumentParser):
    """argparse, but a bad argument raises ConfigError (one message and a fix) instead of printing usage
    and calling sys.exit itself."""

    def __init__(self, *args, usage_line: str = "", **kwargs):
        super().__init__(*args, **kwargs)
        self.usage_line = usage_line

    def error(self, message: str):
        raise ConfigError(self.prog, message, expected=self.usage_line or None,
                          fix=f"see {self.prog} --help")


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
    except Exception as e:  # noqa: BLE001  Hydra/OmegaConf errors compose_run does not wrap, and bugs
        first = str(e).splitlines()[0][:300] if str(e) else ""
        print(f"error: {type(e).__name__}: {first}\n"
              "  fix: check the arguments; if they are right, report this as a dynarch bug", file=sys.stderr)
        return 2
