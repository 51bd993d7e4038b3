"""The three everyday failures of plain Keras (DESIGN.md), each next to what dynarch does instead."""

import warnings

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import run_config

from dynarch.build import build_model
from dynarch.checkpoint import model_tensors, save_checkpoint
from dynarch.migrate import migrate_model


def plain_mlp(hidden):
    inp = keras.Input((28, 28, 1))
    x = keras.layers.Flatten(name="flatten")(inp)
    for name in hidden:
        x = keras.layers.Dense(128, activation="relu", name=name)(x)
    return keras.Model(inp, keras.layers.Dense(10, activation="softmax", name="head")(x))


def test_1_removing_a_layer(tiny_run):
    # Plain Keras: popping from `layers` is a silent no-op (it is a copy) ...
    seq = keras.Sequential(
        [keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(128), keras.layers.Dense(10)]
    )
    before = len(seq.layers)
    seq.layers.pop(1)
    assert len(seq.layers) == before and seq.count_params() == 784 * 128 + 128 + 1290
    # ... and rebuilding without it reuses a head built for 128 inputs: the error comes at build time.
    flatten, _, head = seq.layers
    with pytest.raises(ValueError):
        keras.Sequential([keras.Input((28, 28, 1)), flatten, head])
    # dynarch: a config switch; the slot becomes an Identity and the head's fan-in follows.
    metrics, _ = tiny_run(["+arch=no_dense", "optimizer.lr=0.01"])
    assert metrics["params"] == 784 * 10 + 10 and metrics["test_accuracy"] > 0.3


def test_2_conditional_layer_is_not_conditional():
    # Plain Keras: tf.cond around layer construction runs once, eagerly, on the flag's current value.
    flag = tf.Variable(True)
    inp = keras.Input((784,))
    out = tf.cond(flag, lambda: keras.layers.Dense(8)(inp), lambda: keras.layers.Dense(8)(keras.layers.Identity()(inp)))
    model = keras.Model(inp, out)
    params = model.count_params()
    flag.assign(False)  # "switch the layer off"
    assert keras.Model(inp, out).count_params() == params  # nothing changed: it was never conditional
    # dynarch: the switch is config, so each value builds its own honest graph.
    on, off = (build_model(run_config([f"model.blocks.dense.enabled={v}"]).arch) for v in ("true", "false"))
    assert on.count_params() == 101_770 and off.count_params() == 7_850
    assert isinstance(off.get_layer("dense"), keras.layers.Identity)


def test_3_restoring_into_a_changed_architecture(tmp_path):
    base = plain_mlp(["dense"])
    base.save_weights(tmp_path / "base.weights.h5")
    with pytest.raises(ValueError, match="must end in `.weights.h5`"):
        base.save_weights(tmp_path / "base.h5")
    # The file addresses layers by class-name counters, not by their names: "head" is stored as dense_1.
    with h5py.File(tmp_path / "base.weights.h5") as f:
        assert "layers/dense_1" in f and "layers/head" not in f
    # Growing: load_weights fails with a shape error.
    with pytest.raises(ValueError, match="could not be loaded"):
        plain_mlp(["dense", "extra"]).load_weights(tmp_path / "base.weights.h5")
    # Shrinking with skip_mismatch=True: only a warning; the head silently keeps its random init.
    shrunk = plain_mlp([])
    fresh = shrunk.get_layer("head").kernel.numpy().copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        shrunk.load_weights(tmp_path / "base.weights.h5", skip_mismatch=True)
    assert np.array_equal(shrunk.get_layer("head").kernel.numpy(), fresh)

    # dynarch: by variable path, every variable accounted for, growth function-preserving.
    src = build_model(run_config([]).arch)
    save_checkpoint(
        tmp_path / "run" / "checkpoint",
        model_tensors(src),
        {"model": "mlp", "variant": "base", "num_classes": 10, "input_shape": [28, 28, 1]},
    )
    for variant, expected in (
        ("deep", {"copied": 4, "adapted": 0, "reinitialized": 2, "dropped": 0}),
        ("no_dense", {"copied": 1, "adapted": 0, "reinitialized": 1, "dropped": 2}),
    ):
        run = run_config([f"+arch={variant}"])
        report = migrate_model(build_model(run.arch), run.arch, tmp_path / "run")
        assert report.counts() == expected, report.to_markdown()
