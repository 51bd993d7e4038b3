"""Adversarial review 5 (2026-11-26): failures a careless or hostile user met in the newest parts (the loops,
precision, the environment variables, Hydra overrides, the run dir), kept as regressions once fixed.

Each CLI case runs the real command in a fresh process: it must exit non-zero with a message that names the key,
variable or file and carries a `fix:` line, print no traceback, and leave every file outside the run dir as it was.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, TINY, run_config

QUICK = ["data=mnist_subset", "data.limit_train=64", "data.limit_test=64", "trainer.epochs=1", "trainer.verbose=0"]


def snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(root.rglob("*"))
    }


def run(argv: list[str], tmp: Path, env: dict[str, str] | None = None, cwd: Path = ROOT, timeout: float = 300):
    base = {k: v for k, v in os.environ.items() if k not in ("DYNARCH_COMPILE_CACHE", "KERAS_BACKEND")}
    return subprocess.run(
        [sys.executable, *argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**base, "TMPDIR": str(tmp / "tmpdir"), **(env or {})},
    )


def check(proc: subprocess.CompletedProcess, names: list[str], code: int = 2) -> str:
    err = proc.stderr + proc.stdout
    assert "Traceback" not in err, err[-3000:]
    assert proc.returncode == code, (proc.returncode, err[-3000:])
    assert "fix:" in err, err[-3000:]
    for name in names:
        assert name in err, (name, err[-3000:])
    return err


@pytest.fixture
def tmp(tmp_path):
    (tmp_path / "tmpdir").mkdir()
    (tmp_path / "outside.txt").write_text("keep me\n")
    before = {k: v for k, v in snapshot(tmp_path).items() if not k.startswith(("run", "tmpdir"))}
    yield tmp_path
    after = {k: v for k, v in snapshot(tmp_path).items() if not k.startswith(("run", "tmpdir"))}
    assert after == before, "a failing command changed files outside its run dir"


def dynarch(tmp: Path, *overrides: str) -> list[str]:
    return ["-m", "dynarch", *QUICK, f"hydra.run.dir={tmp / 'run'}", *overrides]


def final_weights(run_dir: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(run_dir / "checkpoint" / "weights.safetensors"))


# -- trainer.precision=mixed_float16 ------------------------------------------------------------------------
# Keras wraps the optimizer in a LossScaleOptimizer whose variables include the inner optimizer's: both have an
# `iteration`, and the train-state keys (path minus the optimizer's name) collided, so every mixed_float16 run
# (any backend, any loop) trained its first epoch, then died at the first state checkpoint with "two optimizer
# variables named iteration ... rename one of the blocks".
@pytest.mark.parametrize("loop", ["keras", "fused"])
def test_mixed_float16_trains_and_resumes_bitwise(tmp_path, loop):
    from dynarch.resume import load_latest_state
    from dynarch.train import train

    base = [*TINY, f"trainer.loop={loop}", "trainer.precision=mixed_float16", "trainer.checkpoint_every=2"]
    train(run_config([*base, "trainer.epochs=2"]), tmp_path / "whole")
    train(run_config([*base, "trainer.epochs=1"]), tmp_path / "split")
    assert any(k.startswith("optimizer/inner/") for k in load_latest_state(tmp_path / "split").tensors)
    train(run_config([*base, "trainer.epochs=2"]), tmp_path / "split", resume=True)
    whole, split = final_weights(tmp_path / "whole"), final_weights(tmp_path / "split")
    assert whole.keys() == split.keys()
    assert all(np.array_equal(whole[k], split[k]) for k in whole)
