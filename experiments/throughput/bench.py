"""Throughput: the dynarch runner vs plain Keras, in one process, same model, data, batch, epochs, seed.

  (a) plain Keras as users write it: model.fit(x, y, batch_size=128), everything else default
  (b) plain Keras hand-tuned: the same fit on numpy arrays with steps_per_execution=64 and the intra-op
      thread count dynarch's `auto` picks, set by hand
  (c) the dynarch runner (`dynarch.train.train`) with its default trainer settings
  (d) the dynarch runner with trainer.deterministic=false: what op determinism (on by default) costs

Each configuration runs in a fresh child process started by this one command, so that process-wide
TensorFlow settings (thread pools) are the ones that configuration really runs with.

Data: the 4,000 real training digits shipped with dynarch (dynarch/data/mnist_5k.npz), tiled to --train-size
and written as MNIST IDX
files, read by (c) through `data=idx` and by (a)/(b) as the same arrays. Validation is off for all three
so that each trains on exactly the same samples. Samples/s is the median over the epochs after the first
(which pays tracing/compilation); each configuration runs --repeats times, interleaved, and the table
quotes the median over repeats with the min-max. Achieved training GFLOP/s (3x the forward FLOPs) is set
against a float32 matmul peak measured in the same process.

    make bench            # or: .venv/bin/python experiments/throughput/bench.py --repeats 3 [--no-loops]

Then bench_loops.py runs (unless --no-loops): dynarch's fused loop vs its Keras loop vs plain Keras, on
TensorFlow and JAX, MLP and CNN at batch 128 and 1024 (loops.md / loops.json).
"""

from __future__ import annotations

import argparse
import gzip
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
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))  # experiments/argtypes.py

import argtypes  # noqa: E402
import numpy as np  # noqa: E402

BATCH = 128
KEYS = "abcd"
NAMES = {
    "a": "plain Keras (defaults)",
    "b": "plain Keras (hand-tuned)",
    "c": "dynarch runner (defaults)",
    "d": "dynarch runner, deterministic=false",
}


def write_idx(folder: Path, train_size: int) -> None:
    from dynarch.data.idx import IDX_FILES
    from dynarch.data.subset import load_mnist_5k

    (x, y), (tx, ty) = load_mnist_5k()
    reps = -(-train_size // len(y))
    x, y = np.concatenate([x] * reps)[:train_size], np.concatenate([y] * reps)[:train_size]
    for key, arr in (("train_x", x[..., 0]), ("train_y", y), ("test_x", tx[..., 0]), ("test_y", ty)):
        header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
        (folder / f"{IDX_FILES[key]}.gz").write_bytes(gzip.compress(header + arr.astype(np.uint8).tobytes(), 1))


def matmul_peak_gflops(n: int = 1024, reps: int = 20) -> float:
    import tensorflow as tf

    a = tf.random.normal((n, n))
    b = tf.random.normal((n, n))
    f = tf.function(lambda a, b: tf.matmul(a, b))
    f(a, b).numpy()
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(reps):
            c = f(a, b)
        c.numpy()
        best = min(best, (time.perf_counter() - t) / reps)
    return 2 * n**3 / best / 1e9


def plain_model(name: str):
    """The same architectures as conf/model/{mlp,cnn}.yaml, written the way a Keras user would."""
    import keras

    if name == "mlp":
        return keras.Sequential(
            [
                keras.Input((28, 28, 1)),
                keras.layers.Flatten(),
                keras.layers.Dense(128, activation="relu"),
                keras.layers.Dropout(0.2),
                keras.layers.Dense(10, activation="softmax"),
            ]
        )
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dropout(0.25),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )


def run_plain(model_name, train, test, epochs, seed, tuned, threads):
    import keras
    import tensorflow as tf

    from dynarch.callbacks import Throughput

    if tuned and threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
    keras.utils.set_random_seed(seed)
    model = plain_model(model_name)
    cb = Throughput(lambda epoch: len(train[1]))
    if tuned:
        model.compile(
            keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"], steps_per_execution=64
        )
        model.fit(*train, batch_size=BATCH, epochs=epochs, callbacks=[cb], verbose=0)
    else:
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        model.fit(train[0], train[1], batch_size=BATCH, epochs=epochs, callbacks=[cb])
    return statistics.median(cb.epoch_s[1:]), model.evaluate(*test, verbose=0)[1]


def run_dynarch(model_name, idx_dir, epochs, seed, out_dir, extra=()):
    from dynarch.compose import compose_run
    from dynarch.train import train

    run = compose_run(
        [
            f"model={model_name}",
            "data=idx",
            f"data.path={idx_dir}",
            "data.val_fraction=0",
            f"trainer.epochs={epochs}",
            "trainer.verbose=0",
            f"seed={seed}",
            *extra,
        ]
    )
    metrics = train(run, out_dir)
    return metrics["data_sizes"]["train"] / metrics["samples_per_s"], metrics["test_accuracy"]


def arch_of(model_name):
    from dynarch.compose import compose_run

    return compose_run([f"model={model_name}"])


def child(args) -> None:
    """One measurement in this (fresh) process; prints a JSON line."""
    key, model_name, folder = args.child
    folder = Path(folder)
    if key in "cd":
        t, acc, n = (
            *run_dynarch(
                model_name,
                folder,
                args.epochs,
                args.seed,
                folder / f"run-{model_name}-{os.getpid()}",
                ["trainer.deterministic=false"] if key == "d" else [],
            ),
            args.train_size,
        )
    else:  # plain Keras reads the same IDX files as arrays
        from dynarch.config import DataConfig
        from dynarch.data.idx import load_splits
        from dynarch.runtime.tensorflow import intra_op_threads

        (x, y), (tx, ty), _ = load_splits(
            DataConfig(loader="idx", path=str(folder), input_shape=(28, 28, 1), num_classes=10)
        )
        train, test, n = (x.astype("float32") / 255.0, y), (tx.astype("float32") / 255.0, ty), len(y)
        run = arch_of(model_name)
        threads = intra_op_threads(run.trainer, run.arch.forward_flops, has_gpu=False)
        t, acc = run_plain(model_name, train, test, args.epochs, args.seed, key == "b", threads)
    print("RESULT " + json.dumps({"epoch_s": t, "acc": acc, "n": n}))


def measure(key, model_name, folder, args) -> tuple[float, float, int]:
    import subprocess

    cmd = [
        sys.executable,
        __file__,
        "--child",
        key,
        model_name,
        str(folder),
        "--epochs",
        str(args.epochs),
        "--seed",
        str(args.seed),
        "--train-size",
        str(args.train_size),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    line = next((row for row in proc.stdout.splitlines() if row.startswith("RESULT ")), None)
    if proc.returncode or line is None:
        raise RuntimeError(f"child {key}/{model_name} failed:\n{proc.stderr[-3000:]}")
    r = json.loads(line[7:])
    return r["epoch_s"], r["acc"], r["n"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="mlp,cnn", type=argtypes.choices(("mlp", "cnn")))
    parser.add_argument("--epochs", type=argtypes.at_least(2), default=4, help="per run; the first is warm-up")
    parser.add_argument("--repeats", type=argtypes.at_least(1), default=2)
    parser.add_argument("--no-loops", action="store_true", help="skip bench_loops.py (fused vs keras loop, TF and JAX)")
    parser.add_argument("--train-size", type=argtypes.at_least(BATCH), default=48000)
    parser.add_argument("--seed", type=argtypes.at_least(0), default=42)
    parser.add_argument("--out", type=argtypes.out_dir, default=HERE)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    tmp = Path(tempfile.mkdtemp(prefix="dynarch-bench-"))
    write_idx(tmp, args.train_size)
    peak = matmul_peak_gflops()
    print(
        f"float32 matmul peak: {peak:.1f} GFLOP/s; {args.train_size} training samples, batch {BATCH}, "
        f"{args.epochs} epochs x {args.repeats} repeats",
        flush=True,
    )
    results = {}
    for model_name in args.models.split(","):
        times = {k: [] for k in KEYS}
        accs = {k: [] for k in KEYS}
        n = args.train_size
        for r in range(args.repeats):
            for key in KEYS:  # interleaved, so that machine noise spreads over all configurations
                t, acc, n = measure(key, model_name, tmp, args)
                times[key].append(t)
                accs[key].append(acc)
                print(f"{model_name} repeat {r} ({key}): {n / t:,.0f} samples/s, test acc {acc:.4f}", flush=True)
        flops = 3 * arch_of(model_name).arch.forward_flops  # forward + ~2x for the backward pass
        rate = {k: [n / t for t in v] for k, v in times.items()}
        med = {k: statistics.median(v) for k, v in rate.items()}
        ratio = lambda x, y, rate=rate: [rate[x][i] / rate[y][i] for i in range(args.repeats)]  # noqa: E731
        results[model_name] = {
            "samples_per_s": {k: {"median": med[k], "min": min(v), "max": max(v)} for k, v in rate.items()},
            "test_accuracy": {k: statistics.median(v) for k, v in accs.items()},
            "ratio_c_a": {
                "median": statistics.median(ratio("c", "a")),
                "min": min(ratio("c", "a")),
                "max": max(ratio("c", "a")),
            },
            "ratio_c_b": {
                "median": statistics.median(ratio("c", "b")),
                "min": min(ratio("c", "b")),
                "max": max(ratio("c", "b")),
            },
            "ratio_d_b": {
                "median": statistics.median(ratio("d", "b")),
                "min": min(ratio("d", "b")),
                "max": max(ratio("d", "b")),
            },
            "train_gflops": {k: med[k] * flops / 1e9 for k in med},
            "flops_per_sample": flops,
        }
    report(results, peak, args)
    if not args.no_loops:  # the loop comparison (#17): fused vs Keras loop vs plain Keras, TF and JAX, 2 batch sizes
        import bench_loops

        bench_loops.main(["--out", str(args.out)])


def report(results: dict, peak: float, args) -> None:
    names = NAMES
    lines = [
        f"float32 matmul peak measured in the same run: **{peak:.1f} GFLOP/s**; {args.train_size} training "
        f"samples, batch {BATCH}, {args.epochs} epochs (first = warm-up), {args.repeats} repeats.",
        "",
        "| model | configuration | samples/s median (min–max) | test acc | training GFLOP/s | % of matmul peak |",
        "|---|---|---|---|---|---|",
    ]
    for model, r in results.items():
        for k in KEYS:
            s = r["samples_per_s"][k]
            lines.append(
                f"| {model} | {names[k]} | {s['median']:,.0f} ({s['min']:,.0f}–{s['max']:,.0f}) | "
                f"{r['test_accuracy'][k]:.4f} | {r['train_gflops'][k]:.1f} | "
                f"{100 * r['train_gflops'][k] / peak:.0f}% |"
            )
    lines += ["", "| model | c/a median (min–max) | c/b median (min–max) | d/b median (min–max) |", "|---|---|---|---|"]
    fmt = lambda r: f"**{r['median']:.2f}** ({r['min']:.2f}–{r['max']:.2f})"
    for model, r in results.items():
        lines.append(f"| {model} | {fmt(r['ratio_c_a'])} | {fmt(r['ratio_c_b'])} | {fmt(r['ratio_d_b'])} |")
    table = "\n".join(lines)
    print("\n" + table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text(table + "\n")
    (args.out / "results.json").write_text(
        json.dumps(
            {"matmul_peak_gflops": peak, "models": results, "args": {k: str(v) for k, v in vars(args).items()}},
            indent=2,
        )
    )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.6), squeeze=False)
    for ax, (model, r) in zip(axes[0], results.items()):
        meds = [r["samples_per_s"][k]["median"] for k in KEYS]
        errs = [
            [m - r["samples_per_s"][k]["min"] for m, k in zip(meds, KEYS)],
            [r["samples_per_s"][k]["max"] - m for m, k in zip(meds, KEYS)],
        ]
        ax.bar(
            [names[k].replace(" (", "\n(").replace(", ", ",\n") for k in KEYS],
            meds,
            yerr=errs,
            color=["#999", "#69c", "#e73", "#fb6"],
        )
        ax.set(title=f"{model}: training samples/s (median, min–max)", ylabel="samples/s")
        ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(args.out / "throughput.png", dpi=100)


if __name__ == "__main__":
    main()
