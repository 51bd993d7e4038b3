"""Run dirs: the lock (real processes, synchronized by pipes), usable / fresh-run / CLI checks, cleaning the
temps of a killed save, and the artifact writers (unique temps, clear errors, phases)."""

import errno
import json
import logging
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT

from dynarch import artifacts, rundir
from dynarch.artifacts import ArtifactError
from dynarch.placement import check_cli_run_dir
from dynarch.rundir import (
    RUN_ARTIFACTS,
    RunDirError,
    RunDirLock,
    RunDirLocked,
    check_new_run_dir,
    check_run_dir_usable,
    clean_stale_temps,
)

HOLD = """
import sys
from dynarch.rundir import RunDirLock
from dynarch.errors import DynarchError
try:
    with RunDirLock(sys.argv[1]):
        print("locked", flush=True)
        sys.stdin.read()          # hold until the test closes our stdin
except DynarchError as e:
    print("refused", flush=True)
    print(e, file=sys.stderr)
    sys.exit(2)
print("released", flush=True)
"""


def holder(run_dir):
    """A real process holding (or refused) the lock; its first stdout line says which."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run_dir)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, proc.stdout.readline().strip()


def finish(proc):
    out, err = proc.communicate(input="", timeout=60)
    return proc.returncode, out, err


# ---------------------------------------------------------------------------------------------- lock


def test_a_second_process_is_refused_while_the_first_holds_the_lock(tmp_path):
    first, state = holder(tmp_path)
    try:
        assert state == "locked"
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == first.pid
        second, state2 = holder(tmp_path)
        code, _, err = finish(second)
        assert state2 == "refused" and code == 2
        assert str(tmp_path) in err and f"PID {first.pid}" in err and "fix:" in err and "Traceback" not in err
        with pytest.raises(RunDirLocked, match=f"PID {first.pid}"):  # and in this process too
            RunDirLock(tmp_path).acquire()
    finally:
        code, out, _ = finish(first)
    assert code == 0 and out.strip() == "released" and not (tmp_path / ".lock").exists()
    with RunDirLock(tmp_path) as lock:  # free again, and nothing stale to take over
        assert lock.took_over is None


def test_only_one_of_several_racing_processes_gets_the_lock(tmp_path):
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", HOLD, str(tmp_path)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    states = [p.stdout.readline().strip() for p in procs]  # every process has tried once it printed
    results = [finish(p) for p in procs]
    assert sorted(states) == ["locked", "refused", "refused", "refused"], [r[2] for r in results]
    assert all("Traceback" not in r[2] for r in results) and not (tmp_path / ".lock").exists()


def test_a_sigkilled_holders_lock_is_taken_over(tmp_path, caplog):
    proc, state = holder(tmp_path)
    assert state == "locked"
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL and (tmp_path / ".lock").exists()  # the file stays behind
    with caplog.at_level(logging.WARNING, logger="dynarch.rundir"):
        with RunDirLock(tmp_path) as lock:
            assert lock.took_over["pid"] == proc.pid
            assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    assert f"PID {proc.pid}" in caplog.text and "stale lock" in caplog.text
    assert not (tmp_path / ".lock").exists()


@pytest.mark.parametrize("exc", [KeyboardInterrupt, RuntimeError])
def test_lock_is_released_on_exceptions_and_ctrl_c(tmp_path, exc):
    with pytest.raises(exc):
        with RunDirLock(tmp_path):
            raise exc()
    assert not (tmp_path / ".lock").exists()
    RunDirLock(tmp_path).acquire().release()


def test_same_process_second_lock_is_refused_and_release_is_idempotent(tmp_path):
    lock = RunDirLock(tmp_path / "new" / "run").acquire()  # creates the dir
    with pytest.raises(RunDirLocked, match=f"PID {os.getpid()}"):
        RunDirLock(tmp_path / "new" / "run").acquire()
    lock.release()
    lock.release()
    assert not (tmp_path / "new" / "run" / ".lock").exists()


def test_without_flock_a_dead_pid_on_this_host_is_stale_and_a_live_one_is_not(tmp_path, monkeypatch):
    import socket

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(rundir.fcntl, "flock", no_flock)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock_file = tmp_path / ".lock"
    lock_file.write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()}))
    with RunDirLock(tmp_path) as lock:
        assert lock.took_over["pid"] == int(dead.stdout)
    lock_file.write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname()}))
    with pytest.raises(RunDirLocked, match=f"PID {os.getppid()}"):
        RunDirLock(tmp_path).acquire()
    lock_file.write_text(json.dumps({"pid": 1, "host": "another-host"}))
    with pytest.raises(RunDirLocked, match="another-host"):
        RunDirLock(tmp_path).acquire()


def test_garbage_lock_file_nobody_holds_is_taken_over(tmp_path):
    (tmp_path / ".lock").write_bytes(b"\x00\xffnot json")
    with RunDirLock(tmp_path) as lock:
        assert lock.took_over == {}


# ---------------------------------------------------------------------------------------------- fresh run


def test_new_run_dir_accepts_empty_missing_and_hydra_only_dirs(tmp_path):
    check_new_run_dir(tmp_path / "missing")
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text("a: 1\n")
    (tmp_path / "__main__.log").write_text("log\n")
    (tmp_path / ".lock").write_text("{}")
    check_new_run_dir(tmp_path)


@pytest.mark.parametrize("artifact", [*RUN_ARTIFACTS, "model-phase-1.md", "migration-phase-2.json"])
def test_new_run_dir_refuses_every_artifact(tmp_path, artifact):
    (tmp_path / artifact).mkdir() if artifact in ("checkpoint", "state") else (tmp_path / artifact).write_text("x")
    with pytest.raises(RunDirError) as err:
        check_new_run_dir(tmp_path)
    msg = str(err.value)
    assert str(tmp_path) in msg and artifact in msg and "fix:" in msg and "hydra.run.dir" in msg
    assert "resume=true" not in msg.split("fix:")[1]  # nothing to resume: only a new dir helps


def test_new_run_dir_offers_resume_when_there_is_state(tmp_path):
    (tmp_path / "state" / "step-000000004").mkdir(parents=True)
    (tmp_path / "metrics.json").write_text("{}")
    with pytest.raises(RunDirError, match="resume=true") as err:
        check_new_run_dir(tmp_path)
    assert "metrics.json" in str(err.value) and "state" in str(err.value)


# ---------------------------------------------------------------------------------------------- usable path


@pytest.mark.parametrize(
    "make,needle",
    [
        (lambda t: (t / "f").write_text("x") and t / "f", "exists and is not a folder"),
        (lambda t: (t / "f").write_text("x") and t / "f" / "run", "a parent of the run dir is a file"),
        (lambda t: t / ("x" * 300), "too long"),
        (lambda t: t.joinpath(*["y" * 200] * 25), "too long"),
    ],
)
def test_unusable_run_dirs(tmp_path, make, needle):
    path = make(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(RunDirError) as err:
        check_run_dir_usable(path)
    assert needle in str(err.value) and str(err.value).startswith("hydra.run.dir:") and "fix:" in str(err.value)
    assert sorted(tmp_path.rglob("*")) == before  # nothing written


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_location_is_refused(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(RunDirError, match="not writable"):
            check_run_dir_usable(ro / "run")
    finally:
        ro.chmod(0o755)


def test_read_only_file_system_is_refused(tmp_path, monkeypatch):
    real = os.statvfs

    class ReadOnly:
        def __init__(self, st):
            self.f_flag = st.f_flag | os.ST_RDONLY

    monkeypatch.setattr(rundir.os, "statvfs", lambda p: ReadOnly(real(p)))
    with pytest.raises(RunDirError, match="read-only file system"):
        check_run_dir_usable(tmp_path / "run", "hydra.sweep.dir")


def test_usable_run_dir_returns_the_absolute_path_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert check_run_dir_usable("a/b") == tmp_path / "a" / "b"
    assert list(tmp_path.iterdir()) == []


def test_cli_check(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunDirError, match="^hydra.run.dir: the run dir exists and is not a folder"):
        check_cli_run_dir(["trainer.epochs=1", f"hydra.run.dir={tmp_path}/file"])
    with pytest.raises(RunDirError, match="^hydra.sweep.dir: a parent"):
        check_cli_run_dir(["-m", "+arch=a,b", f"hydra.sweep.dir={tmp_path}/file/" + "${now:%H}"])
    check_cli_run_dir(["-m", f"hydra.run.dir={tmp_path}/file"])  # Hydra ignores run.dir in a multirun
    check_cli_run_dir(["--cfg", "job", f"hydra.run.dir={tmp_path}/file"])  # no job runs
    check_cli_run_dir(["hydra.run.dir=[unparsable"])  # Hydra's parser reports its own errors
    finished = tmp_path / "finished"
    (finished / "checkpoint").mkdir(parents=True)
    (finished / "metrics.json").write_text("{}")
    with pytest.raises(RunDirError, match="already holds a run's results"):
        check_cli_run_dir([f"hydra.run.dir={finished}"])
    check_cli_run_dir([f"hydra.run.dir={finished}", "resume=true"])
    (finished / ".hydra").mkdir()  # as a job of a sweep
    with pytest.raises(RunDirError, match="sweep dir already holds jobs with results") as err:
        check_cli_run_dir(["-m", f"hydra.sweep.dir={tmp_path}", "+arch=a,b"])
    assert "finished" in str(err.value) and "hydra.sweep.dir" in str(err.value)
    check_cli_run_dir([f"++hydra.run.dir={tmp_path}/new run"])
    assert (tmp_path / "new run").is_dir()  # created as Hydra would, after the checks
    check_cli_run_dir([f"hydra.run.dir={tmp_path}/not made"], create=False)
    assert not (tmp_path / "not made").exists()


def test_cli_check_does_not_import_tensorflow(tmp_path):
    # a run dir of its own: /tmp is refused where the checkout lives under it (a parent of the working dir)
    code = (
        "import sys; from dynarch.placement import check_cli_run_dir; "
        f"check_cli_run_dir(['hydra.run.dir={tmp_path}/run']); print('tensorflow' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.stdout == "False\n", proc.stderr[-2000:]


# ---------------------------------------------------------------------------------------------- stale temps

KILL_IN_SAVE = """
import os, signal, sys
import numpy as np
import dynarch.artifacts as art
import dynarch.checkpoint as ck
run, where = sys.argv[1], sys.argv[2]
folder = run + ("/state/step-000000002" if where == "state" else "/checkpoint")
ck.save_checkpoint(folder, {"w": np.ones(3, np.float32)}, {})       # a complete one first
die = lambda *a: os.kill(os.getpid(), signal.SIGKILL)
if where in ("checkpoint", "state"):                                # killed while writing the new one
    real = ck._write_file
    ck._write_file = lambda path, data: (real(path, data[:7]), die())
elif where == "between renames":                                   # old moved aside, new not yet in place
    real, calls = os.replace, []
    os.replace = lambda a, b: (real(a, b), calls.append(b), len(calls) == 1 and die())
elif where == "text":
    art.write_atomic(run + "/metrics.json", lambda f: (f.write(b'{"test'), f.flush(), die()))
ck.save_checkpoint(folder, {"w": np.zeros(3, np.float32)}, {})
"""


def killed_save(run, where):
    proc = subprocess.run(
        [sys.executable, "-c", KILL_IN_SAVE, str(run), where], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr


@pytest.mark.parametrize(
    "where,leftover",
    [("checkpoint", ".checkpoint.tmp-"), ("state", "state/.step-000000002.tmp-"), ("text", ".metrics.json.tmp-")],
)
def test_clean_removes_the_temps_of_a_killed_save_and_only_those(tmp_path, where, leftover):
    from dynarch.checkpoint import load_checkpoint

    keep = {
        ".hydra/config.yaml": "a",
        "__main__.log": "l",
        "notes.tmp": "n",
        ".metrics.json": "m",
        ".mydata.abcdefgh": "u",
        ".x.tmp-ABCDEFGH": "u",
        "state/latest": "step-000000002\n",
        "state/.latest.bak": "u",
        "model.md": "m",
    }
    for name, text in keep.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    killed_save(tmp_path, where)
    stale = sorted(tmp_path.glob(leftover + "*"))
    assert len(stale) == 1
    done = clean_stale_temps(tmp_path)
    assert done.removed == stale and not done.restored and leftover.split("/")[-1] in done.describe()
    assert {n: (tmp_path / n).read_text() for n in keep} == keep
    ckpt = tmp_path / ("state/step-000000002" if where == "state" else "checkpoint")
    assert load_checkpoint(ckpt).tensors["w"].tolist() == [1, 1, 1]  # the last complete save
    assert not clean_stale_temps(tmp_path)  # nothing left to do


def test_clean_puts_back_the_checkpoint_moved_aside_by_a_killed_save(tmp_path):
    from dynarch.checkpoint import load_checkpoint

    killed_save(tmp_path, "between renames")
    assert not (tmp_path / "checkpoint").exists()
    done = clean_stale_temps(tmp_path)
    assert done.restored == [tmp_path / "checkpoint"] and [p.name[:16] for p in done.removed] == [".checkpoint.tmp-"]
    assert load_checkpoint(tmp_path / "checkpoint").tensors["w"].tolist() == [1, 1, 1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


def test_clean_removes_superseded_and_legacy_temps(tmp_path):
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / ".checkpoint.old-123").mkdir()  # the save finished; removing the old one did not
    (tmp_path / ".history.csv.k2j4_x9a").write_text("")  # older write_text temp
    (tmp_path / "curves.tmp.png").write_text("")  # older plot temp
    (tmp_path / ".model.tmp.keras").write_text("")  # export_keras temp
    (tmp_path / ".model.keras.tmp-ab_12xyz.keras").write_text("")  # a unique export temp (mkstemp suffix)
    (tmp_path / ".notes.k2j4_x9a").write_text("")  # not an artifact name: not ours
    done = clean_stale_temps(tmp_path)
    assert sorted(p.name for p in done.removed) == [
        ".checkpoint.old-123",
        ".history.csv.k2j4_x9a",
        ".model.keras.tmp-ab_12xyz.keras",
        ".model.tmp.keras",
        "curves.tmp.png",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".notes.k2j4_x9a", "checkpoint"]


# ---------------------------------------------------------------------------------------------- artifacts

PLOT_PAUSED = """
import os, sys
from dynarch import artifacts
path, real = sys.argv[1], os.replace
def paused(src, dst):
    if str(dst) == path:
        print("saved", flush=True)   # our temp is complete: the test runs another plot now
        sys.stdin.readline()
    real(src, dst)
os.replace = paused
artifacts.plot_curves(path, {"loss": [1.0, 0.5]}, "a")
"""


def test_two_processes_plotting_into_one_file_do_not_collide(tmp_path):
    target = tmp_path / "curves.png"
    first = subprocess.Popen(
        [sys.executable, "-c", PLOT_PAUSED, str(target)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert first.stdout.readline().strip() == "saved", first.stderr.read()
    second = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from dynarch import artifacts; artifacts.plot_curves(sys.argv[1], {'loss': [2.0, 1.0]}, 'b')",
            str(target),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert second.returncode == 0, second.stderr
    _, err = first.communicate(input="go\n", timeout=120)
    assert first.returncode == 0, err
    assert target.read_bytes()[:4] == b"\x89PNG" and sorted(p.name for p in tmp_path.iterdir()) == ["curves.png"]


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize(
    "name,write",
    [
        ("metrics.json", lambda p: artifacts.write_json(p, {"a": 1})),
        ("model.md", lambda p: artifacts.write_text(p, "# model\n")),
        ("history.csv", lambda p: artifacts.write_history_csv(p, {"loss": [1.0]})),
        ("curves.png", lambda p: artifacts.plot_curves(p, {"loss": [1.0]}, "t")),
    ],
)
def test_full_disk_keeps_the_previous_file_and_leaves_no_temp(tmp_path, monkeypatch, name, write):
    path = tmp_path / name
    path.write_text("previous")
    monkeypatch.setattr(artifacts.os, "fsync", enospc)
    with pytest.raises(ArtifactError) as err:
        write(path)
    assert isinstance(err.value, OSError)  # callers catching OSError around a write still catch it
    msg = str(err.value)
    assert msg.startswith(str(path)) and "No space left on device" in msg and "previous version is kept" in msg
    assert path.read_text() == "previous" and sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_unwritable_folder_is_an_artifact_error(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ArtifactError, match="could not write the file") as err:
        artifacts.write_text(tmp_path / "file" / "metrics.json", "{}")
    assert "nothing was written" in str(err.value)

    def denied(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(artifacts.tempfile, "mkstemp", denied)
    with pytest.raises(ArtifactError, match="Permission denied"):
        artifacts.write_json(tmp_path / "metrics.json", {})


def test_ctrl_c_inside_a_write_leaves_no_temp(tmp_path):
    def interrupted(f):
        f.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        artifacts.write_atomic(tmp_path / "metrics.json", interrupted)
    assert list(tmp_path.iterdir()) == []


def test_history_csv_keeps_its_format_and_takes_phases(tmp_path):
    plain = artifacts.write_history_csv(tmp_path / "a.csv", {"loss": [1.0, 0.5], "accuracy": [0.5, 0.7]})
    assert plain.read_text().splitlines() == ["epoch,loss,accuracy", "1,1.0,0.5", "2,0.5,0.7"]
    phased = artifacts.write_history_csv(
        tmp_path / "b.csv", {"loss": [1.0, 0.5, 0.4]}, epochs=[1, 2, 3], phases=[0, 0, 1]
    )
    assert phased.read_text().splitlines() == ["epoch,phase,loss", "1,0,1.0", "2,0,0.5", "3,1,0.4"]
    inline = artifacts.write_history_csv(
        tmp_path / "c.csv", {"epoch": [3, 4], "phase": ["deep", "deep"], "loss": [0.3]}
    )
    assert inline.read_text().splitlines() == ["epoch,phase,loss", "3,deep,0.3", "4,deep,"]
    from dynarch.report import _read_history

    assert _read_history(phased) == {"loss": [1.0, 0.5, 0.4]}
    loss = _read_history(inline)["loss"]  # a blank cell reads back as NaN
    assert loss[0] == 0.3 and np.isnan(loss[1])


def test_plot_marks_phase_boundaries(tmp_path, monkeypatch):
    seen = {}
    real = artifacts.save_figure
    monkeypatch.setattr(artifacts, "save_figure", lambda fig, path: (seen.setdefault("fig", fig), real(fig, path))[1])
    history = {"loss": [1.0, 0.8, 0.6, 0.5], "val_accuracy": [0.5, 0.6, 0.7, 0.8]}
    out = artifacts.plot_curves(
        tmp_path / "curves.png",
        history,
        "t",  # as train passes start_epoch
        boundaries=[(2, "deep"), (None, "never ran")],
    )
    assert out.read_bytes()[:4] == b"\x89PNG"
    for ax in seen["fig"].axes:
        assert [line.get_xdata()[0] for line in ax.lines if line.get_linestyle() == ":"] == [2.5]
        assert [t.get_text().strip() for t in ax.texts] == ["deep"]
    seen.clear()
    artifacts.plot_curves(tmp_path / "global.png", history, "t", boundaries=[(2, "deep")], epochs=[5, 6, 7, 8])
    assert [ln.get_xdata()[0] for ln in seen["fig"].axes[0].lines if ln.get_linestyle() == ":"] == [6.5]
    artifacts.plot_curves(tmp_path / "plain.png", {"loss": [np.float32(1.0)]}, "old signature")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png", "global.png", "plain.png"]
