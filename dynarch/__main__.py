"""Hydra entry point: `python -m dynarch [+arch=NAME] [overrides]`, `-m` for sweeps.

Validation runs before TensorFlow is imported, so `--help`, `--cfg job` and any bad config answer fast.
Config files are checked (size, tags, duplicate keys, what a variant may set) before Hydra reads them.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # keep TF's C++ start-up chatter out of the run log

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from .compose import (  # noqa: E402
    hydra_value,
    preflight,
    qualify_arch_overrides,
    resolve_config,
    shell_command,
    variant_name,
)
from .errors import DynarchError  # noqa: E402

log = logging.getLogger("dynarch")
REPORTED = False  # set once report_and_exit has printed its own message (with its fix line)
JOB_RAN = False  # set when a job starts: a later exit 1 is the sweep's (failed jobs), not an override Hydra refused


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def hydra_main(cfg: DictConfig) -> float:
    global JOB_RAN
    JOB_RAN = True
    hc = HydraConfig.get()
    out_dir = Path(hc.runtime.output_dir)
    try:
        sources = [Path(src.path) for src in hc.runtime.config_sources if src.schema == "file"]
        run, resolved = resolve_config(
            cfg, variant_name(hc.runtime.choices), hc.runtime.choices.get("schedule"), sources
        )
        from .runtime.backend import use_backend

        use_backend(run.backend)  # KERAS_BACKEND, before anything imports Keras
        if run.init_from and not run.resume:
            from .migrate import check_source_before_build

            check_source_before_build(run)  # a bad or (strict) incompatible source fails before TensorFlow loads
        if run.backend == "tensorflow":
            from .quiet import start_tensorflow_quietly

            start_tensorflow_quietly(out_dir)  # TensorFlow is imported from here on, its start-up notices filtered
        else:
            from .runtime import get_runtime

            get_runtime(run.backend)  # Keras starts here, without the optional packages (runtime/lean.py)
        from .hooks import build_callbacks
        from .loggers import build_loggers, close_loggers
        from .train import train

        hook_dir = _hook_dir(run, out_dir)
        hooks = build_callbacks(run.callbacks, hook_dir or out_dir, run)
        hooks += [] if hook_dir else build_loggers(run.loggers, out_dir, run, resolved)  # loggers: the chief's
        try:
            metrics = train(
                run,
                out_dir,
                resume=run.resume,
                resume_command=resume_command(hc, out_dir),
                resolved_config=OmegaConf.to_yaml(resolved),
                callbacks=hooks,
            )
        except BaseException as e:
            close_loggers(hooks, error=e)
            raise
        finally:
            if hook_dir:
                import shutil

                shutil.rmtree(hook_dir, ignore_errors=True)
        close_loggers(hooks, metrics)
    except BaseException as e:  # noqa: BLE001 — every way out of a job is reported, none as a traceback
        if isinstance(e, SystemExit):
            raise
        if hc.mode != RunMode.MULTIRUN:
            report_and_exit(e)
        # In a sweep one failing job must not lose the others: record it, let Hydra go on.
        if isinstance(e, KeyboardInterrupt):
            raise
        record_failure(out_dir, e)
        log.error("job %s failed: %s", hc.job.num, e)
        in_process = str(hc.launcher.get("_target_", "")).endswith("BasicLauncher")  # jobs one after another here
        if in_process and getattr(e, "exit_code", None) in (128 + signal.SIGINT, 128 + signal.SIGTERM):
            # Ctrl-C / SIGTERM stops the command, not one job: the sweep went on to train every other job
            global REPORTED
            REPORTED = True
            log.error(
                "sweep stopped by signal %d: the jobs after job %s were not run\n  fix: finish this job with the "
                "command above; rerun the sweep for the others; python -m dynarch.report %s rebuilds the summary",
                e.exit_code - 128,
                hc.job.num,
                out_dir.parent,
            )
            raise SystemExit(e.exit_code) from None
        return float("nan")
    print(
        f"test accuracy {metrics['test_accuracy']:.4f}  test loss {metrics['test_loss']:.4f}  "
        f"({metrics['data_source']})  run dir: {out_dir}"
    )
    return float(metrics.get(run.optimized_metric) or metrics["test_accuracy"])


def _hook_dir(run, out_dir: Path) -> Path | None:
    """A multi-worker process that is not the chief runs the callbacks too (they decide from the global
    logs, identically on every worker) but writes their files to a scratch dir, removed when the job ends:
    only the chief writes the run dir. None for the chief and for every single-process run."""
    if run.trainer.strategy != "multi_worker":
        return None
    from .cluster import task_from_env

    if task_from_env(multi_worker=True).is_chief:
        return None
    import tempfile

    return Path(tempfile.mkdtemp(prefix="dynarch-worker-hooks-"))


def report_and_exit(error: BaseException) -> None:
    """One clear message on stderr and an exit code; a traceback only for bugs, and only if asked."""
    global REPORTED
    REPORTED = True
    if isinstance(error, DynarchError):
        log.error("%s", error)
        sys.exit(getattr(error, "exit_code", 2))
    if isinstance(error, KeyboardInterrupt):
        log.error("interrupted before training started; nothing was trained and no checkpoint was written")
        sys.exit(130)
    if isinstance(error, MemoryError):
        log.error("out of memory: %s\n  fix: lower trainer.batch_size or data.limit_train", error)
        sys.exit(1)
    if isinstance(error, OSError):
        log.error(
            "%s: %s\n  fix: check the path, its permissions and free disk space",
            getattr(error, "filename", None) or "file system",
            error.strerror or error,
        )
        sys.exit(1)
    if os.environ.get("DYNARCH_DEBUG"):
        raise error
    log.error(
        "internal error (%s): %s\n  fix: this is a dynarch bug; rerun with DYNARCH_DEBUG=1 for the "
        "traceback and report it",
        type(error).__name__,
        error,
    )
    sys.exit(70)


def resume_command(hc, out_dir: Path) -> str:
    """The command that continues this run in place, shell-quoted: through launch_local when a worker was
    started by it (its DYNARCH_LAUNCHER: `--workers N` or `--slurm`; anything else there is ignored)."""
    import os
    import re

    keep = [o for o in hc.overrides.task if not o.startswith(("resume=", "hydra.run.dir="))]
    run_dir = f"hydra.run.dir={hydra_value(str(out_dir))}"
    launcher = os.environ.get("DYNARCH_LAUNCHER", "")
    start = ["python", "-m", "dynarch"]
    if re.fullmatch(r"--workers [1-9][0-9]{0,3}|--slurm", launcher):
        start = ["python", "-m", "dynarch.launch_local", *launcher.split()]
    return shell_command([*start, *keep, run_dir, "resume=true"])


def record_failure(out_dir: Path, error: BaseException) -> None:
    """error.json in the job's dir: the sweep summary marks the job failed with this message."""
    import traceback

    from .artifacts import write_json

    try:
        write_json(
            out_dir / "error.json",
            {
                "type": type(error).__name__,
                "message": str(error),
                "traceback": None if isinstance(error, DynarchError) else traceback.format_exc()[-4000:],
            },
        )
    except OSError as e:
        log.error("could not record the failure in %s: %s", out_dir, e)


def backend_override(argv: list[str]) -> list[str]:
    """`backend=jax` -> `++backend=jax`: the key is optional in the config (unset: KERAS_BACKEND decides), and
    `++` sets it whether or not a config file declares it."""
    return [f"++{a}" if a.startswith("backend=") else a for a in argv]


def main() -> None:
    """Pre-flight the config files named on the command line, hand over to Hydra, then exit with its code.

    As the process's own entry point (`python -m dynarch`, the `dynarch` script) the exit skips the interpreter's
    teardown once everything that a normal exit does that matters is done (see exit_now); imported and called
    by other code, it raises SystemExit as before."""
    code = run_cli()
    if fast_exit_wanted():
        exit_now(code)
    sys.exit(code)


def run_cli() -> int | str | None:
    """The whole command, every job of a sweep included; returns the exit code (SystemExit's `code`)."""
    try:
        _fast_exit_switch()
        sys.argv[1:] = qualify_arch_overrides(backend_override(sys.argv[1:]))  # +arch=deep -> +arch=mlp/deep
        preflight(sys.argv[1:])
        from .placement import check_cli_run_dir

        check_cli_run_dir(sys.argv[1:])  # Hydra creates and writes the run dir before our code runs
        from .placement import hydra_record

        record = hydra_record(sys.argv[1:])  # a resume's .hydra/, put back if the resume fails
    except DynarchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    code = _run_hydra()
    if code not in (0, None) and record:
        from .placement import restore_hydra_record

        restore_hydra_record(record)
    return code


def _run_hydra() -> int | str | None:
    try:
        hydra_main()
    except SystemExit as e:
        if e.code == 1 and not REPORTED and not JOB_RAN:  # Hydra reported a config/override error itself
            print(
                "  fix: check the override or config file named above (python -m dynarch --help lists the "
                "keys; a new key needs a leading +)",
                file=sys.stderr,
            )
        return e.code
    except KeyboardInterrupt:  # Ctrl-C while Hydra starts (scanning plugins, composition), before any job ran
        print("error: interrupted during start-up; nothing was trained\n  fix: run the command again", file=sys.stderr)
        return 130
    return 0


def _fast_exit_switch() -> bool | None:
    """DYNARCH_FAST_EXIT: 1 forces the fast exit, 0 turns it off, unset leaves it to how dynarch was started; any
    other value is refused at start (it was silently taken for 'unset' at the end of the command)."""
    from .envswitch import env_switch

    return env_switch("DYNARCH_FAST_EXIT", "1 (skip the interpreter's teardown) or 0 (its normal exit)")


def fast_exit_wanted() -> bool:
    """True when this process is the dynarch command itself: `python -m dynarch` or the `dynarch` console script.

    Not when dynarch.__main__ is run from other Python code (runpy in a test, an embedding script): that code
    may go on after SystemExit. DYNARCH_FAST_EXIT=0 turns it off, =1 forces it (a wrapper that is itself the
    whole process, e.g. a benchmark's child)."""
    try:
        forced = _fast_exit_switch()
    except DynarchError:
        forced = None  # refused at start (run_cli); here only when __main__ was driven another way
    if forced is not None:
        return forced
    argv = list(getattr(sys, "orig_argv", []))
    if "-m" in argv[:-1] and argv[argv.index("-m") + 1] == "dynarch":
        return True
    entry = getattr(sys.modules.get("__main__"), "__file__", None) or ""
    return Path(entry).name == "dynarch" and Path(sys.argv[0]).name == "dynarch"


def exit_now(code: int | str | None) -> None:
    """Exit with `code` as sys.exit would, without the interpreter's teardown.

    With TensorFlow loaded, tearing the interpreter down (collecting every module, C++ static destructors) took
    1.1-3.2 s on 2 CPU cores after the command's work was done (experiments/throughput/fixed_costs.py). Everything
    an ordinary exit does that has an effect outside the process is done first, in the same order: non-daemon
    threads are joined, atexit handlers run (logging.shutdown flushes and closes the log files; Hydra, MLflow,
    joblib register theirs there), stdout and stderr are flushed. Every artifact was already written atomically
    and fsynced by dynarch.artifacts before this point.
    """
    import atexit
    import threading

    if code is None:
        code = 0
    elif not isinstance(code, int):  # sys.exit("message"): printed to stderr, exit status 1
        print(code, file=sys.stderr)
        code = 1
    shutdown = getattr(threading, "_shutdown", None)
    if shutdown is not None:
        # What Py_Finalize does first: run the threading-atexit hooks (concurrent.futures' and joblib/loky's
        # executors stop their manager threads there), then join the non-daemon threads. Joining them without
        # those hooks waited forever after a hydra/launcher=joblib sweep.
        shutdown()
    else:  # an interpreter without the private hook: join what is left
        for thread in threading.enumerate():
            if thread is not threading.main_thread() and not thread.daemon:
                thread.join()
    atexit._run_exitfuncs()  # what Py_Finalize runs first; it clears the list, so nothing runs twice
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):  # a closed pipe: Python exits 120 when its final flush fails
            code = code or 120
    os._exit(code & 0xFF if code >= 0 else code % 256)


if __name__ == "__main__":
    main()
