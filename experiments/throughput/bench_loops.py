"""Training loops on CPU: dynarch's fused loop vs its Keras loop vs plain Keras, on TensorFlow and on JAX.

For each backend x model x batch: (p) plain Keras hand-tuned (`fit` on numpy arrays, steps_per_execution=64),
(k) the dynarch runner with trainer.loop=keras, (f) the dynarch runner with trainer.loop=fused. Each is a
fresh child process (KERAS_BACKEND fixed per process), the repeats interleaved with the order rotated. Same
data as bench.py (the shipped digits tiled, as IDX), no validation. Samples/s: median over epochs 2.. of one
run; time-to-target: training seconds (epoch 1's tracing/compilation included) until the end of the first
epoch whose *training* accuracy reaches --target (no validation split, so all rows train on the same samples).

    .venv/bin/python experiments/throughput/bench_loops.py       # also run by `make bench` (bench.py)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
KEYS = {
    "p": "plain Keras, steps_per_execution=64",
    "k": "dynarch, trainer.loop=keras",
    "f": "dynarch, trainer.loop=fused",
}


def child(backend: str, key: str, model: str, batch: int, folder: Path, epochs: int, seed: int) -> dict:
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(HERE))
    if key == "p":
        import keras
        from bench import plain_model

        from dynarch.config import DataConfig
        from dynarch.data.idx import load_splits

        (x, y), _, _ = load_splits(DataConfig(loader="idx", path=str(folder), input_shape=(28, 28, 1), num_classes=10))
        if backend == "tensorflow":  # the thread count dynarch's `auto` picks, set by hand (as bench.py's (b))
            import tensorflow as tf

            from dynarch.compose import compose_run
            from dynarch.runtime.tensorflow import intra_op_threads

            run = compose_run([f"model={model}"])
            threads = intra_op_threads(run.trainer, run.arch.forward_flops, has_gpu=False)
            if threads:
                tf.config.threading.set_intra_op_parallelism_threads(threads)
        from dynarch.callbacks import Throughput

        keras.utils.set_random_seed(seed)
        m = plain_model(model)
        m.compile(
            keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"], steps_per_execution=64
        )
        cb = Throughput(lambda epoch: len(y))
        hist = m.fit(x.astype("float32") / 255.0, y, batch_size=batch, epochs=epochs, callbacks=[cb], verbose=0)
        return {"epoch_s": cb.epoch_s, "accuracy": hist.history["accuracy"], "n": int(len(y))}
    from dynarch.compose import compose_run
    from dynarch.train import train

    out = folder.parent / f"run-{backend}-{key}-{model}-{batch}-{os.getpid()}"
    run = compose_run(
        [
            f"backend={backend}",
            f"model={model}",
            "data=idx",
            f"data.path={folder}",
            "data.val_fraction=0",
            f"trainer.epochs={epochs}",
            f"trainer.batch_size={batch}",
            "trainer.verbose=0",
            f"seed={seed}",
            f"trainer.loop={'fused' if key == 'f' else 'keras'}",
        ]
    )
    metrics = train(run, out)
    rows = (out / "history.csv").read_text().splitlines()
    head = rows[0].split(",")
    col = lambda name: [float(r.split(",")[head.index(name)]) for r in rows[1:]]  # noqa: E731
    return {
        "epoch_s": col("epoch_time_s"),
        "accuracy": col("accuracy"),
        "n": metrics["data_sizes"]["train"],
        "compile_s": metrics.get("compile_s"),
    }


def measure(backend, key, model, batch, folder, args) -> dict:
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable,
        __file__,
        "--child",
        backend,
        key,
        model,
        str(batch),
        str(folder),
        "--epochs",
        str(args.epochs),
        "--seed",
        str(args.seed),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode or line is None:
        tail = [ln for ln in proc.stderr.splitlines() if ln.strip()][-2:]
        return {"error": " | ".join(tail)[-300:]}
    r = json.loads(line[7:])
    steady = r["epoch_s"][1:] or r["epoch_s"]
    hit = next((i for i, a in enumerate(r["accuracy"]) if a >= args.target), None)
    r["samples_per_s"] = r["n"] / statistics.median(steady)
    r["time_to_target_s"] = sum(r["epoch_s"][: hit + 1]) if hit is not None else None
    return r


def run_all(args, folder: Path) -> dict:
    results = {}
    cells = [
        (b, m, n)
        for b in args.backends.split(",")
        for m in args.models.split(",")
        for n in map(int, args.batches.split(","))
    ]
    keys = list(KEYS)
    for r in range(args.repeats):
        for backend, model, batch in cells:
            for key in keys[r % 3 :] + keys[: r % 3]:
                if f"{backend}:{model}:{key}" in args.skip.split(","):
                    continue
                res = measure(backend, key, model, batch, folder, args)
                results.setdefault(f"{backend}|{model}|{batch}", {}).setdefault(key, []).append(res)
                print(
                    f"loops r{r} {backend} {model} b{batch} {key}: "
                    + (
                        res.get("error")
                        or f"{res['samples_per_s']:,.0f} samples/s, to target {res['time_to_target_s']}"
                    ),
                    flush=True,
                )
    return results


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def report(results: dict, args) -> str:
    lines = [
        f"CPU ({os.cpu_count()} cores, shared); {args.train_size} training samples, {args.epochs} epochs, "
        f"{args.repeats} repeats interleaved (medians), time-to-target = training accuracy {args.target}.",
        "",
        "| backend | model | batch | plain Keras spe=64 samples/s | dynarch keras loop | dynarch fused loop "
        "| fused / keras loop | fused / plain | time-to-target s: plain / keras / fused |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for cell, by in results.items():
        backend, model, batch = cell.split("|")
        ok = {k: [r for r in v if "error" not in r] for k, v in by.items()}
        sps = {k: med([r["samples_per_s"] for r in v]) for k, v in ok.items()}
        ttt = {k: med([r["time_to_target_s"] for r in v]) for k, v in ok.items()}

        def pair(a: str, b: str, by=by) -> float | None:
            both = zip(by.get(a, []), by.get(b, []))
            return med([x["samples_per_s"] / y["samples_per_s"] for x, y in both if "error" not in (x | y)])

        f = lambda v, spec=",.0f": "–" if v is None else format(v, spec)  # noqa: E731
        lines.append(
            f"| {backend} | {model} | {batch} | {f(sps.get('p'))} | {f(sps.get('k'))} | {f(sps.get('f'))} | "
            f"{f(pair('f', 'k'), '.2f')} | {f(pair('f', 'p'), '.2f')} | "
            f"{' / '.join(f(ttt.get(k), '.2f') for k in 'pkf')} |"
        )
        for k, v in by.items():
            for e in [r["error"] for r in v if "error" in r][:1]:
                lines.append(f"\n`{backend} {model} {batch} {KEYS[k]}` failed: {e}\n")
    if args.skip:
        lines.append(
            f"\nSkipped (--skip {args.skip}): the JAX CNN in the fused loop on a CPU — XLA:CPU runs a while loop's "
            "body on one thread; one measured run: 401 samples/s fused vs 2,321 in the Keras loop (batch 128), "
            "so trainer.loop=auto picks the Keras loop there."
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        backend, key, model, batch, folder = argv[1:6]
        p = argparse.ArgumentParser()
        p.add_argument("--epochs", type=int)
        p.add_argument("--seed", type=int)
        a = p.parse_args(argv[6:])
        print("RESULT " + json.dumps(child(backend, key, model, int(batch), Path(folder), a.epochs, a.seed)))
        return
    sys.path.insert(0, str(HERE.parent))  # experiments/argtypes.py
    import argtypes

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backends", default="tensorflow,jax", type=argtypes.choices(("tensorflow", "jax")))
    p.add_argument("--models", default="mlp,cnn", type=argtypes.choices(("mlp", "cnn")))
    p.add_argument("--batches", default="128,1024", type=argtypes.positive_ints)
    p.add_argument("--train-size", type=argtypes.at_least(1000), default=8000)
    p.add_argument("--epochs", type=argtypes.at_least(2), default=3, help="the first is warm-up")
    p.add_argument("--repeats", type=argtypes.at_least(1), default=2)
    p.add_argument("--skip", default="jax:cnn:f", help="backend:model:key cells not run (key p|k|f), comma-separated")
    p.add_argument("--target", type=argtypes.fraction, default=0.9)
    p.add_argument("--seed", type=argtypes.at_least(0), default=42)
    p.add_argument("--out", type=argtypes.out_dir, default=HERE)
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(HERE))
    from bench import write_idx

    folder = Path(tempfile.mkdtemp(prefix="dynarch-loops-")) / "idx"
    folder.mkdir()
    write_idx(folder, args.train_size)
    results = run_all(args, folder)
    text = report(results, args)
    print("\n" + text)
    (args.out / "loops.md").write_text(text)
    (args.out / "loops.json").write_text(
        json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=1) + "\n"
    )


if __name__ == "__main__":
    main()
