"""One training run as a phase loop: prepare -> run phases -> finish.

A plain run is one phase; a schedule is several, with the architecture changing at each boundary while
training goes on. Each phase is ONE Keras `fit` (stock callbacks keep their state across its epochs);
train-state checkpoints land mid-epoch and at epoch ends, and a run resumes bitwise-exactly from any of
them — inside a phase or at a boundary. TensorFlow is reached only through `dynarch.runtime`.
"""
from __future__ import annotations

import logging
import signal
import statistics
import time
from pathlib import Path
from typing import Any, Sequence

from .callbacks import ContinuedFit, Keeper, StopState, Throughput
from .config import RunConfig
from .errors import DynarchError
from .resume import Position, check_compatible, has_state, load_latest_state, restore, save_state
from .schedule import PhaseSpec

log = logging.getLogger(__name__)


class TrainingStopped(DynarchError):
    """Training stopped early on purpose (signal, NaN loss); the message says what to do next."""

    def __init__(self, *args, exit_code: int = 2, **kwargs):
        super().__init__(*args, **kwargs)
        self.exit_code = exit_code


class Interrupted(BaseException):
    """Raised by the signal handler outside the training loop (start-up, boundary work, evaluation)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def seed_for_phase(seed: int, phase: int) -> int:
    """Phase 0 uses the run's seed (a plain run is unchanged); later phases a seed derived from it, so a
    boundary builds the same new variables whether or not the run was resumed in between."""
    return seed if phase == 0 else (seed * 1_000_003 + phase) % (2**32 - 1)


class PhaseLoop:
    """The state of one run while it trains: model, data, position, history, stop state."""

    def __init__(self, run: RunConfig, out_dir: Path, runtime, data, callbacks: Sequence = ()):
        self.run, self.out_dir, self.runtime, self.data = run, Path(out_dir), runtime, data
        self.user_callbacks = list(callbacks)
        self.position = Position()
        self.stop = StopState()
        self.model = None
        self.rates: list[float] = []
        self.first_epoch_of_fit = 0

    # -- state shared with the keeper ------------------------------------------------------------------
    @property
    def steps_per_epoch(self) -> int:
        return self.data.steps_per_epoch

    @property
    def phase(self) -> PhaseSpec:
        return self.run.phases[self.position.phase]

    def save(self, model) -> Path:
        return save_state(self.out_dir, model, self.position, self.run, self.run.trainer.keep_checkpoints)

    def record_epoch(self, epoch: int, logs: dict[str, Any]) -> None:
        history = self.position.history
        n = len(history.get("loss", []))
        if self.run.schedule:
            history.setdefault("phase", []).append(self.position.phase)
        for key, value in logs.items():
            history.setdefault(key, [float("nan")] * n).append(float(value))
        if epoch > self.first_epoch_of_fit:  # the first epoch of a fit pays tracing: not a steady rate
            self.rates.append(logs.get("samples_per_s", 0.0))
        self.position.epoch, self.position.batches_done = epoch + 1, 0
        if self.run.trainer.verbose == 2:
            print(self.epoch_line(epoch, logs), flush=True)
        from . import artifacts
        artifacts.write_history_csv(self.out_dir / "history.csv", history)

    def phase_should_end(self) -> bool:
        phase = self.phase
        if self.position.epoch >= phase.end_epoch(self.position.phase_start, self.run.trainer.epochs):
            return False  # fit ends by itself at the phase's last epoch
        if phase.plateau is None:
            return False
        values = self.position.history.get(phase.plateau.monitor, [])[self.position.phase_start:]
        return phase.plateau.reached(values)

    def epoch_line(self, epoch: int, logs: dict) -> str:
        keys = ("loss", "accuracy", "val_loss", "val_accuracy")
        parts = [f"{k} {logs[k]:.4f}" for k in keys if k in logs]
        total = self.run.total_epochs or "?"
        tag = f" [phase {self.position.phase + 1}/{len(self.run.phases)} {self.phase.name}]" if self.run.schedule else ""
        return (f"epoch {epoch + 1}/{total}{tag}: " + "  ".join(parts) +
                f"  ({logs.get('epoch_time_s', 0):.2f}s, {logs.get('samples_per_s', 0):,.0f} samples/s)")

    # -- the phase ------------------------------------------------------------------------------------
    def build(self, phase: PhaseSpec):
        """The phase's model, compiled with its optimizer, optimizer variables created (so they can be filled)."""
        from .build import build_model, model_table
        from .optim import make_optimizer

        self.runtime.reseed(seed_for_phase(self.run.seed, phase.index))
        with self.runtime.scope():
            model = build_model(phase.arch)
            model.compile(optimizer=make_optimizer(phase.optimizer), loss="sparse_categorical_crossentropy",
                          metrics=["accuracy"], jit_compile=self.run.trainer.jit_compile,
                          steps_per_execution=self.runtime.steps_per_execution(self.run.trainer.steps_per_execution))
            model.optimizer.build(model.trainable_variables)
        table = model_table(phase.arch, model)
        from . import artifacts
        name = "model.md" if phase.index == 0 else f"model-phase-{phase.index}.md"
        title = f"{phase.arch.name} ({self.run.variant})" + (f", phase {phase.index}: {phase.name}" if self.run.schedule else "")
        artifacts.write_text(self.out_dir / name, f"# {title}\n\n{table}\n")
        log.info("model %s:\n%s", title, table)
        return model

    def fit_phase(self) -> None:
        """Train the current phase to its end (or a stop) with one `fit` (two after a mid-epoch resume)."""
        phase, pos = self.phase, self.position
        end = phase.end_epoch(pos.phase_start, self.run.trainer.epochs)
        if pos.phase_done or pos.epoch >= end:
            return
        verbose = 1 if self.run.trainer.verbose == 1 else 0
        if pos.batches_done:  # finish the interrupted epoch first: its batch count differs
            skip = pos.batches_done
            self._fit(self.data.train(pos.epoch, skip), pos.epoch, pos.epoch + 1, verbose, skip, self.user_callbacks)
            if self.stop.mid_epoch or pos.phase_done or pos.epoch >= end:
                return
            callbacks = [ContinuedFit(c) for c in self.user_callbacks]
        else:
            callbacks = self.user_callbacks
        self._fit(self.data.epoch_dataset(lambda: self.position.epoch), pos.epoch, end, verbose, 0, callbacks)

    def _fit(self, dataset, first: int, end: int, verbose: int, skip: int, callbacks) -> None:
        n = self.data.n_train
        self.first_epoch_of_fit = first
        samples = lambda epoch: n - min(n, skip * self.run.trainer.batch_size) if epoch == first else n
        keeper = Keeper(self, self.stop, self.run.trainer.checkpoint_every, skip)
        self.model.fit(dataset, validation_data=self.data.val(), initial_epoch=first, epochs=end, shuffle=False,
                       callbacks=[Throughput(samples), *callbacks, keeper], verbose=verbose)

    def boundary(self) -> None:
        """Phase k ended: build phase k+1, carry weights, RNG and optimizer state by path, write the report."""
        from . import artifacts
        from .boundary import migrate_boundary

        old, prev, index = self.model, self.phase, self.position.phase + 1
        nxt = self.run.phases[index]
        new = self.build(nxt)
        with self.runtime.scope():
            report = migrate_boundary(old, new, prev, nxt, new_blocks=self.run.migrate.new_blocks,
                                      seed=seed_for_phase(self.run.seed, index),
                                      lr_changed=nxt.optimizer != prev.optimizer, probe=self.data.probe())
        artifacts.write_text(self.out_dir / f"migration-phase-{index}.md", report.to_markdown())
        artifacts.write_json(self.out_dir / f"migration-phase-{index}.json",
                             {**report.to_json(), "epoch": self.position.epoch,
                              "output_change": getattr(report, "output_change", None),
                              "optimizer": getattr(report, "optimizer", None)})
        log.info("phase %d -> %d (%s -> %s) at epoch %d: %s; outputs moved by at most %.2e", index - 1, index,
                 prev.name, nxt.name, self.position.epoch, report.counts(), getattr(report, "output_change", 0.0))
        self.model = new
        self.position.phase, self.position.phase_start, self.position.phase_done = index, self.position.epoch, False

    def raise_if_stopped(self, resume_command: str | None) -> None:
        stop = self.stop
        if stop.nan_at is not None:
            raise TrainingStopped("training", f"the loss became NaN in epoch {stop.nan_at[0] + 1} at batch "
                                  f"{stop.nan_at[1]}; training stopped, the last good checkpoint is kept"
                                  + (f" ({stop.saved})" if stop.saved else ""),
                                  expected="a finite loss", received="nan",
                                  fix="lower optimizer.lr, check the data, or resume=true from the last "
                                      "good checkpoint with other settings")
        if stop.signal is not None:
            raise TrainingStopped("training", f"stopped by signal {stop.signal}; checkpoint saved at {stop.saved}",
                                  fix=f"continue with: {resume_command or 'the same command plus resume=true'}",
                                  exit_code=128 + int(stop.signal))


def _signal_handlers(stop: StopState, loop_running: list[bool]):
    """SIGTERM / Ctrl-C: inside the loop, ask for a checkpoint at the next step boundary; outside it,
    interrupt at once (nothing is half-written: every write is atomic)."""
    def handler(signum, frame):
        if loop_running[0]:
            stop.signal = signum
        else:
            raise Interrupted(signum)
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread (e.g. a launcher's worker): leave signals alone
            pass
    return previous


def train(run: RunConfig, out_dir: Path, resume: bool = False, resume_command: str | None = None,
          resolved_config: str | None = None, callbacks: Sequence = ()) -> dict[str, Any]:
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
    from .rundir import RunDirLock, check_new_run_dir, clean_stale_temps

    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    stop, loop_running = StopState(), [False]
    previous = _signal_handlers(stop, loop_running)
    try:
        with RunDirLock(out_dir):
            if resume:
                removed = clean_stale_temps(out_dir)
                if removed:
                    log.info("%s", removed.describe())
            elif has_state(out_dir):
                from .errors import CheckpointError
                raise CheckpointError(str(out_dir), "this run dir already holds a checkpointed run",
                                      expected="a new run dir, or resume=true to continue that run",
                                      received="state/ with train-state checkpoints",
                                      fix="add resume=true to continue it, or drop hydra.run.dir to start a new run")
            else:
                check_new_run_dir(out_dir)
            return _train_locked(run, out_dir, resume, resume_command, resolved_config, callbacks, stop,
                                 loop_running, t_start)
    except Interrupted as e:
        raise TrainingStopped("training", f"interrupted by signal {e.signum} outside the training loop; every file "
                              "written so far is complete", fix=f"continue with: {resume_command}" if resume
                              or has_state(out_dir) else "run the command again",
                              exit_code=128 + e.signum) from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _train_locked(run, out_dir, resume, resume_command, resolved_config, callbacks, stop, loop_running, t_start):
    from . import artifacts
    from .data import Pipelines, load_arrays
    from .runtime import get_runtime

    if resolved_config is not None:
        artifacts.write_text(out_dir / "config.yaml", resolved_config)
    if run.init_from and not resume:
        from .migrate import check_source_before_build
        check_source_before_build(run)  # strict / incompatible source: fail before any TensorFlow work
    runtime = get_runtime("tensorflow")
    flops = [p.arch.forward_flops for p in run.phases]
    runtime.configure(run.trainer, run.seed, None if None in flops else max(flops))
    log.info("devices: %s; strategy: %s; precision: %s", runtime.device_report(), runtime.strategy_text(),
             run.trainer.precision)
    ckpt = None
    if resume:
        ckpt = load_latest_state(out_dir)
        position = check_compatible(ckpt, run)
    arrays = load_arrays(run.data, run.seed)
    log.info("data: %s %s", arrays.source, arrays.sizes())
    data = Pipelines(arrays, run.trainer.batch_size, run.seed)

    loop = PhaseLoop(run, out_dir, runtime, data, callbacks)
    loop.stop = stop
    migrated_from = None
    if ckpt is not None:
        loop.position = position
        loop.model = loop.build(run.phases[position.phase])
        with runtime.scope():
            restore(loop.model, ckpt)
        migrated_from = ckpt.manifest.get("migrated_from")
        log.info("resuming from %s: phase %d, epoch %d, %d batches done", ckpt.path, position.phase,
                 position.epoch + 1, position.batches_done)
    else:
        loop.model = loop.build(run.phases[0])
        if run.init_from:
            from .migrate import migrate_model, write_report
            with runtime.scope():
                report = migrate_model(loop.model, run.phases[0].arch, run.init_from, new_blocks=run.migrate.new_blocks,
                                       strict=run.migrate.strict, seed=run.seed, target_variant=run.variant)
            write_report(report, out_dir)
            log.info("migrated weights from %s:\n%s", report.source, report.to_markdown())
            migrated_from = report.source

    t_fit = time.perf_counter()
    while True:
        loop_running[0] = True
        loop.fit_phase()
        loop_running[0] = False
        loop.raise_if_stopped(resume_command)
        if loop.position.phase + 1 >= len(run.phases):
            break
        loop.boundary()
    train_time = time.perf_counter() - t_fit
    return _finish(loop, arrays, runtime, migrated_from, resume, train_time, t_start)


def _finish(loop: PhaseLoop, arrays, runtime, migrated_from, resume, train_time, t_start) -> dict[str, Any]:
    """Evaluate, then write metrics, history, curves and the final checkpoint."""
    from . import artifacts, checkpoint

    run, model, out_dir, history = loop.run, loop.model, loop.out_dir, loop.position.history
    test_loss, test_acc = model.evaluate(loop.data.test(), verbose=0)
    steady = loop.rates
    final = loop.phase
    metrics = {
        "test_accuracy": float(test_acc), "test_loss": float(test_loss),
        "val_accuracy": history["val_accuracy"][-1] if history.get("val_accuracy") else None,
        "params": int(model.count_params()), "epochs": loop.position.epoch,
        "train_time_s": round(train_time, 3),
        "samples_per_s": round(statistics.median(steady), 1) if steady else None,
        "wall_time_s": None, "data_source": arrays.source, "data_sizes": arrays.sizes(),
        "model": final.arch.name, "variant": run.variant, "enabled_blocks": final.arch.enabled_paths(),
        "migrated_from": migrated_from, "resumed": resume, "seed": run.seed, "devices": runtime.device_report(),
        "versions": runtime.versions(), "strategy": runtime.strategy_text(),
    }
    if run.schedule:
        metrics["schedule"] = run.schedule
        metrics["phases"] = phase_summaries(loop, test_acc)
    boundaries = [(s["start_epoch"], s["name"]) for s in metrics.get("phases", [])[1:]]
    title = f"{final.arch.name} / {run.variant}" + (f" / {run.schedule}" if run.schedule else "")
    artifacts.write_history_csv(out_dir / "history.csv", history)
    artifacts.plot_curves(out_dir / "curves.png", history, f"{title}: test acc {test_acc:.4f}", boundaries=boundaries)
    checkpoint.save_checkpoint(out_dir / checkpoint.RUN_SUBDIR, checkpoint.model_tensors(model), {
        "arch": dict(final.arch.raw), "model": final.arch.name, "variant": run.variant,
        "num_classes": final.arch.num_classes, "input_shape": list(final.arch.input_shape),
        "data_source": arrays.source, "migrated_from": migrated_from,
        "schedule": [p.fingerprint() for p in run.phases] if run.schedule else None,
        "metrics": {k: metrics[k] for k in ("test_accuracy", "test_loss")},
        "versions": metrics["versions"], "seed": run.seed})
    if run.trainer.export_keras:
        checkpoint.export_keras(model, out_dir / "model.keras")
    metrics["wall_time_s"] = round(time.perf_counter() - t_start, 3)
    artifacts.write_json(out_dir / "metrics.json", metrics)
    log.info("test accuracy %.4f, loss %.4f (%s, %s samples/s) -> %s", test_acc, test_loss,
             arrays.source, metrics["samples_per_s"], out_dir)
    return metrics


def _migration_counts(out_dir: Path, index: int) -> dict[str, int] | None:
    import json
    path = out_dir / f"migration-phase-{index}.json"
    try:
        return json.loads(path.read_text()).get("counts") if path.is_file() else None
    except (OSError, ValueError):
        return None


def phase_summaries(loop: PhaseLoop, test_acc: float) -> list[dict[str, Any]]:
    """One entry per phase that ran: architecture, epochs, params, validation accuracy at its end."""
    history = loop.position.history
    phases_seen = [int(p) for p in history.get("phase", [])]
    out = []
    for phase in loop.run.phases[: loop.position.phase + 1]:
        epochs = [i for i, p in enumerate(phases_seen) if p == phase.index]
        val = history.get("val_accuracy", [])
        out.append({"phase": phase.index, "name": phase.name, "architecture": phase.arch.enabled_paths(),
                    "start_epoch": epochs[0] if epochs else None, "epochs": len(epochs),
                    "params": phase.arch.num_params,
                    "val_accuracy": val[epochs[-1]] if epochs and epochs[-1] < len(val) else None,
                    "test_accuracy": float(test_acc) if phase.index == loop.position.phase else None,
                    "migration": _migration_counts(loop.out_dir, phase.index)})
    return out
