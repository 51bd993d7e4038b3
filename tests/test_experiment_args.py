"""The experiment scripts are commands users run too: a bad flag is argparse's one-line error (exit 2) before
anything is generated or trained — never a traceback, never a benchmark whose results cannot be written."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import ROOT

CASES = [
    ("throughput/bench.py", ["--models", "foo"], "--models: foo: not one of mlp, cnn"),
    ("throughput/bench.py", ["--epochs", "0"], "--epochs: 0 is below 2"),
    ("throughput/bench_loops.py", ["--batches", "abc"], "--batches: 'abc' is not an integer"),
    ("throughput/bench_loops.py", ["--batches", "128,²"], "--batches: '²' is not an integer"),
    ("throughput/bench_loops.py", ["--backends", "torch"], "--backends: torch: not one of tensorflow, jax"),
    ("throughput/bench_loops.py", ["--target", "2"], "--target: 2.0 is not in (0, 1]"),
    ("throughput/fixed_costs.py", ["--sizes", "5000,x"], "--sizes: 'x' is not an integer"),
    ("throughput/fixed_costs.py", ["--rows", "dynarch,nope"], "--rows: nope: not one of"),
    ("throughput/fixed_costs.py", ["--out", "README.md"], "--out: README.md: cannot be a results folder"),
    ("throughput/profile.py", ["--bogus"], "unrecognized arguments: --bogus"),
    ("gpu/bench_gpu.py", ["--batches", "²"], "--batches: '²' is not an integer"),
    ("gpu/epoch_probe.py", ["--combos", "thread/prefetch"], "--combos: 'thread/prefetch': expected MODE/PREFETCH"),
    ("gpu/epoch_probe.py", ["--epochs", "1"], "--epochs: 1 is below 2"),
    ("gpu/bench_gpu.py", ["--plain-spe", "³"], "--plain-spe: '³': an integer > 0 or epoch"),
    ("gpu/bench_gpu.py", ["--seed", "-5"], "--seed: -5 is below 0"),
    ("gpu/bench_gpu.py", ["--out", "README.md"], "--out: README.md: cannot be a results folder"),
    ("gpu/tail_compile.py", ["--repeats", "0"], "--repeats: 0 is below 1"),
]


def written_by_scripts(folder):
    """What the scripts could have written in `folder`. Not __pycache__/: Python itself writes it when a script
    imports a sibling (profile.py imports bench) wherever bytecode is written (PYTHONDONTWRITEBYTECODE unset):
    in a fresh clone the first such case found it new and failed, and passed on every later run."""
    return sorted(p.name for p in folder.iterdir() if p.name != "__pycache__")


@pytest.mark.parametrize("script,args,message", CASES, ids=[f"{c[0]} {' '.join(c[1])}" for c in CASES])
def test_a_bad_flag_is_one_clear_line(script, args, message):
    before = written_by_scripts((ROOT / "experiments" / script).parent)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / script), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr and "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-2000:]
    assert written_by_scripts((ROOT / "experiments" / script).parent) == before  # nothing written
