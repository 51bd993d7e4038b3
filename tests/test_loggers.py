"""Loggers (dynarch/loggers.py): the shipped group composes (several at once), the CSV logger keeps one file
across phases and a resume, a real MLflow run (sqlite store in the run dir, offline) records params,
per-epoch metrics, the model table and the run's artifacts; the quiet start-up drops only known notices."""

from __future__ import annotations

import csv
import importlib.util
import logging

import pytest
from conftest import TINY, run_config
from helpers import compose_groups

from dynarch.loggers import build_loggers, close_loggers, flatten_config, parse_loggers

needs_mlflow = pytest.mark.skipif(
    importlib.util.find_spec("mlflow") is None, reason="the mlflow extra is not installed"
)


def test_shipped_loggers_compose_several_at_once(tmp_path):
    assert "logger" not in compose_groups(tmp_path, [])  # default: none
    many = compose_groups(tmp_path, ["logger=many"])["logger"]
    assert set(many) == {"csv", "mlflow"}
    listed = compose_groups(tmp_path, ["logger=[csv,tensorboard,mlflow]", "logger.mlflow.experiment=exp1"])["logger"]
    specs = {s.kind: s for s in parse_loggers(listed)}
    assert set(specs) == {"csv", "tensorboard", "mlflow"} and specs["mlflow"].kwargs["experiment"] == "exp1"
    assert specs["csv"].kwargs == {"filename": "metrics.csv"}


def test_flatten_config():
    flat = flatten_config(
        {
            "model": {"blocks": {"dense": {"units": 8}}, "input_shape": [28, 28, 1]},
            "seed": 1,
            "init_from": None,
            "tags": {},
        }
    )
    assert flat == {
        "model.blocks.dense.units": "8",
        "model.input_shape": "[28, 28, 1]",
        "seed": "1",
        "init_from": "null",
        "tags": "{}",
    }


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_csv_logger_one_row_per_epoch_with_phase_across_a_schedule(tmp_path):
    from dynarch.train import train

    run = run_config([*TINY, "+schedule=grow", "trainer.epochs=3"])
    loggers = build_loggers(parse_loggers({"csv": {"filename": "log.csv"}}), tmp_path, run, {})
    metrics = train(run, tmp_path, callbacks=loggers)
    rows = _rows(tmp_path / "log.csv")
    assert [int(r["epoch"]) for r in rows] == list(range(1, metrics["epochs"] + 1))
    assert [int(r["phase"]) for r in rows] == [p["phase"] for p in metrics["phases"] for _ in range(p["epochs"])]
    assert {"loss", "val_accuracy"} <= set(rows[0])


def test_csv_logger_replaces_the_epochs_a_resumed_run_trains_again(tmp_path):
    from dynarch.loggers import CsvLogger, _keras

    run = run_config(TINY)
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,phase,loss\n1,0,2.0\n2,0,1.5\n3,0,9.9\n")  # epoch 3 was logged, then the run was killed
    logger = _keras(CsvLogger)(path, run)
    from dynarch.build import build_model

    logger.set_model(build_model(run.arch))
    logger.on_epoch_end(2, {"loss": 1.2})
    assert [(r["epoch"], r["loss"]) for r in _rows(path)] == [("1", "2.0"), ("2", "1.5"), ("3", "1.2")]


@needs_mlflow
def test_mlflow_records_params_metrics_and_artifacts_offline(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from dynarch.train import train

    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # nothing may land outside the run dir
    (tmp_path / "home").mkdir()
    run, out = run_config([*TINY, "trainer.epochs=2"]), tmp_path / "run"
    out.mkdir()
    params = {"trainer": {"epochs": 2, "batch_size": 128}, "model": {"name": run.arch.name}}
    loggers = build_loggers(parse_loggers({"mlflow": {"experiment": "tests", "tags": {"team": "a"}}}), out, run, params)
    metrics = train(run, out, callbacks=loggers)
    close_loggers(loggers, metrics)

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    found = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert len(found) == 1
    record = found[0]
    assert record.info.status == "FINISHED" and record.data.tags["team"] == "a"
    assert record.data.params["trainer.epochs"] == "2" and record.data.params["model.name"] == run.arch.name
    history = client.get_metric_history(record.info.run_id, "val_accuracy")
    assert [m.step for m in history] == [0, 1]
    assert record.data.metrics["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    artifacts = {a.path for a in client.list_artifacts(record.info.run_id)}
    assert {"model.md", "metrics.json", "history.csv", "checkpoint"} <= artifacts
    assert (out / "mlartifacts").is_dir() and not list((tmp_path / "home").iterdir())


@needs_mlflow
def test_mlflow_resumed_run_continues_the_same_mlflow_run(tmp_path):
    from mlflow.tracking import MlflowClient

    from dynarch.loggers import MlflowLogger, _keras

    run = run_config(TINY)
    first = _keras(MlflowLogger)(tmp_path, run, {"a": "1"})
    first.on_train_begin()
    first.on_epoch_end(0, {"loss": 2.0})
    close_loggers([first], error=KeyboardInterrupt())
    again = _keras(MlflowLogger)(tmp_path, run, {"a": "1", "trainer.epochs": "9"})
    again.on_train_begin()
    again.on_epoch_end(1, {"loss": 1.0})
    close_loggers([again], {"test_accuracy": 0.5, "epochs": 2})
    assert again.run_id == first.run_id
    client = MlflowClient(tracking_uri=again.tracking_uri)
    assert [m.value for m in client.get_metric_history(again.run_id, "loss")] == [2.0, 1.0]
    data = client.get_run(again.run_id)
    assert data.info.status == "FINISHED" and data.data.params == {"a": "1", "trainer.epochs": "9"}


def test_quiet_startup_drops_known_notices_only():
    from dynarch.quiet import filter_startup_lines

    lines = [
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
        "I0000 00:00:1795680494.448584   15435 port.cc:153] oneDNN custom operations are on. You may see ...",
        "I0000 00:00:1795680494.449302   15435 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU "
        "will not be used.",
        "E0000 00:00:1795680506.254821   15435 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: "
        "Failed call to cuInit: UNKNOWN ERROR (303)",
        "W0000 00:00:1795680506.254821   15435 some_op.cc:12] a real warning",
        "/site-packages/x.py:3: UserWarning: a Python warning",
    ]
    keep, dropped = filter_startup_lines(lines)
    assert keep == lines[4:] and len(dropped) == 4
    # With a CUDA driver present, a failing cuInit is a real error and is shown.
    keep, _ = filter_startup_lines([lines[3]])
    assert keep == [lines[3]]


def test_quiet_startup_drops_the_tfds_folder_warning_only(caplog):
    from dynarch.quiet import quiet_startup

    quiet_startup()
    absl = logging.getLogger("absl")
    with caplog.at_level(logging.INFO):
        absl.warning("Variant folder /root/tensorflow_datasets/mnist/3.0.1 has no dataset_info.json")
        absl.warning("another TFDS warning")
    assert "dataset_info" not in caplog.text and "another TFDS warning" in caplog.text
