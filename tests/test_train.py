"""End to end: compose -> validate -> train -> run dir; and the real CLI in a subprocess."""

import csv
import json

import numpy as np
from conftest import TINY, cli

from dynarch.checkpoint import load_checkpoint


def test_tiny_run_writes_every_artifact_and_learns(tiny_run):
    metrics, out = tiny_run(["trainer.epochs=3"])
    for name in (
        "model.md",
        "metrics.json",
        "history.csv",
        "curves.png",
        "checkpoint/weights.safetensors",
        "checkpoint/manifest.json",
    ):
        assert (out / name).is_file(), name
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == metrics
    assert saved["data_source"] == "subset:mnist_5k" and saved["data_sizes"] == {"train": 540, "val": 60, "test": 300}
    assert saved["test_accuracy"] > 0.5  # chance is 0.1
    assert saved["params"] == 101_770 and saved["samples_per_s"] > 0
    rows = list(csv.DictReader((out / "history.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"] and float(rows[-1]["loss"]) < float(rows[0]["loss"])
    ckpt = load_checkpoint(out)
    assert set(ckpt.tensors) == {"dense/kernel", "dense/bias", "head/kernel", "head/bias"}
    assert ckpt.manifest["variant"] == "base" and ckpt.manifest["num_classes"] == 10
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_no_dense_variant_trains_with_reshaped_head(tiny_run):
    metrics, out = tiny_run(["+arch=no_dense"])
    assert metrics["params"] == 7_850 and "dense" not in metrics["enabled_blocks"]
    assert load_checkpoint(out).tensors["head/kernel"].shape == (784, 10)
    assert "| dense | dense | identity | (784,) | 0 |" in (out / "model.md").read_text()


def test_cnn_variant_trains(tiny_run):
    metrics, out = tiny_run(["model=cnn", "+arch=no_conv2", "trainer.epochs=1"])
    assert metrics["enabled_blocks"] == ["stage1/conv", "stage1/pool", "flatten", "dropout", "head"]
    assert set(load_checkpoint(out).tensors) == {"stage1/conv/kernel", "stage1/conv/bias", "head/kernel", "head/bias"}


def test_same_seed_same_weights(tiny_run):
    _, a = tiny_run(["trainer.epochs=1"], name="a")
    _, b = tiny_run(["trainer.epochs=1"], name="b")
    wa, wb = load_checkpoint(a).tensors, load_checkpoint(b).tensors
    assert all(np.array_equal(wa[k], wb[k]) for k in wa)


def test_cli_trains_offline_into_hydra_run_dir(tmp_path):
    out = tmp_path / "run"
    proc = cli(*TINY, "trainer.epochs=1", "+arch=no_dropout", f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "test accuracy" in proc.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["variant"] == "no_dropout" and (out / "config.yaml").is_file()
    assert "dropout" not in metrics["enabled_blocks"]


def test_fast_defaults_pick_threads_by_model_size():
    from conftest import run_config

    from dynarch.runtime.tensorflow import SMALL_MODEL_FLOPS, intra_op_threads

    mlp, cnn = run_config([]), run_config(["model=cnn"])
    assert mlp.arch.forward_flops == 2 * (784 * 128 + 128 * 10) < SMALL_MODEL_FLOPS < cnn.arch.forward_flops
    assert intra_op_threads(mlp.trainer, mlp.arch.forward_flops, has_gpu=False) == 1
    assert intra_op_threads(cnn.trainer, cnn.arch.forward_flops, has_gpu=False) == 0
    assert intra_op_threads(mlp.trainer, mlp.arch.forward_flops, has_gpu=True) == 0
    pinned = run_config(["trainer.intra_op_threads=3"])
    assert intra_op_threads(pinned.trainer, pinned.arch.forward_flops, has_gpu=False) == 3


def test_mixed_precision_keeps_a_float32_head(tiny_run):
    import keras
    from conftest import run_config

    from dynarch.build import build_model

    metrics, out = tiny_run(["trainer.precision=mixed_bfloat16", "trainer.epochs=1"])
    try:
        assert keras.config.dtype_policy().name == "mixed_bfloat16"
        model = build_model(run_config([]).arch)
        assert model.get_layer("dense").compute_dtype == "bfloat16"
        assert model.get_layer("head").compute_dtype == "float32" and model.output.dtype == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert metrics["test_accuracy"] > 0.3
    assert load_checkpoint(out).tensors["dense/kernel"].dtype == np.float32  # variables stay float32


def test_progress_bar_shows_global_epochs_and_true_step_counts(tiny_run, capfd):
    """One fit per phase: Keras' own progress bar counts epochs and steps of the whole run."""
    tiny_run(["trainer.epochs=3", "trainer.verbose=1", "trainer.batch_size=32"])
    out = capfd.readouterr().out
    assert [line for line in out.splitlines() if line.startswith("Epoch ")] == ["Epoch 1/3", "Epoch 2/3", "Epoch 3/3"]
    assert "17/17" in out and "64/" not in out  # 540 training images / 32 = 17 steps, whatever steps_per_execution
