"""The step loop: one phase trained WITHOUT Keras `fit`, as chunks of steps run by a backend *stepper*.

Used by `trainer.loop=fused` (runtime/fused_jax.py, runtime/fused_tf.py: K steps per compiled call, the
data resident on the device) and by `trainer.strategy=multi_worker` (runtime/multiworker.py: a custom loop
under MultiWorkerMirroredStrategy, which `fit` cannot drive). The stepper trains; this driver keeps the
contract of the Keras path (phases.py + callbacks.Keeper) at chunk boundaries:

- user callbacks through a keras CallbackList (on_train_begin once per phase, epoch and per-chunk batch
  hooks, `model.stop_training`), history and the per-epoch line, plateau ends;
- train-state checkpoints: a chunk ends exactly where the global step reaches a multiple of
  `trainer.checkpoint_every` (and at the epoch end), so the same chunks — the same compiled calls — run
  whether or not the run was resumed in between: a resume is bitwise identical;
- a signal or a NaN loss stops at the next chunk boundary (the NaN check reads the epoch's running loss);
- only the chief writes (another worker keeps position and history but saves nothing).

A stepper (see the backends) has `reset_metrics()`, `train(epoch, first, count) -> logs` (batches
first..first+count-1 of that epoch; the model's variables are live when it returns) and `evaluate(split)`.
"""

from __future__ import annotations

import math
import signal
import time
from typing import Any, Protocol, Sequence

import keras


class Stepper(Protocol):
    def reset_metrics(self) -> None: ...

    def train(self, epoch: int, first: int, count: int) -> dict[str, float]: ...

    def evaluate(self, split: str) -> dict[str, float]: ...


def make_stepper(loop) -> Stepper:
    """The stepper for the loop's current model, by strategy and backend (which loop: resolve_loop, pick_loop)."""
    run, runtime, model = loop.run, loop.runtime, loop.model
    if run.trainer.strategy == "multi_worker":
        from .runtime.multiworker import MultiWorkerStepper

        return MultiWorkerStepper(model, loop.arrays, run, runtime)
    if run.backend == "jax":
        from .runtime.fused_jax import JaxFusedStepper

        return JaxFusedStepper(model, loop.arrays, run, runtime)
    from .runtime.fused_tf import TfFusedStepper

    return TfFusedStepper(model, loop.arrays, run, runtime)


# trainer.loop=auto, by measurement (experiments/throughput/loops.md; 2 CPU cores): TensorFlow: fused (faster
# than fit for the MLP and the CNN at batch 128 and 1024: no tf.data between the steps); JAX on an accelerator:
# fused (the loop runs inside XLA; the H200 figures: 15x for the MLP by hand); JAX on the CPU: fused
# unless the model has convolutions — XLA:CPU runs a while loop's body on one thread: the CNN trained 3-4x
# slower fused while the MLP trained faster.
TF_AUTO = "fused"


def pick_loop(run, runtime, ckpt=None) -> str:
    """`trainer.loop=auto` -> keras | fused for this run on these devices. A resumed run keeps the loop it
    started with (a resume is bitwise only in the same loop; the fingerprint holds it)."""
    if ckpt is not None:
        saved = ckpt.manifest.get("fingerprint", {})
        return saved.get("loop", "keras") if isinstance(saved, dict) else "keras"
    if devices_in_use(runtime) > 1:
        return "keras"  # strategy=auto spread the batch over several devices; the fused loop uses one
    if run.backend == "tensorflow":
        return TF_AUTO
    if run.backend != "jax":
        return "keras"
    platform, _ = runtime.device_platform()
    if platform != "cpu":
        return "fused"
    convolutions = any(b.type == "conv2d" and b.enabled for p in run.phases for _, b in p.arch.walk())
    return "keras" if convolutions else "fused"


def devices_in_use(runtime) -> int:
    """Devices the runtime spreads a batch over (MirroredStrategy replicas, JAX DataParallel devices)."""
    if hasattr(runtime, "replicas"):
        return runtime.replicas()
    if hasattr(runtime, "batch_multiple"):
        return runtime.batch_multiple()
    return 1


def check_fused_devices(run, runtime) -> None:
    """An explicit trainer.loop=fused on a machine where strategy=auto spread the batch over several devices."""
    from .errors import ConfigError

    count = devices_in_use(runtime)
    if run.loop == "fused" and run.trainer.strategy != "multi_worker" and count > 1:
        raise ConfigError(
            "trainer.loop",
            f"trainer.loop=fused runs on one device, and trainer.strategy={run.trainer.strategy} uses {count} here",
            expected="trainer.strategy=default with trainer.loop=fused, or trainer.loop=keras|auto",
            received="fused",
            fix="set trainer.strategy=default (one device, fused) or trainer.loop=auto (the Keras loop on all devices)",
        )


def chunk_length(step: int, first: int, steps_per_epoch: int, every: int) -> int:
    """Batches in the next chunk: up to the epoch end and to the next multiple of `every` global steps."""
    left = steps_per_epoch - first
    return min(left, every - step % every) if every else left


def fit_phase_steps(loop, stepper: Stepper, end: int, callbacks: Sequence, verbose: int) -> None:
    """Train the loop's current phase from its position to epoch `end` (or a stop), chunk by chunk."""
    model, pos, stop, run = loop.model, loop.position, loop.stop, loop.run
    spe, n, batch = loop.steps_per_epoch, loop.data.n_train, run.trainer.batch_size
    every, chief = run.trainer.checkpoint_every, loop.runtime.is_chief()
    hooks = keras.callbacks.CallbackList(
        list(callbacks),
        add_history=False,
        add_progbar=verbose == 1,
        model=model,
        verbose=verbose,
        epochs=end,
        steps=spe,
    )
    model.stop_training = False
    loop.first_epoch_of_fit = pos.epoch
    logs: dict[str, Any] = {}
    hooks.on_train_begin()
    while pos.epoch < end and not model.stop_training:
        epoch, first = pos.epoch, pos.batches_done
        hooks.on_epoch_begin(epoch)
        stepper.reset_metrics()
        t0 = time.perf_counter()
        batch_at = first
        while batch_at < spe:
            count = chunk_length(_global_step(model), batch_at, spe, every)
            logs = stepper.train(epoch, batch_at, count)
            batch_at += count
            hooks.on_train_batch_end(batch_at - 1, logs)
            stopping = _agree_on_stop(stepper, stop)  # after the hooks: a stop they asked for counts here
            if not math.isfinite(logs.get("loss", 0.0)):
                stop.nan_at, stop.mid_epoch = (epoch, batch_at), True
                break
            crossed = every and _global_step(model) % every == 0
            if batch_at < spe and (stopping or crossed):
                pos.batches_done = batch_at
                if chief:
                    stop.saved = loop.save(model)
                if stopping:
                    stop.mid_epoch = True
                    break
        if stop.mid_epoch:
            break
        seconds = time.perf_counter() - t0
        logs = dict(logs)
        logs.update({f"val_{k}": v for k, v in stepper.evaluate("val").items()})
        logs["epoch_time_s"] = seconds
        logs["samples_per_s"] = (n - min(n, first * batch)) / seconds
        loop.check_run_dir()  # before the callbacks write (a best checkpoint, a CSV logger): callbacks.RunDirGuard
        hooks.on_epoch_end(epoch, logs)
        loop.record_epoch(epoch, logs)
        if loop.phase_should_end():
            model.stop_training = True
        if model.stop_training and not stop.signal:
            pos.phase_done = True  # a plateau or a stock callback (EarlyStopping) ended the phase
        if chief:
            stop.saved = loop.save(model)
        if _agree_on_stop(stepper, stop):  # a signal may land during evaluation or the save
            break
    hooks.on_train_end(logs)


def _agree_on_stop(stepper: Stepper, stop) -> bool:
    """Whether to stop at this chunk boundary. Several workers stop at the same one: a worker that leaves the
    loop alone would leave the others waiting forever in the next collective. So with several workers the
    answer is the agreed one — a signal that lands here after this worker's vote waits for the next boundary
    (re-reading `stop.signal` would stop this worker alone). Single-process steppers have no `all_workers`."""
    agree = getattr(stepper, "all_workers", None)
    if agree is None:
        return stop.signal is not None
    stopping = agree(stop.signal is not None)
    if stopping and stop.signal is None:
        stop.signal = signal.SIGTERM  # another worker was signalled
    return stopping


def _global_step(model) -> int:
    return int(model.optimizer.iterations.numpy())
