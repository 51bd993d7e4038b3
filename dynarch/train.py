"""One training run: seed, load data, build, (migrate), compile, fit, evaluate, write the run dir."""
from __future__ import annotations

import logging
import platform
import statistics
import time
from pathlib import Path
from typing import Any

from .config import OptimizerConfig, RunConfig, TrainerConfig

log = logging.getLogger(__name__)


def configure_runtime(trainer: TrainerConfig, seed: int) -> None:
    """Seed Python, NumPy and TF; turn on op determinism when asked (bitwise-repeatable on CPU)."""
    import keras
    import tensorflow as tf

    keras.backend.clear_session()  # several jobs in one process (sweeps) must not share graph state
    keras.utils.set_random_seed(seed)
    if trainer.deterministic:
        tf.config.experimental.enable_op_determinism()


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
    model.compile(optimizer=make_optimizer(run.optimizer), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"], steps_per_execution=run.trainer.steps_per_execution,
                  jit_compile=run.trainer.jit_compile)


def _throughput_callback(samples_per_epoch: int):
    import keras

    class Throughput(keras.callbacks.Callback):
        """Wall time and samples/s of each training epoch (validation excluded)."""

        def __init__(self):
            super().__init__()
            self.epoch_s: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self._t = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self._t_end = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.epoch_s.append(getattr(self, "_t_end", time.perf_counter()) - self._t)
            if logs is not None:
                logs["epoch_time_s"] = self.epoch_s[-1]
                logs["samples_per_s"] = samples_per_epoch / self.epoch_s[-1]

    return Throughput()


def device_report() -> str:
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    return f"{len(gpus)} GPU ({', '.join(g.name for g in gpus)})" if gpus else f"CPU only ({platform.processor() or platform.machine()})"


def train(run: RunConfig, out_dir: Path) -> dict[str, Any]:
    """Train and evaluate `run`, writing model.md, history.csv, curves.png, metrics.json and checkpoint/.

    Args:
        run: validated run settings.
        out_dir: the run dir (`${hydra:runtime.output_dir}`); created if missing.

    Returns:
        The metrics written to metrics.json.
    """
    t_start = time.perf_counter()
    import keras
    import tensorflow as tf

    from . import artifacts, checkpoint
    from .build import build_model, model_table
    from .data import load_arrays, make_datasets

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    configure_runtime(run.trainer, run.seed)
    log.info("devices: %s", device_report())

    model = build_model(run.arch)
    table = model_table(run.arch, model)
    artifacts.write_text(out_dir / "model.md", f"# {run.arch.name} ({run.variant})\n\n{table}\n")
    log.info("model %s (%s):\n%s", run.arch.name, run.variant, table)

    migrated_from = None
    if run.init_from:  # before loading data: a strict migration that fails should fail fast
        from .migrate import migrate_model, write_report
        report = migrate_model(model, run.arch, run.init_from, new_blocks=run.migrate.new_blocks,
                               strict=run.migrate.strict, seed=run.seed, target_variant=run.variant)
        write_report(report, out_dir)
        log.info("migrated weights from %s:\n%s", report.source, report.to_markdown())
        migrated_from = report.source

    arrays = load_arrays(run.data, run.seed)
    log.info("data: %s %s", arrays.source, arrays.sizes())
    train_ds, val_ds, test_ds = make_datasets(arrays, run.trainer.batch_size, run.seed)

    compile_model(model, run)
    throughput = _throughput_callback(arrays.sizes()["train"])
    t_fit = time.perf_counter()
    hist = model.fit(train_ds, validation_data=val_ds, epochs=run.trainer.epochs, callbacks=[throughput], shuffle=False,  # shuffled in tf.data
                     verbose=run.trainer.verbose)
    train_time = time.perf_counter() - t_fit
    test_loss, test_acc = model.evaluate(test_ds, verbose=0)

    history = {k: [float(v) for v in vs] for k, vs in hist.history.items()}
    rates = history["samples_per_s"]
    steady = rates[1:] if len(rates) > 1 else rates  # epoch 1 pays tracing / XLA compilation
    metrics = {
        "test_accuracy": float(test_acc), "test_loss": float(test_loss),
        "val_accuracy": history["val_accuracy"][-1] if "val_accuracy" in history else None,
        "params": int(model.count_params()), "epochs": run.trainer.epochs,
        "train_time_s": round(train_time, 3), "samples_per_s": round(statistics.median(steady), 1),
        "wall_time_s": None, "data_source": arrays.source, "data_sizes": arrays.sizes(),
        "model": run.arch.name, "variant": run.variant, "enabled_blocks": run.arch.enabled_paths(),
        "migrated_from": migrated_from, "seed": run.seed, "devices": device_report(),
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
    }
    artifacts.write_history_csv(out_dir / "history.csv", history)
    artifacts.plot_curves(out_dir / "curves.png", history,
                          f"{run.arch.name} / {run.variant}: test acc {test_acc:.4f}")
    checkpoint.save_checkpoint(out_dir / checkpoint.RUN_SUBDIR, checkpoint.model_tensors(model), {
        "arch": dict(run.arch.raw), "model": run.arch.name, "variant": run.variant,
        "num_classes": run.arch.num_classes, "input_shape": list(run.arch.input_shape),
        "data_source": arrays.source, "migrated_from": migrated_from,
        "metrics": {k: metrics[k] for k in ("test_accuracy", "test_loss")},
        "versions": metrics["versions"], "seed": run.seed})
    metrics["wall_time_s"] = round(time.perf_counter() - t_start, 3)
    artifacts.write_json(out_dir / "metrics.json", metrics)
    log.info("test accuracy %.4f, loss %.4f (%s, %.1f samples/s) -> %s", test_acc, test_loss,
             arrays.source, metrics["samples_per_s"], out_dir)
    return metrics
