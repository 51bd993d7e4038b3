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

from .artifacts import INDEX_COLUMNS, save_figure, write_json, write_text
from .errors import DynarchError

SUMMARY_FIELDS = (
    "job",
    "status",
    "variant",
    "data",
    "phases",
    "overrides",
    "enabled_blocks",
    "params",
    "test_accuracy",
    "test_loss",
    "val_accuracy",
    "train_time_s",
    "compile_s",
    "wall_time_s",
    "samples_per_s",
    "migrated_from",
    "error",
)
_NUMBERS = {
    "params": int,
    "test_accuracy": float,
    "test_loss": float,
    "val_accuracy": float,
    "train_time_s": float,
    "compile_s": float,
    "wall_time_s": float,
    "samples_per_s": float,
}


class ReportError(DynarchError):
    """The folder given to the report is not a sweep dir."""


@dataclass
class JobRow:
    job: str
    status: str  # ok | failed (raised, or unreadable results) | incomplete (killed or running)
    variant: str = ""
    data: str = ""  # metrics.json data_source: which data the job really used
    phases: str = ""  # e.g. "base(2) -> deep(3)" for a phased schedule
    overrides: str = ""
    enabled_blocks: str = ""
    params: int | None = None
    test_accuracy: float | None = None
    test_loss: float | None = None
    val_accuracy: float | None = None
    train_time_s: float | None = None
    compile_s: float | None = None  # XLA compile (JAX) / first-epoch tracing (TF), inside train_time_s
    wall_time_s: float | None = None
    samples_per_s: float | None = None
    migrated_from: str | None = None
    error: str = ""
    history: dict[str, list[float]] = field(default_factory=dict, repr=False)


def _read_json(path: Path) -> tuple[Any, str]:
    """(data, "") or (None, reason) for a JSON file that is missing, unreadable, truncated or garbage."""
    try:
        return json.loads(path.read_text()), ""
    except (OSError, UnicodeDecodeError) as e:
        return None, f"{path.name}: cannot be read ({getattr(e, 'strerror', None) or e})"
    except ValueError as e:
        return None, f"{path.name}: not valid JSON, truncated or corrupted ({e})"


def _read_overrides(hydra_dir: Path) -> tuple[list[str], str]:
    path = hydra_dir / "overrides.yaml"
    if not path.is_file():
        return [], "missing .hydra/overrides.yaml"
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        return [], f".hydra/overrides.yaml unreadable ({str(e).splitlines()[0][:120]})"
    if data is None:
        return [], ""
    if not isinstance(data, list):
        return [], f".hydra/overrides.yaml is not a list (a {type(data).__name__})"
    return [str(o) for o in data], ""


def _read_history(path: Path) -> dict[str, list[float]]:
    """Metric columns of history.csv (epoch / phase columns skipped); {} when missing or unreadable."""
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error):  # missing file included
        return {}
    out = {}
    for key in (k for k in (rows[0] if rows else {}) if k and k not in INDEX_COLUMNS):
        try:  # a blank cell (a metric some epochs lack) is NaN; a column of garbage is left out
            out[key] = [float(r[key]) if r.get(key) not in ("", None) else math.nan for r in rows]
        except (ValueError, TypeError):
            continue
    return out


def _number(value: Any, kind: type) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return int(value) if kind is int and float(value).is_integer() else float(value) if kind is float else None


def _phases_text(phases: Any) -> str:
    """`base(2) -> deep(3)` from metrics.json's `phases` list; "" when absent or not a list."""
    if not isinstance(phases, list):
        return ""
    parts = []
    for i, p in enumerate(phases):
        p = p if isinstance(p, dict) else {}
        # results.phase_summaries: `name` (its `architecture` is the list of enabled blocks, too long here)
        name = next(
            (str(p[k]) for k in ("name", "variant", "architecture") if isinstance(p.get(k), str) and p[k]),
            f"phase {p.get('phase', i)}",
        )
        parts.append(f"{name}({p['epochs']})" if isinstance(p.get("epochs"), int) else name)
    return " -> ".join(parts)


def _fill_from_metrics(row: JobRow, m: dict[str, Any], arch: str) -> None:
    for key, kind in _NUMBERS.items():
        setattr(row, key, _number(m.get(key), kind))
    row.migrated_from = str(m["migrated_from"]) if m.get("migrated_from") else None
    row.variant = f"{m.get('model', '?')}/{m.get('variant', arch)}"
    row.data = str(m.get("data_source") or "")
    row.phases = _phases_text(m.get("phases"))
    blocks = m.get("enabled_blocks")
    row.enabled_blocks = " ".join(map(str, blocks)) if isinstance(blocks, list) else ""


def collect_job(job_dir: Path) -> JobRow:
    """One job folder -> its row; unreadable files make the row failed/incomplete with the reason, never raise."""
    overrides, note = _read_overrides(job_dir / ".hydra")
    arch = next((o.split("=", 1)[1] for o in overrides if o.startswith("+arch=")), "base")
    row = JobRow(job=job_dir.name, status="incomplete", variant=arch, overrides=" ".join(overrides), error=note)
    metrics_path, error_path = job_dir / "metrics.json", job_dir / "error.json"
    if metrics_path.is_file():
        m, reason = _read_json(metrics_path)
        if reason or not isinstance(m, dict):
            row.status, row.error = "failed", reason or f"metrics.json: not a JSON object (a {type(m).__name__})"
            return row
        row.status = "ok"
        _fill_from_metrics(row, m, arch)
        row.history = _read_history(job_dir / "history.csv")
    elif error_path.is_file():
        e, reason = _read_json(error_path)
        e = e if isinstance(e, dict) else {}
        message = str(e.get("message") or reason or "error.json: no message").splitlines() or [""]
        row.status, row.error = "failed", f"{e.get('type', 'unknown error')}: {message[0]}"
    return row


def collect(sweep_dir: Path) -> list[JobRow]:
    """One row per job folder under `sweep_dir`: a folder with .hydra/, or with only an error.json (a job whose
    folder was removed while it ran: its failure was recorded in a new one, without Hydra's files)."""
    jobs = {p.parent for p in Path(sweep_dir).glob("*/.hydra") if p.is_dir()}
    jobs |= {p.parent for p in Path(sweep_dir).glob("*/error.json") if p.is_file()}
    return [collect_job(d) for d in sorted(jobs, key=lambda p: (len(p.name), p.name))]


def _sort_key(row: JobRow, metric: str):
    value = getattr(row, metric, None)
    return (row.status != "ok", -(value if isinstance(value, (int, float)) and not math.isnan(value) else -1))


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:,.1f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _data_line(rows: list[JobRow]) -> str:
    """Which data the jobs used, in words: one source for all, or a warning that they differ."""
    sources = sorted({r.data for r in rows if r.status == "ok"})
    if not sources:
        return ""
    if len(sources) == 1:
        return f"Data: **{sources[0] or 'not recorded'}** for every finished job."
    return (
        "**Warning: the jobs used different data** ("
        + "; ".join(s or "not recorded" for s in sources)
        + "): their accuracies are not comparable."
    )


def render_markdown(rows: list[JobRow], extra: dict[str, Any]) -> str:
    cols = tuple(c for c in SUMMARY_FIELDS if c not in ("val_accuracy", "wall_time_s"))  # the table stays narrow
    if not any(r.phases for r in rows):  # single-phase sweeps: keep the table narrow
        cols = tuple(c for c in cols if c != "phases")
    lines = [f"# Sweep summary ({len(rows)} jobs, sorted by {extra['metric']})", ""]
    if _data_line(rows):
        lines += [_data_line(rows), ""]
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(getattr(r, c)).replace("|", "\\|").replace("\n", " ") for c in cols) + " |")
    lines.append("")
    t = extra.get("timing", {})
    if t:
        lines.append(
            f"Sweep wall time {t['sweep_wall_s']:.1f} s for {t['jobs']} jobs; sum of jobs' wall times "
            f"{t['sum_job_wall_s']:.1f} s, of which training {t['sum_train_s']:.1f} s "
            f"(overhead outside training: {t['sweep_wall_s'] - t['sum_train_s']:.1f} s)."
        )
    if extra.get("optuna"):
        lines.append(
            f"Optuna best value {extra['optuna'].get('best_value')} with parameters "
            f"`{extra['optuna'].get('best_params')}`."
        )
    return "\n".join(lines) + "\n"


def _plottable(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def plot(rows: list[JobRow], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r.status == "ok"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for r in ok:
        if _plottable(r.params) and r.params > 0 and _plottable(r.test_accuracy):
            ax1.scatter(r.params, r.test_accuracy)
            ax1.annotate(
                f"{r.job}: {r.variant}",
                (r.params, r.test_accuracy),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
        curve = r.history.get("val_accuracy") or r.history.get("accuracy") or []
        ax2.plot(range(1, len(curve) + 1), curve, "-o", markersize=3, label=f"{r.job}: {r.variant}")
    ax1.set(xscale="log", xlabel="parameters", ylabel="test accuracy", title="accuracy vs size")
    ax2.set(xlabel="epoch", ylabel="validation accuracy", title="learning curves")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    if ax2.get_legend_handles_labels()[0]:
        ax2.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def _optuna(sweep_dir: Path) -> dict[str, Any] | None:
    path = sweep_dir / "optimization_results.yaml"
    try:
        data = yaml.safe_load(path.read_text()) if path.is_file() else None
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def write_summary(
    sweep_dir: str | Path, metric: str = "test_accuracy", sweep_wall_s: float | None = None
) -> list[JobRow]:
    """Collect the jobs of `sweep_dir` and write summary.{csv,md,json,png} there. Returns the rows.

    Raises ArtifactError (a DynarchError) when a summary file cannot be written.
    """
    sweep_dir = Path(sweep_dir)
    rows = sorted(collect(sweep_dir), key=lambda r: _sort_key(r, metric))
    extra: dict[str, Any] = {"metric": metric}
    if sweep_wall_s is not None:
        extra["timing"] = {
            "sweep_wall_s": sweep_wall_s,
            "jobs": len(rows),
            "sum_job_wall_s": sum(r.wall_time_s or 0 for r in rows),
            "sum_train_s": sum(r.train_time_s or 0 for r in rows),
        }
    if _optuna(sweep_dir):
        extra["optuna"] = _optuna(sweep_dir)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, SUMMARY_FIELDS)
    writer.writeheader()
    for r in rows:
        writer.writerow({k: getattr(r, k) for k in SUMMARY_FIELDS})
    write_text(sweep_dir / "summary.csv", buf.getvalue())
    write_text(sweep_dir / "summary.md", render_markdown(rows, extra))
    write_json(
        sweep_dir / "summary.json",
        {**extra, "jobs": [{k: v for k, v in asdict(r).items() if k != "history"} for r in rows]},
    )
    plot(rows, sweep_dir / "summary.png")
    return rows


def check_sweep_dir(sweep_dir: Path) -> None:
    """Raise ReportError unless `sweep_dir` is a folder holding job folders (*/.hydra)."""
    fix = "pass a multirun sweep dir, e.g. multirun/DATE/TIME (the folder holding the numbered job folders)"
    if not sweep_dir.exists():
        raise ReportError(str(sweep_dir), "no such folder", expected="a sweep dir", received=str(sweep_dir), fix=fix)
    if not sweep_dir.is_dir():
        raise ReportError(str(sweep_dir), "not a folder", expected="a sweep dir", received="a file", fix=fix)
    if not any(p.is_dir() for p in sweep_dir.glob("*/.hydra")):
        single = (sweep_dir / ".hydra").is_dir()
        raise ReportError(
            str(sweep_dir),
            "no job folders (*/.hydra) found" + (": this is a single run's dir, not a sweep" if single else ""),
            expected="a folder of job folders, each with .hydra/",
            received=str(sweep_dir),
            fix=f"pass its parent, the sweep dir: {sweep_dir.parent}" if single else fix,
        )


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
        try:
            rows = write_summary(sweep_dir, self.metric, wall)
        except DynarchError as e:  # e.g. a full disk: the jobs' own results are untouched
            print(f"error: the sweep summary could not be written: {e}", file=sys.stderr)
            raise SystemExit(1) from None
        print((sweep_dir / "summary.md").read_text())
        failed = [r for r in rows if r.status != "ok"]
        if failed:
            print(
                f"{len(failed)} of {len(rows)} jobs did not finish: "
                + "; ".join(f"job {r.job} ({r.status}) {r.error}" for r in failed)
                + f"\n  fix: see each job's error above (and JOB/error.json); rerun or resume those jobs, then "
                f"python -m dynarch.report {sweep_dir} rebuilds this summary",
                file=sys.stderr,
            )
            raise SystemExit(1)


def main(argv: list[str] | None = None) -> int:
    """`python -m dynarch.report SWEEP_DIR`: exit 0, or 2 with one clear message and a fix (never a traceback,
    a usage error included)."""
    from .clikit import run_main

    return run_main(_main, argv)


def _main(argv: list[str] | None) -> int:
    from .clikit import ArgParser

    parser = ArgParser(
        prog="python -m dynarch.report",
        description="(Re)build a sweep's summary.",
        usage_line="python -m dynarch.report SWEEP_DIR [--metric test_accuracy|val_accuracy]",
    )
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--metric", default="test_accuracy", choices=("test_accuracy", "val_accuracy"))
    args = parser.parse_args(argv)
    check_sweep_dir(args.sweep_dir)
    write_summary(args.sweep_dir, args.metric)
    print((args.sweep_dir / "summary.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
