"""Bad-input catalogue for callbacks and loggers: each case raises a dynarch error whose message names the
key and carries a `fix:` line, before training, and leaves every file outside the run dir as it was."""

from __future__ import annotations

import hashlib
import importlib.util
from unittest import mock

import pytest
from conftest import TINY, run_config

from dynarch.errors import DynarchError
from dynarch.hooks import check_callbacks, parse_callbacks
from dynarch.loggers import check_loggers, parse_loggers


def snapshot(root):
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def es(**kw):
    return {"es": {"_target_": "EarlyStopping", **kw}}


def without(module: str):
    """find_spec as if `module` were not installed."""
    real = importlib.util.find_spec
    return mock.patch("importlib.util.find_spec", lambda name, *a: None if name == module else real(name, *a))


def callbacks_case(raw, overrides=()):
    def act(tmp):
        check_callbacks(parse_callbacks(raw), run_config([*TINY, *overrides]))

    return act


def loggers_case(raw, callbacks=None):
    def act(tmp):
        check_loggers(parse_loggers(raw), parse_callbacks(callbacks))

    return act


def missing(module, act):
    def run(tmp):
        with without(module):
            act(tmp)

    return run


def make_broken_store(tmp):
    (tmp / "outside").mkdir()
    (tmp / "outside" / "store.db").write_bytes(b"not a sqlite database" * 50)


def broken_mlflow_store(tmp):
    """A tracking store that is not a database: refused when the run opens it, the file untouched."""
    from dynarch.loggers import build_loggers
    from dynarch.train import train

    store = tmp / "outside" / "store.db"
    run = run_config(TINY)
    loggers = build_loggers(parse_loggers({"mlflow": {"tracking_uri": f"sqlite:///{store}"}}), tmp / "run", run, {})
    train(run, tmp / "run", callbacks=loggers)


CASES = {
    "unknown class": (callbacks_case({"es": {"_target_": "EarlyStoping"}}), ["callbacks.es._target_", "EarlyStopping"]),
    "TerminateOnNaN is built in": (
        callbacks_case({"nan": {"_target_": "keras.callbacks.TerminateOnNaN"}}),
        ["callbacks.nan._target_", "built in", "NaN"],
    ),
    "ModelCheckpoint": (callbacks_case({"ck": {"_target_": "ModelCheckpoint"}}), ["BestCheckpoint"]),
    "LambdaCallback runs code": (callbacks_case({"l": {"_target_": "LambdaCallback"}}), ["runs Python code"]),
    "another library's class": (
        callbacks_case({"es": {"_target_": "lightning.pytorch.callbacks.EarlyStopping"}}),
        ["allowlist", "callbacks.es._target_"],
    ),
    "no _target_": (callbacks_case({"es": {"patience": 2}}), ["callbacks.es._target_"]),
    "unknown key": (callbacks_case(es(patiance=2)), ["callbacks.es.patiance", "Did you mean 'patience'"]),
    "string patience": (callbacks_case(es(patience="3")), ["callbacks.es.patience", "integer"]),
    "negative patience": (callbacks_case(es(patience=-1)), ["callbacks.es.patience", ">= 0"]),
    "unknown monitor": (callbacks_case(es(monitor="val_los")), ["callbacks.es.monitor", "val_loss"]),
    "bool as number": (callbacks_case(es(min_delta=True)), ["callbacks.es.min_delta"]),
    "factor >= 1": (
        callbacks_case({"lr": {"_target_": "ReduceLROnPlateau", "factor": 1.5}}),
        ["callbacks.lr.factor", "[0, 1)"],
    ),
    "restore_best_weights": (
        callbacks_case(es(restore_best_weights=True)),
        ["callbacks.es.restore_best_weights", "best_checkpoint"],
    ),
    "per-batch TensorBoard": (
        callbacks_case({"tb": {"_target_": "TensorBoard", "update_freq": 100}}),
        ["callbacks.tb.update_freq", "epoch"],
    ),
    "TensorBoard log_dir": (
        callbacks_case({"tb": {"_target_": "TensorBoard", "log_dir": "/tmp/tb"}}),
        ["callbacks.tb.log_dir", "RUN/tensorboard"],
    ),
    "callbacks as a list": (callbacks_case(["EarlyStopping"]), ["callbacks", "callbacks=early_stopping"]),
    "settings as a string": (callbacks_case({"es": "EarlyStopping"}), ["callbacks.es", "mapping"]),
    "bad name": (callbacks_case({"a b": {"_target_": "EarlyStopping"}}), ["callbacks.a b"]),
    "two best checkpoints": (
        callbacks_case({"a": {"_target_": "BestCheckpoint"}, "b": {"_target_": "BestCheckpoint"}}),
        ["callbacks.b", "same folder"],
    ),
    "ReduceLROnPlateau with a schedule": (
        callbacks_case({"lr": {"_target_": "ReduceLROnPlateau"}}, ["optimizer=adam_cosine"]),
        ["callbacks.lr", "schedule"],
    ),
    "val_ metric without validation": (
        callbacks_case(es(monitor="val_accuracy"), ["data.val_fraction=0"]),
        ["callbacks.es.monitor", "val_fraction"],
    ),
    "TensorBoard not installed": (
        missing("tensorboard", callbacks_case({"tb": {"_target_": "TensorBoard"}})),
        ["callbacks.tb", "pip install -e '.[tensorboard]'"],
    ),
    "unknown logger": (loggers_case({"mlflw": {}}), ["logger.mlflw", "Did you mean 'mlflow'"]),
    "logger as a list": (loggers_case(["csv"]), ["logger", "logger=csv"]),
    "logger key typo": (loggers_case({"mlflow": {"experimant": "x"}}), ["logger.mlflow.experimant", "experiment"]),
    "csv file outside the run dir": (loggers_case({"csv": {"filename": "../x.csv"}}), ["logger.csv.filename"]),
    "tracking uri scheme": (
        loggers_case({"mlflow": {"tracking_uri": "postgres://db/x"}}),
        ["logger.mlflow.tracking_uri", "sqlite:"],
    ),
    "relative sqlite store": (
        loggers_case({"mlflow": {"tracking_uri": "sqlite:///mlflow.db"}}),
        ["logger.mlflow.tracking_uri", "absolute"],
    ),
    "MLflow file store": (
        loggers_case({"mlflow": {"tracking_uri": "file:/tmp/mlruns"}}),
        ["logger.mlflow.tracking_uri", "MLFLOW_ALLOW_FILE_STORE"],
    ),
    "MLflow not installed": (missing("mlflow", loggers_case({"mlflow": {}})), ["logger.mlflow", "'.[mlflow]'"]),
    "TensorBoard twice": (
        loggers_case({"tensorboard": {}}, {"tb": {"_target_": "TensorBoard"}}),
        ["logger.tensorboard", "callbacks.tb"],
    ),
}
if importlib.util.find_spec("mlflow") is not None:
    CASES["broken MLflow store"] = (broken_mlflow_store, ["logger.mlflow.tracking_uri", "store.db"])
PREPARE = {"broken MLflow store": make_broken_store}  # files made outside the run dir before the snapshot


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input(name, tmp_path):
    act, needles = CASES[name]
    if name == "TensorBoard twice" and importlib.util.find_spec("tensorboard") is None:
        pytest.skip("the tensorboard extra is not installed (the clash is checked after it)")
    PREPARE.get(name, lambda tmp: None)(tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(DynarchError) as info:
        act(tmp_path)
    message = str(info.value)
    for needle in needles:
        assert needle in message, f"{needle!r} not in:\n{message}"
    assert "fix:" in message and "Traceback" not in message
    after = snapshot(tmp_path)
    changed = [p for p in set(before) | set(after) if before.get(p) != after.get(p) and "run" not in p.parts]
    assert not changed, changed
