"""Train-state checkpoints written in the background (dynarch/background.py, PhaseLoop.save): one write at a
time and in order, its error raised in the training thread, and a snapshot that the training going on cannot
change. Resume exactness with background saves is what tests/test_resume.py and tests/test_fused.py check."""

import threading

import keras
import numpy as np
import pytest
from conftest import run_config

from dynarch.artifacts import ArtifactError
from dynarch.background import BackgroundWriter
from dynarch.checkpoint import load_checkpoint
from dynarch.resume import Position, snapshot_state


def test_writes_run_one_at_a_time_in_order_off_the_calling_thread():
    writer, done, threads = BackgroundWriter(), [], set()
    release = [threading.Event(), threading.Event()]

    def write(i):
        def run():
            release[i].wait(timeout=30)  # held until the test lets it finish
            threads.add(threading.current_thread().name)
            done.append(i)

        return run

    writer.submit(write(0))
    assert done == []  # submit returned while the write was still held
    release[0].set()
    writer.submit(write(1))  # waited for write 0 before starting write 1
    assert done == [0]
    release[1].set()
    writer.flush()
    assert done == [0, 1] and threading.current_thread().name not in threads


def test_an_error_in_a_write_is_raised_by_the_next_flush_then_cleared():
    writer = BackgroundWriter()
    error = ArtifactError("RUN/state", "could not write the file", fix="free disk space")

    def failing():
        raise error

    writer.submit(failing)
    with pytest.raises(ArtifactError) as got:
        writer.flush()
    assert got.value is error
    writer.flush()  # reported once
    writer.submit(failing)
    writer.flush_quietly()  # logged, not raised: for paths already reporting another error


def test_a_snapshot_is_not_changed_by_training_that_goes_on(tmp_path):
    run = run_config(["trainer.epochs=1"])
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.compile(keras.optimizers.Adam(1e-3), "mse")
    model.train_on_batch(np.ones((2, 4)), np.ones((2, 3)))
    before = [v.numpy().copy() for v in model.trainable_variables]
    position = Position()
    position.history = {"loss": [1.0]}
    folder, write = snapshot_state(tmp_path, model, position, run)
    model.train_on_batch(np.ones((2, 4)), np.zeros((2, 3)))  # the model trains on before the write runs
    position.history["loss"].append(0.5)
    assert not np.array_equal(model.trainable_variables[0].numpy(), before[0])
    assert write() == folder
    ckpt = load_checkpoint(folder)
    kernel = next(v for k, v in ckpt.tensors.items() if k.startswith("model/") and k.endswith("kernel"))
    np.testing.assert_array_equal(kernel, before[0])  # the weights when the snapshot was taken
    assert ckpt.manifest["history"] == {"loss": [1.0]} and ckpt.manifest["step"] == 1
    assert (tmp_path / "state" / "latest").read_text().strip() == folder.name


def test_a_checkpoint_that_cannot_be_written_stops_the_run_with_its_error(tmp_path, monkeypatch):
    """The write fails on the background thread (a full disk); the run stops with that error, in the training
    thread, and no `latest` names a checkpoint that is not there."""
    from conftest import TINY

    import dynarch.resume
    from dynarch.train import train

    def full_disk(directory, tensors, manifest):
        raise ArtifactError(str(directory), "could not write the file (No space left on device)", fix="free space")

    monkeypatch.setattr(dynarch.resume, "save_checkpoint", full_disk)
    with pytest.raises(ArtifactError, match="No space left"):
        train(run_config([*TINY, "trainer.epochs=1"]), tmp_path / "run")
    assert not (tmp_path / "run" / "state" / "latest").exists()
