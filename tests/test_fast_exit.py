"""The CLI ends without the interpreter's teardown (dynarch.__main__.exit_now) only as the process's own entry
point, and only after every job, file and log is complete; exit codes are those of sys.exit.

Signals (130/143) and Ctrl-C during start-up are covered by their own tests (test_train, test_resume, slow),
which run the real `python -m dynarch` and therefore this exit path too.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, TINY, cli

SHIM = (
    "import atexit, runpy, sys\n"
    "atexit.register(lambda: print('ATEXIT RAN', flush=True))\n"
    "sys.argv = ['dynarch', *sys.argv[1:]]\n"
    "try:\n    runpy.run_module('dynarch', run_name='__main__')\n"
    "except SystemExit as e:\n    print('SYSTEMEXIT', e.code, flush=True)\n"
    "print('CALLER WENT ON', flush=True)\n"
)


def shim(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """dynarch.__main__ run from other Python code (runpy), as tests and embedding scripts do."""
    import os

    return subprocess.run(
        [sys.executable, "-c", SHIM, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_a_run_exits_0_with_every_file_complete(tmp_path: Path):
    run_dir = tmp_path / "run"
    proc = cli(*TINY, "trainer.epochs=1", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "test accuracy" in proc.stdout  # stdout flushed before the exit
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs"] == 1
    assert list(csv.DictReader((run_dir / "history.csv").open()))[0]["epoch"] == "1"
    assert (run_dir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    manifest = json.loads((run_dir / "checkpoint" / "manifest.json").read_text())
    assert manifest["weights_sha256"]
    assert "test accuracy" in (run_dir / "__main__.log").read_text()  # the log handler flushed and closed
    assert not list(run_dir.glob(".*.tmp-*"))  # no half-written artifact


def test_a_multirun_exits_after_every_job(tmp_path: Path):
    sweep = tmp_path / "sweep"
    proc = cli("-m", *TINY, "trainer.epochs=1", "seed=1,2", f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for job in ("0", "1"):
        assert json.loads((sweep / job / "metrics.json").read_text())["seed"] == int(job) + 1
    assert len(list(csv.DictReader((sweep / "summary.csv").open()))) == 2


def test_config_errors_keep_exit_code_2_on_both_paths(tmp_path: Path):
    before_hydra = cli("+arch=deeep", f"hydra.run.dir={tmp_path / 'a'}")  # refused by the pre-flight
    in_job = cli("trainer.epochs=abc", f"hydra.run.dir={tmp_path / 'b'}")  # refused inside the Hydra job
    hydra_itself = cli("nosuchkey=1", f"hydra.run.dir={tmp_path / 'c'}")  # Hydra's own override error
    assert before_hydra.returncode == 2 and "fix:" in before_hydra.stderr
    assert in_job.returncode == 2 and "fix:" in in_job.stderr
    assert hydra_itself.returncode == 1 and "fix:" in hydra_itself.stderr
    for proc in (before_hydra, in_job, hydra_itself):
        assert "Traceback" not in proc.stderr


def test_run_from_other_code_it_raises_systemexit_and_the_caller_goes_on(tmp_path: Path):
    proc = shim("trainer.epochs=abc", f"hydra.run.dir={tmp_path / 'a'}")
    assert proc.returncode == 0
    assert "SYSTEMEXIT 2" in proc.stdout and "CALLER WENT ON" in proc.stdout and "ATEXIT RAN" in proc.stdout


def test_forced_fast_exit_still_runs_atexit_handlers_and_keeps_the_code(tmp_path: Path):
    proc = shim("trainer.epochs=abc", f"hydra.run.dir={tmp_path / 'a'}", env={"DYNARCH_FAST_EXIT": "1"})
    assert proc.returncode == 2
    assert "ATEXIT RAN" in proc.stdout  # registered by the caller, run before os._exit
    assert "SYSTEMEXIT" not in proc.stdout and "CALLER WENT ON" not in proc.stdout
