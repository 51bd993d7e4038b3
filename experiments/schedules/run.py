"""Schedules at equal epochs: grow, widen or shrink during one run vs. training one architecture throughout.

Every strategy trains T epochs in all (default 8) on the offline MNIST subset (`data=mnist_subset`: the 5,000
real digits shipped with dynarch; 3,600 train / 400 validation / 1,000 test), 3 seeds, Python API
(`compose_run`, `train`):

    base      the small base MLP (784-128-10) throughout           (no schedule)
    deep      the large variant (+arch=deep) from scratch          (no schedule)
    grow      base for T/2 epochs, then deep for the rest          (+schedule={phases:[...]}, inline)
    plateau   base until val_loss plateaus (<= 4 epochs), then deep (+schedule=grow_on_plateau)
    plateau_late  the same with the cap raised to T-1: where does the plateau rule itself fire?
    shrink    base for T/2 epochs, then no_dense for the rest      (conf/schedule/drop_dense.yaml, adapted to T)
    no_dense  the shrunk variant (+arch=no_dense) from scratch: what the shrink is measured against
    wide      the wide variant (+arch=wide) from scratch           (no schedule)
    widen     base for T/2 epochs, then wide for the rest          (inline schedule)

Training FLOPs per run = sum over phases of 3 x forward FLOPs per sample (from the spec: 2 x multiply-adds
of dense/conv blocks) x training samples x epochs of the phase. Evaluation passes are not counted.

    .venv/bin/python experiments/schedules/run.py [--epochs 8] [--seeds 0 1 2] [--only base grow]

Run dirs go to a temporary folder (deleted at the end unless --keep DIR is given); results.json, table.md
and curves.png are written next to this script.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

COMMON = ["data=mnist_subset", "trainer.verbose=0"]
PLATEAU_CAP = 4  # conf/schedule/grow_on_plateau.yaml: max_epochs of its first phase


def strategies(epochs: int) -> dict[str, tuple[str, list[str]]]:
    """key -> (label, overrides). Fixed boundaries sit at T/2 (rounded down)."""
    half = epochs // 2

    def switch(arch: str) -> str:
        return f"+schedule={{phases:[{{epochs:{half}}},{{arch:{arch},epochs:rest}}]}}"

    # The shipped cap (4 epochs) is T/2 for T = 8. With a shorter T the cap is lowered to T/2: a plateau
    # phase capped at or beyond T would run past the budget and leave the `rest` phase no epoch.
    plateau = ["+schedule=grow_on_plateau"]
    if half < PLATEAU_CAP:
        plateau.append(f"schedule.phases.0.until.max_epochs={half}")
    return {
        "base": ("(a) base throughout", []),
        "deep": ("(b) deep from scratch", ["+arch=deep"]),
        "grow": (f"(c) grow at epoch {half}", [switch("deep")]),
        "plateau": (f"(d) grow on plateau (cap {min(PLATEAU_CAP, half)})", plateau),
        "plateau_late": (
            f"(d2) grow on plateau (cap {epochs - 1})",
            ["+schedule=grow_on_plateau", f"schedule.phases.0.until.max_epochs={epochs - 1}"],
        ),
        "shrink": (f"(e) shrink at epoch {half}", [switch("no_dense")]),
        "no_dense": ("(e2) no_dense from scratch", ["+arch=no_dense"]),
        "wide": ("(b2) wide from scratch", ["+arch=wide"]),
        "widen": (f"(c2) widen at epoch {half}", [switch("wide")]),
    }


def read_history(run_dir: Path) -> dict[str, list[float]]:
    import csv

    with open(run_dir / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    keys = ("loss", "accuracy", "val_loss", "val_accuracy", "epoch_time_s")
    return {k: [float(r[k]) for r in rows] for k in keys if rows and k in rows[0]}


def one_run(overrides: list[str], run_dir: Path) -> dict:
    """Train one strategy for one seed; return what the study needs from its metrics and history."""
    from dynarch.compose import compose_run
    from dynarch.train import train

    run = compose_run(overrides)
    metrics = train(run, run_dir)
    n_train = metrics["data_sizes"]["train"]
    phases = metrics.get("phases") or [
        {
            "phase": 0,
            "name": run.phases[0].name,
            "start_epoch": 0,
            "epochs": metrics["epochs"],
            "params": metrics["params"],
        }
    ]
    out_phases = []
    for p in phases:
        fwd = run.phases[p["phase"]].arch.forward_flops
        out_phases.append(
            {
                "name": p["name"],
                "start_epoch": p["start_epoch"],
                "epochs": p["epochs"],
                "params": p["params"],
                "forward_flops": fwd,
                "train_flops": 3 * fwd * n_train * p["epochs"],
            }
        )
    return {
        "test_accuracy": metrics["test_accuracy"],
        "test_loss": metrics["test_loss"],
        "train_time_s": metrics["train_time_s"],
        "wall_time_s": metrics["wall_time_s"],
        "epochs": metrics["epochs"],
        "n_train": n_train,
        "data_sizes": metrics["data_sizes"],
        "data_source": metrics["data_source"],
        "final_params": metrics["params"],
        "boundaries": [p["start_epoch"] for p in out_phases[1:]],
        "phases": out_phases,
        "train_flops": sum(p["train_flops"] for p in out_phases),
        "history": read_history(run_dir),
        "replica_correlation": replica_similarity(run_dir),
    }


def replica_similarity(run_dir: Path) -> float | None:
    """Median correlation, after training, between each unit that Net2WiderNet replicated at a boundary and
    the unit it was copied from (1.0: the replicas never diverged, so the extra width is not used)."""
    import numpy as np

    from dynarch.checkpoint import load_checkpoint

    corrs = []
    for report in sorted(run_dir.glob("migration-phase-*.json")):
        for entry in json.loads(report.read_text())["entries"]:
            index_map = entry.get("index_map") or []
            if entry["action"] != "adapted" or not entry["path"].endswith("kernel") or not index_map:
                continue
            axis, source = index_map[0]
            if axis != -1 or len(source) <= len(set(source)):
                continue
            kernel = np.asarray(load_checkpoint(run_dir).tensors[entry["path"]])
            kernel = kernel.reshape(-1, kernel.shape[-1])
            first = {}
            for unit, src in enumerate(source):  # the first unit mapped to a source is the original
                if src in first:
                    corrs.append(float(np.corrcoef(kernel[:, unit], kernel[:, first[src]])[0, 1]))
                else:
                    first[src] = unit
    return float(np.median(corrs)) if corrs else None


def summarize(runs: list[dict]) -> dict:
    def spread(key):
        values = [r[key] for r in runs]
        return {"median": statistics.median(values), "min": min(values), "max": max(values)}

    return {
        "test_accuracy": spread("test_accuracy"),
        "train_flops": spread("train_flops"),
        "train_time_s": spread("train_time_s"),
        "final_params": runs[0]["final_params"],
        "boundaries": [r["boundaries"] for r in runs],
        "epochs": "/".join(sorted({str(r["epochs"]) for r in runs})),
    }


def table(results: dict, labels: dict[str, str]) -> str:
    base_flops = results["base"]["summary"]["train_flops"]["median"] if "base" in results else None
    lines = [
        (
            "| strategy | test acc median | range (min–max) | train GFLOPs | × base | train s median (range) "
            "| final params | epochs | boundary after epoch (per seed) |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for key, res in results.items():
        s = res["summary"]
        acc, fl, t = s["test_accuracy"], s["train_flops"], s["train_time_s"]
        flops = (
            f"{fl['median'] / 1e9:.1f}"
            if fl["min"] == fl["max"]
            else f"{fl['median'] / 1e9:.1f} ({fl['min'] / 1e9:.1f}–{fl['max'] / 1e9:.1f})"
        )
        ratio = f"{fl['median'] / base_flops:.2f}" if base_flops else "—"
        bounds = ", ".join("/".join(str(b) for b in bs) for bs in s["boundaries"])
        lines.append(
            f"| {labels[key]} | {acc['median']:.4f} | {acc['min']:.4f}–{acc['max']:.4f} | {flops} | {ratio} "
            f"| {t['median']:.2f} ({t['min']:.2f}–{t['max']:.2f}) | {s['final_params']:,} | {s['epochs']} "
            f"| {bounds if any(s['boundaries']) else '—'} |"
        )
    return "\n".join(lines)


def plot(results: dict, labels: dict[str, str], epochs: int, path: Path) -> None:
    """Left: median validation accuracy per epoch over the seeds; each boundary a dotted line labelled with
    the strategies that switch there (as dynarch.artifacts.plot_curves marks them). Right: test accuracy
    (median, min-max bar) against training FLOPs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dynarch.artifacts import save_figure

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    xs = list(range(1, epochs + 1))
    styles, markers = ("-", "--", "-.", ":"), "osD^vP*X"
    at: dict[int, list[str]] = {}  # boundary (epochs trained before the next phase) -> strategies
    for i, (key, res) in enumerate(results.items()):
        color, style, marker = f"C{i}", styles[i % len(styles)], markers[i % len(markers)]
        curves = [r["history"]["val_accuracy"] for r in res["runs"]]
        median = [statistics.median(c[e] for c in curves) for e in range(epochs)]
        ax.plot(xs, median, style, marker=marker, color=color, label=labels[key], markersize=4)
        for b in sorted({b for r in res["runs"] for b in r["boundaries"] if b is not None}):
            n = sum(b in r["boundaries"] for r in res["runs"])
            at.setdefault(b, []).append(key + (f" ({n}/{len(curves)})" if n < len(curves) else ""))
        acc, fl = res["summary"]["test_accuracy"], res["summary"]["train_flops"]["median"] / 1e9
        ax2.errorbar(
            [fl],
            [acc["median"]],
            yerr=[[acc["median"] - acc["min"]], [acc["max"] - acc["median"]]],
            fmt=marker,
            color=color,
            capsize=3,
            label=labels[key],
            markersize=6,
            alpha=0.85,
        )
    for b, keys in at.items():  # the boundary sits between epoch b and b+1
        ax.axvline(b + 0.5, color="gray", linestyle=":", linewidth=1)
        ax.text(
            b + 0.5,
            0.02,
            " boundary: " + ", ".join(keys),
            transform=ax.get_xaxis_transform(),
            fontsize=7,
            rotation=90,
            va="bottom",
            ha="right",
            color="dimgray",
        )
    ax.set(
        xlabel="epoch",
        ylabel="validation accuracy (median over seeds)",
        title=f"validation accuracy, {epochs} epochs in all",
    )
    lo = min(min(r["history"]["val_accuracy"]) for res in results.values() for r in res["runs"])
    ax.set_ylim(max(0.0, lo - 0.02), 1.0)
    ax.set_xticks(xs)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", ncol=2)
    ax2.set(
        xlabel="training GFLOPs (3 x forward x samples x epochs)",
        ylabel="test accuracy (median, min-max)",
        title="test accuracy vs training compute",
        xscale="log",
    )
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    flops = [res["summary"]["train_flops"]["median"] / 1e9 for res in results.values()]
    ax2.set_xticks([t for t in (1, 2, 5, 10, 20, 50, 100, 200, 500) if min(flops) / 2 <= t <= max(flops) * 2])
    ax2.xaxis.set_major_formatter(ScalarFormatter())
    ax2.xaxis.set_minor_formatter(NullFormatter())
    ax2.grid(alpha=0.3, which="both")
    ax2.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=8, help="total epochs T for every strategy (default 8)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only", nargs="+", default=None, help="a subset of strategies (for quick checks)")
    parser.add_argument("--keep", type=Path, default=None, help="keep the run dirs in this (new) folder")
    parser.add_argument("--out", type=Path, default=HERE, help="where results.json, table.md, curves.png go")
    parser.add_argument("--plot-only", action="store_true", help="redraw table.md and curves.png from results.json")
    args = parser.parse_args()
    if args.plot_only:
        saved = json.loads((args.out / "results.json").read_text())
        results = saved["strategies"]
        labels = {k: v["label"] for k, v in results.items()}
        (args.out / "table.md").write_text(f"{saved.get('description', '')}\n\n{table(results, labels)}\n")
        plot(results, labels, saved["epochs"], args.out / "curves.png")
        return
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (the schedules switch at T/2)")

    all_strategies = strategies(args.epochs)
    unknown = set(args.only or []) - set(all_strategies)
    if unknown:
        parser.error(f"unknown strategies {sorted(unknown)}; choose from {list(all_strategies)}")
    chosen = {k: v for k, v in all_strategies.items() if args.only is None or k in args.only}
    labels = {k: v[0] for k, v in chosen.items()}
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="dynarch-schedules-"))
    try:
        study(args, chosen, labels, workdir)
    finally:  # the temporary run dirs go, whether the study finished or not
        if args.keep is None:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)


def study(args: argparse.Namespace, chosen: dict, labels: dict[str, str], workdir: Path) -> None:
    t0 = time.perf_counter()

    from dynarch.compose import compose_run
    from dynarch.train import train

    # Warm-up: the first run in a process pays TensorFlow's start-up; keep it out of the timed runs.
    train(compose_run([*COMMON, "trainer.epochs=1"]), workdir / "warmup")

    results: dict[str, dict] = {
        k: {"label": labels[k], "overrides": [*COMMON, f"trainer.epochs={args.epochs}", *ov], "runs": []}
        for k, (_, ov) in chosen.items()
    }
    for seed in args.seeds:  # seeds outer, strategies inner: load from other processes spreads over all
        for key, res in results.items():
            r = one_run([*res["overrides"], f"seed={seed}"], workdir / f"{key}-seed{seed}")
            r["seed"] = seed
            if r["epochs"] != args.epochs:  # the comparison is at equal epochs: say so loudly if it is not
                print(f"WARNING: {key} seed {seed} trained {r['epochs']} epochs, not {args.epochs}", flush=True)
            res["runs"].append(r)
            replicas = "" if r["replica_correlation"] is None else f"  replica corr {r['replica_correlation']:.4f}"
            print(
                f"{key:12s} seed {seed}: test acc {r['test_accuracy']:.4f}  boundaries {r['boundaries']}  "
                f"{r['train_flops'] / 1e9:.1f} GFLOPs  {r['train_time_s']:.2f} s{replicas}",
                flush=True,
            )
    for res in results.values():
        res["summary"] = summarize(res["runs"])

    md = table(results, labels)
    first = next(iter(results.values()))["runs"][0]
    header = (
        f"{args.epochs} epochs per strategy, seeds {', '.join(map(str, args.seeds))}; data "
        f"{first['data_source']} {first['data_sizes']}; FLOPs = 3 x forward x {first['n_train']:,} samples "
        f"x epochs, per phase."
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(
        json.dumps(
            {
                "epochs": args.epochs,
                "seeds": args.seeds,
                "flops_convention": "per phase: 3 x forward FLOPs per sample (2 x multiply-adds of dense/conv, "
                "from the spec) x training samples x epochs of the phase; validation/test passes not counted",
                "description": header,
                "study_wall_time_s": round(time.perf_counter() - t0, 1),
                "strategies": results,
            },
            indent=1,
        )
    )
    (args.out / "table.md").write_text(f"{header}\n\n{md}\n")
    plot(results, labels, args.epochs, args.out / "curves.png")
    print(
        f"\n{header}\n\n{md}\n\nstudy wall time {time.perf_counter() - t0:.1f} s; run dirs: "
        f"{workdir if args.keep else '(temporary, deleted)'}"
    )


if __name__ == "__main__":
    main()
