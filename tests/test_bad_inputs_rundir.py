"""Bad-input catalogue, run dirs and artifacts: unusable `hydra.run.dir` / `hydra.sweep.dir`, a fresh run into a
used dir, a locked dir, full disks while writing artifacts, a report over something that is not a sweep.

Same contract as tests/test_bad_inputs.py: a DynarchError whose message holds the named substrings and a
`fix:` line, no traceback, and no file outside the run dir (tmp/run) changed.
"""

import errno
import json
import os
from unittest import mock

import pytest
from conftest import ROOT
from helpers import Case, snapshot

from dynarch import artifacts
from dynarch.errors import DynarchError
from dynarch.placement import check_cli_run_dir
from dynarch.report import check_sweep_dir
from dynarch.rundir import RunDirLock, check_new_run_dir


def cli(*argv):
    """The entry point's pre-Hydra check; `{run}` stands for tmp/run."""
    return Case(lambda tmp, extra: check_cli_run_dir([a.replace("{run}", str(tmp / "run")) for a in argv]))


def file_at(rel):
    def prepare(tmp):
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp / rel).write_text("a user's file\n")
        return []

    return prepare


def used_run(*names, state=False):
    def prepare(tmp):
        run = tmp / "run"
        for name in names:
            (run / name).mkdir(parents=True) if name == "checkpoint" else (
                run.mkdir(exist_ok=True),
                (run / name).write_text("{}"),
            )
        if state:
            (run / "state" / "step-000000008").mkdir(parents=True)
        (run / ".hydra").mkdir(parents=True, exist_ok=True)
        return []

    return prepare


def with_prepare(case, prepare):
    case.prepare = prepare
    return case


def read_only_fs(act):
    real = os.statvfs

    class ReadOnly:
        def __init__(self, path):
            self.f_flag = real(path).f_flag | os.ST_RDONLY

    def run(tmp, extra):
        with mock.patch("dynarch.rundir.os.statvfs", ReadOnly):
            return act(tmp, extra)

    return Case(run)


def disk_full(write):
    def act(tmp, extra):
        def full(fd):
            raise OSError(errno.ENOSPC, "No space left on device")

        with mock.patch("dynarch.artifacts.os.fsync", full):
            write(tmp / "run")

    return Case(act)


def locked(tmp, extra):
    with RunDirLock(tmp / "run"):  # held by this process through another open file: a second taker is refused
        RunDirLock(tmp / "run").acquire()


CASES = {  # name: (case, substrings of the message)
    "run dir is a file": (
        with_prepare(cli("hydra.run.dir={run}"), file_at("run")),
        ["hydra.run.dir", "exists and is not a folder"],
    ),
    "run dir under a file": (
        with_prepare(cli("hydra.run.dir={run}/x/y"), file_at("run/x")),
        ["hydra.run.dir", "a parent of the run dir is a file"],
    ),
    "run dir empty (the working dir)": (cli("hydra.run.dir="), ["hydra.run.dir", "is empty"]),
    "run dir null": (cli("hydra.run.dir=null"), ["hydra.run.dir", "is empty"]),
    "run dir name too long": (cli("hydra.run.dir={run}/" + "n" * 256), ["hydra.run.dir", "too long", "255"]),
    "run dir path too long": (
        cli("hydra.run.dir={run}/" + "/".join(["p" * 250] * 17)),
        ["hydra.run.dir", "path is too long"],
    ),
    "run dir read-only fs": (
        read_only_fs(lambda tmp, e: check_cli_run_dir([f"hydra.run.dir={tmp}/run"])),
        ["hydra.run.dir", "read-only file system"],
    ),
    "run dir pattern under a file": (
        with_prepare(cli("hydra.run.dir={run}/${now:%H-%M-%S}"), file_at("run")),
        ["hydra.run.dir", "a parent of the run dir is a file"],
    ),
    "sweep dir is a file": (
        with_prepare(cli("-m", "+arch=wide,deep", "hydra.sweep.dir={run}"), file_at("run")),
        ["hydra.sweep.dir", "not a folder"],
    ),
    "sweep dir too long": (cli("--multirun", "hydra.sweep.dir={run}/" + "s" * 300), ["hydra.sweep.dir", "too long"]),
    "fresh run into a finished run": (
        with_prepare(cli("hydra.run.dir={run}"), used_run("checkpoint", "metrics.json")),
        ["already holds a run's results", "checkpoint, metrics.json", "new hydra.run.dir"],
    ),
    "fresh run into a checkpointed run": (
        with_prepare(cli("hydra.run.dir={run}"), used_run("model.md", state=True)),
        ["state", "resume=true"],
    ),
    "new sweep over a finished sweep": (
        with_prepare(cli("-m", "+arch=wide,deep", "hydra.sweep.dir={run}/.."), used_run("metrics.json")),
        ["sweep dir already holds jobs with results", "run", "hydra.sweep.dir"],
    ),
    "fresh run into a run's plots only": (
        with_prepare(Case(lambda tmp, e: check_new_run_dir(tmp / "run")), used_run("history.csv", "curves.png")),
        ["history.csv, curves.png"],
    ),
    "run dir locked by a live process": (Case(locked), ["another dynarch process", f"PID {os.getpid()}", "kill"]),
    "lock in a run dir that is a file": (
        with_prepare(Case(lambda tmp, e: RunDirLock(tmp / "run").acquire()), file_at("run")),
        ["cannot create the run dir"],
    ),
    "full disk writing metrics.json": (
        disk_full(lambda run: artifacts.write_json(run / "metrics.json", {"a": 1})),
        ["metrics.json", "No space left on device"],
    ),
    "full disk writing the plot": (
        disk_full(lambda run: artifacts.plot_curves(run / "curves.png", {"loss": [1.0]}, "t")),
        ["curves.png", "No space left on device"],
    ),
    "full disk writing history.csv": (
        disk_full(lambda run: artifacts.write_history_csv(run / "history.csv", {"loss": [1.0]})),
        ["history.csv", "No space left on device"],
    ),
    "full disk writing model.md": (
        disk_full(lambda run: artifacts.write_text(run / "model.md", "# m\n")),
        ["model.md", "No space left on device"],
    ),
    "artifact under a file": (
        with_prepare(Case(lambda tmp, e: artifacts.write_text(tmp / "run" / "m.md", "x")), file_at("run")),
        ["m.md", "could not write the file"],
    ),
    "report over a missing dir": (Case(lambda tmp, e: check_sweep_dir(tmp / "run")), ["no such folder"]),
    "report over a file": (
        with_prepare(Case(lambda tmp, e: check_sweep_dir(tmp / "run")), file_at("run")),
        ["not a folder"],
    ),
    "report over a single run": (
        with_prepare(Case(lambda tmp, e: check_sweep_dir(tmp / "run")), used_run()),
        ["single run's dir, not a sweep"],
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_run_dir_gives_a_clear_error_and_touches_nothing_outside_the_run_dir(name, tmp_path):
    case, needles = CASES[name]
    extra = case.prepare(tmp_path)
    run_dir = tmp_path / "run"
    outside = lambda: {
        p: h
        for p, h in {**snapshot(tmp_path), **snapshot(ROOT / "conf")}.items()  # noqa: E731
        if p != run_dir and run_dir not in p.parents
    }
    before = outside()
    with pytest.raises(DynarchError) as err:
        case.act(tmp_path, extra)
    message = str(err.value)
    for needle in needles:
        assert needle in message, message
    assert "fix:" in message and "Traceback" not in message
    assert outside() == before
    assert not [p for p in run_dir.rglob("*") if ".tmp-" in p.name] if run_dir.is_dir() else True


def test_a_refused_fresh_run_leaves_the_finished_run_untouched(tmp_path):
    used_run("checkpoint", "metrics.json")(tmp_path)
    (tmp_path / "run" / ".hydra" / "overrides.yaml").write_text(json.dumps(["+arch=wide"]))
    before = snapshot(tmp_path)
    with pytest.raises(DynarchError):
        check_cli_run_dir([f"hydra.run.dir={tmp_path}/run"])
    assert snapshot(tmp_path) == before  # Hydra would have rewritten .hydra/ had the check come later


@pytest.mark.parametrize("argv,needle", [([], "sweep_dir"), (["{tmp}", "--metric", "loss"], "--metric")])
def test_report_usage_errors_are_clear(tmp_path, argv, needle, capsys):
    from dynarch.report import main as report_main

    assert report_main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    err = capsys.readouterr().err
    assert needle in err and "fix:" in err and "Traceback" not in err
