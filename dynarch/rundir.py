"""The run dir as a resource: usable before anything is written, never reused by a fresh run, held by one
process at a time (a lock file + flock), and cleaned of the temps a killed save leaves behind.

Where a run may go at all (the command line's dir before Hydra creates it, train()'s out_dir) is
placement.py's. Typical use:

    check_cli_run_dir(sys.argv[1:])            # placement.py: entry point, before Hydra creates or writes the dir
    with RunDirLock(out_dir):                  # train(): for the run's whole life
        if resume: clean_stale_temps(out_dir)
        else: check_new_run_dir(out_dir)
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import DynarchError

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"
# What dynarch writes into a run dir. Hydra's own `.hydra/` and `<job>.log` are not in it: Hydra writes them
# before our code runs, so a fresh dir always holds them.
RUN_ARTIFACTS = (
    "checkpoint",
    "state",
    "metrics.json",
    "history.csv",
    "curves.png",
    "model.md",
    "model.keras",
    "config.yaml",
    "migration.md",
    "migration.json",
    "error.json",
    "metrics.csv",  # logger=csv (rewritten each epoch)
    "checkpoint-best",  # callbacks=best_checkpoint (replaced when the metric improves)
    "tensorboard",  # logger=tensorboard
    "mlflow.db",  # logger=mlflow's default store
    "mlflow-run.json",  # logger=mlflow: the run a resume logs into
    "mlartifacts",  # logger=mlflow's artifacts next to mlflow.db
    "multirun.yaml",  # a sweep's own dir (its jobs are its subfolders): a single run would mix into it
)
RUN_ARTIFACT_PATTERNS = ("model-phase-*.md", "migration-phase-*.md", "migration-phase-*.json")  # phased runs
# Room kept for the deepest file dynarch writes under a run dir (state/.step-N.tmp-XXXXXXXX/weights.safetensors).
_DEEPEST_ARTIFACT = 64


class RunDirError(DynarchError):
    """A run dir cannot be used: not creatable, already used by a finished run, or locked by a live process."""


class RunDirLocked(RunDirError):
    """Another live process holds the run dir's lock."""


# ------------------------------------------------------------------------------------------- usable path


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if os.path.lexists(candidate):
            return candidate
    return Path(path.anchor or ".")


def check_run_dir_usable(path: str | Path, key: str = "hydra.run.dir", shown: str | None = None) -> Path:
    """Refuse a run dir that cannot be created or written, without writing anything; returns it absolute.

    Raises RunDirError naming `key` (and `shown`, the value as the user wrote it; default `path`): an
    existing file, a parent that is a file, a name or path too long for the OS, or a read-only /
    non-writable location.
    """
    raw = shown if shown is not None else str(path)
    target = Path(os.path.abspath(os.path.expanduser(str(path))))
    fix_other = f"pass another {key}=DIR"
    base = _nearest_existing(target)
    try:
        name_max = os.pathconf(base if base.is_dir() else base.parent, "PC_NAME_MAX")
        path_max = os.pathconf(base if base.is_dir() else base.parent, "PC_PATH_MAX")
    except (OSError, ValueError):
        name_max, path_max = 255, 4096
    long_parts = [p for p in target.parts if len(os.fsencode(p)) > name_max]
    if long_parts:
        raise RunDirError(
            key,
            "a folder name in the run dir is too long for the file system",
            expected=f"names of at most {name_max} bytes",
            received=f"{len(os.fsencode(long_parts[0]))} bytes: {long_parts[0][:40]}...",
            fix=f"{fix_other} with shorter folder names",
        )
    if len(os.fsencode(str(target))) + _DEEPEST_ARTIFACT > path_max:
        raise RunDirError(
            key,
            "the run dir path is too long for the file system (with the files it will hold)",
            expected=f"at most {path_max - _DEEPEST_ARTIFACT} bytes",
            received=f"{len(os.fsencode(str(target)))} bytes",
            fix=f"{fix_other} with a shorter path",
        )
    if base == target and not target.is_dir():
        raise RunDirError(
            key,
            "the run dir exists and is not a folder",
            expected="a folder (or a new path)",
            received=f"{raw} (a file)",
            fix=f"{fix_other}, or move that file away",
        )
    if not base.is_dir():
        raise RunDirError(
            key,
            "a parent of the run dir is a file, so the folder cannot be created",
            expected="a path whose parents are folders",
            received=f"{base} is a file",
            fix=f"{fix_other}",
        )
    try:
        read_only = bool(os.statvfs(base).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False  # os.access below still answers for this user
    if read_only or not os.access(base, os.W_OK | os.X_OK):
        what = "is on a read-only file system" if read_only else "is not writable by this user"
        raise RunDirError(
            key,
            f"the run dir cannot be written: {base} {what}",
            expected="a writable location",
            received=raw,
            fix=f"{fix_other} in a writable location (e.g. under your home or the project)",
        )
    return target


# ------------------------------------------------------------------------------------------- fresh run


def run_artifacts(path: str | Path) -> list[str]:
    """The names of RUN_ARTIFACTS (and RUN_ARTIFACT_PATTERNS) present in `path`; [] when it does not exist."""
    path = Path(path)
    if not os.path.isdir(path):
        return []
    return [name for name in RUN_ARTIFACTS if os.path.lexists(path / name)] + sorted(
        p.name for pattern in RUN_ARTIFACT_PATTERNS for p in path.glob(pattern)
    )


def check_new_run_dir(path: str | Path, key: str = "hydra.run.dir") -> None:
    """Refuse, for a fresh run, a dir that already holds a run's artifacts (it would overwrite them).

    A dir where an earlier attempt stopped before it trained anything (`.hydra/` and only config.yaml /
    model[-phase-K].md: a data path typo, a crash while starting) is accepted: refusing it sent the user who
    fixed the typo and reran the same command to a new dir, for files that hold nothing of value."""
    found = run_artifacts(path)
    if not found or _stopped_before_training(Path(path), found):
        return
    state = Path(path) / "state"
    resumable = state.is_dir() and any(state.glob("step-*"))
    fix = (
        "add resume=true to continue that run, or " if resumable else ""
    ) + f"choose a new {key} (or leave it out for a fresh timestamped dir)"
    raise RunDirError(
        str(path),
        "this run dir already holds a run's results; a fresh run would overwrite them",
        expected="an empty or new run dir" + (", or resume=true" if resumable else ""),
        received=", ".join(found),
        fix=fix,
    )


def _stopped_before_training(path: Path, found: list[str]) -> bool:
    started = {"config.yaml", "model.md"}  # what _train_locked writes before the first epoch ends
    return (path / ".hydra").is_dir() and all(n in started or re.fullmatch(r"model-phase-\d+\.md", n) for n in found)


def check_new_sweep_dir(path: str | Path, key: str = "hydra.sweep.dir") -> None:
    """Refuse, for a new sweep, a sweep dir whose job folders already hold results (they would be overwritten)."""
    jobs = (
        sorted((h.parent for h in Path(path).glob("*/.hydra")), key=lambda p: (len(p.name), p.name))
        if os.path.isdir(path)
        else []
    )
    used = [j.name for j in jobs if run_artifacts(j)]
    if used:
        raise RunDirError(
            str(path),
            "this sweep dir already holds jobs with results; a new sweep would overwrite them",
            expected="a new sweep dir",
            received=f"job folders with results: {', '.join(used[:10])}",
            fix=f"choose a new {key} (or leave it out for a fresh timestamped dir)",
        )


# ------------------------------------------------------------------------------------------- lock


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _holder_text(holder: dict[str, Any]) -> str:
    if not holder.get("pid"):
        return "a process that has not written its PID yet"
    return f"PID {holder.get('pid')} on host {holder.get('host', '?')}"


class RunDirLock:
    """Exclusive lock on a run dir for the run's life: `with RunDirLock(run_dir): ...`.

    RUN/.lock is created with O_CREAT|O_EXCL and holds {"pid", "host"}; an fcntl.flock on it is what really
    excludes others, so the OS releases it when the holder dies (SIGKILL included). A lock file nobody holds
    is stale and taken over with a warning; a held one raises RunDirLocked naming the PID. The file is
    removed on exit, exceptions and KeyboardInterrupt included. Where flock is unsupported, a dead PID on
    this host marks the lock stale.
    """

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd: int | None = None
        self.took_over: dict[str, Any] | None = None  # the stale holder replaced, if any

    def __enter__(self) -> "RunDirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def _same_file(self, fd: int) -> bool:
        try:
            a, b = os.fstat(fd), os.stat(self.path)
        except OSError:
            return False
        return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)

    def _open(self) -> tuple[int, bool] | None:
        flags = os.O_RDWR | os.O_CLOEXEC
        try:
            return os.open(self.path, flags | os.O_CREAT | os.O_EXCL, 0o644), True
        except FileExistsError:
            try:
                return os.open(self.path, flags), False
            except FileNotFoundError:  # released between our two calls
                return None
        except OSError as e:
            raise RunDirError(
                str(self.run_dir),
                f"cannot create the lock file {self.path} ({e.strerror})",
                expected="a writable run dir",
                received=f"errno {e.errno}",
                fix="choose a writable hydra.run.dir",
            ) from None

    def _locked_error(self, holder: dict[str, Any]) -> RunDirLocked:
        pid = holder.get("pid")
        here = holder.get("host") == socket.gethostname() and isinstance(pid, int) and _pid_alive(pid)
        return RunDirLocked(
            str(self.run_dir),
            f"another dynarch process is using this run dir ({_holder_text(holder)})",
            expected="a run dir no other process is training in",
            received=str(self.path),
            fix=f"wait for that process to finish{f' (or stop it: kill {pid})' if here else ''}, "
            "or choose another hydra.run.dir",
        )

    def acquire(self) -> "RunDirLock":
        """Take the lock or raise RunDirLocked / RunDirError; creates the run dir if missing."""
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunDirError(
                str(self.run_dir),
                f"cannot create the run dir ({e.strerror})",
                expected="a writable path",
                received=f"errno {e.errno}",
                fix="choose another hydra.run.dir",
            ) from None
        for _ in range(20):  # each retry means a holder released between our open and flock: rare
            opened = self._open()
            if opened is None:
                continue
            fd, created = opened
            try:
                if self._take(fd, created):
                    self._fd, fd = fd, None
                    return self
            finally:
                if fd is not None:
                    os.close(fd)
        raise RunDirError(
            str(self.run_dir),
            "could not take the run dir lock: it keeps changing hands",
            received=str(self.path),
            fix="make sure only one run uses this dir, then retry",
        )

    def _take(self, fd: int, created: bool) -> bool:
        """True when `fd` is now the held lock; False to retry; raises when a live process holds it."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            flock_ok = True
        except BlockingIOError:
            raise self._locked_error(_read_holder(fd)) from None
        except OSError as e:  # e.g. ENOLCK on some network file systems: fall back to the PID
            log.warning("flock unsupported on %s (%s): the run dir lock relies on the PID only", self.path, e)
            flock_ok = False
        if not self._same_file(fd):  # the holder released (unlinked) the file after we opened it
            return False
        if not created:
            holder = _read_holder(fd)
            if not flock_ok and (
                holder.get("host") != socket.gethostname()
                or (isinstance(holder.get("pid"), int) and _pid_alive(holder["pid"]))
            ):
                raise self._locked_error(holder)
            self.took_over = holder
            if os.fstat(fd).st_size:
                log.warning("taking over a stale lock on %s: %s no longer holds it", self.run_dir, _holder_text(holder))
            # else an empty file: its creator died before writing, or is between its create and its flock
            # (and will now be refused, naming this process) — nothing stale to report
        info = json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, info, 0)
        os.fsync(fd)
        return True

    def check_still_held(self) -> None:
        """Raise RunDirError when the run dir (or its .lock) was removed or replaced since `acquire`: the
        writes that follow would recreate the folder (`mkdir(parents=True)`) without its config, Hydra files
        or lock — a run dir that looks whole, that another process could take. Two stat calls; called before
        each checkpoint, each epoch's history and the final results (PhaseLoop.check_run_dir)."""
        if self._fd is None or self._same_file(self._fd):
            return
        raise RunDirError(
            str(self.run_dir),
            "the run dir or its .lock was removed or replaced while this run was using it",
            expected=f"the run dir and its {LOCK_NAME} in place until the run ends",
            received=f"{self.path} is gone" if not os.path.lexists(self.path) else f"{self.path} is another file",
            fix="dynarch stopped writing there; start the run again (a new hydra.run.dir, or the old one if "
            "you restored it whole: add resume=true to continue from its last checkpoint)",
        )

    def release(self) -> None:
        """Remove the lock file and drop the flock; safe to call twice."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if self._same_file(fd):
                os.unlink(self.path)  # while still holding the flock, so no one takes a file about to vanish
        except OSError as e:
            log.warning("could not remove the lock file %s: %s", self.path, e)
        finally:
            os.close(fd)


# ------------------------------------------------------------------------------------------- stale temps

# Exactly the names dynarch's writers give their temps (checkpoint.save_checkpoint: `.NAME.tmp-XXXXXXXX`
# folders and `.NAME.old-PID`; artifacts: `.NAME.tmp-XXXXXXXX` files; older artifacts.write_text:
# `.NAME.XXXXXXXX` for a known artifact name; checkpoint.export_keras: `.STEM.tmp.keras`; older plots:
# `curves.tmp.png`).
_TMP = re.compile(r"\.(?P<name>.+)\.tmp-[a-z0-9_]{8}(\.keras)?")  # .keras: a unique export temp Keras accepts
_OLD = re.compile(r"\.(?P<name>.+)\.old-(?P<pid>\d+)")
_LEGACY_TEXT = re.compile(
    r"\.(?P<name>" + "|".join(re.escape(n) for n in (*RUN_ARTIFACTS, "latest")) + r")\.[a-z0-9_]{8}"
)
_LEGACY_FIXED = re.compile(r"\.[^/]+\.tmp\.keras|curves\.tmp\.png")


@dataclass
class Cleanup:
    """What clean_stale_temps did: temps removed, and previous checkpoints put back under their name."""

    removed: list[Path] = field(default_factory=list)
    restored: list[Path] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.removed or self.restored)

    def describe(self) -> str:
        parts = (
            [
                f"removed {len(self.removed)} leftover temp(s) of an interrupted save: "
                + ", ".join(p.name for p in self.removed)
            ]
            if self.removed
            else []
        )
        if self.restored:
            parts.append("restored " + ", ".join(p.name for p in self.restored))
        return "; ".join(parts)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def clean_stale_temps(run_dir: str | Path) -> Cleanup:
    """Remove the temps a killed save leaves in RUN/ and RUN/state/, and only those. Call it holding the lock.

    A `.NAME.old-PID` folder whose NAME is missing (killed between the two renames of a save) is the last
    complete checkpoint: it is renamed back to NAME, not removed.
    """
    result = Cleanup()
    for folder in (Path(run_dir), Path(run_dir) / "state"):
        if not folder.is_dir():
            continue
        for entry in sorted(folder.iterdir()):
            old = _OLD.fullmatch(entry.name)
            if old and entry.is_dir() and not (folder / old["name"]).exists():
                entry.rename(folder / old["name"])
                result.restored.append(folder / old["name"])
            elif (
                old
                and entry.is_dir()
                or _TMP.fullmatch(entry.name)
                or (entry.is_file() and (_LEGACY_TEXT.fullmatch(entry.name) or _LEGACY_FIXED.fullmatch(entry.name)))
            ):
                _remove(entry)
                result.removed.append(entry)
    return result
