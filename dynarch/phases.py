"""The phase loop: one phase = one Keras `fit` over the phase's epochs, with the keeper's train-state
checkpoints; at a boundary the next phase's model is built and receives weights, RNG and optimizer state
by path (boundary.py). train.py drives it: prepare -> phases -> finish."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Sequence

from .background import BackgroundWriter
from .callbacks import ContinuedFit, Keeper, RunDirGuard, StopState, Throughput
from .config import RunConfig
from .errors import DynarchError
from .resume import Position, snapshot_state
from .schedule import PhaseSpec

log = logging.getLogger(__name__)


class TrainingStopped(DynarchError):
    """Training stopped early on purpose (signal, NaN loss); the message says what to do next."""

    def __init__(self, *args, exit_code: int = 2, **kwargs):
        super().__init__(*args, **kwargs)
        self.exit_code = exit_code


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
        self.restored_callback_states: dict | None = None  # from the state checkpoint a resume started at
        self.arrays = None  # the in-memory splits (the fused loop places them on the device)
        self._stepper = None  # trainer.loop=fused: the step loop's stepper for the current model
        self.writer = BackgroundWriter("dynarch-checkpoint")  # train-state checkpoints, one at a time
        self._plotting_prefetch = None  # the curves' imports, started after the first epoch
        self.check_run_dir: Callable[[], None] = lambda: None  # RunDirLock.check_still_held, set by train

    # -- state shared with the keeper ------------------------------------------------------------------
    @property
    def steps_per_epoch(self) -> int:
        return self.data.steps_per_epoch

    @property
    def phase(self) -> PhaseSpec:
        return self.run.phases[self.position.phase]

    def save(self, model) -> Path:
        """Snapshot the train state now and write it on the background writer (training goes on); returns
        the folder it will be. `flush_saves` waits for it: before a stop is reported, at the end, on errors."""
        from .hooks import callback_states

        self.check_run_dir()
        folder, write = snapshot_state(
            self.out_dir,
            model,
            self.position,
            self.run,
            self.run.trainer.keep_checkpoints,
            callbacks=callback_states(self.user_callbacks),
        )
        self.writer.submit(write)
        return folder

    def flush_saves(self) -> None:
        self.writer.flush()

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

        self.check_run_dir()
        artifacts.write_history_csv(self.out_dir / "history.csv", history)
        self.prefetch_plotting()  # after epoch 1: the import overlaps compiled training, not tracing

    def prefetch_plotting(self) -> None:
        """Start the curves' imports on a thread, once per run: after the first epoch, or earlier where a
        stepper has a better moment (runtime/fused_jax.py: during its first compile, on an accelerator)."""
        if self._plotting_prefetch is None:
            from . import artifacts

            self._plotting_prefetch = artifacts.prefetch_plotting()

    def phase_should_end(self) -> bool:
        phase = self.phase
        if self.position.epoch >= phase.end_epoch(self.position.phase_start, self.run.trainer.epochs):
            return False  # fit ends by itself at the phase's last epoch
        if phase.plateau is None:
            return False
        values = self.position.history.get(phase.plateau.monitor, [])[self.position.phase_start :]
        return phase.plateau.reached(values)

    def epoch_line(self, epoch: int, logs: dict) -> str:
        keys = ("loss", "accuracy", "val_loss", "val_accuracy")
        parts = [f"{k} {logs[k]:.4f}" for k in keys if k in logs]
        total = self.run.total_epochs or "?"
        tag = (
            f" [phase {self.position.phase + 1}/{len(self.run.phases)} {self.phase.name}]" if self.run.schedule else ""
        )
        return (
            f"epoch {epoch + 1}/{total}{tag}: "
            + "  ".join(parts)
            + f"  ({logs.get('epoch_time_s', 0):.2f}s, {logs.get('samples_per_s', 0):,.0f} samples/s)"
        )

    # -- the phase ------------------------------------------------------------------------------------
    def build(self, phase: PhaseSpec):
        """The phase's model, compiled with its optimizer, optimizer variables created (so they can be filled)."""
        from .build import build_model, model_table
        from .optim import make_optimizer

        self.runtime.reseed(seed_for_phase(self.run.seed, phase.index))
        with self.runtime.scope():
            model = build_model(phase.arch)
            model.dynarch_phase = phase.index  # callbacks that keep state across phases tell them apart
            model.compile(
                optimizer=make_optimizer(phase.optimizer),
                loss="sparse_categorical_crossentropy",
                metrics=["accuracy"],
                jit_compile=self.run.trainer.jit_compile,
                steps_per_execution=self.runtime.steps_per_execution(self.run.trainer.steps_per_execution),
            )
            model.optimizer.build(model.trainable_variables)
        table = model_table(phase.arch, model)
        from . import artifacts

        name = "model.md" if phase.index == 0 else f"model-phase-{phase.index}.md"
        title = f"{phase.arch.name} ({self.run.variant})" + (
            f", phase {phase.index}: {phase.name}" if self.run.schedule else ""
        )
        self.check_run_dir()
        artifacts.write_text(self.out_dir / name, f"# {title}\n\n{table}\n")
        log.info("model %s:\n%s", title, table)
        return model

    def fit_phase(self) -> None:
        """Train the current phase to its end (or a stop) with one `fit` (two after a mid-epoch resume)."""
        phase, pos = self.phase, self.position
        end = phase.end_epoch(pos.phase_start, self.run.trainer.epochs)
        states, self.restored_callback_states = self.restored_callback_states, None
        if states:
            from .hooks import restore_callback_states

            restore_callback_states(
                self.user_callbacks, states, continues_phase=not (pos.phase_done or pos.epoch >= end)
            )
        if pos.phase_done or pos.epoch >= end:
            return
        verbose = 1 if self.run.trainer.verbose == 1 else 0
        if self.run.loop == "fused":  # one driver call per phase, mid-epoch resume included
            from .steploop import fit_phase_steps

            fit_phase_steps(self, self.stepper(), end, self.user_callbacks, verbose)
            return
        if pos.batches_done:  # finish the interrupted epoch first: its batch count differs
            skip = pos.batches_done
            self._fit(self.data.train(pos.epoch, skip), pos.epoch, pos.epoch + 1, verbose, skip, self.user_callbacks)
            if self.stop.mid_epoch or pos.phase_done or pos.epoch >= end:
                return
            callbacks = [ContinuedFit(c) for c in self.user_callbacks]
        else:
            callbacks = self.user_callbacks
        self._fit(self.data.epoch_dataset(lambda: self.position.epoch), pos.epoch, end, verbose, 0, callbacks)

    def stepper(self):
        """The step loop's stepper for the current model (rebuilt when a boundary replaced the model)."""
        if self._stepper is None or self._stepper.model is not self.model:
            from .steploop import make_stepper

            self._stepper = make_stepper(self)
            self._stepper.on_host_idle = self.prefetch_plotting
        return self._stepper

    def evaluate_test(self) -> tuple[float, float]:
        """(loss, accuracy) on the test split, with the loop that trained."""
        if self.run.loop == "fused":
            result = self.stepper().evaluate("test")
            return result["loss"], result["accuracy"]
        loss, accuracy = self.model.evaluate(self.data.test(), verbose=0)
        return loss, accuracy

    def _fit(self, dataset, first: int, end: int, verbose: int, skip: int, callbacks) -> None:
        n = self.data.n_train
        self.first_epoch_of_fit = first
        samples = lambda epoch: n - min(n, skip * self.run.trainer.batch_size) if epoch == first else n
        keeper = Keeper(self, self.stop, self.run.trainer.checkpoint_every, skip)
        self.model.fit(
            dataset,
            validation_data=self.data.val(),
            initial_epoch=first,
            epochs=end,
            shuffle=False,
            callbacks=[Throughput(samples), RunDirGuard(self.check_run_dir), *callbacks, keeper],
            verbose=verbose,
        )

    def boundary(self) -> None:
        """Phase k ended: build phase k+1, carry weights, RNG and optimizer state by path, write the report."""
        from . import artifacts
        from .boundary import migrate_boundary

        old, prev, index = self.model, self.phase, self.position.phase + 1
        nxt = self.run.phases[index]
        new = self.build(nxt)
        with self.runtime.scope():
            report = migrate_boundary(
                old,
                new,
                prev,
                nxt,
                new_blocks=self.run.migrate.new_blocks,
                seed=seed_for_phase(self.run.seed, index),
                lr_changed=nxt.optimizer != prev.optimizer,
                probe=self.data.probe(),
            )
        self.check_run_dir()
        artifacts.write_text(self.out_dir / f"migration-phase-{index}.md", report.to_markdown())
        artifacts.write_json(
            self.out_dir / f"migration-phase-{index}.json",
            {
                **report.to_json(),
                "epoch": self.position.epoch,
                "output_change": getattr(report, "output_change", None),
                "optimizer": getattr(report, "optimizer", None),
            },
        )
        log.info(
            "phase %d -> %d (%s -> %s) at epoch %d: %s; outputs moved by at most %.2e",
            index - 1,
            index,
            prev.name,
            nxt.name,
            self.position.epoch,
            report.counts(),
            getattr(report, "output_change", 0.0),
        )
        self.model = new
        self.position.phase, self.position.phase_start, self.position.phase_done = index, self.position.epoch, False

    def raise_if_stopped(self, resume_command: str | None) -> None:
        stop = self.stop
        if stop.nan_at is not None or stop.signal is not None:
            self.flush_saves()  # the checkpoint the message names is on disk before it is printed
        if stop.nan_at is not None:
            raise TrainingStopped(
                "training",
                f"the loss became NaN in epoch {stop.nan_at[0] + 1} at batch "
                f"{stop.nan_at[1]}; training stopped, the last good checkpoint is kept"
                + (f" ({stop.saved})" if stop.saved else ""),
                expected="a finite loss",
                received="nan",
                fix="start a new run with a lower optimizer.lr (or optimizer.clipnorm=1.0), or check the data; "
                "resume=true would replay the same steps (a resume cannot change the optimizer)",
            )
        if stop.signal is not None:
            raise TrainingStopped(
                "training",
                f"stopped by signal {stop.signal}; "
                + (
                    f"checkpoint saved at {stop.saved}"
                    if stop.saved or self.runtime.is_chief()
                    else "the chief worker saved the checkpoint"  # a non-chief saves nothing
                ),
                fix=f"continue with: {resume_command or 'the same command plus resume=true'}",
                exit_code=128 + int(stop.signal),
            )
