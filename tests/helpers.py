"""Helpers shared by several test modules (test modules never import each other)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
from conftest import CONF, ROOT, run_config


def snapshot(root):
    """SHA-256 of every file under `root`: compare before/after to prove nothing was touched."""
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


class Case:
    """prepare(tmp) -> extra overrides (files made outside the run dir); then act(tmp, extra) must fail."""

    def __init__(self, act, prepare=None):
        self.act, self.prepare = act, prepare or (lambda tmp: [])


def fits(model, arch):
    """From the layout: conf/arch/<model>/NAME.yaml fits <model>."""
    return arch is None or arch.split("/")[0] == model


def make_source(tmp_path, overrides=(), name="src"):
    """A checkpoint of a built (untrained, biases perturbed) model: as a real run would leave it."""
    from dynarch.build import build_model
    from dynarch.checkpoint import model_tensors, save_checkpoint

    run = run_config(list(overrides))
    model = build_model(run.arch)
    rng = np.random.default_rng(1)
    for v in model.weights:
        if v.path.endswith("bias"):
            v.assign(rng.normal(0, 0.1, v.shape).astype("float32"))
    save_checkpoint(
        tmp_path / name / "checkpoint",
        model_tensors(model),
        {
            "model": run.arch.name,
            "variant": run.variant,
            "num_classes": run.arch.num_classes,
            "input_shape": list(run.arch.input_shape),
        },
    )
    return tmp_path / name, model


def compose_groups(tmp_path: Path, overrides: list[str]) -> dict:
    """Compose conf/callbacks and conf/logger under a primary config with the defaults the lead wires in
    (`- callbacks: default`, `- logger: null`), independent of conf/config.yaml."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    conf = tmp_path / "conf"
    for group in ("callbacks", "logger"):
        shutil.copytree(CONF / group, conf / group, dirs_exist_ok=True)
    (conf / "config.yaml").write_text("defaults:\n  - callbacks: default\n  - logger: null\n  - _self_\n")
    with initialize_config_dir(str(conf), version_base="1.3"):
        return OmegaConf.to_container(compose("config", overrides=overrides), resolve=True)


def run_module_reporting_tf(module: str, argv: list[str]):
    """Run `python -m module argv...` in a fresh process via runpy; stdout ends with `EXIT <code>` (when it
    exits) and then `TF_IMPORTED` or `NO_TF`, telling whether TensorFlow was imported on the way."""
    import subprocess
    import sys

    from conftest import ROOT

    code = (
        f"import sys, runpy\nsys.argv = [{module!r}, *{argv!r}]\n"
        f"try:\n    runpy.run_module({module!r}, run_name='__main__')\nexcept SystemExit as e:\n"
        "    print('EXIT', e.code)\n"
        "print('TF_IMPORTED' if 'tensorflow' in sys.modules else 'NO_TF')\n"
    )
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)


# Small batches and frequent checkpoints: many steps, so that a stop lands mid-epoch.
RESUMABLE = [
    "data=mnist_subset",
    "trainer.verbose=0",
    "trainer.batch_size=32",
    "trainer.steps_per_execution=4",
    "trainer.checkpoint_every=8",
]


def weights_sha(run_dir):
    return json.loads((run_dir / "checkpoint" / "manifest.json").read_text())["weights_sha256"]


class SignalAtStep(keras.callbacks.Callback):
    """Sends SIGTERM to this process once training reaches `step` — a condition, not a timer. It refuses
    to signal unless dynarch's handler is installed, so the test runner itself can never be killed."""

    def __init__(self, step):
        super().__init__()
        self.step, self.sent = step, False

    def on_train_batch_end(self, batch, logs=None):
        if not self.sent and int(self.model.optimizer.iterations.numpy()) >= self.step:
            handler = signal.getsignal(signal.SIGTERM)
            assert getattr(handler, "__module__", "") == "dynarch.train", f"no dynarch handler: {handler}"
            self.sent = True
            os.kill(os.getpid(), signal.SIGTERM)


# -- runs on another Keras backend, in a subprocess with TensorFlow blocked (as on a GPU box without it) ----
# 540 training samples in batches of 32: 17 steps an epoch, checkpoints every 8 steps, 4 steps per call
# (1 on torch, whose runtime forces it).
BACKEND_CFG = [
    "data=mnist_subset",
    "data.limit_train=600",
    "data.limit_test=200",
    "trainer.epochs=2",
    "trainer.verbose=0",
    "trainer.batch_size=32",
    "trainer.steps_per_execution=4",
    "trainer.checkpoint_every=8",
]
BLOCKED = ("tensorflow", "tensorflow_datasets")
NO_TF = f"import sys; sys.modules.update(dict.fromkeys({BLOCKED!r}))"  # `import tensorflow` -> ImportError


def backend_env(backend: str) -> dict[str, str]:
    return {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(ROOT)}


def run_blocked(target: str, *args: str, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m TARGET ARGS` (a module name) or `python TARGET ARGS` (a .py path), TensorFlow blocked."""
    run = "runpy.run_path(sys.argv[0]" if target.endswith(".py") else f"runpy.run_module({target!r}"
    code = f"{NO_TF}; import runpy; sys.argv = [{target!r}, *sys.argv[1:]]; {run}, run_name='__main__')"
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env
    )


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc


def migrated_outputs(source: Path, overrides: list[str]) -> np.ndarray:
    """The `init_from=source` model of this process's backend before any training: outputs on 64 test images."""
    from dynarch.build import build_model
    from dynarch.data import load_arrays
    from dynarch.data.numpy_pipeline import scale
    from dynarch.migrate import migrate_model
    from dynarch.runtime import get_runtime

    run = run_config([*BACKEND_CFG, *overrides, f"init_from={source}"])
    runtime = get_runtime(run.backend)
    runtime.configure(run.trainer, run.seed)
    model = build_model(run.phases[0].arch)
    report = migrate_model(
        model,
        run.phases[0].arch,
        source,
        new_blocks=run.migrate.new_blocks,
        strict=True,
        seed=run.seed,
        target_variant=run.variant,
    )
    assert report is not None
    x = scale(load_arrays(run.data, run.seed).test[0][:64])
    return np.asarray(keras.ops.convert_to_numpy(model(x, training=False)), dtype=np.float32)
