"""Where a run may go: the output dir a command line names, checked before Hydra creates it and writes `.hydra/`
there (Hydra does both before any dynarch code runs); train()'s `out_dir` from Python; places that are never a
run dir (the file system's root, the home folder, the working dir and its parents, `~` Hydra does not expand,
one folder shared by every job of a sweep); and the `.hydra/` record of a resume, put back when it is refused.
The run dir's own life (usable path, fresh-run artifacts, the lock, stale temps) is rundir.py's."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .rundir import RunDirError, check_new_run_dir, check_new_sweep_dir, check_run_dir_usable

log = logging.getLogger(__name__)


def _cli_overrides(argv: Sequence[str]) -> dict[str, Any]:
    """hydra.run.dir / hydra.sweep.dir / resume / hydra.mode as Hydra would parse them from argv."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    wanted = ("hydra.run.dir", "hydra.sweep.dir", "hydra.sweep.subdir", "resume", "hydra.mode")
    parser, found = OverridesParser.create(), {}
    for arg in argv:
        if arg.startswith("-") or arg.lstrip("+~").split("=", 1)[0] not in wanted:
            continue
        try:
            override = parser.parse_override(arg)
        except Exception:  # noqa: BLE001 — a malformed override is Hydra's to report, with its own message
            continue
        if not override.is_sweep_override() and not override.is_delete():
            found[override.key_or_group] = override.value()
    return found


# Hydra flags under which no job runs and no output dir is created.
_NO_JOB_FLAGS = (
    "--help",
    "-h",
    "--hydra-help",
    "--version",
    "--cfg",
    "-c",
    "--info",
    "-i",
    "--shell-completion",
    "-sc",
)


def make_run_dir(path: str | Path, key: str = "hydra.run.dir") -> Path:
    """check_run_dir_usable, then create the folder (and parents) as Hydra would; OSError -> RunDirError."""
    target = check_run_dir_usable(path, key)
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # what the checks cannot see (e.g. EPERM on /sys, quotas)
        raise RunDirError(
            key,
            f"the run dir cannot be created ({e.strerror or e})",
            expected="a creatable folder",
            received=str(path),
            fix=f"pass another {key}=DIR in a writable location",
        ) from None
    return target


def check_out_dir_arg(out_dir: Any) -> Path:
    """train()'s `out_dir` from Python (a notebook): a path of a folder of its own, as the CLI checks it —
    `train(run, "")` wrote the run among the working dir's files, `train(run, None)` raised a TypeError."""
    if not isinstance(out_dir, (str, os.PathLike)) or not os.fspath(out_dir).strip():
        raise RunDirError(
            "out_dir",
            "train() needs the run dir as a path",
            expected='a new folder, e.g. "outputs/notebook-run"',
            received=repr(out_dir),
            fix='call dynarch.train(run, "outputs/my-run")',
        )
    # Not the working dir test: under hydra.job.chdir=true Hydra runs the job inside its run dir.
    _refuse_shared_place(
        os.fspath(out_dir), "out_dir", fix='pass a new folder, e.g. "outputs/my-run"', working_dir=False
    )
    return Path(out_dir)


def _refuse_shared_job_dir(found: dict[str, Any]) -> None:
    """A constant hydra.sweep.subdir puts every job of the sweep into one folder: the second job was refused
    there ("already holds a checkpointed run"), wrote its error.json and .hydra/ over the first's, the summary
    showed one job `ok` with the other's overrides, and the command exited 0."""
    subdir = found.get("hydra.sweep.subdir", "${")
    if "${" not in str(subdir):
        raise RunDirError(
            "hydra.sweep.subdir",
            "every job of the sweep would share this one folder",
            expected="a pattern that differs per job, e.g. ${hydra.job.num} (the default)",
            received=str(subdir) if str(subdir).strip() else repr(subdir),
            fix="leave hydra.sweep.subdir out, or include ${hydra.job.num} in it",
        )


def _refuse_shared_place(value: str, key: str, fix: str | None = None, working_dir: bool = True) -> None:
    """Refuse `~...` (Hydra does not expand it: the run went to a folder named `~` under the working dir, while
    a check that expanded it created the home's folder) and a run dir that is the file system's root, the home
    folder, the working dir or one of its parents: `.hydra/`, the log, `state/` and the results would land
    among the user's own files, as with an empty hydra.run.dir."""
    if value.lstrip().startswith("~"):
        raise RunDirError(
            key,
            "Hydra does not expand '~': the run would go to a folder named '~' under the working dir",
            expected="an absolute path or one relative to the working dir",
            received=value,
            fix=f"write the home folder out: {key}={os.path.expanduser(value.strip())}"
            if fix is None
            else f"write the home folder out: {os.path.expanduser(value.strip())}",
        )
    if "${" in value:
        return
    target = Path(os.path.realpath(value))  # a link to / or to the working dir is that place
    cwd = Path(os.path.realpath(os.getcwd()))
    shared = {p: "the working dir" if p == cwd else "a parent of the working dir" for p in (cwd, *cwd.parents)}
    if not working_dir:
        shared = {}
    shared.update({Path(os.path.realpath(Path.home())): "your home folder", Path("/"): "the file system's root"})
    if target in shared:
        raise RunDirError(
            key,
            f"the run dir would be {shared[target]}: .hydra/, the log, state/ and the results would land among "
            "the files already there",
            expected="a folder of its own for this run's outputs",
            received=f"{value} ({target})",
            fix=fix
            or f"pass {key}=DIR with a new folder (e.g. {key}=outputs/my-run), or leave {key} out for a "
            "timestamped one",
        )


def check_cli_run_dir(argv: Sequence[str], create: bool = True) -> None:
    """Pre-Hydra check of the output dir a command line names (Hydra creates it and writes `.hydra/` there
    before any dynarch code runs, and fails with a traceback when it cannot).

    Checks `hydra.sweep.dir` under `-m`/`--multirun`, else `hydra.run.dir`: usable (check_run_dir_usable,
    with each `${...}` interpolation standing for a short name) and, for a fresh single run into a literal
    path, not a finished run's dir (nor, for a sweep, a dir of finished jobs) — refused before Hydra
    overwrites their `.hydra/`. With `create`, a literal dir is then created (Hydra would create it next
    anyway), which surfaces what no check can see (EPERM, quotas).
    Nothing is checked under --help/--cfg/--info. Raises RunDirError.
    """
    if any(a.split("=", 1)[0] in _NO_JOB_FLAGS for a in argv):
        return
    found = _cli_overrides(argv)
    multirun = any(a in ("-m", "--multirun") for a in argv) or str(found.get("hydra.mode", "")).upper() == "MULTIRUN"
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    if multirun:
        _refuse_shared_job_dir(found)
    value = found.get(key)
    if key in found and (value is None or isinstance(value, str) and not value.strip()):
        # `hydra.run.dir=` is the working dir itself: .hydra/ and the log would land among the user's files
        raise RunDirError(
            key,
            f"{key} is empty",
            expected="a folder for this run's outputs",
            received=repr(value),
            fix=f"pass {key}=DIR (a new folder), or leave {key} out for a timestamped one",
        )
    if not isinstance(value, str) or not value:
        return  # the configured default pattern (timestamped, relative to the working dir)
    _refuse_shared_place(value, key)
    if "${" in value:
        check_run_dir_usable(re.sub(r"\$\{[^}]*\}", "0", value), key, shown=value)
        return
    check_run_dir_usable(value, key)
    if found.get("resume") is not True:
        (check_new_sweep_dir if multirun else check_new_run_dir)(Path(value).expanduser(), key)
    if create:
        make_run_dir(value, key)


@dataclass
class HydraRecord:
    """What hydra_record read: the run dir, its identity then (device, inode), and the bytes of its files."""

    run_dir: Path | None = None
    identity: tuple[int, ...] | None = None
    files: dict[Path, bytes] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.files)


def _identity(run_dir: Path) -> tuple[int, ...] | None:
    """The run dir's and its .hydra/'s inodes, and when .hydra/ last gained or lost an entry. Hydra rewrites the
    files in place (no entry changes), so a resume keeps this; a folder put there since differs — in its
    inodes, or, where the file system reuses a removed folder's inode number (tmpfs), in that time."""
    try:
        top, hydra = os.stat(run_dir), os.stat(run_dir / ".hydra")
    except OSError:
        return None
    return top.st_dev, top.st_ino, hydra.st_ino, hydra.st_ctime_ns


def hydra_record(argv: Sequence[str]) -> HydraRecord:
    """The bytes of `.hydra/*.yaml` of the run a `resume=true` command line names (a literal hydra.run.dir of a
    single run), read before Hydra rewrites them with this command's config; empty otherwise. Hydra writes them
    before any dynarch code runs, so a refused resume (another backend, loop or architecture) left the run's
    record saying it had been run with the refused config. See restore_hydra_record."""
    if any(a in ("-m", "--multirun") or a.split("=", 1)[0] in _NO_JOB_FLAGS for a in argv):
        return HydraRecord()
    found = _cli_overrides(argv)
    value = found.get("hydra.run.dir")
    if found.get("resume") is not True or not isinstance(value, str) or not value.strip() or "${" in value:
        return HydraRecord()
    record = HydraRecord(Path(value), _identity(Path(value)))
    for path in sorted((Path(value) / ".hydra").glob("*.yaml")):
        try:
            record.files[path] = path.read_bytes()
        except OSError:
            continue
    return record


def restore_hydra_record(record: HydraRecord) -> None:
    """Put back what hydra_record read (after a failed resume); a file that cannot be written is logged. Not
    when the run dir was removed or replaced meanwhile: the folder there now is not the run that was read (it
    could be another run's, whose record this would overwrite)."""
    from .artifacts import ArtifactError, write_atomic

    if record.run_dir is None or _identity(record.run_dir) != record.identity:
        log.warning("%s was removed or replaced meanwhile: its .hydra/ record is not written back", record.run_dir)
        return
    for path, data in record.files.items():
        try:
            if path.is_file() and path.read_bytes() == data:
                continue
            write_atomic(path, lambda f, data=data: f.write(data))
        except (OSError, ArtifactError) as e:
            log.warning("could not restore %s: %s", path, str(e).splitlines()[0])
