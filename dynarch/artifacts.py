"""Run-dir artifacts: atomic text/JSON writes, history CSV and the learning-curve plot.

Every file is written to a unique temp in its own folder (`.NAME.tmp-XXXXXXXX`, fsynced), then renamed
over NAME: a reader never sees half a file, two processes never share a temp, and a write that fails
(full disk, permissions) raises ArtifactError naming the file, leaving NAME as it was and no temp behind.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, BinaryIO, Callable, Mapping, Sequence

from .errors import DynarchError

# Columns of history.csv that are positions, not metrics (report.py reads the rest as floats).
INDEX_COLUMNS = ("epoch", "phase")


class ArtifactError(DynarchError, OSError):
    """A run-dir file (plot, metrics, history, model table) could not be written.

    Also an OSError, so code that already catches OSError around a write (e.g. recording a failure) still does.
    """


def _artifact_error(path: Path, e: OSError) -> ArtifactError:
    kept = "the previous version is kept" if path.exists() else "nothing was written under that name"
    return ArtifactError(
        str(path),
        f"could not write the file ({e.strerror or e})",
        expected="a writable folder with free space",
        received=f"errno {e.errno}",
        fix=f"free disk space or fix the folder's permissions, or choose another run dir; {kept}",
    )


def write_atomic(path: Path, write: Callable[[BinaryIO], None]) -> Path:
    """Call `write(f)` on a unique temp file next to `path`, fsync, then rename it to `path`.

    Raises ArtifactError (OSError while creating, writing or renaming); the temp is always removed.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except ArtifactError:
        raise
    except OSError as e:
        raise _artifact_error(path, e) from None
    finally:  # also on KeyboardInterrupt and on errors from `write` itself
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    return path


def write_text(path: Path, text: str) -> Path:
    """Write `text` (UTF-8) atomically; see write_atomic."""
    data = text.encode()
    return write_atomic(path, lambda f: f.write(data))


def write_json(path: Path, data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def write_history_csv(
    path: Path,
    history: Mapping[str, Sequence[Any]],
    *,
    epochs: Sequence[int] | None = None,
    phases: Sequence[Any] | None = None,
) -> Path:
    """One row per epoch: `epoch[,phase],metric...`.

    Args:
        history: metric -> values per epoch. `epoch` / `phase` keys, if present, are taken as those columns.
        epochs: global epoch numbers (default 1..n; several phases continue the count).
        phases: phase index or name per row; adds a `phase` column after `epoch`.
    """
    history = dict(history)
    epochs = list(epochs if epochs is not None else history.pop("epoch", []) or [])
    phases = phases if phases is not None else history.pop("phase", None)
    history.pop("epoch", None)
    history.pop("phase", None)
    keys = list(history)
    n = max([len(v) for v in history.values()] + [len(epochs), len(phases or [])] + [0])
    cell = lambda seq, i: seq[i] if i < len(seq) else ""  # noqa: E731 — a short metric list leaves blanks
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["epoch", *(["phase"] if phases is not None else []), *keys])
    for i in range(n):
        writer.writerow(
            [
                cell(epochs, i) if epochs else i + 1,
                *([cell(phases, i)] if phases is not None else []),
                *(cell(history[k], i) for k in keys),
            ]
        )
    return write_text(path, buf.getvalue())


def save_figure(fig, path: Path, dpi: int = 100) -> Path:
    """Save a matplotlib figure as PNG atomically (unique temp, ArtifactError on failure) and close it.

    A figure made without pyplot (plot_curves) needs no closing; pyplot is not imported for it."""
    try:
        return write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=dpi))
    finally:
        plt = sys.modules.get("matplotlib.pyplot")
        if plt is not None:
            plt.close(fig)


def prefetch_plotting() -> threading.Thread:
    """Import matplotlib's Figure and Agg canvas on a daemon thread while the model trains.

    Why: Keras no longer imports matplotlib at start-up (runtime/lean.py), so the curves at the end of a run
    would pay its import and font set-up (~0.5 s on 2 cores, experiments/throughput/README.md) on the critical
    path. Called after the first epoch (PhaseLoop.record_epoch): from then on training spends its time in
    compiled code that releases the GIL, so the import overlaps it; started before epoch 1, it competed with
    the tracing (measured: tracing +0.58 s, the PNG -0.51 s). Python's per-module import locks make
    plot_curves wait for a half-done import rather than race it; a failure here is left for plot_curves."""

    def load() -> None:
        try:
            import matplotlib.backends.backend_agg  # noqa: F401
            import matplotlib.figure  # noqa: F401
        except Exception:  # noqa: BLE001 — plot_curves imports again and reports
            pass

    thread = threading.Thread(target=load, name="dynarch-prefetch-plotting", daemon=True)
    thread.start()
    return thread


def plot_curves(
    path: Path,
    history: Mapping[str, Sequence[float]],
    title: str,
    boundaries: Sequence[tuple[int, str]] = (),
    epochs: Sequence[int] | None = None,
) -> Path:
    """Loss and accuracy per epoch (train and validation) as a PNG.

    Args:
        history: metric -> values per epoch (`epoch` / `phase` keys are ignored as metrics).
        boundaries: (epochs trained before a phase, label) — i.e. the 0-based history index of the phase's
            first epoch, as results.phase_summaries' `start_epoch`: a labelled dotted line just before that epoch.
        epochs: x values (global epoch numbers); default 1..n, or history["epoch"] when present.
    """
    # A bare Figure renders with Agg without importing pyplot or choosing a GUI backend: about half the cost
    # of the pyplot path on 2 CPU cores (experiments/throughput/README.md, fixed costs).
    from matplotlib.figure import Figure

    xs_all = list(epochs if epochs is not None else history.get("epoch", []) or [])
    fig = Figure(figsize=(9, 3.4))
    axes = fig.subplots(1, 2)
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for key, style in ((metric, "-o"), (f"val_{metric}", "--s")):
            if key in history:
                ys = list(history[key])
                xs = xs_all[: len(ys)] if len(xs_all) >= len(ys) else range(1, len(ys) + 1)
                ax.plot(xs, ys, style, label=key, markersize=4)
        for start, label in boundaries:
            if not isinstance(start, int):  # a phase that never ran has no start
                continue
            x = xs_all[start] - 0.5 if start < len(xs_all) else start + 0.5
            ax.axvline(x, color="gray", linestyle=":", linewidth=1)
            ax.text(
                x,
                1.0,
                f" {label}",
                transform=ax.get_xaxis_transform(),
                fontsize=7,
                rotation=90,
                va="top",
                ha="left",
                color="dimgray",
            )
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.suptitle(title)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.15, top=0.83, wspace=0.22)  # tight_layout costs a draw
    return save_figure(fig, path)
