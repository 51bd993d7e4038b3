"""Bad-input catalogue for this session's additions: the cluster variables of trainer.strategy=multi_worker,
python -m dynarch.launch_local, DYNARCH_COMPILE_CACHE, trainer.loop refusals and experiments/gpu/bench_gpu.py.

Each case runs the real command in a fresh process and must exit 2 with a message that names the key, variable
or argument and carries a `fix:` line, print no traceback, and leave every file outside the run dir as it was.
The second group are the failures an adversarial review found (2026-11-26), kept as regressions once fixed.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

TINY = ["data=mnist_subset", "data.limit_train=64", "trainer.epochs=1", "trainer.verbose=0"]
BENCH = ROOT / "experiments" / "gpu" / "bench_gpu.py"
QUICK = ["--train-size", "2000", "--epochs", "1", "--models", "mlp", "--repeats", "0"]  # no training runs


def snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(root.rglob("*"))
    }


def run(argv: list[str], tmp: Path, env: dict[str, str] | None = None, cwd: Path = ROOT, timeout: float = 300):
    """argv in a fresh process (cwd: the repo root); the process's environment without cluster variables, a
    compile cache or a backend choice (`env` sets any of them)."""
    drop = ("TF_CONFIG", "DYNARCH_COMPILE_CACHE", "KERAS_BACKEND")
    base = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("SLURM_")}
    return subprocess.run(
        [sys.executable, *argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**base, "TMPDIR": str(tmp / "tmpdir"), **(env or {})},
    )


def check(proc: subprocess.CompletedProcess, names: list[str], code: int = 2) -> str:
    """No traceback, exit `code`, a fix line and every name; returns the output."""
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
    return ["-m", "dynarch", *TINY, f"hydra.run.dir={tmp / 'run'}", *overrides]


# -- behaving well today (kept as regression cases) -------------------------------------------------------
@pytest.mark.parametrize(
    "overrides, names",
    [
        (["trainer.loop=fuse"], ["trainer.loop", "auto, keras or fused"]),
        (["trainer.device_data_mb=-1"], ["trainer.device_data_mb"]),
        (["trainer.compile_cache=/tmp/x"], ["trainer.compile_cache", "DYNARCH_COMPILE_CACHE"]),
        (["backend=torch", "trainer.loop=fused"], ["trainer.loop", "backend=torch"]),
        (["backend=jax", "trainer.strategy=multi_worker"], ["trainer.strategy", "backend=tensorflow"]),
    ],
    ids=["loop typo", "device_data_mb<0", "compile_cache path", "fused on torch", "multi_worker on jax"],
)
def test_new_trainer_keys_refused_before_training(tmp, overrides, names):
    check(run(dynarch(tmp, *overrides), tmp), names)


@pytest.mark.parametrize(
    "tf_config, names",
    [
        ("{bad json", ["TF_CONFIG", "not JSON"]),
        ('{"cluster":{"worker":["localhost:1"]},"task":{"type":"worker","index":5}}', ["TF_CONFIG", "index 5"]),
        ('{"cluster":{"worker":["localhost:x"]},"task":{"type":"worker","index":0}}', ["TF_CONFIG", "host:port"]),
    ],
    ids=["not json", "index out of range", "bad address"],
)
def test_bad_tf_config_refused(tmp, tf_config, names):
    check(run(dynarch(tmp, "trainer.strategy=multi_worker"), tmp, env={"TF_CONFIG": tf_config}), names)


def test_slurm_procid_past_ntasks_refused(tmp):
    proc = run(dynarch(tmp, "trainer.strategy=multi_worker"), tmp, env={"SLURM_PROCID": "3", "SLURM_NTASKS": "2"})
    check(proc, ["SLURM_PROCID"])


def test_launch_local_workers_zero(tmp):
    check(run(["-m", "dynarch.launch_local", "--workers", "0", *TINY], tmp), ["--workers"])


# -- failures found by the review, fixed ------------------------------------------------------------------
def test_slurm_procid_non_ascii_digit_is_a_config_error(tmp):
    proc = run(dynarch(tmp, "trainer.strategy=multi_worker"), tmp, env={"SLURM_PROCID": "²", "SLURM_NTASKS": "2"})
    check(proc, ["SLURM_PROCID"])


def test_slurm_without_step_variables_is_a_config_error(tmp):
    proc = run(dynarch(tmp, "trainer.strategy=multi_worker"), tmp, env={"SLURM_PROCID": "0", "SLURM_NTASKS": "1"})
    check(proc, ["SLURM_STEP_NUM_TASKS"])


def test_launch_local_chief_error_exits_2(tmp):
    # Only the chief uses the run dir, so only it fails; worker 1 waits for it and is always killed.
    (tmp / "run").write_text("a file where the run dir should be\n")
    proc = run(["-m", "dynarch.launch_local", "--workers", "2", *TINY, f"hydra.run.dir={tmp / 'run'}"], tmp)
    check(proc, ["hydra.run.dir"])


def test_launch_local_workers_not_an_integer(tmp):
    check(run(["-m", "dynarch.launch_local", "--workers", "abc", *TINY], tmp), ["--workers", "abc"])


def test_fused_with_logical_cpus_names_logical_cpus(tmp):
    proc = run(dynarch(tmp, "backend=jax", "trainer.loop=fused", "trainer.logical_cpus=2"), tmp)
    check(proc, ["trainer.logical_cpus"])
    assert "drop trainer.strategy" not in proc.stderr


def test_compile_cache_env_naming_a_file(tmp):
    (tmp / "tmpdir" / "cachefile").write_text("not a folder\n")
    proc = run(dynarch(tmp, "backend=jax"), tmp, env={"DYNARCH_COMPILE_CACHE": str(tmp / "tmpdir" / "cachefile")})
    check(proc, ["DYNARCH_COMPILE_CACHE", str(tmp / "tmpdir" / "cachefile")])
    assert (tmp / "tmpdir" / "cachefile").read_text() == "not a folder\n"


def test_bench_gpu_missing_data_folder(tmp):
    proc = run([str(BENCH), "--tiny", "--data", str(tmp / "nope"), "--out", str(tmp / "run")], tmp)
    check(proc, ["--data", str(tmp / "nope")])


def test_bench_gpu_bad_loop_refused_before_writing(tmp):
    proc = run([str(BENCH), *QUICK, "--loops", "fuse", "--out", str(tmp / "run")], tmp)
    check(proc, ["--loops", "fuse"])
    assert not (tmp / "run" / "README.md").exists()


def test_bench_gpu_removes_its_work_dir(tmp):
    proc = run([str(BENCH), *QUICK, "--out", str(tmp / "run")], tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not list((tmp / "tmpdir").glob("dynarch-gpu-bench-*"))
