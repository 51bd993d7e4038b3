"""The PyTorch backend (`backend=torch`): validated like the others, then build, train, evaluate, migrate
across backends, schedules, resume after SIGKILL and sweeps — WITHOUT TensorFlow (every torch process here
has `tensorflow` and `tensorflow_datasets` blocked in sys.modules, as on a GPU box without TensorFlow).

Keras fixes its backend per process: this test process runs TensorFlow; every torch run is a subprocess
(the CLI, or this file run as a script: `python tests/test_backend_torch.py COMMAND ...`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import run_config  # noqa: E402
from helpers import BACKEND_CFG, backend_env, migrated_outputs, ok, run_blocked, weights_sha  # noqa: E402

CFG = BACKEND_CFG
KILL_STEP = 26  # epoch 2, after the step-24 checkpoint (7 of its 17 batches done)
EVERY = 8  # trainer.checkpoint_every in BACKEND_CFG


def torch_module(module: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m MODULE ARGS` on torch with TensorFlow blocked."""
    return run_blocked(module, *args, env=backend_env("torch"), timeout=timeout)


def torch_driver(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """This file as a script, on torch with TensorFlow blocked (see `main` at the bottom)."""
    return run_blocked(str(Path(__file__)), *args, env=backend_env("torch"), timeout=timeout)


# -- runs shared by the tests ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def torch_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("torch") / "run"
    ok(torch_module("dynarch", *CFG, "backend=torch", f"hydra.run.dir={out}"))
    return out


# -- choosing the backend and the runtime's rules (in this process, fast) ---------------------------------
def test_backend_torch_is_chosen_by_the_key_or_keras_backend(monkeypatch):
    monkeypatch.setenv("KERAS_BACKEND", "torch")
    assert run_config(CFG).backend == "torch"
    monkeypatch.delenv("KERAS_BACKEND")
    assert run_config([*CFG, "++backend=torch"]).backend == "torch"


def test_torch_not_installed_names_the_extra(monkeypatch):
    import dynarch.runtime.backend as backend
    from dynarch.errors import ConfigError

    monkeypatch.setattr(backend, "_installed", lambda module: module != "torch")
    with pytest.raises(ConfigError) as err:
        run_config([*CFG, "++backend=torch"])
    text = str(err.value)
    assert "the torch backend is not installed" in text and "fix: pip install 'dynarch[torch]'" in text


@pytest.mark.parametrize(
    "override, key",
    [("trainer.strategy=mirrored", "trainer.strategy"), ("trainer.logical_cpus=2", "trainer.logical_cpus")],
)
def test_several_devices_are_refused_on_torch_with_a_fix(override, key):
    from dynarch.errors import ConfigError
    from dynarch.runtime.torch import _check_trainer

    run = run_config([*CFG, "++backend=torch", override])
    with pytest.raises(ConfigError) as err:
        _check_trainer(run.trainer)
    text = str(err.value)
    assert text.startswith(key) and "backend=jax" in text and "fix:" in text


def test_torch_runs_one_step_per_call_and_threads_follow_the_model_size():
    from dynarch.runtime import auto_intra_op_threads
    from dynarch.runtime.torch import TorchRuntime

    assert TorchRuntime().steps_per_execution(64) == 1
    trainer = run_config(CFG).trainer
    assert auto_intra_op_threads(trainer, 100_000, has_accelerator=False) == 1  # small model on CPU
    assert auto_intra_op_threads(trainer, 10**8, has_accelerator=False) == 0  # backend default
    assert auto_intra_op_threads(trainer, 100_000, has_accelerator=True) == 0
    assert auto_intra_op_threads(run_config([*CFG, "trainer.intra_op_threads=3"]).trainer, 1, False) == 3


# -- torch end to end (subprocesses) ----------------------------------------------------------------------
@pytest.mark.slow
def test_torch_trains_without_tensorflow_and_writes_the_same_artifacts(tf_run, torch_run):
    cli_only = {"__main__.log", ".hydra", "config.yaml"}  # written by the entry point
    assert {p.name for p in tf_run.iterdir()} == {p.name for p in torch_run.iterdir()} - cli_only
    metrics = json.loads((torch_run / "metrics.json").read_text())
    assert metrics["backend"] == "torch" and "torch" in metrics["versions"] and "tensorflow" not in metrics["versions"]
    assert metrics["test_accuracy"] > 0.3 and metrics["epochs"] == 2
    from dynarch.checkpoint import load_checkpoint
    from dynarch.resume import load_latest_state

    a, b = load_checkpoint(tf_run).tensors, load_checkpoint(torch_run).tensors
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}  # same paths, same shapes
    a, b = load_latest_state(tf_run), load_latest_state(torch_run)
    assert {k: v.shape for k, v in a.tensors.items()} == {k: v.shape for k, v in b.tensors.items()}
    assert (a.manifest["step"], a.manifest["epoch"]) == (b.manifest["step"], b.manifest["epoch"]) == (34, 2)


@pytest.mark.slow
def test_evaluate_a_torch_run_on_torch(torch_run, tmp_path):
    out = tmp_path / "eval"
    ok(torch_module("dynarch.evaluate", str(torch_run), "--out", str(out)))
    report = json.loads((out / "report.json").read_text())
    metrics = json.loads((torch_run / "metrics.json").read_text())
    accuracy = report.get("accuracy", report.get("test_accuracy"))
    assert accuracy == pytest.approx(metrics["test_accuracy"], abs=1e-6), report


@pytest.mark.slow
def test_checkpoints_cross_tf_and_torch_with_identical_outputs(tf_run, torch_run, tmp_path):
    """TF-trained -> torch model (init_from) and torch-trained -> TF model: the same outputs before training."""
    ok(torch_driver("migrated", str(tf_run), str(tmp_path / "tf_to_torch.npy")))
    ok(torch_driver("migrated", str(torch_run), str(tmp_path / "torch_to_torch.npy")))
    tf_to_tf, torch_to_tf = migrated_outputs(tf_run, []), migrated_outputs(torch_run, [])
    tf_to_torch, torch_to_torch = np.load(tmp_path / "tf_to_torch.npy"), np.load(tmp_path / "torch_to_torch.npy")
    assert np.abs(tf_to_torch - tf_to_tf).max() < 1e-5
    assert np.abs(torch_to_tf - torch_to_torch).max() < 1e-5
    assert np.abs(tf_to_tf - torch_to_tf).max() > 1e-3  # two different trainings: the check can fail
    out = tmp_path / "warm"  # and through the CLI: a torch run warm-started from the TF run
    ok(
        torch_module(
            "dynarch",
            *CFG,
            "backend=torch",
            "trainer.epochs=1",
            f"init_from={tf_run}",
            "migrate.strict=true",
            f"hydra.run.dir={out}",
        )
    )
    assert json.loads((out / "metrics.json").read_text())["migrated_from"]


@pytest.mark.slow
def test_torch_sigkill_mid_epoch_then_resume_is_bitwise_identical_on_cpu(torch_run, tmp_path):
    """SIGKILL (no handler runs) after the step-24 checkpoint; `resume=true` continues from it and ends with
    the uninterrupted run's weights, bit for bit (CPU; see the README for what PyTorch guarantees). It needs
    build_model's Dropout layers seeded: unseeded, torch draws their masks from its global RNG, which the
    train-state does not hold. The kill waits until `latest` names step 24: that write runs on the background
    writer, and two torch steps were not always enough for it (under load `latest` still named step 17)."""
    out = tmp_path / "run"
    killed = torch_driver("kill_at", str(KILL_STEP), str(out))
    assert killed.returncode == -9, (killed.stdout + killed.stderr)[-3000:]
    from dynarch.resume import load_latest_state

    state = load_latest_state(out).manifest
    assert (state["step"], state["epoch"], state["batches_done"]) == (24, 1, 7), state
    assert not (out / "checkpoint").exists()
    ok(torch_module("dynarch", *CFG, "backend=torch", f"hydra.run.dir={out}", "resume=true"))
    assert json.loads((out / "metrics.json").read_text())["resumed"]
    assert weights_sha(out) == weights_sha(torch_run)


@pytest.mark.slow
def test_a_schedule_runs_on_torch(tmp_path):
    out = tmp_path / "run"
    ok(torch_module("dynarch", *CFG, "backend=torch", "+schedule=grow", f"hydra.run.dir={out}"))
    metrics = json.loads((out / "metrics.json").read_text())
    assert [p["name"] for p in metrics["phases"]] == ["base", "deep"] and metrics["backend"] == "torch"
    assert (out / "migration-phase-1.json").is_file() and (out / "model-phase-1.md").is_file()


@pytest.mark.slow
def test_a_two_job_sweep_runs_on_torch(tmp_path):
    sweep = tmp_path / "sweep"
    ok(
        torch_module(
            "dynarch",
            "-m",
            *CFG,
            "backend=torch",
            "trainer.epochs=1",
            "optimizer.lr=0.01,0.002",
            f"hydra.sweep.dir={sweep}",
        )
    )
    jobs = sorted(p.parent for p in sweep.glob("*/metrics.json"))
    assert len(jobs) == 2, list(sweep.rglob("*"))
    metrics = [json.loads((j / "metrics.json").read_text()) for j in jobs]
    assert {m["backend"] for m in metrics} == {"torch"} and metrics[0]["test_loss"] != metrics[1]["test_loss"]


# -- the torch side of the tests above, run as `python tests/test_backend_torch.py COMMAND ...` ------------
def _kill_at(step: int, out: Path) -> None:
    """Train until the optimizer reaches `step` and the checkpoint before it is on disk, then SIGKILL this
    process (conditions, not timers). The checkpoint is written on dynarch's background writer while training
    goes on (dynarch/background.py): reaching the step does not mean its write is done."""
    import signal
    import time

    import keras

    from dynarch.train import train

    saved = out / "state" / "latest"
    wanted = f"step-{step - step % EVERY:09d}"  # the last train-state checkpoint at or before `step`

    class KillAtStep(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if int(self.model.optimizer.iterations.numpy()) >= step:
                deadline = time.monotonic() + 300  # a bound for a write that never lands, not the synchronisation
                while not (saved.is_file() and saved.read_text().strip() == wanted):
                    if time.monotonic() > deadline:
                        raise SystemExit(f"{saved} never named {wanted}")
                    time.sleep(0.01)  # the writer thread runs meanwhile
                os.kill(os.getpid(), signal.SIGKILL)

    train(run_config([*CFG, "++backend=torch"]), out, resume_command="CMD", callbacks=[KillAtStep()])
    raise SystemExit("not killed")


def _migrated(source: Path, dest: Path) -> None:
    np.save(dest, migrated_outputs(source, ["++backend=torch"]))


def main(argv: list[str]) -> None:
    assert sys.modules.get("tensorflow") is None
    command, *args = argv
    {
        "migrated": lambda: _migrated(Path(args[0]), Path(args[1])),
        "kill_at": lambda: _kill_at(int(args[0]), Path(args[1])),
    }[command]()
    assert sys.modules.get("tensorflow") is None  # nothing imported TensorFlow on the way


if __name__ == "__main__":
    main(sys.argv[1:])
