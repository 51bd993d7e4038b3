"""One training run: prepare -> run the phases (phases.py) -> finish.

A plain run is one phase; a schedule is several, with the architecture changing at each boundary while
training goes on. Each phase is ONE Keras `fit` (stock callbacks keep their state across its epochs);
train-state checkpoints land mid-epoch and at epoch ends, and a run resumes bitwise-exactly from any of
them — inside a phase or at a boundary. The backend (TensorFlow or JAX, `run.backend`) is reached only
through `dynarch.runtime`; under JAX the input pipeline is data/numpy_pipeline.py (no TensorFlow).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sys
import time
import types
from pathlib import Path
from typing import Any, Sequence

from .callbacks import StopState
from .config import RunConfig
from .phases import PhaseLoop, TrainingStopped  # noqa: F401  (TrainingStopped: public here too)
from .resume import check_compatible, has_state, load_latest_state, restore
from .schedule import unused_epochs_note

log = logging.getLogger(__name__)


class Interrupted(BaseException):
    """Raised by the signal handler outside the training loop (start-up, boundary work, evaluation)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _signal_handlers(stop: StopState, loop_running: list[bool]):
    """SIGTERM / Ctrl-C: inside the loop, ask for a checkpoint at the next step boundary; outside it,
    interrupt at once (nothing is half-written: every write is atomic)."""

    def handler(signum, frame):
        # Recorded first, always: an exception raised inside a GC callback or __del__ (JAX registers one) is
        # printed as "Exception ignored" and lost, and the run trained on; the loop still sees the flag.
        stop.signal = signum
        if not loop_running[0]:
            raise Interrupted(signum)

    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread (e.g. a launcher's worker): leave signals alone
            pass
    return previous


def _reclaim_signal_handlers() -> None:
    """Install dynarch's SIGINT/SIGTERM handlers again at the C level. TensorFlow's multi-worker set-up (its
    coordination service's preemption notifier) installs a SIGTERM handler of its own with `std::signal`,
    behind Python's back: `signal.getsignal` still answers dynarch's handler, but a SIGTERM — what
    launch_local sends on Ctrl-C — was only logged ("SIGTERM caught") and the workers trained to the end.
    dynarch does not use TensorFlow's preemption checkpointing; its own handler checkpoints at the boundary."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(sig)
        if callable(handler):
            try:
                signal.signal(sig, handler)
            except ValueError:  # not the main thread: _signal_handlers left signals alone too
                pass


def train(
    run: RunConfig,
    out_dir: Path,
    resume: bool = False,
    resume_command: str | None = None,
    resolved_config: str | None = None,
    callbacks: Sequence = (),
) -> dict[str, Any]:
    """Train and evaluate `run`, writing model.md, history.csv, curves.png, metrics.json and checkpoint/.

    Args:
        run: validated run settings (one phase, or a schedule's phases).
        out_dir: the run dir (`${hydra:runtime.output_dir}`); created if missing.
        resume: continue from the newest train-state checkpoint in `out_dir` (bitwise-exact on CPU).
        resume_command: printed when the run is interrupted, so the user can continue it.
        resolved_config: the composed config as YAML, written to config.yaml once the run dir is ours.
        callbacks: extra Keras callbacks, added to every phase's `fit` (they end a phase, not the run).

    Returns:
        The metrics written to metrics.json.
    """
    from .placement import check_out_dir_arg
    from .rundir import RunDirLock, check_new_run_dir, clean_stale_temps

    t_start = time.perf_counter()
    _check_run_arg(run)
    out_dir = check_out_dir_arg(out_dir)
    scratch = _worker_scratch(run, out_dir, resume)  # a multi-worker non-chief: writes only here
    stop, loop_running = StopState(), [False]
    previous = _signal_handlers(stop, loop_running)
    try:
        if scratch is not None:  # no lock, no run-dir checks: the chief owns the run dir
            return _train_locked(
                run, scratch, resume, resume_command, resolved_config, callbacks, stop, loop_running, t_start
            )
        with RunDirLock(out_dir) as lock:
            if resume:
                removed = clean_stale_temps(out_dir)
                if removed:
                    log.info("%s", removed.describe())
            elif has_state(out_dir):
                from .errors import CheckpointError

                raise CheckpointError(
                    str(out_dir),
                    "this run dir already holds a checkpointed run",
                    expected="a new run dir, or resume=true to continue that run",
                    received="state/ with train-state checkpoints",
                    fix="add resume=true to continue it, or drop hydra.run.dir to start a new run",
                )
            else:
                check_new_run_dir(out_dir)
            return _train_locked(
                run,
                out_dir,
                resume,
                resume_command,
                resolved_config,
                callbacks,
                stop,
                loop_running,
                t_start,
                lock.check_still_held,
            )
    except Interrupted as e:
        raise TrainingStopped(
            "training",
            f"interrupted by signal {e.signum} outside the training loop; every file written so far is complete",
            fix=f"continue with: {resume_command}" if resume or has_state(out_dir) else "run the command again",
            exit_code=128 + e.signum,
        ) from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if scratch is not None:
            import shutil

            shutil.rmtree(scratch, ignore_errors=True)


def _worker_scratch(run: RunConfig, out_dir: Path, resume: bool) -> Path | None:
    """For a multi-worker process that is not the chief: a scratch dir (removed when train() ends) that
    stands in for the run dir, holding a copy of the chief's train-state checkpoints when resuming (read
    from DYNARCH_CHIEF_RUN_DIR, set by launch_local, else the run dir). None for the chief and one process."""
    if run.trainer.strategy != "multi_worker":
        return None
    import os
    import shutil
    import tempfile

    from .cluster import task_from_env
    from .resume import STATE_DIR

    task = task_from_env(multi_worker=True)
    if task.is_chief:
        return None
    scratch = Path(tempfile.mkdtemp(prefix=f"dynarch-{task.type}{task.index}-"))
    source = Path(os.environ.get("DYNARCH_CHIEF_RUN_DIR") or out_dir) / STATE_DIR
    if resume and source.is_dir():
        # Complete checkpoints only (step-*/ and the `latest` pointer); a killed save's temps are the chief's
        # to clean. load_latest_state then picks the same checkpoint the chief picks.
        (scratch / STATE_DIR).mkdir()
        for entry in sorted(source.iterdir()):
            try:
                if entry.name.startswith("step-") and entry.is_dir():
                    shutil.copytree(entry, scratch / STATE_DIR / entry.name)
                elif entry.name == "latest":
                    shutil.copy2(entry, scratch / STATE_DIR / entry.name)
            except (OSError, shutil.Error):  # removed by the chief's clean-up meanwhile: not a checkpoint
                shutil.rmtree(scratch / STATE_DIR / entry.name, ignore_errors=True)
    log.info("worker %s %d of %d: writing only to scratch %s", task.type, task.index, task.num_workers, scratch)
    return scratch


def _train_locked(
    run, out_dir, resume, resume_command, resolved_config, callbacks, stop, loop_running, t_start, held=None
):
    from . import artifacts
    from .data import Pipelines, load_arrays
    from .runtime import get_runtime

    if resolved_config is not None and not resume:
        artifacts.write_text(out_dir / "config.yaml", resolved_config)
    if run.init_from and not resume:
        from .migrate import check_source_before_build

        check_source_before_build(run)  # strict / incompatible source: fail before any TensorFlow work
    cache = compile_cache_dir(run, out_dir)  # a bad DYNARCH_COMPILE_CACHE fails before JAX compiles anything
    runtime = get_runtime(run.backend)
    if cache is not None and hasattr(runtime, "enable_compile_cache"):
        runtime.enable_compile_cache(cache)  # sweeps and reruns of a variant load compiled steps, not recompile
    flops = [p.arch.forward_flops for p in run.phases]
    runtime.configure(run.trainer, run.seed, None if None in flops else max(flops))
    _reclaim_signal_handlers()  # the strategy made above may have taken SIGTERM
    log.info(
        "devices: %s; strategy: %s; precision: %s",
        runtime.device_report(),
        runtime.strategy_text(),
        run.trainer.precision,
    )
    note = unused_epochs_note(run.schedule, run.phases, run.trainer.epochs)
    if note:  # info, not a warning: a schedule's default run (cnn_widen: 4 epochs vs the default 5) says it too
        log.info("%s", note)
    ckpt = load_latest_state(out_dir) if resume else None
    from .steploop import check_fused_devices, pick_loop

    if run.loop == "auto":
        run = dataclasses.replace(run, loop=pick_loop(run, runtime, ckpt))
    check_fused_devices(run, runtime)
    if ckpt is not None:
        position = check_compatible(ckpt, run)
        if resolved_config is not None:  # only once the resume is accepted: a refused one changes nothing
            artifacts.write_text(out_dir / "config.yaml", resolved_config)
    arrays = load_arrays(run.data, run.seed)
    log.info("data: %s %s", arrays.source, arrays.sizes())
    if arrays.val is None and run.data.no_validation() is None:  # fewer rows than data.limit_train promised
        from .hooks import check_callbacks
        from .schedule import check_plateau_monitors

        rows = len(arrays.train[1])
        check_callbacks(run.callbacks, run, rows)
        check_plateau_monitors(run.phases, run.data, rows)
    if run.backend == "tensorflow" and run.loop == "keras":
        data = Pipelines(arrays, run.trainer.batch_size, run.seed)
    else:  # same batches, same order, no TensorFlow (augmentation is refused for these backends at validation);
        # the fused loop reads the arrays itself and uses this only for sizes and the boundary probe
        from .data.numpy_pipeline import NumpyPipelines

        data = NumpyPipelines(arrays, run.trainer.batch_size, run.seed)

    if hasattr(runtime, "check_batches"):  # JAX DataParallel: every batch, partial ones too, splits evenly
        runtime.check_batches(arrays.sizes(), run.trainer.batch_size)
    if ckpt is not None and position.batches_done >= data.steps_per_epoch:
        from .errors import CheckpointError

        raise CheckpointError(
            str(ckpt.path),
            f"the train-state says {position.batches_done} batches of epoch "
            f"{position.epoch + 1} are done, but an epoch has {data.steps_per_epoch}",
            expected=f"batches_done < {data.steps_per_epoch}",
            received=position.batches_done,
            fix="resume from another checkpoint of this run, or start a new run",
        )
    loop = PhaseLoop(run, out_dir, runtime, data, callbacks)
    loop.stop, loop.arrays = stop, arrays
    if held is not None:  # the run dir lock's check (a non-chief worker's scratch dir has no lock)
        loop.check_run_dir = held
    migrated_from = None
    if ckpt is not None:
        loop.position = position
        loop.restored_callback_states = ckpt.manifest.get("callbacks")
        loop.model = loop.build(run.phases[position.phase])
        with runtime.scope():
            restore(loop.model, ckpt)
        migrated_from = ckpt.manifest.get("migrated_from")
        log.info(
            "resuming from %s: phase %d, epoch %d, %d batches done",
            ckpt.path,
            position.phase,
            position.epoch + 1,
            position.batches_done,
        )
    else:
        loop.model = loop.build(run.phases[0])
        if run.init_from:
            from .migrate import migrate_model, write_report

            with runtime.scope():
                report = migrate_model(
                    loop.model,
                    run.phases[0].arch,
                    run.init_from,
                    new_blocks=run.migrate.new_blocks,
                    strict=run.migrate.strict,
                    seed=run.seed,
                    target_variant=run.variant,
                )
            write_report(report, out_dir)
            log.info("migrated weights from %s:\n%s", report.source, report.to_markdown())
            migrated_from = report.source

    t_fit = time.perf_counter()
    compiled_before = runtime.compile_seconds() if hasattr(runtime, "compile_seconds") else None
    try:
        while True:
            loop_running[0] = True
            loop.fit_phase()
            loop_running[0] = False
            loop.raise_if_stopped(resume_command)
            if loop.position.phase + 1 >= len(run.phases):
                break
            loop.boundary()
        train_time = time.perf_counter() - t_fit
        if compiled_before is not None:
            loop.compile_s = runtime.compile_seconds() - compiled_before
        from .results import finish

        return finish(loop, arrays, runtime, migrated_from, resume, train_time, t_start)
    except BaseException:
        loop.writer.flush_quietly()  # the checkpoint being written lands before the error is reported
        raise


def compile_cache_dir(run: RunConfig, out_dir: Path) -> Path | None:
    """Where JAX keeps compiled programs between processes: DYNARCH_COMPILE_CACHE (the user's environment,
    never a config: configs cannot write outside the run), else the sweep dir a Hydra multirun job runs in
    (its jobs share one cache), else the run dir. None when off or the backend has no such cache."""
    if run.backend != "jax" or run.trainer.compile_cache == "off":
        return None
    if os.environ.get("DYNARCH_COMPILE_CACHE"):
        return _usable_cache_dir(Path(os.environ["DYNARCH_COMPILE_CACHE"]).expanduser())
    sweep = out_dir.parent
    return (sweep if (sweep / "multirun.yaml").is_file() else out_dir) / ".cache" / "jax"


def _usable_cache_dir(path: Path) -> Path:
    """DYNARCH_COMPILE_CACHE checked before JAX starts: a directory that exists or can be made, writable."""
    from .errors import ConfigError

    try:
        path.mkdir(parents=True, exist_ok=True)
        ok = path.is_dir() and os.access(path, os.W_OK | os.X_OK)
        problem = "is not a writable directory"
    except OSError as e:
        ok, problem = False, f"cannot be created ({e.strerror or e})"
    foreign = _foreign_entries(path) if ok else []
    if foreign:  # JAX writes its entries flat into the folder: DYNARCH_COMPILE_CACHE=/ or =~ sprayed them there
        ok, problem = False, f"holds files that are not JAX cache entries (e.g. {foreign[0]!r})"
    if not ok:
        raise ConfigError(
            "DYNARCH_COMPILE_CACHE",
            f"the JAX compilation cache directory {problem}",
            expected="a writable directory of its own (created if missing)",
            received=str(path),
            fix="unset DYNARCH_COMPILE_CACHE (the cache then lives in the sweep or run dir), point it at a "
            "writable directory of its own (new, empty or an earlier cache), or set trainer.compile_cache=off",
        )
    return path


def _foreign_entries(path: Path) -> list[str]:
    """Names in `path` that JAX's cache did not write (its entries end -cache, their access times -atime)."""
    try:
        with os.scandir(path) as entries:
            return sorted(e.name for e in entries if not e.name.endswith(("-cache", "-atime")))[:3]
    except OSError:
        return []


def _check_run_arg(run: Any) -> None:
    """From Python, `run` is what compose_run returns (a string or a DictConfig raised AttributeError)."""
    if not isinstance(run, RunConfig):
        from .errors import ConfigError

        raise ConfigError(
            "run",
            "train() takes the RunConfig that dynarch.compose_run returns",
            expected="a dynarch RunConfig",
            received=type(run).__name__,
            fix='run = dynarch.compose_run(["data=mnist_subset"]); dynarch.train(run, "outputs/my-run")',
        )


class _CallableModule(types.ModuleType):
    """`dynarch.train(run, out_dir)` is the public API (dynarch/__init__.py), but once this submodule is imported
    the import system sets the package's `train` attribute to the module itself: a notebook's second
    `dynarch.train(...)` met "'module' object is not callable". Calling the module calls `train`."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
