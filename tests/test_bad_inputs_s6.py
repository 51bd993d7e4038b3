"""Bad inputs found after session 5's review (/work/notes/adversarial5.md, "design questions"), each now a clear
error: the run dir removed while a run uses it, an explicit null shown as `received: null`."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time

from conftest import ROOT

from dynarch.errors import ConfigError, DynarchError
from dynarch.rundir import RunDirError, RunDirLock


def test_an_error_shows_a_received_null_and_omits_received_when_none_was_given():
    text = str(ConfigError("trainer.compile_cache", "bad", expected="auto or off", received=None, fix="set it"))
    assert "  received: null\n" in text
    text = str(ConfigError("x", "bad", expected="y"))
    assert "received" not in text
    again = DynarchError("x", "re-raised", received=ConfigError("x", "bad").received)  # train/load re-raise so
    assert "received" not in str(again)


def test_the_cli_names_a_null_value_it_refuses(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "dynarch", "backend=jax", "trainer.compile_cache=null", f"hydra.run.dir={tmp_path}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "trainer.compile_cache" in proc.stderr and "received: null" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_lock_notices_its_run_dir_removed_or_replaced(tmp_path):
    run_dir = tmp_path / "run"
    with RunDirLock(run_dir) as lock:
        lock.check_still_held()  # in place: nothing to say
        shutil.rmtree(run_dir)
        try:
            lock.check_still_held()
            raise AssertionError("a removed run dir went unnoticed")
        except RunDirError as e:
            assert "removed or replaced" in str(e) and "is gone" in str(e) and "fix:" in str(e)
        run_dir.mkdir()
        (run_dir / ".lock").write_text("{}")  # a new folder with a lock file of someone else's
        try:
            lock.check_still_held()
            raise AssertionError("a replaced run dir went unnoticed")
        except RunDirError as e:
            assert "is another file" in str(e)


def test_a_run_whose_dir_is_removed_mid_run_stops_with_a_clear_error_and_recreates_nothing(tmp_path):
    """`rm -rf RUN` while it trains: before, the run went on, recreated the folder without its config, Hydra
    files or lock, and exited 0. Now the next write point (history, checkpoint) stops it: exit 2, one message."""
    run_dir = tmp_path / "run"
    args = ["data=mnist_subset", "data.limit_train=3000", "trainer.epochs=30", "trainer.checkpoint_every=4"]
    args += ["callbacks=best_checkpoint", "logger=csv"]  # they write at each epoch's end too (RunDirGuard)
    argv = [sys.executable, "-m", "dynarch", *args, "trainer.verbose=0", f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (run_dir / "state" / "latest").exists():  # training: the next write point is a few steps away
        assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint was written"
        time.sleep(0.05)
    shutil.rmtree(run_dir, ignore_errors=True)  # the writer may be creating files meanwhile: remove what is there
    while run_dir.exists():
        shutil.rmtree(run_dir, ignore_errors=True)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err[-3000:]
    assert "the run dir or its .lock was removed or replaced while this run was using it" in err
    assert "Traceback" not in err
    leftovers = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*")) if run_dir.exists() else []
    # at most the checkpoint that was being written when the folder went (its writer had already started)
    assert all(p == "state" or p.startswith("state/") for p in leftovers), leftovers
    assert not (run_dir / "metrics.json").exists() and not (run_dir / "history.csv").exists()


def test_a_limit_that_leaves_no_validation_is_refused_for_a_val_monitor_before_tensorflow(tmp_path):
    """data.limit_train=5 x val_fraction 0.1 rounds to 0 validation examples: early stopping on val_loss
    only got Keras' UserWarning each epoch, and a plateau phase ran to its cap."""
    from helpers import run_module_reporting_tf

    for extra, where in (
        (["callbacks=early_stopping"], "callbacks.early_stopping.monitor"),
        (["+schedule=grow_on_plateau"], "schedule.phases[0].until.plateau.monitor"),
    ):
        argv = ["data=mnist_subset", "data.limit_train=5", *extra, f"hydra.run.dir={tmp_path / 'run'}"]
        proc = run_module_reporting_tf("dynarch", argv)
        assert proc.stdout.split()[-3:] == ["EXIT", "2", "NO_TF"], (proc.stdout + proc.stderr)[-2000:]
        assert f"{where}: val_loss does not exist: data.limit_train leaves no validation example" in proc.stderr
        assert "or data.limit_train=6 or more, or data.val_fraction=0.11" in proc.stderr
        assert "Traceback" not in proc.stderr


def test_data_smaller_than_its_limit_is_checked_again_once_loaded(tmp_path):
    """The limit promised a validation split (100 x 0.1), the file holds 5 training rows: refused once loaded,
    before training, naming the training split."""
    from datagen import make_npz

    npz = make_npz(tmp_path / "tiny.npz", n_train=5, n_test=4)
    proc = subprocess.run(
        [sys.executable, "-m", "dynarch", "data=npz", f"data.path={npz}", "data.limit_train=100"]
        + ["data.input_shape=[16,12,3]", "data.num_classes=4", "model=mlp"]
        + ["callbacks=early_stopping", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "val_loss does not exist: the training split leaves no validation example (5 x" in proc.stderr
    assert "fix: set callbacks.early_stopping.monitor=loss, or data.val_fraction=0.11" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "run" / "history.csv").exists()


def test_a_sweep_counts_a_job_whose_folder_was_removed_as_failed(tmp_path):
    """Its failure is recorded in a recreated folder holding only error.json (no .hydra/): the summary listed
    only folders with .hydra/, so the sweep reported one job fewer and exited 0."""
    import json

    from dynarch.report import collect

    (tmp_path / "0" / ".hydra").mkdir(parents=True)
    (tmp_path / "0" / "metrics.json").write_text(json.dumps({"test_accuracy": 0.9}))
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "error.json").write_text(json.dumps({"type": "RunDirError", "message": "removed"}))
    rows = collect(tmp_path)
    assert [(r.job, r.status) for r in rows] == [("0", "ok"), ("1", "failed")] and "removed" in rows[1].error


def test_a_failed_resume_does_not_write_its_record_into_a_replaced_run_dir(tmp_path):
    """hydra_record reads RUN/.hydra before a resume; restored after a failure — but not into a folder that
    replaced RUN meanwhile (another run's: its record would be overwritten)."""
    from dynarch.placement import hydra_record, restore_hydra_record

    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("mine: 1\n")
    record = hydra_record(["resume=true", f"hydra.run.dir={run}"])
    assert record and record.files == {run / ".hydra" / "config.yaml": b"mine: 1\n"}
    (run / ".hydra" / "config.yaml").write_text("rewritten by the failed resume\n")
    restore_hydra_record(record)  # the same folder: put back
    assert (run / ".hydra" / "config.yaml").read_text() == "mine: 1\n"
    other = tmp_path / "other"  # another run, moved into its place (it existed beside it: other inodes)
    (other / ".hydra").mkdir(parents=True)
    (other / ".hydra" / "config.yaml").write_text("theirs: 2\n")
    shutil.rmtree(run)
    other.rename(run)
    restore_hydra_record(record)
    assert (run / ".hydra" / "config.yaml").read_text() == "theirs: 2\n"
