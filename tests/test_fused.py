"""The fused loop (trainer.loop=fused, dynarch/steploop.py): agreement with the Keras loop, exact resume,
chunking at checkpoint multiples, callbacks, NaN and signal stops, schedules, streaming, refusals."""

import json
import math

import keras
import numpy as np
import pytest
from conftest import TINY, cli, run_config
from helpers import RESUMABLE, SignalAtStep, weights_sha

from dynarch.errors import ConfigError
from dynarch.resume import load_latest_state
from dynarch.steploop import chunk_length
from dynarch.train import TrainingStopped, train

FUSED = ["trainer.loop=fused"]


def _history(out):
    lines = (out / "history.csv").read_text().splitlines()
    keys = lines[0].split(",")
    return {k: [float(line.split(",")[i]) for line in lines[1:]] for i, k in enumerate(keys)}


def test_chunks_end_at_checkpoint_multiples_and_epoch_ends():
    assert chunk_length(step=0, first=0, steps_per_epoch=10, every=4) == 4
    assert chunk_length(step=10, first=0, steps_per_epoch=10, every=4) == 2  # 10 -> 12 (a multiple)
    assert chunk_length(step=12, first=2, steps_per_epoch=10, every=4) == 4
    assert chunk_length(step=16, first=6, steps_per_epoch=10, every=4) == 4  # the epoch end
    assert chunk_length(step=5, first=3, steps_per_epoch=10, every=0) == 7  # no mid-epoch checkpoints


def test_auto_picks_by_measurement_and_fused_is_refused_where_it_cannot_run():
    from dynarch.steploop import TF_AUTO, pick_loop

    class Devices:  # a JAX runtime's answers (strategy=auto: DataParallel over every device)
        def __init__(self, platform, count):
            self.device_platform = lambda: (platform, count)
            self.batch_multiple = lambda: count

    jax_run, cnn = run_config(["backend=jax"]), run_config(["backend=jax", "model=cnn"])
    assert jax_run.loop == "auto"
    assert pick_loop(jax_run, Devices("cpu", 1)) == "fused"  # JAX, CPU, an MLP
    assert pick_loop(cnn, Devices("cpu", 1)) == "keras"  # XLA:CPU runs a loop body on one thread
    assert pick_loop(cnn, Devices("gpu", 1)) == "fused"
    assert pick_loop(cnn, Devices("gpu", 2)) == "keras"  # strategy=auto: DataParallel over the GPUs
    assert pick_loop(run_config([]), None) == TF_AUTO

    class Mirrored:  # a TensorFlow runtime whose strategy=auto found 2 GPUs
        replicas = staticmethod(lambda: 2)

    assert pick_loop(run_config([]), Mirrored()) == "keras"
    from dynarch.steploop import check_fused_devices

    with pytest.raises(ConfigError, match=r"(?s)runs on one device.*uses 2 here.*fix: set trainer.strategy=default"):
        check_fused_devices(run_config(FUSED), Mirrored())
    with pytest.raises(ConfigError, match="cannot run with trainer.logical_cpus"):
        run_config([*FUSED, "backend=jax", "trainer.logical_cpus=2"])
    assert run_config(["trainer.loop=keras", "backend=jax"]).loop == "keras"
    assert run_config(["trainer.strategy=mirrored"]).loop == "keras"
    with pytest.raises(ConfigError, match=r"(?s)trainer.loop=fused cannot run with trainer.strategy.*fix:"):
        run_config([*FUSED, "trainer.strategy=mirrored"])
    with pytest.raises(ConfigError, match=r"(?s)cannot run with data.augment.*trainer.loop=auto"):
        run_config([*FUSED, "+data.augment=[{_target_: keras.layers.RandomFlip, mode: horizontal}]"])


def test_fused_and_keras_loops_give_the_same_loss_curve(tiny_run):
    """Same batches, same dropout draws, same updates: equal to float tolerance (not bit for bit: the
    step runs inside a compiled while loop instead of fit's)."""
    _, keras_out = tiny_run(["trainer.loop=keras", "trainer.epochs=3"], name="keras")
    metrics, fused_out = tiny_run([*FUSED, "trainer.epochs=3"], name="fused")
    a, b = _history(keras_out), _history(fused_out)
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(a[key], b[key], rtol=1e-4, atol=1e-5, err_msg=key)
    assert metrics["loop"] == "fused" and metrics["test_accuracy"] > 0.5


def test_fused_sigterm_mid_epoch_then_resume_is_bitwise_identical(tmp_path):
    ref = tmp_path / "ref"
    train(run_config([*RESUMABLE, *FUSED, "trainer.epochs=3"]), ref)
    out = tmp_path / "run"
    with pytest.raises(TrainingStopped, match="stopped by signal 15"):
        train(run_config([*RESUMABLE, *FUSED, "trainer.epochs=3"]), out, callbacks=[SignalAtStep(150)])
    killed = load_latest_state(out)
    # chunks end at multiples of checkpoint_every=8: the stop asked for at step 150 lands at step 152
    assert killed.path.name == "step-000000152" and killed.manifest["epoch"] == 1 and killed.manifest["batches_done"]
    train(run_config([*RESUMABLE, *FUSED, "trainer.epochs=3", "resume=true"]), out, resume=True)
    assert weights_sha(out) == weights_sha(ref)


def test_keras_loop_sigterm_mid_epoch_then_resume_is_bitwise_identical(tmp_path):
    """The default loop is fused now (auto); the Keras loop keeps its own guarantee."""
    keras_loop = [*RESUMABLE, "trainer.loop=keras", "trainer.epochs=2"]
    ref = tmp_path / "ref"
    train(run_config(keras_loop), ref)
    out = tmp_path / "run"
    with pytest.raises(TrainingStopped, match="stopped by signal 15"):
        train(run_config(keras_loop), out, callbacks=[SignalAtStep(130)])
    assert load_latest_state(out).manifest["batches_done"]  # mid-epoch
    metrics = train(run_config([*keras_loop, "resume=true"]), out, resume=True)
    assert metrics["loop"] == "keras" and weights_sha(out) == weights_sha(ref)


def test_a_keras_loop_checkpoint_does_not_resume_in_the_fused_loop(tmp_path):
    out = tmp_path / "run"
    train(run_config([*TINY, "trainer.loop=keras"]), out)
    from dynarch.errors import CheckpointError

    with pytest.raises(CheckpointError, match="config differs in loop"):
        train(run_config([*TINY, *FUSED, "trainer.epochs=3"]), out, resume=True)


def test_streaming_gives_the_same_weights_as_the_resident_split(tiny_run):
    _, resident = tiny_run(FUSED, name="resident")
    _, streamed = tiny_run([*FUSED, "trainer.device_data_mb=0"], name="streamed")
    assert weights_sha(resident) == weights_sha(streamed)


def test_fused_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(TrainingStopped, match=r"loss became NaN(?s:.*)last good checkpoint is kept"):
        train(run_config([*RESUMABLE, *FUSED, "trainer.epochs=3", "optimizer=sgd", "optimizer.lr=1e12"]), out)
    assert not (out / "metrics.json").exists()


def test_stock_callbacks_end_a_fused_phase(tiny_run):
    seen = []

    class Spy(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            seen.append("begin")

        def on_epoch_end(self, epoch, logs=None):
            seen.append(sorted(k for k in logs if not k.startswith("epoch_time")))
            if epoch == 1:
                self.model.stop_training = True

    from dynarch.train import train as run_train

    run = run_config([*TINY, *FUSED, "trainer.epochs=6"])
    import tempfile
    from pathlib import Path

    out = Path(tempfile.mkdtemp()) / "run"
    metrics = run_train(run, out, callbacks=[Spy()])
    assert metrics["epochs"] == 2 and seen[0] == "begin" and seen.count("begin") == 1
    assert seen[1] == ["accuracy", "loss", "samples_per_s", "val_accuracy", "val_loss"]


def test_a_schedule_trains_in_the_fused_loop_and_rebuilds_the_step_at_the_boundary(tiny_run):
    metrics, out = tiny_run([*FUSED, "+schedule=grow"], name="grow")
    phases = metrics["phases"]
    assert len(phases) == 2 and phases[1]["epochs"] >= 1 and metrics["loop"] == "fused"
    moved = json.loads((out / "migration-phase-1.json").read_text())["output_change"]
    assert moved is not None and moved < 1e-5  # function-preserving growth, under the fused loop too
    assert all(math.isfinite(v) for v in _history(out)["loss"])


def test_verbose_1_shows_keras_progress_in_the_fused_loop(tmp_path):
    proc = cli(*TINY, *FUSED, "trainer.verbose=1", "trainer.epochs=2", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Epoch 1/2" in proc.stdout and "Epoch 2/2" in proc.stdout


def test_jax_fused_matches_the_jax_keras_loop(tmp_path):
    """Under JAX (a fresh process: Keras fixes its backend per process): both loops, same curve."""
    outs = {}
    for loop in ("keras", "fused"):
        outs[loop] = tmp_path / loop
        proc = cli(*TINY, "backend=jax", f"trainer.loop={loop}", "trainer.epochs=3", f"hydra.run.dir={outs[loop]}")
        assert proc.returncode == 0, proc.stderr[-2000:]
    a, b = _history(outs["keras"]), _history(outs["fused"])
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(a["accuracy"], b["accuracy"], rtol=1e-4, atol=1e-5)  # computed inside the program
    assert list(b)[:3] == ["epoch", "loss", "accuracy"]  # in the metrics' order, not sorted by JAX
    assert json.loads((outs["fused"] / "metrics.json").read_text())["loop"] == "fused"


@pytest.mark.slow
def test_jax_fused_sigkill_then_resume_is_bitwise_identical(tmp_path):
    """A real process, SIGKILLed once a train-state checkpoint exists (a condition), resumed: the same bits
    as an uninterrupted run (JAX on CPU, the fused loop)."""
    import subprocess
    import sys
    import time

    from conftest import ROOT

    args = [*RESUMABLE, "backend=jax", *FUSED, "trainer.epochs=6"]
    ref = tmp_path / "ref"
    assert cli(*args, f"hydra.run.dir={ref}").returncode == 0
    for attempt in range(5):
        out = tmp_path / f"killed{attempt}"
        proc = subprocess.Popen(
            [sys.executable, "-m", "dynarch", *args, f"hydra.run.dir={out}"],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        while not (out / "state" / "latest").exists() and proc.poll() is None:
            time.sleep(0.01)  # polling a condition (the first checkpoint), not timing the test
        proc.kill()
        proc.wait()
        if not (out / "checkpoint").exists():
            break  # killed while training: a real kill point
    else:
        pytest.fail("every run finished before the kill landed")
    resumed = cli(*args, "resume=true", f"hydra.run.dir={out}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert weights_sha(out) == weights_sha(ref)


def test_jax_streaming_gives_the_same_weights_as_the_resident_split(tmp_path):
    outs = [tmp_path / "resident", tmp_path / "streamed"]
    for out, budget in zip(outs, (1024, 0)):
        proc = cli(*TINY, "backend=jax", *FUSED, f"trainer.device_data_mb={budget}", f"hydra.run.dir={out}")
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert weights_sha(outs[0]) == weights_sha(outs[1])


def test_jax_partial_batch_as_its_own_program_gives_the_same_weights_as_the_cond_branch(tmp_path):
    """On an accelerator the epoch's partial batch (540 = 4 x 128 + 28 here) is its own program, compiled on a
    thread while the chunk runs, and the curves' imports start while the chunk program compiles; on a CPU a
    `cond` branch of the chunk program, and the imports start after epoch 1. Forced here on the CPU (real
    processes, the CLI through runpy as `python -m` runs it): the same weights, bit for bit, and the imports
    started once, at the moment each device kind asks for."""
    import os
    import subprocess
    import sys

    from conftest import ROOT

    def run(out, accelerator: bool) -> str:
        code = (
            "import runpy, sys; import dynarch.runtime.fused_jax as f, dynarch.artifacts as a, dynarch.phases as p\n"
            f"f.tail_on_thread = f.host_free_while_compiling = lambda: {accelerator}\n"
            "start, record = a.prefetch_plotting, p.PhaseLoop.record_epoch\n"
            "a.prefetch_plotting = lambda: print('MARK prefetch', file=sys.stderr) or start()\n"
            "p.PhaseLoop.record_epoch = lambda s, *x: print('MARK epoch', file=sys.stderr) or record(s, *x)\n"
            "sys.argv = ['dynarch', *sys.argv[1:]]; runpy.run_module('dynarch', run_name='__main__', alter_sys=True)"
        )
        proc = subprocess.run(
            [sys.executable, "-c", code, *args, f"hydra.run.dir={out}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            env={**os.environ, "KERAS_BACKEND": "jax"},
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        return " ".join(line.split()[1] for line in proc.stderr.splitlines() if line.startswith("MARK "))

    outs = [tmp_path / "branch", tmp_path / "thread"]
    args = [*TINY, "backend=jax", *FUSED, "trainer.checkpoint_every=3", "trainer.epochs=2"]
    assert run(outs[0], accelerator=False) == "epoch prefetch epoch"
    assert run(outs[1], accelerator=True) == "prefetch epoch epoch"
    assert weights_sha(outs[0]) == weights_sha(outs[1])
    assert _history(outs[0])["loss"] == _history(outs[1])["loss"]
