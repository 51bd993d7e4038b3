"""Callbacks from config (dynarch/hooks.py): the shipped YAML composes as a Hydra group, specs are checked
without TensorFlow, EarlyStopping stops a run and its state survives a kill, BestCheckpoint is chosen on
its metric and loads, ReduceLROnPlateau's state round-trips, TensorBoard writes into the run dir."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import numpy as np
import pytest
from conftest import CONF, ROOT, TINY, run_config
from helpers import compose_groups

from dynarch.hooks import CallbackSpec, callback_states, parse_callbacks, restore_callback_states


def test_shipped_callbacks_compose_and_parse(tmp_path):
    assert compose_groups(tmp_path, [])["callbacks"] == {}
    assert parse_callbacks({}) == () and parse_callbacks(None) == ()
    names = sorted(p.stem for p in (CONF / "callbacks").glob("*.yaml") if p.stem != "default")
    cfg = compose_groups(tmp_path, [f"callbacks=[{','.join(names)}]", "callbacks.early_stopping.patience=5"])
    specs = {s.name: s for s in parse_callbacks(cfg["callbacks"])}
    assert set(specs) == set(names)
    assert specs["early_stopping"].kind == "EarlyStopping" and specs["early_stopping"].kwargs["patience"] == 5
    assert specs["best_checkpoint"].kind == "BestCheckpoint"
    assert specs["reduce_lr"].kind == "ReduceLROnPlateau" and specs["tensorboard"].kind == "TensorBoard"


def test_parsing_never_imports_tensorflow():
    code = (
        "import sys; from dynarch.hooks import parse_callbacks; from dynarch.loggers import parse_loggers;"
        "parse_callbacks({'es': {'_target_': 'EarlyStopping', 'patience': 2}});"
        "parse_loggers({'csv': {}, 'mlflow': {}}); import dynarch.quiet;"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules and 'mlflow' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def _fit(model, callbacks, epochs, initial_epoch=0, seed=0):
    rng = np.random.default_rng(seed)
    x, y = rng.random((64, 28, 28, 1), dtype=np.float32), rng.integers(0, 10, 64)
    return model.fit(
        x,
        y,
        validation_data=(x[:16], y[:16]),
        epochs=epochs,
        initial_epoch=initial_epoch,
        batch_size=32,
        verbose=0,
        callbacks=callbacks,
        shuffle=False,
    )


def _model(run):
    from dynarch.build import build_model

    model = build_model(run.arch)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def test_reduce_lr_and_early_stopping_state_round_trips_through_json(tmp_path):
    from dynarch.hooks import build_callbacks

    run = run_config(TINY)
    specs = parse_callbacks(
        {
            "es": {"_target_": "keras.callbacks.EarlyStopping", "monitor": "loss", "patience": 9},
            "lr": {"_target_": "ReduceLROnPlateau", "monitor": "loss", "patience": 1, "cooldown": 2},
        }
    )
    first = build_callbacks(specs, tmp_path, run)
    _fit(_model(run), first, epochs=3)
    states = json.loads(json.dumps(callback_states(first)))
    assert states["es"]["class"] == "EarlyStopping" and states["lr"]["class"] == "ReduceLROnPlateau"
    again = build_callbacks(specs, tmp_path, run)
    restore_callback_states(again, states)
    for callback in again:
        callback.on_train_begin()  # Keras resets here; the restored state must win
    assert callback_states(again) == states
    fresh = build_callbacks(specs, tmp_path, run)
    restore_callback_states(fresh, states, continues_phase=False)  # a new phase: Keras' reset stands
    for callback in fresh:
        callback.on_train_begin()
    assert callback_states(fresh)["es"]["state"]["best"] is None


def test_a_foreign_or_malformed_state_is_handled(tmp_path, caplog):
    from dynarch.errors import CheckpointError
    from dynarch.hooks import build_callbacks

    run = run_config(TINY)
    callbacks = build_callbacks(parse_callbacks({"es": {"_target_": "EarlyStopping"}}), tmp_path, run)
    restore_callback_states(callbacks, {"es": {"class": "ReduceLROnPlateau", "state": {}}})
    assert "starts afresh" in caplog.text
    with pytest.raises(CheckpointError, match="callbacks.es"):
        restore_callback_states(callbacks, {"es": {"class": "EarlyStopping", "state": {"wait": "os.system"}}})


def _stop_at(epoch_index: int):
    """A callback that sends this process SIGTERM at the end of one epoch: the run stops as if killed."""
    import keras

    class Kill(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == epoch_index:
                signal.raise_signal(signal.SIGTERM)

    return Kill()


def _early_stopping(tmp_path, run):
    from dynarch.hooks import build_callbacks

    # min_delta 100: only the first epoch "improves", so the run stops after 1 + patience epochs whatever
    # the numbers are; without its restored state a resumed run would wait `patience` epochs afresh.
    specs = parse_callbacks({"es": {"_target_": "EarlyStopping", "monitor": "loss", "min_delta": 100.0, "patience": 3}})
    return build_callbacks(specs, tmp_path, run)


def test_early_stopping_stops_and_survives_a_kill(tmp_path, monkeypatch):
    import dynarch.resume as resume
    from dynarch.train import TrainingStopped, train

    run = run_config([*TINY, "trainer.epochs=8", "data.limit_train=256"])
    straight = train(run, tmp_path / "straight", callbacks=_early_stopping(tmp_path, run))
    assert straight["epochs"] == 4  # stopped early: epoch 1 sets best, 3 epochs without improvement

    # The lead's wiring, here by monkeypatch: every train-state manifest records callback_states(...).
    callbacks = _early_stopping(tmp_path, run)
    original = resume.save_checkpoint
    monkeypatch.setattr(
        resume,
        "save_checkpoint",
        lambda folder, tensors, manifest: original(
            folder, tensors, {**manifest, "callbacks": callback_states(callbacks)}
        ),
    )
    with pytest.raises(TrainingStopped):
        train(run, tmp_path / "killed", callbacks=[*callbacks, _stop_at(1)])
    states = resume.load_latest_state(tmp_path / "killed").manifest["callbacks"]
    assert states["es"]["state"]["wait"] == 1

    resumed_callbacks = _early_stopping(tmp_path, run)
    restore_callback_states(resumed_callbacks, states)
    resumed = train(run, tmp_path / "killed", resume=True, callbacks=resumed_callbacks)
    assert resumed["epochs"] == straight["epochs"]
    a, b = (np.loadtxt(tmp_path / d / "history.csv", delimiter=",", skiprows=1) for d in ("straight", "killed"))
    np.testing.assert_array_equal(a[:, :5], b[:, :5])  # epoch, loss, accuracy, val_loss, val_accuracy: bitwise


def test_best_checkpoint_is_chosen_on_its_metric_and_loads(tmp_path):
    from dynarch.checkpoint import load_checkpoint
    from dynarch.hooks import build_callbacks
    from dynarch.load import load_run
    from dynarch.train import train

    run = run_config([*TINY, "trainer.epochs=3"])
    specs = parse_callbacks({"best": {"_target_": "BestCheckpoint", "monitor": "val_loss"}})
    train(run, tmp_path / "run", callbacks=build_callbacks(specs, tmp_path / "run", run))
    history = np.genfromtxt(tmp_path / "run" / "history.csv", delimiter=",", names=True)
    manifest = load_checkpoint(tmp_path / "run" / "checkpoint-best").manifest
    assert manifest["best"]["monitor"] == "val_loss" and manifest["best"]["mode"] == "min"
    assert manifest["best"]["epoch"] == int(history["epoch"][np.argmin(history["val_loss"])])
    assert manifest["best"]["value"] == pytest.approx(float(np.min(history["val_loss"])))
    assert manifest["kind"] == "best" and manifest["model"] == run.arch.name
    assert manifest["input_shape"] == list(run.arch.input_shape)
    model, meta = load_run(tmp_path / "run" / "checkpoint-best")
    assert model.count_params() == run.arch.num_params and meta.checkpoint.name == "checkpoint-best"


@pytest.mark.skipif(
    __import__("importlib.util").util.find_spec("tensorboard") is None, reason="the tensorboard extra is not installed"
)
def test_tensorboard_writes_into_the_run_dir(tmp_path):
    from dynarch.hooks import build_callbacks

    run = run_config(TINY)
    callbacks = build_callbacks(
        parse_callbacks({"tb": {"_target_": "TensorBoard", "write_graph": False}}), tmp_path, run
    )
    _fit(_model(run), callbacks, epochs=2)
    assert list((tmp_path / "tensorboard" / "train").glob("events.out.tfevents.*"))
    assert list((tmp_path / "tensorboard" / "validation").glob("events.out.tfevents.*"))


def test_spec_is_plain_data():
    spec = parse_callbacks({"es": {"_target_": "EarlyStopping", "patience": 2}})[0]
    assert spec == CallbackSpec("es", "EarlyStopping", (("patience", 2),))
    hash(spec)
