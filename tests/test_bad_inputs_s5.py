"""Adversarial review 5 (2026-11-26): failures a careless or hostile user met in the newest parts (the loops,
precision, the environment variables, Hydra overrides, the run dir), kept as regressions once fixed.

Each CLI case runs the real command in a fresh process: it must exit non-zero with a message that names the key,
variable or file and carries a `fix:` line, print no traceback, and leave every file outside the run dir as it was.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, TINY, run_config
from test_bad_inputs_new import check, run, snapshot

QUICK = ["data=mnist_subset", "data.limit_train=64", "data.limit_test=64", "trainer.epochs=1", "trainer.verbose=0"]


@pytest.fixture
def tmp(tmp_path):
    (tmp_path / "tmpdir").mkdir()
    (tmp_path / "outside.txt").write_text("keep me\n")
    (tmp_path / "home").mkdir()  # HOME for the cases that need one
    (tmp_path / "work").mkdir()  # a working dir holding a user's file
    (tmp_path / "work" / "notes.txt").write_text("the user's\n")
    before = {k: v for k, v in snapshot(tmp_path).items() if not k.startswith(("run", "tmpdir"))}
    yield tmp_path
    after = {k: v for k, v in snapshot(tmp_path).items() if not k.startswith(("run", "tmpdir"))}
    assert after == before, "a failing command changed files outside its run dir"


def dynarch(tmp: Path, *overrides: str) -> list[str]:
    return ["-m", "dynarch", *QUICK, f"hydra.run.dir={tmp / 'run'}", *overrides]


def final_weights(run_dir: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(run_dir / "checkpoint" / "weights.safetensors"))


# -- trainer.precision=mixed_float16 ------------------------------------------------------------------------
# Keras wraps the optimizer in a LossScaleOptimizer whose variables include the inner optimizer's: both have an
# `iteration`, and the train-state keys (path minus the optimizer's name) collided, so every mixed_float16 run
# (any backend, any loop) trained its first epoch, then died at the first state checkpoint with "two optimizer
# variables named iteration ... rename one of the blocks".
@pytest.mark.parametrize("loop", ["keras", "fused"])
def test_mixed_float16_trains_and_resumes_bitwise(tmp_path, loop):
    from dynarch.resume import load_latest_state
    from dynarch.train import train

    base = [*TINY, f"trainer.loop={loop}", "trainer.precision=mixed_float16", "trainer.checkpoint_every=2"]
    train(run_config([*base, "trainer.epochs=2"]), tmp_path / "whole")
    train(run_config([*base, "trainer.epochs=1"]), tmp_path / "split")
    assert any(k.startswith("optimizer/inner/") for k in load_latest_state(tmp_path / "split").tensors)
    train(run_config([*base, "trainer.epochs=2"]), tmp_path / "split", resume=True)
    whole, split = final_weights(tmp_path / "whole"), final_weights(tmp_path / "split")
    assert whole.keys() == split.keys()
    assert all(np.array_equal(whole[k], split[k]) for k in whole)


# -- config groups set to a value that is not an option name --------------------------------------------------
# Hydra raised "ValueError: Config group override must be a string or a list" with its whole traceback.
@pytest.mark.parametrize("override", ["trainer=null", "trainer=5", "model=true", "callbacks=null"])
def test_a_config_group_set_to_a_non_name_is_one_clear_error(tmp, override):
    group = override.split("=")[0]
    check(run(dynarch(tmp, override), tmp), [override, f"'{group}' is a config group", "expected: one of"])
    assert not (tmp / "run").exists()


# -- hydra.run.dir in places shared with the user's own files -------------------------------------------------
def test_a_quoted_tilde_run_dir_is_refused_and_creates_nothing(tmp):
    # Hydra does not expand ~: the run went to WORKDIR/~/x while the pre-Hydra check created $HOME/x.
    argv = ["-m", "dynarch", *QUICK, 'hydra.run.dir="~/x"']
    err = check(run(argv, tmp, env={"HOME": str(tmp / "home")}, cwd=tmp / "work"), ["hydra.run.dir", "'~'"])
    assert f"hydra.run.dir={tmp / 'home' / 'x'}" in err
    assert not list((tmp / "home").iterdir())


@pytest.mark.parametrize("where", [".", ".."])
def test_the_working_dir_its_parents_and_the_root_are_refused_as_run_dirs(tmp, where):
    err = check(run(["-m", "dynarch", *QUICK, f"hydra.run.dir={where}"], tmp, cwd=tmp / "work"), ["hydra.run.dir"])
    assert "would be" in err and "outputs/my-run" in err
    assert sorted(p.name for p in (tmp / "work").iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("where", ["/", "{tmp}/root-link", "{tmp}/root-link/tmp/.."])
def test_the_file_system_root_is_refused_as_a_run_dir(tmp_path, where):
    # In-process and without creating anything: a regression must not run a training into / (it did, as root).
    from dynarch.placement import check_cli_run_dir
    from dynarch.rundir import RunDirError

    (tmp_path / "root-link").symlink_to("/")
    with pytest.raises(RunDirError, match="the file system's root") as err:
        check_cli_run_dir([f"hydra.run.dir={where.format(tmp=tmp_path)}"], create=False)
    assert "fix:" in str(err.value)


def test_the_home_folder_is_refused_as_a_sweep_dir(tmp):
    argv = ["-m", "dynarch", "-m", *QUICK, f"hydra.sweep.dir={tmp / 'home'}"]
    check(run(argv, tmp, env={"HOME": str(tmp / "home")}, cwd=tmp), ["hydra.sweep.dir", "your home folder"])
    assert not list((tmp / "home").iterdir())


# -- a fresh run into a dir holding files the loggers and callbacks write -------------------------------------
@pytest.mark.parametrize(
    "name, overrides",
    [
        ("metrics.csv", ["logger=csv"]),
        ("checkpoint-best", ["callbacks=best_checkpoint"]),
        ("mlflow.db", []),
        ("multirun.yaml", []),  # a sweep's dir
    ],
)
def test_a_fresh_run_does_not_overwrite_a_logger_or_callback_file(tmp, name, overrides):
    (tmp / "run").mkdir()
    (tmp / "run" / name).write_text("the user's own file\n")
    check(run(dynarch(tmp, *overrides), tmp), [name, "already holds a run's results"])
    assert (tmp / "run" / name).read_text() == "the user's own file\n"


# -- DYNARCH_COMPILE_CACHE naming a folder of the user's -----------------------------------------------------
# JAX writes its cache entries flat into the folder: DYNARCH_COMPILE_CACHE=/ (or ~, or the project) put 20
# `jit_*-cache` files among the user's.
def test_compile_cache_env_naming_a_folder_of_other_files_is_refused(tmp):
    argv = dynarch(tmp, "backend=jax")
    err = check(
        run(argv, tmp, env={"DYNARCH_COMPILE_CACHE": str(tmp / "work")}), ["DYNARCH_COMPILE_CACHE", "notes.txt"]
    )
    assert "of its own" in err


def test_a_jax_run_reuses_its_cache_and_logs_no_absent_backend_line(tmp):
    # JAX logged "Unable to initialize backend 'tpu': INTERNAL: Failed to open libtpu.so" (INFO) on every run.
    cache = tmp / "tmpdir" / "cache"
    for name in ("run", "run2"):
        argv = ["-m", "dynarch", *QUICK, "backend=jax", "trainer.loop=fused", f"hydra.run.dir={tmp / name}"]
        proc = run(argv, tmp, env={"DYNARCH_COMPILE_CACHE": str(cache)})
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "Unable to initialize backend" not in proc.stderr, proc.stderr[-3000:]
        assert "Resetting cache at" not in proc.stderr, proc.stderr[-3000:]
    assert any(p.name.endswith("-cache") for p in cache.iterdir())


# -- a value with a line break, or a very long one ------------------------------------------------------------
# The value was printed raw: a newline in it made a line of its own (`fix: rm -rf ~` passed for dynarch's advice)
# and a 100,000-character override was echoed whole.
@pytest.mark.parametrize(
    "key", ["trainer.loop", "model.blocks.dense.activation", "optimizer.clipnorm", "data.val_fraction"]
)
@pytest.mark.parametrize("value", ["'fused\n  fix: rm -rf ~'", "x" * 5000])
def test_a_bad_value_is_shown_on_one_short_line(key, value):
    from dynarch.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        run_config([*QUICK, f"{key}={value}"])
    message = str(err.value)
    fixes = [line for line in message.splitlines() if line.lstrip().startswith("fix:")]
    assert key in message and len(fixes) == 1 and "rm -rf" not in fixes[0], message
    received = next(line for line in message.splitlines() if line.startswith("  received:"))
    assert len(received) < 300 and ("\\n" in received or "5,000 characters" in received), message


# -- a refused resume rewrote the run's .hydra/ ---------------------------------------------------------------
# Hydra writes .hydra/{config,hydra,overrides}.yaml before dynarch runs: a resume refused for another loop (or
# backend, architecture, ...) left the run's own record saying it had been run with the refused config.
def test_a_refused_resume_leaves_the_runs_hydra_record_as_it_was(tmp):
    first = run(dynarch(tmp, "trainer.loop=keras"), tmp)
    assert first.returncode == 0, first.stderr[-3000:]
    before = snapshot(tmp / "run")
    proc = run(dynarch(tmp, "trainer.loop=fused", "trainer.epochs=2", "resume=true"), tmp)
    check(proc, ["resume refused", "loop", "fix: add trainer.loop=keras;", "overrides.yaml"])
    after = snapshot(tmp / "run")
    assert {k: v for k, v in after.items() if k != "__main__.log"} == {
        k: v for k, v in before.items() if k != "__main__.log"
    }
    assert "trainer.loop=keras" in (tmp / "run" / ".hydra" / "overrides.yaml").read_text()


def test_a_one_epoch_run_does_not_log_none_samples_per_s(tmp_path, caplog):
    from dynarch.train import train

    caplog.set_level("INFO", logger="dynarch.results")
    metrics = train(run_config(QUICK), tmp_path / "run")
    assert metrics["samples_per_s"] is None  # the first epoch is warm-up: nothing steady to report
    final = [r.getMessage() for r in caplog.records if r.getMessage().startswith("test accuracy")]
    assert final and "None" not in final[0] and "samples/s not measured" in final[0]


def test_no_dataset_selected_names_data_not_model_input_shape():
    # `~data` was reported as "model.input_shape: cannot resolve ... fix: set model.input_shape=VALUE".
    from dynarch.errors import ConfigError

    with pytest.raises(ConfigError, match="no dataset selected") as err:
        run_config(["~data"])
    assert str(err.value).startswith("data:") and "data=mnist_subset" in str(err.value).split("fix:")[1]


# -- compose_run from a notebook with the overrides not a list of strings -------------------------------------
# compose_run("data=mnist_subset") was split into characters ("d: Hydra cannot parse the override"); a
# non-string item raised AttributeError.
@pytest.mark.parametrize(
    "overrides, needle",
    [("data=mnist_subset", "the string 'data=mnist_subset'"), (["data=mnist_subset", 5], "int 5"), (7, "int 7")],
)
def test_compose_run_with_overrides_not_a_list_of_strings(overrides, needle):
    import dynarch

    with pytest.raises(dynarch.ConfigError) as err:
        dynarch.compose_run(overrides)
    assert needle in str(err.value) and "fix: pass a list" in str(err.value)


def test_compose_run_takes_a_tuple_and_none():
    import dynarch

    assert dynarch.compose_run(("data=mnist_subset",)).data.name == "mnist_subset"
    assert dynarch.compose_run(None).trainer.epochs > 0


# -- dynarch.train from a notebook -----------------------------------------------------------------------------
def test_dynarch_train_can_be_called_twice(tmp_path):
    # Importing the dynarch.train submodule made the package's `train` that module: the second call raised
    # "TypeError: 'module' object is not callable".
    import dynarch

    run = dynarch.compose_run(QUICK)
    first = dynarch.train(run, tmp_path / "a")
    second = dynarch.train(run, tmp_path / "b")
    assert first["test_accuracy"] == second["test_accuracy"]
    assert dynarch.train.PhaseLoop and dynarch.TrainingStopped  # the module's names stay reachable


@pytest.mark.parametrize(
    "out_dir, needle", [("", "train() needs the run dir"), (None, "None"), ("{tmp}/home", "your home folder")]
)
def test_dynarch_train_refuses_no_path_or_the_home_folder(tmp_path, monkeypatch, out_dir, needle):
    # train(run, "") wrote the whole run among the working dir's files; train(run, None) raised a TypeError.
    import dynarch

    (tmp_path / "home").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("the user's\n")
    out_dir = out_dir.format(tmp=tmp_path) if out_dir else out_dir
    with pytest.raises(dynarch.DynarchError) as err:
        dynarch.train(dynarch.compose_run(QUICK), out_dir)
    assert "out_dir" in str(err.value) and needle in str(err.value) and "fix:" in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "notes.txt"]
    assert not list((tmp_path / "home").iterdir())


def test_hydra_job_chdir_still_runs(tmp):
    # Hydra runs the job inside its run dir then: the API's out_dir check must not take it for a shared place.
    proc = run(dynarch(tmp, "hydra.job.chdir=true"), tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp / "run" / "checkpoint" / "weights.safetensors").is_file()


def test_dynarch_train_refuses_a_run_that_is_not_a_run_config(tmp_path):
    import dynarch

    with pytest.raises(dynarch.ConfigError, match="compose_run"):
        dynarch.train("data=mnist_subset", tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_plateau_phase_on_a_validation_metric_without_validation_is_refused():
    # grow_on_plateau with data.val_fraction=0: val_loss never existed, the phase silently ran to max_epochs.
    from dynarch.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        run_config([*QUICK, "data.val_fraction=0", "+schedule=grow_on_plateau", "trainer.epochs=6"])
    message = str(err.value)
    assert "schedule.phases[0].until.plateau.monitor" in message and "val_fraction is 0" in message
    run_config([*QUICK, "data.val_fraction=0", "+schedule=grow", "trainer.epochs=6"])  # no plateau: fine


@pytest.mark.parametrize("path", [None, "", "  ", 5])
def test_load_run_without_a_path_is_a_checkpoint_error(path):
    # load_run(None) raised "TypeError: expected str, bytes or os.PathLike object"; load_run("") said
    # ": the path holds no dynarch checkpoint" (an empty name).
    import dynarch

    with pytest.raises(dynarch.DynarchError) as err:
        dynarch.load_run(path)
    assert str(err.value).startswith("path: no run named") and "fix:" in str(err.value)


@pytest.mark.parametrize("subdir", ["same", "''"])
def test_a_sweep_whose_jobs_would_share_one_folder_is_refused(tmp, subdir):
    # hydra.sweep.subdir=same: job 1 was refused in job 0's folder, wrote error.json and .hydra/ over it, the
    # summary showed one job `ok` with job 1's overrides, and the command exited 0.
    argv = ["-m", "dynarch", "-m", *QUICK, "+arch=no_dense,wide", f"hydra.sweep.dir={tmp / 'run'}"]
    check(run([*argv, f"hydra.sweep.subdir={subdir}"], tmp), ["hydra.sweep.subdir", "share this one folder"])
    assert not (tmp / "run").exists()


def test_a_sweep_job_source_unquoted_gets_the_quoted_form_that_parses():
    # init_from=SWEEP#1 is documented; Hydra's grammar refuses the bare '#' and the fix only said "fix or quote".
    import shlex

    from dynarch.cli_overrides import check_overrides
    from dynarch.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        check_overrides(["init_from=/runs/sweep#1"], [])
    fix = str(err.value).split("fix: ")[1]
    suggested = shlex.split(fix.split("): ")[1])[0]  # what the shell passes on
    assert suggested == 'init_from="/runs/sweep#1"'
    check_overrides([suggested], [])


def test_a_missing_sweep_job_names_the_jobs_there_are(tmp_path):
    # init_from=SWEEP#7 of a sweep with jobs 0 and 1 said only "the path does not exist".
    from dynarch.checkpoint import resolve
    from dynarch.errors import CheckpointError

    for job in ("0", "1", "10"):
        (tmp_path / job / "checkpoint").mkdir(parents=True)
    (tmp_path / "2" / ".hydra").mkdir(parents=True)  # a job that did not finish
    with pytest.raises(CheckpointError) as err:
        resolve(f"{tmp_path}#7")
    assert "not a finished job of that sweep" in str(err.value) and "one of: 0, 1, 10" in str(err.value)


def test_a_bad_fast_exit_switch_is_refused_like_the_lean_switch(tmp):
    # DYNARCH_FAST_EXIT=maybe was silently taken for unset (DYNARCH_LEAN_IMPORTS=maybe is refused).
    check(run(dynarch(tmp), tmp, env={"DYNARCH_FAST_EXIT": "maybe"}), ["DYNARCH_FAST_EXIT", "maybe"])
    assert not (tmp / "run").exists()


def test_rerunning_after_a_start_that_failed_before_training_is_accepted(tmp):
    # data.path typo: the run stopped after writing config.yaml; the corrected command into the same run dir was
    # refused ("already holds a run's results: config.yaml") although nothing had been trained.
    check(run(dynarch(tmp, "data=idx", f"data.path={tmp / 'nope'}"), tmp), ["data.path", "no such folder"])
    assert (tmp / "run" / "config.yaml").is_file() and not (tmp / "run" / "state").exists()
    proc = run(dynarch(tmp), tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "mnist_subset" in (tmp / "run" / "config.yaml").read_text()


def test_a_users_own_config_yaml_still_makes_the_dir_refused(tmp):
    (tmp / "run").mkdir()
    (tmp / "run" / "config.yaml").write_text("mine: 1\n")  # no .hydra/: not an earlier attempt of dynarch
    check(run(dynarch(tmp), tmp), ["config.yaml", "already holds a run's results"])
    assert (tmp / "run" / "config.yaml").read_text() == "mine: 1\n"


# -- sweeps: Ctrl-C stops the command; a failed job's exit says what to do -------------------------------------
def test_ctrl_c_in_a_sweep_stops_the_sweep_not_only_the_job(tmp):
    # SIGINT during job 0 stopped job 0 only: the sweep went on to train job 1 in full, then exited 1 with the
    # fix line meant for a bad override.
    import signal
    import time

    sweep = tmp / "run"
    argv = [sys.executable, "-m", "dynarch", "-m", "data=mnist_subset", "data.limit_train=3000", "trainer.epochs=30"]
    argv += ["trainer.checkpoint_every=4", "trainer.verbose=0", "+arch=no_dense,wide", f"hydra.sweep.dir={sweep}"]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not (sweep / "0" / "state" / "latest").exists():  # job 0 is in its training loop (handler installed)
        assert proc.poll() is None and time.monotonic() < deadline, "job 0 never wrote a checkpoint"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 130, err[-3000:]
    assert "sweep stopped by signal 2" in err and "resume=true" in err and "Traceback" not in err + out
    assert "a new key needs a leading +" not in err
    assert not (sweep / "1").exists()


def test_a_sweep_with_a_failed_job_ends_with_its_own_fix_line(tmp):
    argv = ["-m", "dynarch", "-m", *QUICK, "model.blocks.dense.units=0,8", f"hydra.sweep.dir={tmp / 'run'}"]
    proc = run(argv, tmp)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "1 of 2 jobs did not finish" in proc.stderr and "dynarch.report" in proc.stderr.split("fix:")[-1]
    assert "a new key needs a leading +" not in proc.stderr


def test_the_printed_resume_command_works_for_a_run_dir_with_a_quote_and_a_comma(tmp):
    # The run dir was only shell-quoted: Hydra could not parse `hydra.run.dir=.../it's a,dir` back (a comma
    # would even have made the resume a sweep).
    import shlex
    import signal
    import time

    from dynarch.compose import hydra_value

    run_dir = tmp / "run" / "it's a,dir"
    base = ["data=mnist_subset", "data.limit_train=3000", "trainer.epochs=30", "trainer.checkpoint_every=4"]
    argv = [sys.executable, "-m", "dynarch", *base, "trainer.verbose=0", f"hydra.run.dir={hydra_value(str(run_dir))}"]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not (run_dir / "state" / "latest").exists():  # in the training loop: dynarch's handler is installed
        assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint was written"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 143, err[-3000:]
    printed = err.split("continue with: ")[1].splitlines()[0]
    words = shlex.split(printed)
    assert words[:3] == ["python", "-m", "dynarch"]
    resumed = subprocess.run([sys.executable, "-m", "dynarch", *words[3:]], cwd=ROOT, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr and (run_dir / "checkpoint" / "weights.safetensors").is_file()
