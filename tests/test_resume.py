"""Resume: kill / interrupt / NaN / corruption, and the three-run recipe (reference, killed, resumed)."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import ROOT, run_config
from helpers import RESUMABLE, SignalAtStep, weights_sha

from dynarch.checkpoint import load_checkpoint
from dynarch.errors import CheckpointError
from dynarch.resume import STATE_DIR, load_latest_state
from dynarch.train import TrainingStopped, train


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    train(run_config([*RESUMABLE, "trainer.epochs=3"]), out)
    return out


def test_sigterm_mid_epoch_then_resume_is_bitwise_identical(tmp_path, reference):
    out = tmp_path / "run"
    with pytest.raises(TrainingStopped, match=r"(?s)stopped by signal 15; checkpoint saved.*continue with: CMD") as err:
        train(run_config([*RESUMABLE, "trainer.epochs=3"]), out, resume_command="CMD", callbacks=[SignalAtStep(130)])
    assert err.value.exit_code == 143
    killed = load_latest_state(out)
    assert killed.manifest["epoch"] == 1 and killed.manifest["batches_done"] > 0  # mid-epoch, in epoch 2
    assert not (out / "checkpoint").exists()
    ref = load_checkpoint(reference).tensors
    assert not np.array_equal(killed.tensors["model/dense/kernel"], ref["dense/kernel"])  # the stop happened
    metrics = train(run_config([*RESUMABLE, "trainer.epochs=3", "resume=true"]), out, resume=True)
    assert metrics["resumed"] and weights_sha(out) == weights_sha(reference)


def test_resume_with_fewer_epochs_than_trained_is_refused(tmp_path, reference):
    with pytest.raises(CheckpointError, match=r"(?s)already trained 3 epochs.*trainer.epochs=3 or more"):
        train(run_config([*RESUMABLE, "trainer.epochs=2", "resume=true"]), reference, resume=True)


def test_resume_can_extend_epochs(tmp_path, reference):
    out = tmp_path / "run"
    train(run_config([*RESUMABLE, "trainer.epochs=2"]), out)
    train(run_config([*RESUMABLE, "trainer.epochs=3"]), out, resume=True)
    assert weights_sha(out) == weights_sha(reference)
    assert [int(line.split(",")[0]) for line in (out / "history.csv").read_text().splitlines()[1:]] == [1, 2, 3]


def test_resume_refuses_a_different_architecture_or_optimizer(tmp_path, reference):
    for override, what in (("+arch=wide", "arch"), ("optimizer.lr=0.01", "optimizer")):
        with pytest.raises(CheckpointError, match=f"resume refused: the config differs in {what}"):
            train(run_config([*RESUMABLE, "trainer.epochs=3", override]), reference, resume=True)


def test_fresh_run_into_a_checkpointed_dir_is_refused_and_nothing_changes(reference):
    before = weights_sha(reference), sorted(p.name for p in (reference / STATE_DIR).iterdir())
    with pytest.raises(CheckpointError, match="already holds a checkpointed run(?s:.*)resume=true"):
        train(run_config([*RESUMABLE, "trainer.epochs=1"]), reference)
    assert (weights_sha(reference), sorted(p.name for p in (reference / STATE_DIR).iterdir())) == before


def test_damaged_latest_checkpoint_falls_back_to_the_previous_good_one(tmp_path, reference, caplog):
    out = tmp_path / "run"
    train(run_config([*RESUMABLE, "trainer.epochs=2", "trainer.keep_checkpoints=3"]), out)
    latest = out / STATE_DIR / (out / STATE_DIR / "latest").read_text().strip()
    weights = latest / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-7])  # truncated
    ckpt = load_latest_state(out)
    assert ckpt.path != latest and "checksum mismatch" in caplog.text and latest.name in caplog.text
    for folder in (out / STATE_DIR).glob("step-*"):
        (folder / "weights.safetensors").write_bytes(b"\0" * 64)  # zeroed
    with pytest.raises(CheckpointError, match="no usable train-state checkpoint"):
        load_latest_state(out)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(TrainingStopped, match=r"loss became NaN(?s:.*)last good checkpoint is kept"):
        train(run_config([*RESUMABLE, "trainer.epochs=3", "optimizer=sgd", "optimizer.lr=1e12"]), out)
    assert not (out / "checkpoint").exists() and not (out / "metrics.json").exists()
    for folder in (out / STATE_DIR).glob("step-*"):  # whatever was kept is finite
        assert all(np.isfinite(v).all() for v in load_checkpoint(folder).tensors.values())


def _cli(out, *extra, **kw):
    return subprocess.Popen(
        [sys.executable, "-m", "dynarch", *RESUMABLE, "trainer.epochs=4", f"hydra.run.dir={out}", *extra],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


@pytest.mark.slow
def test_sigkill_at_five_random_points_then_resume_is_bitwise_identical(tmp_path):
    ref = tmp_path / "ref"
    assert _cli(ref).wait(timeout=300) == 0
    rng, kills = random.Random(7), 0
    for attempt in range(12):
        if kills == 5:
            break
        out = tmp_path / f"killed{attempt}"
        proc = _cli(out)
        # The kill point is random (the sleep below) but counted from the first checkpoint (a condition). The
        # deadline only bounds a run that hangs: it used to fall through and kill a run still starting on a
        # loaded machine, which then failed as "no usable train-state checkpoint" instead of saying so.
        deadline = time.monotonic() + 600
        while not (out / STATE_DIR / "latest").exists():
            assert proc.poll() is None, f"the run ended before its first checkpoint: {proc.stderr.read()[-2000:]}"
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail("no train-state checkpoint within 600 s")
            time.sleep(0.02)
        time.sleep(rng.uniform(0, 1.5))
        proc.kill()  # SIGKILL: no handler runs, no checkpoint is written on the way out
        proc.wait()
        if (out / "checkpoint").exists():
            continue  # finished before the kill landed: not a kill point
        killed = load_latest_state(out)
        if killed.manifest["epoch"] == 4:
            continue  # killed after the last step (evaluating, writing): training itself was not interrupted
        kills += 1
        assert not np.array_equal(killed.tensors["model/dense/kernel"], load_checkpoint(ref).tensors["dense/kernel"])
        resumed = _cli(out, "resume=true")
        assert resumed.wait(timeout=300) == 0, resumed.stderr.read()[-2000:]
        assert weights_sha(out) == weights_sha(ref), f"kill {kills} at epoch {killed.manifest['epoch']}"
    assert kills == 5


@pytest.mark.slow
def test_sigterm_prints_the_resume_command_and_it_works(tmp_path):
    ref, out = tmp_path / "ref", tmp_path / "run"
    assert _cli(ref).wait(timeout=300) == 0
    proc = _cli(out)
    while not (out / STATE_DIR / "latest").exists() and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    out_text, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    command = (out_text + err).split("continue with: ")[1].split("\n")[0]
    assert command.startswith("python -m dynarch") and command.endswith("resume=true")
    args = command.split()[3:]
    assert subprocess.run([sys.executable, "-m", "dynarch", *args], cwd=ROOT, capture_output=True).returncode == 0
    assert weights_sha(out) == weights_sha(ref)


@pytest.mark.slow
def test_two_fresh_processes_give_identical_weights(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    procs = [_cli(a, "trainer.epochs=2"), _cli(b, "trainer.epochs=2")]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    assert weights_sha(a) == weights_sha(b)


def _signal_self(signum):
    handler = signal.getsignal(signum)
    assert getattr(handler, "__module__", "") == "dynarch.train", f"no dynarch handler: {handler}"
    os.kill(os.getpid(), signum)


def test_ctrl_c_during_start_up_is_a_clear_stop(tmp_path, monkeypatch):
    import dynarch.data

    def interrupted_load(*args, **kwargs):
        _signal_self(signal.SIGINT)
        raise AssertionError("the handler should have interrupted")

    monkeypatch.setattr(dynarch.data, "load_arrays", interrupted_load)
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when the test runner was started in the background
    with pytest.raises(TrainingStopped, match="interrupted by signal 2 outside the training loop") as err:
        train(run_config([*RESUMABLE, "trainer.epochs=1"]), tmp_path / "run")
    assert err.value.exit_code == 130 and not (tmp_path / "run" / "state").exists()
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored


def test_sigterm_during_evaluation_then_resume_finishes_the_run(tmp_path, reference, monkeypatch):
    import dynarch.artifacts

    out = tmp_path / "run"
    real = dynarch.artifacts.plot_curves
    monkeypatch.setattr(dynarch.artifacts, "plot_curves", lambda *a, **k: _signal_self(signal.SIGTERM))
    with pytest.raises(TrainingStopped, match="(?s)interrupted by signal 15.*continue with: CMD") as err:
        train(run_config([*RESUMABLE, "trainer.epochs=3"]), out, resume_command="CMD")
    assert err.value.exit_code == 143 and not (out / "checkpoint").exists()
    monkeypatch.setattr(dynarch.artifacts, "plot_curves", real)
    metrics = train(run_config([*RESUMABLE, "trainer.epochs=3", "resume=true"]), out, resume=True)
    assert metrics["epochs"] == 3 and weights_sha(out) == weights_sha(reference)


def test_a_learning_rate_schedule_resumes_bitwise(tmp_path):
    cosine = ["optimizer=adam_cosine", "optimizer.warmup_steps=50", "optimizer.decay_steps=300", "trainer.epochs=2"]
    ref, out = tmp_path / "ref", tmp_path / "run"
    train(run_config([*RESUMABLE, *cosine]), ref)
    with pytest.raises(TrainingStopped, match="stopped by signal 15"):
        train(run_config([*RESUMABLE, *cosine]), out, callbacks=[SignalAtStep(150)])
    assert load_latest_state(out).manifest["epoch"] == 1  # stopped inside the second epoch
    train(run_config([*RESUMABLE, *cosine, "resume=true"]), out, resume=True)
    assert weights_sha(out) == weights_sha(ref)


def test_a_resealed_state_with_impossible_batches_done_is_refused(tmp_path):
    """A manifest edited and re-hashed (valid checksums) must still not resume into nonsense."""
    import dynarch.checkpoint as ck

    out = tmp_path / "run"
    train(run_config([*RESUMABLE, "trainer.epochs=1", "data.limit_train=400"]), out)
    latest = load_latest_state(out).path
    manifest = json.loads((latest / "manifest.json").read_text())
    manifest.update(epoch=0, batches_done=1_000_000_000)
    manifest["manifest_sha256"] = ck.manifest_digest(manifest)
    (latest / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"(?s)1000000000 batches of epoch 1 are done, but an epoch has 12.*fix:"):
        train(run_config([*RESUMABLE, "trainer.epochs=2", "data.limit_train=400", "resume=true"]), out, resume=True)
