"""The end of a run: evaluate on the test split, then write metrics.json, history.csv, curves.png and the
final checkpoint (checkpoint/), with a summary per phase for schedules. train.py calls `finish` once the
phase loop is done."""

from __future__ import annotations

import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any

from .phases import PhaseLoop

log = logging.getLogger(__name__)


def first_epoch_excess(history: dict[str, list]) -> float | None:
    """Seconds the first epoch of each phase took beyond the steady epochs' median: on TensorFlow, where
    no compile event is reported, the cost of tracing the step (an estimate; None with no steady epoch)."""
    times, phases = history.get("epoch_time_s", []), history.get("phase") or [0] * len(history.get("epoch_time_s", []))
    firsts = {i for i in range(len(times)) if i == 0 or phases[i] != phases[i - 1]}
    steady = [t for i, t in enumerate(times) if i not in firsts]
    if not steady:
        return None
    median = statistics.median(steady)
    return sum(max(0.0, times[i] - median) for i in firsts)


def finish(loop: PhaseLoop, arrays, runtime, migrated_from, resume, train_time, t_start) -> dict[str, Any]:
    """Evaluate, then write metrics, history, curves and the final checkpoint."""
    from . import artifacts, checkpoint

    run, model, out_dir, history = loop.run, loop.model, loop.out_dir, loop.position.history
    test_loss, test_acc = loop.evaluate_test()
    loop.flush_saves()  # the last epoch's train-state checkpoint, written while the test split was evaluated
    loop.check_run_dir()  # before metrics, curves and the model are written
    steady = loop.rates
    final = loop.phase
    metrics = {
        "test_accuracy": float(test_acc),
        "test_loss": float(test_loss),
        "val_accuracy": history["val_accuracy"][-1] if history.get("val_accuracy") else None,
        "params": int(model.count_params()),
        "epochs": loop.position.epoch,
        "train_time_s": round(train_time, 3),
        # inside train_time_s: XLA compilation (JAX, measured), or the first epochs' excess (TF, estimated)
        "compile_s": _round(getattr(loop, "compile_s", None) if run.backend == "jax" else first_epoch_excess(history)),
        "samples_per_s": round(statistics.median(steady), 1) if steady else None,
        "wall_time_s": None,
        "data_source": arrays.source,
        "data_sizes": arrays.sizes(),
        "model": final.arch.name,
        "variant": run.variant,
        "enabled_blocks": final.arch.enabled_paths(),
        "migrated_from": migrated_from,
        "resumed": resume,
        "seed": run.seed,
        "devices": runtime.device_report(),
        "versions": runtime.versions(),
        "strategy": runtime.strategy_text(),
        "backend": runtime.name,
        "loop": run.loop,
    }
    if run.schedule:
        metrics["schedule"] = run.schedule
        metrics["phases"] = phase_summaries(loop, test_acc)
    boundaries = [(s["start_epoch"], s["name"]) for s in metrics.get("phases", [])[1:]]
    title = f"{final.arch.name} / {run.variant}" + (f" / {run.schedule}" if run.schedule else "")
    artifacts.write_history_csv(out_dir / "history.csv", history)
    artifacts.plot_curves(out_dir / "curves.png", history, f"{title}: test acc {test_acc:.4f}", boundaries=boundaries)
    checkpoint.save_checkpoint(
        out_dir / checkpoint.RUN_SUBDIR,
        checkpoint.model_tensors(model),
        checkpoint.model_manifest(
            final.arch,
            run.variant,
            data_source=arrays.source,
            migrated_from=migrated_from,
            schedule=[p.fingerprint() for p in run.phases] if run.schedule else None,
            metrics={k: metrics[k] for k in ("test_accuracy", "test_loss")},
            versions=metrics["versions"],
            seed=run.seed,
        ),
    )
    if run.trainer.export_keras:
        checkpoint.export_keras(model, out_dir / "model.keras")
    metrics["wall_time_s"] = round(time.perf_counter() - t_start, 3)
    artifacts.write_json(out_dir / "metrics.json", metrics)
    rate = metrics["samples_per_s"]  # None: no steady epoch to measure (a one-epoch run printed "None samples/s")
    log.info(
        "test accuracy %.4f, loss %.4f (%s, %s) -> %s",
        test_acc,
        test_loss,
        arrays.source,
        f"{rate} samples/s" if rate is not None else "samples/s not measured",
        out_dir,
    )
    return metrics


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _migration_counts(out_dir: Path, index: int) -> dict[str, int] | None:

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
        out.append(
            {
                "phase": phase.index,
                "name": phase.name,
                "architecture": phase.arch.enabled_paths(),
                "start_epoch": epochs[0] if epochs else None,
                "epochs": len(epochs),
                "params": phase.arch.num_params,
                "val_accuracy": val[epochs[-1]] if epochs and epochs[-1] < len(val) else None,
                "test_accuracy": float(test_acc) if phase.index == loop.position.phase else None,
                "migration": _migration_counts(loop.out_dir, phase.index),
            }
        )
    return out
