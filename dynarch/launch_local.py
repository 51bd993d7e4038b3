"""Start the workers of one multi-worker run: `python -m dynarch.launch_local --workers 2 [overrides...]`.

Locally it picks free ports on 127.0.0.1, gives worker i `TF_CONFIG` with task index i, and starts N
`python -m dynarch trainer.strategy=multi_worker ...` processes. Only worker 0 (the chief) uses the run dir;
every other worker runs with `hydra.run.dir` in a scratch folder (so even Hydra's own `.hydra/` and log stay
out of the run dir) and reads the chief's run dir (DYNARCH_CHIEF_RUN_DIR) to resume; the scratch is removed
when it ends. The chief's output is streamed; another worker's last lines are shown only if it fails. When one
worker dies the others are killed (their collectives could only hang), and the worst exit code is returned,
so a shell loop or a scheduler can restart the job with `resume=true`.

Under Slurm each srun task runs `python -m dynarch.launch_local --slurm [overrides...]`: it is one worker,
SLURM_PROCID 0 is the chief, and TensorFlow's SlurmClusterResolver describes the cluster.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Sequence

CHIEF_DIR_ENV = "DYNARCH_CHIEF_RUN_DIR"  # a non-chief worker resumes from the chief's run dir named here
LAUNCHER_ENV = "DYNARCH_LAUNCHER"  # "--workers N" or "--slurm": how the worker was started (its resume line)
GRACE_S = 60  # after Ctrl-C / SIGTERM: how long workers get to stop before they are killed


class UsageError(Exception):
    """Bad arguments; `fix` says what to run instead (the launcher's usage line when not given)."""

    def __init__(self, message: str, fix: str | None = None):
        super().__init__(message)
        self.fix = fix or "python -m dynarch.launch_local --workers 2 [dynarch overrides...]"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse would print its usage and exit: ours says what to fix
        raise UsageError(message)


def parse(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = _Parser(
        prog="python -m dynarch.launch_local",
        description="Start N multi-worker dynarch processes on this machine (or one per srun task with --slurm); "
        "the remaining arguments are dynarch overrides.",
    )
    parser.add_argument("--workers", type=int, default=None, help="number of worker processes on 127.0.0.1")
    parser.add_argument("--slurm", action="store_true", help="this process is one srun task (one worker)")
    args, overrides = parser.parse_known_args(list(argv))
    flags = [o for o in overrides if o.startswith("-")]
    if flags:
        raise UsageError(f"unknown option(s) {flags}: only --workers N or --slurm, then dynarch overrides")
    if args.slurm == (args.workers is not None):
        raise UsageError("give exactly one of --workers N (this machine) or --slurm (inside srun)")
    if args.workers is not None and not 1 <= args.workers <= 64:
        raise UsageError(f"--workers must be in [1, 64], got {args.workers}")
    strategy = [o.split("=", 1)[1] for o in overrides if o.startswith("trainer.strategy=")]
    if any(s != "multi_worker" for s in strategy):
        raise UsageError(f"trainer.strategy={strategy[-1]} cannot run on several workers: leave it out")
    if not strategy:
        overrides.append("trainer.strategy=multi_worker")
    return args, overrides


def run_dir_of(overrides: list[str], slurm: bool) -> tuple[str, list[str]]:
    """The one run dir every worker agrees on (the default pattern is a timestamp, which would differ)."""
    given = [o.split("=", 1)[1] for o in overrides if o.startswith("hydra.run.dir=")]
    rest = [o for o in overrides if not o.startswith("hydra.run.dir=")]
    if given and given[-1].strip() and "${" not in given[-1]:
        return given[-1], rest
    if given:
        raise UsageError("hydra.run.dir must be a literal folder here: every worker must name the same one")
    if slurm:
        job = os.environ.get("SLURM_JOB_ID", "")
        if not job:
            raise UsageError(
                "--slurm runs inside an srun job step (SLURM_JOB_ID is not set)",
                fix="srun python -m dynarch.launch_local --slurm ... inside sbatch, or --workers N on this machine",
            )
        return f"outputs/slurm-{job}", rest
    return datetime.datetime.now().strftime("outputs/%Y-%m-%d/%H-%M-%S-%f"), rest


def free_ports(n: int, consecutive: bool = False) -> list[int]:
    """n ports free on this machine now (`consecutive`: p, p+1, ...; SlurmClusterResolver gives task i of a
    node DYNARCH_SLURM_PORT + i). Drawn below the OS's ephemeral range: the workers bind them a few seconds
    later, and meanwhile any outgoing connection (the workers' own to each other included) may be given an
    ephemeral port as its local end — a port the OS handed out with `bind(0)` could be taken that way before
    its worker binds it. Checked by binding them all together on every interface."""
    low, top = 10000, _ephemeral_start()
    if top - low < 1000:  # an unusual port range: leave the choice to the OS
        return _os_ports(n)
    rng = random.Random()
    for _ in range(500):
        first = rng.randrange(low, top - n)
        ports = list(range(first, first + n)) if consecutive else sorted(set(rng.sample(range(low, top), n)))
        if len(ports) == n and _all_free(ports):
            return ports
    return _os_ports(n)


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default; macOS's range starts at 49152


def _all_free(ports: list[int]) -> bool:
    sockets = []
    try:
        for port in ports:
            s = socket.socket()
            sockets.append(s)
            s.bind(("", port))
        return True
    except OSError:
        return False
    finally:
        for s in sockets:
            s.close()


def _os_ports(n: int) -> list[int]:
    """n ports the OS picks (all held open together so they differ)."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def worker_command(overrides: list[str], run_dir: str) -> list[str]:
    return [sys.executable, "-m", "dynarch", *overrides, f"hydra.run.dir={run_dir}"]


def exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode  # killed by signal s: 128 + s, as a shell says


class Worker:
    def __init__(self, index: int, overrides: list[str], run_dir: str, env: dict[str, str], chief: bool):
        self.index, self.chief, self.scratch = index, chief, None
        self.tail: collections.deque[str] = collections.deque(maxlen=40)
        if not chief:
            self.scratch = tempfile.mkdtemp(prefix=f"dynarch-worker{index}-")
            tmp = Path(self.scratch) / "tmp"  # its temp files too (train()'s scratch): gone even after a SIGKILL
            tmp.mkdir()
            env = {**env, CHIEF_DIR_ENV: str(Path(run_dir).resolve()), "TMPDIR": str(tmp)}
            run_dir = str(Path(self.scratch) / "run")
        out, err = (None, None) if chief else (subprocess.PIPE, subprocess.STDOUT)
        self.proc = subprocess.Popen(
            worker_command(overrides, run_dir), env=env, stdout=out, stderr=err, text=True, errors="replace"
        )
        if not chief:
            self.reader = threading.Thread(target=self._read, daemon=True)
            self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:  # stdout and stderr share the one pipe
            self.tail.append(line)

    def cleanup(self) -> None:
        if self.scratch:
            shutil.rmtree(self.scratch, ignore_errors=True)


def launch(workers: int, overrides: list[str]) -> int:
    run_dir, overrides = run_dir_of(overrides, slurm=False)
    ports = free_ports(workers)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    started: list[Worker] = []
    print(f"launch_local: {workers} workers on 127.0.0.1 ports {ports}; run dir {run_dir}", file=sys.stderr)
    try:
        for i in range(workers):
            env = {**os.environ, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})}
            env[LAUNCHER_ENV] = f"--workers {workers}"
            started.append(Worker(i, overrides, run_dir, env, chief=i == 0))
        return supervise(started)
    finally:
        for w in started:
            if w.proc.poll() is None:
                w.proc.kill()
                w.proc.wait()
            w.cleanup()


def supervise(workers: list[Worker]) -> int:
    """Wait for the workers; the first that fails gets the others killed. Returns that first failure's code
    (a config error stays 2, not the 137 of a worker killed here), else 0."""
    by_pid = {w.proc.pid: w for w in workers}
    codes: dict[int, int] = {}
    killed: set[int] = set()  # workers this launcher killed: their 137 is not the cause
    interrupted = False
    try:
        while len(codes) < len(workers):
            pid, status = os.wait()  # blocks until some child ends: no polling
            w = by_pid.get(pid)
            if w is None:
                continue
            w.proc.returncode = os.waitstatus_to_exitcode(status)
            codes[w.index] = exit_code(w.proc.returncode)
            if codes[w.index] != 0 and len(codes) < len(workers):
                print(
                    f"launch_local: worker {w.index} exited with {codes[w.index]}; stopping the others",
                    file=sys.stderr,
                )
                for other in workers:
                    if other.proc.returncode is None:
                        other.proc.kill()  # blocked in a collective with a dead peer: nothing to save
                        killed.add(other.index)
    except KeyboardInterrupt:
        interrupted = True
        stop_all(workers)
        # each worker's own code: 130/143 when it stopped at a boundary, 0 when it had finished anyway
        codes.update({w.index: exit_code(w.proc.returncode) for w in workers})
    for w in workers:
        if codes.get(w.index) and not w.chief:
            if hasattr(w, "reader"):
                w.reader.join(timeout=5)
            shown = "".join(w.tail).rstrip()
            if shown:
                print(f"launch_local: last lines of worker {w.index}:\n{shown}", file=sys.stderr)
    if interrupted:  # as a shell reports it (128 + the signal the launcher got), unless a worker failed
        failures = [code for index, code in codes.items() if code not in (0, 130, 143) and index not in killed]
        return failures[0] if failures else 128 + _STOPPED_BY[0] if any(codes.values()) else 0
    causes = [code for index, code in codes.items() if code and index not in killed]
    return causes[0] if causes else max(codes.values(), default=0)  # the first failure's own code


def stop_all(workers: list[Worker]) -> None:
    for w in workers:
        if w.proc.poll() is None:
            w.proc.send_signal(signal.SIGTERM)
    for w in workers:
        try:
            w.proc.wait(timeout=GRACE_S)
        except subprocess.TimeoutExpired:
            w.proc.kill()
            w.proc.wait()


def slurm_task(overrides: list[str]) -> int:
    """One srun task = one worker: the chief runs in the run dir, the others in a scratch dir."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from dynarch.cluster import task_from_slurm
    from dynarch.errors import DynarchError

    try:
        task = task_from_slurm(os.environ)
    except DynarchError as e:  # its own message carries its fix
        raise UsageError(str(e), fix="srun python -m dynarch.launch_local --slurm [dynarch overrides...]") from None
    run_dir, overrides = run_dir_of(overrides, slurm=True)
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}  # the Slurm resolver describes the cluster
    env[LAUNCHER_ENV] = "--slurm"
    worker = Worker(task.index, overrides, run_dir, env, chief=task.is_chief)
    signal.signal(signal.SIGTERM, lambda s, f: worker.proc.send_signal(s))  # Slurm's preemption notice
    try:
        code = supervise([worker])
    finally:
        worker.cleanup()
    return code


_STOPPED_BY = [signal.SIGINT]  # the signal that interrupted the launcher (Ctrl-C's SIGINT, or SIGTERM)


def _interrupt(signum, frame) -> None:
    _STOPPED_BY[0] = signum
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args, overrides = parse(sys.argv[1:] if argv is None else argv)
        if args.slurm:
            return slurm_task(overrides)
        signal.signal(signal.SIGTERM, _interrupt)  # a scheduler's SIGTERM stops the workers like Ctrl-C
        return launch(args.workers, overrides)
    except UsageError as e:
        text = str(e) if "fix:" in str(e) else f"{e}\n  fix: {e.fix}"
        print(f"error: {text}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: could not start the workers: {e}\n  fix: check the run dir and free disk space", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
