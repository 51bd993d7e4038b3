"""Sweep comparison: one row per job (ok or failed), summary.csv / summary.md / summary.json / summary.png.

Built automatically at the end of every multirun (ReportCallback, a Hydra callback) and on demand:

    python -m dynarch.report multirun/DATE/TIME
"""
from __future__ import annotations

import csv
import io
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback

from .artifacts import write_json, write_text

SUMMARY_FIELDS = ("job", "status", "variant", "overrides", "enabled_blocks", "params", "test_accuracy",
                  "test_loss", "val_accuracy", "train_time_s", "wall_time_s", "samples_per_s",
                  "migrated_from", "error")


@dataclass
class JobRow:
    job: str
    status: str                       # ok | failed | incomplete (killed or still running)
    variant: str = ""
    overrides: str = ""
    enabled_blocks: str = ""
    params: int | None = None
    test_accuracy: float | None = None
    test_loss: float | None = None
    val_accuracy: float | None = None
    train_time_s: float | None = None
    wall_time_s: float | None = None
    samples_per_s: float | None = None
    migrated_from: str | None = None
    error: str = ""
    history: dict[str, list[float]] = field(default_factory=dict, repr=False)


def _read_history(path: Path) -> dict[str, list[float]]:
    if not path.is_file():
        return {}
    rows = list(csv.DictReader(path.open()))
    return {k: [float(r[k]) for r in rows] for k in (rows[0] if rows else {}) if k != "epoch"}


def collect(sweep_dir: Path) -> list[JobRow]:
    """One row per job folder (a folder with .hydra/overrides.yaml) under `sweep_dir`."""
    rows = []
    for hydra_dir in sorted(Path(sweep_dir).glob("*/.hydra"), key=lambda p: (len(p.parent.name), p.parent.name)):
        job_dir = hydra_dir.parent
        overrides = yaml.safe_load((hydra_dir / "overrides.yaml").read_text()) or [] \
            if (hydra_dir / "overrides.yaml").is_file() else []
        arch = next((o.split("=", 1)[1] for o in overrides if o.startswith("+arch=")), "base")
        row = JobRow(job=job_dir.name, status="incomplete", variant=arch, overrides=" ".join(overrides))
        metrics_path, error_path = job_dir / "metrics.json", job_dir / "error.json"
        if metrics_path.is_file():
            m = json.loads(metrics_path.read_text())
            row.status = "ok"
            for key in ("params", "test_accuracy", "test_loss", "val_accuracy", "train_time_s", "wall_time_s",
                        "samples_per_s", "migrated_from"):
                setattr(row, key, m.get(key))
            row.variant = f"{m.get('model', '?')}/{m.get('variant', arch)}"
            row.enabled_blocks = " ".join(m.get("enabled_blocks", []))
            row.history = _read_history(job_dir / "history.csv")
        elif error_path.is_file():
            e = json.loads(error_path.read_text())
            row.status, row.error = "failed", f"{e.get('type')}: {e.get('message', '').splitlines()[0]}"
        rows.append(row)
    return rows


def _sort_key(row: JobRow, metric: str):
    value = getattr(row, metric, None)
    return (row.status != "ok", -(value if isinstance(value, (int, float)) and not math.isnan(value) else -1))


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:,.1f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def render_markdown(rows: list[JobRow], extra: dict[str, Any]) -> str:
    cols = ("job", "status", "variant", "overrides", "enabled_blocks", "params", "test_accuracy", "test_loss",
            "train_time_s", "samples_per_s", "migrated_from", "error")
    lines = [f"# Sweep summary ({len(rows)} jobs, sorted by {extra['metric']})", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(getattr(r, c)).replace("|", "\\|") for c in cols) + " |")
    lines.append("")
    t = extra.get("timing", {})
    if t:
        lines.append(f"Sweep wall time {t['sweep_wall_s']:.1f} s for {t['jobs']} jobs; sum of jobs' wall times "
                     f"{t['sum_job_wall_s']:.1f} s, of which training {t['sum_train_s']:.1f} s "
                     f"(overhead outside training: {t['sweep_wall_s'] - t['sum_train_s']:.1f} s).")
    if extra.get("optuna"):
        lines.append(f"Optuna best value {extra['optuna'].get('best_value')} with parameters "
                     f"`{extra['optuna'].get('best_params')}`.")
    return "\n".join(lines) + "\n"


def plot(rows: list[JobRow], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r.status == "ok"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for r in ok:
        ax1.scatter(r.params, r.test_accuracy)
        ax1.annotate(f"{r.job}: {r.variant}", (r.params, r.test_accuracy), fontsize=7,
                     xytext=(3, 3), textcoords="offset points")
        curve = r.history.get("val_accuracy") or r.history.get("accuracy") or []
        ax2.plot(range(1, len(curve) + 1), curve, "-o", markersize=3, label=f"{r.job}: {r.variant}")
    ax1.set(xscale="log", xlabel="parameters", ylabel="test accuracy", title="accuracy vs size")
    ax2.set(xlabel="epoch", ylabel="validation accuracy", title="learning curves")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    if ok:
        ax2.legend(fontsize=7)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


def write_summary(sweep_dir: str | Path, metric: str = "test_accuracy",
                  sweep_wall_s: float | None = None) -> list[JobRow]:
    """Collect the jobs of `sweep_dir` and write summary.{csv,md,json,png} there. Returns the rows."""
    sweep_dir = Path(sweep_dir)
    rows = sorted(collect(sweep_dir), key=lambda r: _sort_key(r, metric))
    extra: dict[str, Any] = {"metric": metric}
    if sweep_wall_s is not None:
        extra["timing"] = {"sweep_wall_s": sweep_wall_s, "jobs": len(rows),
                           "sum_job_wall_s": sum(r.wall_time_s or 0 for r in rows),
                           "sum_train_s": sum(r.train_time_s or 0 for r in rows)}
    optuna_file = sweep_dir / "optimization_results.yaml"
    if optuna_file.is_file():
        extra["optuna"] = yaml.safe_load(optuna_file.read_text())
    buf = io.StringIO()
    writer = csv.DictWriter(buf, SUMMARY_FIELDS)
    writer.writeheader()
    for r in rows:
        writer.writerow({k: getattr(r, k) for k in SUMMARY_FIELDS})
    write_text(sweep_dir / "summary.csv", buf.getvalue())
    write_text(sweep_dir / "summary.md", render_markdown(rows, extra))
    write_json(sweep_dir / "summary.json", {**extra, "jobs": [
        {k: v for k, v in asdict(r).items() if k != "history"} for r in rows]})
    plot(rows, sweep_dir / "summary.png")
    return rows


class ReportCallback(Callback):
    """Hydra callback: times the sweep and writes the comparison when it ends."""

    def __init__(self, metric: str = "test_accuracy"):
        self.metric = metric
        self._start = None

    def on_multirun_start(self, config, **kwargs) -> None:
        self._start = time.perf_counter()

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        wall = None if self._start is None else time.perf_counter() - self._start
        rows = write_summary(sweep_dir, self.metric, wall)
        print((sweep_dir / "summary.md").read_text())
        failed = [r for r in rows if r.status != "ok"]
        if failed:
            print(f"{len(failed)} of {len(rows)} jobs did not finish: "
                  + "; ".join(f"job {r.job} ({r.status}) {r.error}" for r in failed), file=sys.stderr)
            raise SystemExit(1)


def _main(argv: list[str] | None = None) -> int:
    import argparse
    parser = argparse.ArgumentParser(prog="python -m dynarch.report", description="(Re)build a sweep's summary.")
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--metric", default="test_accuracy", choices=("test_accuracy", "val_accuracy"))
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir() or not any(args.sweep_dir.glob("*/.hydra")):
        print(f"error: {args.sweep_dir}: no job folders (*/.hydra) found\n  fix: pass a multirun sweep dir, "
              "e.g. multirun/DATE/TIME", file=sys.stderr)
        return 2
    write_summary(args.sweep_dir, args.metric)
    print((args.sweep_dir / "summary.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(_main())
