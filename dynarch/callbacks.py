"""The Keras callbacks of the phase loop: throughput timing, and the keeper that records history, writes
train-state checkpoints (mid-epoch and at epoch ends), ends a phase on a plateau and stops on a signal or
a NaN loss. Both live for one `fit` — one phase — so stock Keras callbacks beside them keep their state.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import keras


@dataclass
class StopState:
    """Why the loop stopped, shared by the signal handler, the keeper and the loop (instead of a dict)."""

    signal: int | None = None  # SIGTERM / SIGINT received: save at the next step boundary
    nan_at: tuple[int, int] | None = None  # (epoch, batch) where the loss became non-finite
    saved: Path | None = None  # the newest train-state checkpoint
    mid_epoch: bool = False  # the fit ended inside an epoch (signal or NaN)


class RunDirGuard(keras.callbacks.Callback):
    """First of the epoch-end hooks: the run dir is still this run's (RunDirLock.check_still_held) before any
    callback writes into it (a best checkpoint, a CSV logger) — a write would recreate a removed run dir."""

    def __init__(self, check):
        super().__init__()
        self.check = check

    def on_epoch_end(self, epoch, logs=None):
        self.check()


class Throughput(keras.callbacks.Callback):
    """Times the training part of each epoch (validation excluded) -> `epoch_time_s`, `samples_per_s`.

    Epoch-level hooks and `on_test_begin` only (where fit's validation starts): no per-batch Python work
    in the loop it measures. `samples_of(epoch)` gives the samples trained in that epoch.
    """

    def __init__(self, samples_of: Callable[[int], int]):
        super().__init__()
        self.samples_of = samples_of
        self.epoch_s: list[float] = []
        self._t0 = self._t_train_end = None

    def on_epoch_begin(self, epoch, logs=None):
        self._t0, self._t_train_end = time.perf_counter(), None

    def on_test_begin(self, logs=None):
        if self._t0 is not None and self._t_train_end is None:
            self._t_train_end = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds = (self._t_train_end or time.perf_counter()) - self._t0
        self._t0 = None
        self.epoch_s.append(seconds)
        if logs is not None:
            logs["epoch_time_s"] = seconds
            logs["samples_per_s"] = self.samples_of(epoch) / seconds


class Keeper(keras.callbacks.Callback):
    """Keeps the loop's state across one phase's `fit`.

    Args:
        loop: the PhaseLoop; the keeper reads its position and calls `loop.save(...)`.
        stop: the shared StopState.
        every: a train-state checkpoint whenever the step count crosses a multiple of this (0: epoch ends).
        skip: batches of the first epoch already trained before this fit (a resumed mid-epoch position).
    """

    def __init__(self, loop, stop: StopState, every: int, skip: int = 0):
        super().__init__()
        self.loop, self.stop, self.every, self.skip = loop, stop, every, skip
        self._epoch_start_step = 0

    def _step(self) -> int:
        # Keras' JAX trainer keeps the live state outside the variables during `fit` (and purges them):
        # put it back before reading the step or writing a checkpoint. No-op on other backends.
        sync = getattr(self.model, "jax_state_sync", None)
        if sync is not None:
            sync()
        return int(self.model.optimizer.iterations.numpy())

    def on_epoch_begin(self, epoch, logs=None):
        self.loop.position.epoch = epoch
        self._epoch_start_step = self._step() - (self.skip if epoch == self.loop.first_epoch_of_fit else 0)
        self._last_save = self._step()

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        step = self._step()
        done = step - self._epoch_start_step
        if loss is not None and not math.isfinite(float(loss)):
            self.stop.nan_at = (self.loop.position.epoch, done)
            self.stop.mid_epoch = self.model.stop_training = True
            return
        if done >= self.loop.steps_per_epoch:
            return  # the epoch-end save (with this epoch's history) covers it
        # fit reports every steps_per_execution steps: save when this chunk crossed a multiple of `every`
        crossed = self.every and step // self.every > self._last_save // self.every
        if self.stop.signal or crossed:
            self.loop.position.batches_done = done
            self.stop.saved = self.loop.save(self.model)
            self._last_save = step
            if self.stop.signal:
                self.stop.mid_epoch = self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if self.stop.mid_epoch:
            return  # an interrupted epoch is not recorded: the resumed run trains the rest of it
        self.loop.record_epoch(epoch, dict(logs or {}))
        if self.loop.phase_should_end():
            self.model.stop_training = True
        if self.model.stop_training and not self.stop.signal:
            self.loop.position.phase_done = True  # a plateau or a stock callback (EarlyStopping) ended the phase
        self.stop.saved = self.loop.save(self.model)
        if self.stop.signal:
            self.model.stop_training = True


class ContinuedFit(keras.callbacks.Callback):
    """Wraps a user's callback for the second `fit` of a phase (after a mid-epoch resume): the phase goes
    on, so the callback's `on_train_begin` (where stock callbacks reset their state) is not called again."""

    def __init__(self, inner: keras.callbacks.Callback):
        super().__init__()
        self.inner = inner

    def set_model(self, model):
        super().set_model(model)
        self.inner.set_model(model)

    def set_params(self, params):
        super().set_params(params)
        self.inner.set_params(params)

    def on_train_begin(self, logs=None):
        pass

    def __getattribute__(self, name):
        if name.startswith("on_") and name != "on_train_begin":
            return getattr(object.__getattribute__(self, "inner"), name)
        return object.__getattribute__(self, name)
