"""One training run: seed, build, (migrate | resume), load data, fit epoch by epoch with train-state
checkpoints, evaluate, write the run dir."""
from __future__ import annotations

import logging
import math
import platform
import signal
import statistics
import time
from pathlib import Path
from typing import Any

from .config import OptimizerConfig, RunConfig, TrainerConfig
from .errors import CheckpointError, DynarchError

log = logging.getLogger(__name__)


SMALL_MODEL_FLOPS = 1_000_000  # forward FLOPs/sample below which a step is overhead-bound on CPU


def intra_op_threads(trainer: TrainerConfig, forward_flops: int | None, has_gpu: bool) -> int:
    """Threads for one op. `auto`: 1 for small models on CPU — measured ~1.3x faster on the MLP with
    2 cores, since tiny matmuls gain nothing from splitting and the input pipeline gets a core —
    else 0 (TensorFlow's default: all cores), which the compute-bound CNN needs."""
    if trainer.intra_op_threads != "auto":
        return int(trainer.intra_op_threads)
    small = forward_flops is not None and forward_flops < SMALL_MODEL_FLOPS
    return 1 if small and not has_gpu else 0


def configure_runtime(trainer: TrainerConfig, seed: int, forward_flops: int | None = None):
    """Devices, threads, distribution strategy, precision policy, seeds (Python, NumPy, TF) and op
    determinism (bitwise-repeatable on CPU), in the order TF needs. Returns (strategy, description)."""
    import keras
    import tensorflow as tf

    from .distribute import configure_devices, make_strategy
    configure_devices(trainer)  # before anything initializes the TF runtime
    threads = intra_op_threads(trainer, forward_flops, bool(tf.config.list_physical_devices("GPU")))
    if threads != tf.config.threading.get_intra_op_parallelism_threads():
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
        except RuntimeError:  # TF fixes its thread pools at first use: later jobs in a process keep them
            log.warning("intra-op threads stay at %d for this process (asked for %d): TensorFlow is already "
                        "initialized", tf.config.threading.get_intra_op_parallelism_threads(), threads)
    strategy = make_strategy(trainer)
    keras.backend.clear_session()  # several jobs in one process (sweeps) must not share graph state
    keras.mixed_precision.set_global_policy(trainer.precision)  # after clear_session, which resets it
    keras.utils.set_random_seed(seed)
    if trainer.deterministic:
        tf.config.experimental.enable_op_determinism()
    return strategy


def make_optimizer(opt: OptimizerConfig):
    import keras

    wd = opt.weight_decay or None
    if opt.name == "adam":
        return keras.optimizers.Adam(opt.lr, weight_decay=wd)
    if opt.name == "adamw":
        return keras.optimizers.AdamW(opt.lr, weight_decay=opt.weight_decay or 0.004)
    if opt.name == "sgd":
        return keras.optimizers.SGD(opt.lr, momentum=opt.momentum, weight_decay=wd)
    return keras.optimizers.RMSprop(opt.lr, momentum=opt.momentum, weight_decay=wd)


def compile_model(model, run: RunConfig) -> None:
    """Compile with the run's optimizer (always fresh: optimizer state never migrates) and settings."""
    import tensorflow as tf

    steps = run.trainer.steps_per_execution
    if steps > 1 and tf.distribute.get_strategy().num_replicas_in_sync > 1:
        # Keras 3.15 on TF 2.21 fails with "You must feed a value for placeholder tensor 'while/cond/...'"
        # when several steps run per call under a multi-replica strategy (keras-team/keras#19246).
        log.warning("steps_per_execution=%d is not supported with several replicas in this Keras version "
                    "(keras-team/keras#19246): using 1", steps)
        steps = 1
    model.compile(optimizer=make_optimizer(run.optimizer), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"], steps_per_execution=steps, jit_compile=run.trainer.jit_compile)


def throughput_callback(samples_per_epoch: int):
    """A Keras callback timing the training part of each epoch (validation excluded) -> samples/s.

    It uses only epoch-level hooks and `on_test_begin` (where fit's validation starts), so it adds no
    per-batch Python work to the loop it measures.
    """
    import keras

    class Throughput(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.epoch_s: list[float] = []
            self._t0 = self._t_train_end = None

        def on_epoch_begin(self, epoch, logs=None):
            self._t0, self._t_train_end = time.perf_counter(), None

        def on_test_begin(self, logs=None):
            if self._t0 is not None and self._t_train_end is None:
                self._t_train_end = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.epoch_s.append((self._t_train_end or time.perf_counter()) - self._t0)
            self._t0 = None
            if logs is not None:
                logs["epoch_time_s"] = self.epoch_s[-1]
                logs["samples_per_s"] = samples_per_epoch / self.epoch_s[-1]

    return Throughput()


def device_report() -> str:
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    return f"{len(gpus)} GPU ({', '.join(g.name for g in gpus)})" if gpus else f"CPU only ({platform.processor() or platform.machine()})"


class TrainingStopped(DynarchError):
    """Training stopped early on purpose (signal, NaN loss); the message says what to do next."""

    def __init__(self, *args, exit_code: int = 2, **kwargs):
        super().__init__(*args, **kwargs)
        self.exit_code = exit_code


def _state_callback(run: RunConfig, out_dir: Path, position, every: int, stop: dict, steps_per_epoch: int):
    """Saves train-state checkpoints every `every` steps; stops on a signal or a NaN loss.

    Never mid-epoch at the epoch's last batch: the epoch-end save (with that epoch's history) covers it.
    """
    import keras

    from .resume import save_state

    class StateKeeper(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            done = position.batches_done + batch + 1
            loss = (logs or {}).get("loss")
            if loss is not None and not math.isfinite(float(loss)):
                stop["nan"] = (position.epoch, done)
                self.model.stop_training = True
                return
            if done >= steps_per_epoch:
                return
            step = int(self.model.optimizer.iterations.numpy())
            # fit reports every steps_per_execution steps: save when this chunk crossed a multiple of `every`
            if stop.get("signal") or (every and step % every < run.trainer.steps_per_execution):
                position_now = type(position)(position.epoch, done, position.history)
                stop["saved"] = save_state(out_dir, self.model, position_now, run, run.trainer.keep_checkpoints)
                if stop.get("signal"):
                    stop["mid_epoch"] = self.model.stop_training = True

    return StateKeeper()


def _install_signal_handlers(stop: dict):
    """SIGTERM / Ctrl-C ask for a checkpoint at the next step boundary instead of killing the run."""
    def handler(signum, frame):
        stop["signal"] = signum
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread (e.g. a launcher's worker): leave signals alone
            pass
    return previous


def _epoch_line(epoch: int, epochs: int, logs: dict) -> str:
    keys = ("loss", "accuracy", "val_loss", "val_accuracy")
    parts = [f"{k} {logs[k]:.4f}" for k in keys if k in logs]
    return (f"epoch {epoch + 1}/{epochs}: " + "  ".join(parts) +
            f"  ({logs.get('epoch_time_s', 0):.2f}s, {logs.get('samples_per_s', 0):,.0f} samples/s)")


def train(run: RunConfig, out_dir: Path, resume: bool = False,
          resume_command: str | None = None, resolved_config: str | None = None) -> dict[str, Any]:
    """Train and evaluate `run`, writing model.md, history.csv, curves.png, metrics.json and checkpoint/.

    Args:
        run: validated run settings.
        out_dir: the run dir (`${hydra:runtime.output_dir}`); created if missing.
        resume: continue from the newest train-state checkpoint in `out_dir` (bitwise-exact on CPU).
        resume_command: printed when the run is interrupted, so the user can continue it.

    Returns:
        The metrics written to metrics.json.
    """
    t_start = time.perf_counter()
    import keras
    import tensorflow as tf

    from . import artifacts, checkpoint
    from .build import build_model, model_table
    from .data import Pipelines, load_arrays
    from .resume import Position, has_state, load_latest_state, restore, save_state

    out_dir = Path(out_dir)
    if not resume and has_state(out_dir):
        raise CheckpointError(str(out_dir), "this run dir already holds a checkpointed run",
                              expected="a new run dir, or resume=true to continue that run",
                              received="state/ with train-state checkpoints",
                              fix="add resume=true to continue it, or drop hydra.run.dir to start a new run")
    out_dir.mkdir(parents=True, exist_ok=True)
    if resolved_config is not None:
        artifacts.write_text(out_dir / "config.yaml", resolved_config)
    strategy, strategy_text = configure_runtime(run.trainer, run.seed, run.arch.forward_flops)
    log.info("devices: %s; strategy: %s; precision: %s", device_report(), strategy_text, run.trainer.precision)

    migrated_from, position = None, Position()
    with strategy.scope():  # variables (model, optimizer) are created, migrated and restored in scope
        model = build_model(run.arch)
        table = model_table(run.arch, model)
        artifacts.write_text(out_dir / "model.md", f"# {run.arch.name} ({run.variant})\n\n{table}\n")
        log.info("model %s (%s):\n%s", run.arch.name, run.variant, table)
        compile_model(model, run)
        model.optimizer.build(model.trainable_variables)  # slots exist now, so a resume can fill them
        if resume:
            ckpt = load_latest_state(out_dir)
            position = restore(model, ckpt, run)
            migrated_from = ckpt.manifest.get("migrated_from")
            log.info("resuming from %s: epoch %d, %d batches done", ckpt.path, position.epoch + 1,
                     position.batches_done)
        elif run.init_from:  # before loading data: a strict migration that fails should fail fast
            from .migrate import migrate_model, write_report
            report = migrate_model(model, run.arch, run.init_from, new_blocks=run.migrate.new_blocks,
                                   strict=run.migrate.strict, seed=run.seed, target_variant=run.variant)
            write_report(report, out_dir)
            log.info("migrated weights from %s:\n%s", report.source, report.to_markdown())
            migrated_from = report.source

    arrays = load_arrays(run.data, run.seed)
    log.info("data: %s %s", arrays.source, arrays.sizes())
    data = Pipelines(arrays, run.trainer.batch_size, run.seed)
    val_ds, test_ds = data.val(), data.test()

    stop: dict[str, Any] = {}
    previous_handlers = _install_signal_handlers(stop)
    history, rates = dict(position.history), []
    t_fit = time.perf_counter()
    try:
        for epoch in range(position.epoch, run.trainer.epochs):
            skip = position.batches_done if epoch == position.epoch else 0
            position = Position(epoch, skip, history)
            remaining = data.n_train - min(data.n_train, skip * run.trainer.batch_size)
            throughput = throughput_callback(remaining)
            keeper = _state_callback(run, out_dir, position, run.trainer.checkpoint_every, stop,
                                     data.steps_per_epoch)
            hist = model.fit(data.train(epoch, skip), validation_data=val_ds, epochs=epoch + 1,
                             initial_epoch=epoch, callbacks=[throughput, keeper], shuffle=False,
                             verbose=1 if run.trainer.verbose == 1 else 0)
            if "nan" in stop:
                raise TrainingStopped("training", f"the loss became NaN in epoch {stop['nan'][0] + 1} at batch "
                                      f"{stop['nan'][1]}; training stopped, the last good checkpoint is kept"
                                      + (f" ({stop['saved']})" if stop.get("saved") else ""),
                                      expected="a finite loss", received="nan",
                                      fix="lower optimizer.lr, check the data, or resume=true from the last "
                                          "good checkpoint with other settings")
            if not stop.get("mid_epoch"):  # the epoch ran to its end: record it
                logs = {k: float(v[-1]) for k, v in hist.history.items()}
                for k, v in logs.items():
                    history.setdefault(k, []).append(v)
                rates.append(logs["samples_per_s"])
                if run.trainer.verbose == 2:
                    print(_epoch_line(epoch, run.trainer.epochs, logs), flush=True)
                stop["saved"] = save_state(out_dir, model, Position(epoch + 1, 0, history), run,
                                           run.trainer.keep_checkpoints)
            if stop.get("signal"):
                raise TrainingStopped("training", f"stopped by signal {stop['signal']}; checkpoint saved at "
                                      f"{stop.get('saved')}", expected=None, received=None,
                                      fix=f"continue with: {resume_command or 'the same command plus resume=true'}",
                                      exit_code=128 + int(stop["signal"]))
    finally:
        for sig, handler in previous_handlers.items():
            signal.signal(sig, handler)
    train_time = time.perf_counter() - t_fit
    test_loss, test_acc = model.evaluate(test_ds, verbose=0)

    steady = rates[1:] if len(rates) > 1 else rates  # epoch 1 pays tracing / XLA compilation
    metrics = {
        "test_accuracy": float(test_acc), "test_loss": float(test_loss),
        "val_accuracy": history["val_accuracy"][-1] if "val_accuracy" in history else None,
        "params": int(model.count_params()), "epochs": run.trainer.epochs,
        "train_time_s": round(train_time, 3),
        "samples_per_s": round(statistics.median(steady), 1) if steady else None,
        "wall_time_s": None, "data_source": arrays.source, "data_sizes": arrays.sizes(),
        "model": run.arch.name, "variant": run.variant, "enabled_blocks": run.arch.enabled_paths(),
        "migrated_from": migrated_from, "resumed": resume, "seed": run.seed, "devices": device_report(),
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
    }
    metrics["strategy"] = strategy_text
    artifacts.write_history_csv(out_dir / "history.csv", history)
    artifacts.plot_curves(out_dir / "curves.png", history,
                          f"{run.arch.name} / {run.variant}: test acc {test_acc:.4f}")
    checkpoint.save_checkpoint(out_dir / checkpoint.RUN_SUBDIR, checkpoint.model_tensors(model), {
        "arch": dict(run.arch.raw), "model": run.arch.name, "variant": run.variant,
        "num_classes": run.arch.num_classes, "input_shape": list(run.arch.input_shape),
        "data_source": arrays.source, "migrated_from": migrated_from,
        "metrics": {k: metrics[k] for k in ("test_accuracy", "test_loss")},
        "versions": metrics["versions"], "seed": run.seed})
    if run.trainer.export_keras:
        checkpoint.export_keras(model, out_dir / "model.keras")
    metrics["wall_time_s"] = round(time.perf_counter() - t_start, 3)
    artifacts.write_json(out_dir / "metrics.json", metrics)
    log.info("test accuracy %.4f, loss %.4f (%s, %s samples/s) -> %s", test_acc, test_loss,
             arrays.source, metrics["samples_per_s"], out_dir)
    return metrics
