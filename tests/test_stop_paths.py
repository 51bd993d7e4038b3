"""Stop, error and edge paths of background train-state writes and of the JAX fused loop's partial batch
(found by an adversarial review of the background writer, the lean start and the fused loop's `cond` branch):
an error during the final test evaluation waits for the write in flight before the run-dir lock goes; an
interrupted wait is neither swallowed nor reported as a failed write; a failed write with a signal stop is
reported and `latest` stays complete; the fused JAX loop resumes at the partial batch bit for bit and trains a
split smaller than one batch. Nothing here depends on timing: threads are held by events, states read directly.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import textwrap
import threading

import pytest
from conftest import ROOT, TINY, run_config

import dynarch.resume
import dynarch.rundir
import dynarch.train
from dynarch.background import BackgroundWriter
from dynarch.errors import CheckpointError
from dynarch.train import TrainingStopped, train


# -- 1. background train-state writes ------------------------------------------------------------------------
def test_an_error_during_the_final_test_evaluation_waits_for_the_write_in_flight(tmp_path, monkeypatch, caplog):
    """Ctrl-C / SIGTERM while the test split is evaluated (loop_running is False there, so the handler raises
    Interrupted). The last epoch's train-state write was submitted just before and fails (a full disk).
    Expected: the write is waited for before the run dir's lock is released, and its failure is at least
    logged (as the in-loop error path does with flush_quietly)."""
    loops, lock_released_with_write_pending = [], []
    real_save, real_exit = dynarch.resume.save_checkpoint, dynarch.rundir.RunDirLock.__exit__

    class Recording(dynarch.train.PhaseLoop):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            loops.append(self)

        def evaluate_test(self):
            raise dynarch.train.Interrupted(signal.SIGTERM)  # what the signal handler raises outside the loop

    def last_write_fails(directory, tensors, manifest):
        if manifest["epoch"] >= 1:  # the epoch-end write (position.epoch is 1 after epoch 0 is recorded)
            raise CheckpointError(str(directory), "could not write the checkpoint (No space left on device)")
        return real_save(directory, tensors, manifest)

    def exit_recording(self, *exc):
        if loops:
            lock_released_with_write_pending.append(loops[0].writer._thread is not None)
        return real_exit(self, *exc)

    monkeypatch.setattr(dynarch.train, "PhaseLoop", Recording)
    monkeypatch.setattr(dynarch.resume, "save_checkpoint", last_write_fails)
    monkeypatch.setattr(dynarch.rundir.RunDirLock, "__exit__", exit_recording)
    try:
        with caplog.at_level(logging.WARNING), pytest.raises(TrainingStopped, match="interrupted by signal 15"):
            train(run_config([*TINY, "trainer.epochs=1"]), tmp_path / "run")
        logged = "background write failed" in caplog.text  # read before the clean-up below logs it too
    finally:
        for loop in loops:
            loop.writer.flush_quietly()  # never leave the thread behind, fixed or not
    assert lock_released_with_write_pending == [False], "the run dir lock was released with a write in flight"
    assert logged, "the write's own failure was lost"


def test_an_interrupted_wait_is_neither_swallowed_nor_reported_as_a_failed_write(caplog):
    writer, gate = BackgroundWriter(), threading.Event()
    writer.submit(lambda: gate.wait(timeout=60))
    thread = writer._thread

    def interrupted_join(timeout=None):  # stands for a signal handler raising inside Thread.join
        raise KeyboardInterrupt

    thread.join = interrupted_join
    try:
        with caplog.at_level(logging.WARNING), pytest.raises(KeyboardInterrupt):
            writer.flush_quietly()
    finally:
        gate.set()
        del thread.join
        thread.join()
    assert "write failed" not in caplog.text


def test_a_write_failure_with_a_signal_stop_is_reported_and_latest_stays_complete(tmp_path, monkeypatch):
    """The stop message names a checkpoint (`stop.saved`) that is submitted, not written: raise_if_stopped
    flushes first. When that write fails the run must not claim `checkpoint saved at ...`; `latest` still names
    a complete checkpoint (or none)."""
    from helpers import RESUMABLE, SignalAtStep

    real_save = dynarch.resume.save_checkpoint
    writes = []

    def second_write_fails(directory, tensors, manifest):
        writes.append(directory.name)
        if len(writes) >= 2:
            raise CheckpointError(str(directory), "could not write the checkpoint (No space left on device)")
        return real_save(directory, tensors, manifest)

    monkeypatch.setattr(dynarch.resume, "save_checkpoint", second_write_fails)
    out = tmp_path / "run"
    with pytest.raises(CheckpointError, match="No space left") as got:
        train(
            run_config([*RESUMABLE, "data.limit_train=600", "trainer.epochs=2", "trainer.loop=fused"]),
            out,
            callbacks=[SignalAtStep(9)],
        )
    assert "checkpoint saved at" not in str(got.value)
    latest = (out / "state" / "latest").read_text().strip()
    assert latest == writes[0] and (out / "state" / latest / "manifest.json").is_file()


# -- 4. the fused JAX loop: the partial batch as a `cond` branch ---------------------------------------------
JAX_SCRIPT = textwrap.dedent(
    """
    import hashlib, json, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[2])
    from helpers import SignalAtStep
    from dynarch.compose import compose_run
    from dynarch.train import TrainingStopped, train

    tmp = Path(sys.argv[1])
    base = ["data=mnist_subset", "data.limit_train=600", "data.limit_test=100", "trainer.verbose=0",
            "++backend=jax", "trainer.loop=fused", "trainer.epochs=2"]
    sha = lambda out: json.loads((out / "checkpoint" / "manifest.json").read_text())["weights_sha256"]
    result = {}

    def run(name, extra, **kw):
        out = tmp / name
        train(compose_run([*base, *extra]), out, **kw)
        return out

    # n=540 in batches of 32: 16 full batches and one of 28. A stop at step 16 saves batches_done=16: the
    # resumed chunk is 0 full batches + the partial one (the `cond` branch alone).
    every = ["trainer.batch_size=32", "trainer.checkpoint_every=8"]
    ref = run("ref32", every)
    try:
        run("stopped32", every, callbacks=[SignalAtStep(16)])
    except TrainingStopped:
        pass
    state = tmp / "stopped32" / "state"
    manifest = json.loads((state / (state / "latest").read_text().strip() / "manifest.json").read_text())
    result["stopped_at"] = [manifest["epoch"], manifest["batches_done"]]
    train(compose_run([*base, *every, "resume=true"]), tmp / "stopped32", resume=True)
    result["resume_at_partial"] = sha(tmp / "stopped32") == sha(ref)
    # resident (cond branch) and streamed (`_step`) give the same bits when n % batch == 0 (no cond at all)
    a = run("res30", ["trainer.batch_size=30"])
    b = run("str30", ["trainer.batch_size=30", "trainer.device_data_mb=0"])
    result["streamed_30"] = sha(a) == sha(b)
    print("RESULT", json.dumps(result))
    """
)
# n=540 < batch 1024: the whole epoch is the partial batch (0 full batches, `cond` only)
JAX_SMALL_SPLIT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from dynarch.compose import compose_run
    from dynarch.train import train

    tmp = Path(sys.argv[1])
    base = ["data=mnist_subset", "data.limit_train=600", "data.limit_test=100", "trainer.verbose=0",
            "++backend=jax", "trainer.loop=fused", "trainer.epochs=2", "trainer.batch_size=1024"]
    sha = lambda out: json.loads((out / "checkpoint" / "manifest.json").read_text())["weights_sha256"]
    train(compose_run(base), tmp / "resident")
    train(compose_run([*base, "trainer.device_data_mb=0"]), tmp / "streamed")
    print("RESULT", json.dumps({"same": sha(tmp / "resident") == sha(tmp / "streamed")}))
    """
)


def _run_jax(script: str, tmp_path) -> dict:
    import os

    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path), str(ROOT / "tests")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, (proc.stdout + proc.stderr)[-3000:]
    return json.loads(lines[-1][len("RESULT ") :])


@pytest.mark.slow
def test_jax_fused_partial_batch_resume_and_streamed_agree(tmp_path):
    """Regression for runtime/fused_jax.py: a resume that starts AT the partial batch (a chunk of 0 full
    batches that ends the epoch) is bitwise the uninterrupted run; resident == streamed when n % batch == 0."""
    assert _run_jax(JAX_SCRIPT, tmp_path) == {"stopped_at": [0, 16], "resume_at_partial": True, "streamed_30": True}


@pytest.mark.slow
def test_jax_fused_trains_a_split_smaller_than_one_batch(tmp_path):
    """backend=jax, trainer.loop=fused (auto's pick for an MLP on JAX), 540 samples, batch_size=1024: the resident
    split trains (the whole epoch is the `cond` branch) and gives the streamed path's bits."""
    assert _run_jax(JAX_SMALL_SPLIT, tmp_path) == {"same": True}
