"""Keras backends: `backend: tensorflow | jax` chosen before any framework import; JAX runs train, migrate
across backends, resume bitwise and run schedules WITHOUT TensorFlow (every JAX process here has
`tensorflow` and `tensorflow_datasets` blocked in sys.modules, as on a GPU box that has no TensorFlow).

Keras fixes its backend per process: this test process runs TensorFlow; every JAX run is a subprocess
(the CLI, or this file run as a script: `python tests/test_backends.py COMMAND ...`).
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
from conftest import ROOT, run_config  # noqa: E402
from helpers import BACKEND_CFG, BLOCKED, backend_env, migrated_outputs, ok, run_blocked, weights_sha  # noqa: E402

CFG = BACKEND_CFG
SIGNAL_STEP = 20  # inside the second epoch (steps 18..34)


def jax_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m dynarch ARGS` on JAX with TensorFlow blocked."""
    return run_blocked("dynarch", *args, env=backend_env("jax"), timeout=timeout)


def jax_driver(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """This file as a script, on JAX with TensorFlow blocked (see `main` at the bottom)."""
    return run_blocked(str(Path(__file__)), *args, env=backend_env("jax"), timeout=timeout)


# -- runs shared by the tests ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def jax_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("jax") / "run"
    ok(jax_cli(*CFG, "backend=jax", f"hydra.run.dir={out}"))
    return out


# -- choosing the backend (pure Python, fast) -------------------------------------------------------------
class _Data:
    loader, name, augment = "subset", "mnist_5k", None


def test_the_config_key_wins_then_keras_backend_then_tensorflow(monkeypatch):
    from dynarch.runtime.backend import resolve_backend

    monkeypatch.setenv("KERAS_BACKEND", "jax")
    assert resolve_backend("tensorflow", _Data()) == "tensorflow"
    assert resolve_backend(None, _Data()) == "jax"
    monkeypatch.delenv("KERAS_BACKEND")
    assert resolve_backend(None, _Data()) == "tensorflow"
    assert run_config([*CFG, "++backend=jax"]).backend == "jax"


@pytest.mark.parametrize(
    "where, value, words",
    [
        (
            "backend",
            "pytorch",
            ["backend:", "unknown Keras backend 'pytorch'", "fix: set backend=tensorflow, backend=jax or backend="],
        ),
        ("backend", "jaxx", ["backend:", "unknown Keras backend 'jaxx'", "fix:"]),
        ("KERAS_BACKEND", "numpy", ["KERAS_BACKEND:", "unknown Keras backend 'numpy'", "unset KERAS_BACKEND"]),
    ],
)
def test_a_bad_backend_is_refused_before_any_framework_import(monkeypatch, where, value, words):
    from dynarch.errors import ConfigError

    if where == "KERAS_BACKEND":
        monkeypatch.setenv("KERAS_BACKEND", value)
        overrides = CFG
    else:
        overrides = [*CFG, f"++backend={value}"]
    with pytest.raises(ConfigError) as err:
        run_config(overrides)
    for word in words:
        assert word in str(err.value)


def test_tfds_and_augmentation_are_refused_off_tensorflow_where_they_cannot_run(monkeypatch):
    """In-process: TensorFlow is installed here, so its absence is simulated at the one place that asks."""
    import dynarch.runtime.backend as backend
    from dynarch.errors import ConfigError, DataError

    assert run_config(["data=mnist", "++backend=jax"]).backend == "jax"  # TensorFlow installed: TFDS can load
    monkeypatch.setattr(backend, "_installed", lambda module: module not in BLOCKED)
    with pytest.raises(DataError, match=r"(?s)data.loader=tfds \('mnist'\) needs TensorFlow.*fix: export"):
        run_config(["data=mnist", "++backend=jax"])
    with pytest.raises(ConfigError, match=r"(?s)the tensorflow backend is not installed.*fix: pip install"):
        run_config(["data=mnist"])
    with pytest.raises(ConfigError, match=r"(?s)data.augment.*fix: drop data.augment"):
        run_config([*CFG, "++backend=jax", "+data.augment=[{_target_: keras.layers.RandomFlip}]"])
    monkeypatch.setattr(backend, "_installed", lambda module: True)
    with pytest.raises(ConfigError, match=r"(?s)logger.tensorboard: TensorBoard logging needs the TensorFlow backend"):
        run_config([*CFG, "backend=jax", "logger=tensorboard"])
    monkeypatch.setattr(backend, "_installed", lambda module: module != "jax")
    with pytest.raises(ConfigError, match=r"(?s)the jax backend is not installed.*pip install 'dynarch\[jax\]'"):
        run_config([*CFG, "++backend=jax"])


def test_tfds_fails_clearly_on_a_machine_without_tensorflow(tmp_path):
    """A real process without TensorFlow: `data=mnist backend=jax` stops at validation with a fix."""
    out = tmp_path / "run"
    proc = jax_cli("data=mnist", "backend=jax", f"hydra.run.dir={out}", timeout=120)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 2, text[-3000:]
    assert "needs TensorFlow and tensorflow-datasets" in text and "fix:" in text and "Traceback" not in text
    assert not (out / "checkpoint").exists() and not (out / "state").exists()


# -- the input pipeline without TensorFlow ----------------------------------------------------------------
def test_the_numpy_pipeline_gives_the_tf_data_pipelines_batches_bit_for_bit():
    from dynarch.data import Pipelines, load_arrays
    from dynarch.data.numpy_pipeline import NumpyPipelines

    run = run_config(CFG)
    arrays = load_arrays(run.data, run.seed)
    ref, new = Pipelines(arrays, 32, run.seed), NumpyPipelines(arrays, 32, run.seed)
    assert (new.n_train, new.steps_per_epoch) == (ref.n_train, ref.steps_per_epoch)

    def same(tf_dataset, py_dataset):
        expected = [(x.numpy(), y.numpy()) for x, y in tf_dataset]
        got = [py_dataset[i] for i in range(len(py_dataset))]
        assert len(got) == len(expected)
        for (ex, ey), (gx, gy) in zip(expected, got):
            assert ex.dtype == gx.dtype and np.array_equal(ex, gx) and np.array_equal(ey, gy)

    same(ref.train(1, 5), new.train(1, 5))  # a resumed epoch: 5 batches already trained
    same(ref.val(), new.val())
    same(ref.test(), new.test())
    epoch = [0]
    py_epochs = new.epoch_dataset(lambda: epoch[0])
    for epoch[0] in (0, 3):  # one dataset, re-read per epoch, as in one `fit`
        same(ref.epoch_dataset(lambda: epoch[0]), py_epochs)
    assert np.array_equal(ref.probe(), new.probe())


# -- JAX end to end (subprocesses) ------------------------------------------------------------------------
@pytest.mark.slow
def test_jax_trains_without_tensorflow_and_writes_the_same_artifacts(tf_run, jax_run):
    cli_only = {"__main__.log", ".hydra", "config.yaml"}  # written by the entry point
    jax_only = {".cache"}  # trainer.compile_cache=auto: JAX's compiled programs, in the run dir outside a sweep
    assert {p.name for p in tf_run.iterdir()} == {p.name for p in jax_run.iterdir()} - cli_only - jax_only
    metrics = json.loads((jax_run / "metrics.json").read_text())
    assert metrics["backend"] == "jax" and "jax" in metrics["versions"] and "tensorflow" not in metrics["versions"]
    assert metrics["test_accuracy"] > 0.3 and metrics["epochs"] == 2
    from dynarch.checkpoint import load_checkpoint
    from dynarch.resume import load_latest_state

    a, b = load_checkpoint(tf_run).tensors, load_checkpoint(jax_run).tensors
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}  # same paths, same shapes
    a, b = load_latest_state(tf_run), load_latest_state(jax_run)
    assert {k: v.shape for k, v in a.tensors.items()} == {k: v.shape for k, v in b.tensors.items()}
    assert (a.manifest["step"], a.manifest["epoch"]) == (b.manifest["step"], b.manifest["epoch"]) == (34, 2)


def test_evaluate_and_predict_a_run_on_jax_without_tensorflow(jax_run, tmp_path):
    env = backend_env("jax")
    report = ok(run_blocked("dynarch.evaluate", str(jax_run), env=env))
    assert "report written to" in report.stdout
    x = np.load(ROOT / "dynarch" / "data" / "mnist_5k.npz")["x"][:4]
    np.savez(tmp_path / "in.npz", x=x)
    rows = ok(run_blocked("dynarch.predict", str(jax_run), "--input", str(tmp_path / "in.npz"), env=env)).stdout
    assert len([line for line in rows.splitlines() if "in.npz[" in line]) == 4


@pytest.mark.slow
def test_checkpoints_cross_backends_with_identical_outputs(tf_run, jax_run, tmp_path):
    """TF-trained -> JAX model (init_from) and JAX-trained -> TF model: the same outputs before training."""
    ok(jax_driver("migrated", str(tf_run), str(tmp_path / "tf_to_jax.npy")))
    ok(jax_driver("migrated", str(jax_run), str(tmp_path / "jax_to_jax.npy")))
    tf_to_tf, jax_to_tf = migrated_outputs(tf_run, []), migrated_outputs(jax_run, [])
    tf_to_jax, jax_to_jax = np.load(tmp_path / "tf_to_jax.npy"), np.load(tmp_path / "jax_to_jax.npy")
    assert np.abs(tf_to_jax - tf_to_tf).max() < 1e-5
    assert np.abs(jax_to_tf - jax_to_jax).max() < 1e-5
    assert np.abs(tf_to_tf - jax_to_tf).max() > 1e-3  # two different trainings: the check can fail
    # and through the CLI: a JAX run warm-started from the TF run carries every variable over
    out = tmp_path / "warm"
    ok(
        jax_cli(
            *CFG,
            "backend=jax",
            "trainer.epochs=1",
            f"init_from={tf_run}",
            "migrate.strict=true",
            f"hydra.run.dir={out}",
        )
    )
    assert json.loads((out / "metrics.json").read_text())["migrated_from"]


@pytest.mark.slow
def test_jax_sigterm_mid_epoch_then_resume_is_bitwise_identical(jax_run, tmp_path):
    out = tmp_path / "run"
    killed = json.loads(ok(jax_driver("signal_at", str(SIGNAL_STEP), str(out))).stdout.strip().splitlines()[-1])
    assert killed["exit_code"] == 143 and killed["epoch"] == 1 and 0 < killed["batches_done"] < 17, killed
    assert killed["step"] >= SIGNAL_STEP and not (out / "checkpoint").exists()
    ok(jax_cli(*CFG, "backend=jax", f"hydra.run.dir={out}", "resume=true"))
    assert json.loads((out / "metrics.json").read_text())["resumed"]
    assert weights_sha(out) == weights_sha(jax_run)


@pytest.mark.slow
def test_a_schedule_runs_on_jax(tmp_path):
    out = tmp_path / "run"
    ok(jax_cli(*CFG, "backend=jax", "+schedule=grow", f"hydra.run.dir={out}"))
    metrics = json.loads((out / "metrics.json").read_text())
    assert [p["name"] for p in metrics["phases"]] == ["base", "deep"] and metrics["epochs"] == 5
    assert (out / "migration-phase-1.json").is_file() and (out / "model-phase-1.md").is_file()


# -- the JAX side of the tests above, run as `python tests/test_backends.py COMMAND ...` -------------------
def _signal_at(step: int, out: Path) -> None:
    """Train until the optimizer reaches `step`, SIGTERM this process there (a condition, not a timer)."""
    import signal

    import keras

    from dynarch.resume import load_latest_state
    from dynarch.train import TrainingStopped, train

    class SignalAtStep(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            self.model.jax_state_sync()  # JAX keeps the live step outside the variable during fit
            if int(self.model.optimizer.iterations.numpy()) >= step and not getattr(self, "sent", False):
                assert signal.getsignal(signal.SIGTERM).__module__ == "dynarch.train"
                self.sent = True
                os.kill(os.getpid(), signal.SIGTERM)

    try:
        train(run_config([*CFG, "++backend=jax"]), out, resume_command="CMD", callbacks=[SignalAtStep()])
        code = 0
    except TrainingStopped as e:
        code = e.exit_code
    manifest = load_latest_state(out).manifest
    print(json.dumps({"exit_code": code, **{k: manifest[k] for k in ("step", "epoch", "batches_done")}}))


def main(argv: list[str]) -> None:
    assert "tensorflow" not in sys.modules or sys.modules["tensorflow"] is None
    command, *args = argv
    if command == "migrated":
        np.save(args[1], migrated_outputs(Path(args[0]), ["++backend=jax"]))
    elif command == "signal_at":
        _signal_at(int(args[0]), Path(args[1]))
    else:
        raise SystemExit(f"unknown command {command}")
    assert sys.modules.get("tensorflow") is None  # nothing imported TensorFlow on the way


if __name__ == "__main__":
    main(sys.argv[1:])


def test_a_jax_run_does_not_import_tensorflow_even_where_it_is_installed(tmp_path):
    """Keras' seeding probes `tensorflow.available`, which imports it (seconds, log noise): the JAX runtime
    seeds without that probe. TensorFlow is NOT blocked here, so an import anywhere would show."""
    code = (
        "import atexit, sys, runpy\n"
        "atexit.register(lambda: print('TF_LOADED' if 'tensorflow' in sys.modules else 'NO_TF', flush=True))\n"
        "sys.argv = ['dynarch', *sys.argv[1:]]\n"
        "runpy.run_module('dynarch', run_name='__main__')\n"
    )
    args = [*CFG, "trainer.epochs=1", "backend=jax", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=backend_env("jax"),
    )
    assert ok(proc).stdout.strip().splitlines()[-1] == "NO_TF"
