"""Warm start vs from scratch: base MLP -> grown (deep), widened (wide) and shrunk (no_dense) variants.

Each variant trains the same epochs with the same seed twice: from scratch and migrated from the base.
Test accuracy is measured before training (epoch 0) and after every epoch. Offline MNIST subset.

    .venv/bin/python experiments/warm_start/run.py [--epochs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))


def curve(run, epochs, init_from=None):
    """Test accuracy after 0..epochs epochs (and the migration counts when warm-started)."""
    from dynarch.build import build_model
    from dynarch.data import Pipelines, load_arrays
    from dynarch.migrate import migrate_model
    from dynarch.train import compile_model, configure_runtime

    configure_runtime(run.trainer, run.seed, run.arch.forward_flops)
    model = build_model(run.arch)
    counts = None
    if init_from:
        counts = migrate_model(model, run.arch, init_from, seed=run.seed, target_variant=run.variant).counts()
    data = Pipelines(load_arrays(run.data, run.seed), run.trainer.batch_size, run.seed)
    test_ds = data.test()
    compile_model(model, run)
    accs = [model.evaluate(test_ds, verbose=0)[1]]
    for epoch in range(epochs):
        model.fit(data.train(epoch), epochs=1, verbose=0, shuffle=False)
        accs.append(model.evaluate(test_ds, verbose=0)[1])
    return model, accs, counts


def main() -> None:
    from dynarch.compose import compose_run

    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    common = ["data=mnist_subset", "trainer.verbose=0"]

    from dynarch.train import train

    base_dir = HERE / "_base_run"
    shutil.rmtree(base_dir, ignore_errors=True)  # the study's own scratch run, rebuilt every time
    base_metrics = train(compose_run([*common, f"trainer.epochs={args.epochs}"]), base_dir)
    target = base_metrics["test_accuracy"]

    variants = {"deep (grow)": "deep", "wide (widen)": "wide", "no_dense (shrink)": "no_dense"}
    rows, curves = [], {}
    for label, arch in variants.items():
        run = compose_run([*common, f"+arch={arch}"])
        for mode in ("scratch", "migrated"):
            _, accs, counts = curve(run, args.epochs, base_dir if mode == "migrated" else None)
            reach = next((i for i, a in enumerate(accs) if a >= target), None)
            curves[f"{arch} {mode}"] = accs
            rows.append((label, mode, accs, reach, counts))
            print(label, mode, [round(a, 4) for a in accs], "reach:", reach, counts, flush=True)

    header = (
        "| variant | start | "
        + " | ".join(f"ep {i}" for i in range(args.epochs + 1))
        + " | epochs to base acc | migration (copied/adapted/reinit/dropped) |"
    )
    lines = [header, "|" + "---|" * (args.epochs + 5)]
    for label, mode, accs, reach, counts in rows:
        mig = (
            "—"
            if counts is None
            else "/".join(str(counts[k]) for k in ("copied", "adapted", "reinitialized", "dropped"))
        )
        lines.append(
            f"| {label} | {mode} | "
            + " | ".join(f"{a:.4f}" for a in accs)
            + f" | {'not reached' if reach is None else reach} | {mig} |"
        )
    table = "\n".join(lines)
    (HERE / "results.json").write_text(
        json.dumps({"base_test_accuracy": target, "curves": curves, "epochs": args.epochs}, indent=2)
    )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, accs in curves.items():
        ax.plot(range(len(accs)), accs, "-o" if "migrated" in name else "--x", label=name, markersize=4)
    ax.axhline(target, color="gray", lw=0.8, ls=":", label=f"base after {args.epochs} epochs")
    ax.set(xlabel="epoch", ylabel="test accuracy", title="warm start (migrated) vs from scratch", ylim=(0, 1))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(HERE / "curves.png", dpi=100)
    print(f"\nbase test accuracy after {args.epochs} epochs: {target:.4f}\n\n{table}")
    (HERE / "table.md").write_text(f"base test accuracy after {args.epochs} epochs: {target:.4f}\n\n{table}\n")


if __name__ == "__main__":
    main()
