"""Fixed costs of one `python -m dynarch` command on CPU, part by part, against plain Keras's whole command.

Each measured command is a fresh process started by this script (wall time = start to reaped). The dynarch
command runs as `python fixed_costs.py --child ... -- OVERRIDES`, which installs timers and then runs the
`dynarch` module exactly as `python -m dynarch` does (runpy, DYNARCH_FAST_EXIT as given). Timers wrap, when
their module is imported: the TensorFlow start (dynarch.quiet), Hydra composition (until resolve_config),
data loading, model build, each Keras fit / evaluate, clear_session, the curves PNG, the final checkpoint;
the child appends one JSON line per event to a file, so the record survives an os._exit. Process teardown =
the parent's wall clock at reaping minus the child's last event (the CLI's exit call or SystemExit).

Rows: dynarch (fast exit, the default), dynarch with DYNARCH_FAST_EXIT=0 (the interpreter's teardown), and
plain Keras as users write it (import keras, read the IDX arrays, fit with validation_split=0.1, evaluate),
and the same plain script with the optional packages dynarch hides while Keras starts (dynarch/runtime/lean.py,
HIDDEN["tensorflow"]) blocked in sys.modules for the whole script: what plain Keras costs in an environment
where they are not installed (this .venv has them for dynarch's PNG, MLflow and the tests), each at --sizes
training samples, --epochs epochs, --repeats repeats interleaved. The split
`wall = fixed + per-sample-epoch x samples x epochs` takes per-sample-epoch from the median steady epoch
(epochs 2..) of the training part and calls the rest fixed.

    .venv/bin/python experiments/throughput/fixed_costs.py            # writes fixed_costs.json / .md here
"""

from __future__ import annotations

import argparse
import functools
import importlib.abc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
ROWS = ("dynarch", "dynarch_no_fast_exit", "plain", "plain_hidden")
NAMES = {
    "dynarch": "dynarch CLI (fast exit)",
    "dynarch_no_fast_exit": "dynarch CLI, DYNARCH_FAST_EXIT=0",
    "plain": "plain Keras script",
    "plain_hidden": "plain Keras script, optional packages hidden",
}

# ------------------------------------------------------------------ child side: timers


def emit(log: str, event: str, **kw) -> None:
    with open(log, "a") as f:
        f.write(json.dumps({"event": event, "t": time.time(), **kw}) + "\n")


def timed(log: str, name: str, fn):
    @functools.wraps(fn)
    def wrapper(*a, **k):
        t0 = time.time()
        try:
            return fn(*a, **k)
        finally:
            emit(log, "span", name=name, start=t0, s=time.time() - t0)

    return wrapper


PATCHES = {  # module -> [(attribute path, span name)]
    "dynarch.quiet": [("start_tensorflow_quietly", "tensorflow_start")],
    "dynarch.compose": [("resolve_config", "resolve_config")],
    "dynarch.data": [("load_arrays", "data_load")],
    "dynarch.phases": [("PhaseLoop.build", "model_build"), ("PhaseLoop.evaluate_test", "test_evaluate")],
    "dynarch.artifacts": [("plot_curves", "curves_png")],
    "dynarch.checkpoint": [("save_checkpoint", "final_checkpoint")],
    "dynarch.train": [("train", "train_call")],
    "keras": [("Model.fit", "keras_fit"), ("backend.clear_session", "clear_session")],
}


class PatchOnImport(importlib.abc.MetaPathFinder):
    """Wraps PATCHES' attributes right after their module is executed (before anyone binds them by name)."""

    def __init__(self, log: str):
        self.log = log

    def find_spec(self, name, path=None, target=None):
        if name not in PATCHES:
            return None
        for finder in sys.meta_path:
            if finder is self:
                continue
            spec = finder.find_spec(name, path, target) if hasattr(finder, "find_spec") else None
            if spec is not None:
                exec_module, log = spec.loader.exec_module, self.log

                def exec_and_patch(module, exec_module=exec_module, name=name, log=log):
                    exec_module(module)
                    for attr, span in PATCHES[name]:
                        owner_path, _, leaf = attr.rpartition(".")
                        owner = functools.reduce(getattr, owner_path.split("."), module) if owner_path else module
                        setattr(owner, leaf, timed(log, span, getattr(owner, leaf)))

                spec.loader.exec_module = exec_and_patch
                return spec
        return None


def child(log: str, argv: list[str]) -> None:
    emit(log, "python_ready")
    sys.meta_path.insert(0, PatchOnImport(log))
    real_exit = os._exit

    def logged_exit(code):
        emit(log, "exit_call", code=code)
        real_exit(code)

    os._exit = logged_exit
    import runpy

    sys.argv = ["dynarch", *argv]
    try:
        runpy.run_module("dynarch", run_name="__main__", alter_sys=True)
    except SystemExit as e:
        emit(log, "exit_call", code=e.code)
        raise


PLAIN = r"""
import gzip, sys, time, json
import numpy as np
t_import = time.time()
import keras
t_keras = time.time()
def read(path):
    data = gzip.open(path).read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)
d = sys.argv[1]
x = read(d + "/train-images-idx3-ubyte.gz")[..., None] / 255.0
y = read(d + "/train-labels-idx1-ubyte.gz")
tx = read(d + "/t10k-images-idx3-ubyte.gz")[..., None] / 255.0
ty = read(d + "/t10k-labels-idx1-ubyte.gz")
class Timer(keras.callbacks.Callback):
    def __init__(self): super().__init__(); self.s = []; self.t_end = None
    def on_epoch_begin(self, e, logs=None): self.t0, self.t_end = time.perf_counter(), None
    def on_test_begin(self, logs=None): self.t_end = self.t_end or time.perf_counter()
    def on_epoch_end(self, e, logs=None): self.s.append((self.t_end or time.perf_counter()) - self.t0)
keras.utils.set_random_seed(42)
model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(128, activation="relu"),
                          keras.layers.Dropout(0.2), keras.layers.Dense(10, activation="softmax")])
model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
timer = Timer()
model.fit(x, y, batch_size=128, epochs=int(sys.argv[2]), validation_split=0.1, callbacks=[timer], verbose=0)
acc = model.evaluate(tx, ty, verbose=0)[1]
print("RESULT " + json.dumps({"epoch_s": timer.s, "n_train": int(len(y) * 0.9), "keras_import_s": t_keras - t_import,
                              "test_accuracy": acc}), flush=True)
"""

# ------------------------------------------------------------------ parent side


def measure(row: str, idx: Path, epochs: int, work: Path) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
    env.pop("KERAS_BACKEND", None)
    if row in ("plain", "plain_hidden"):
        code = PLAIN if row == "plain" else f"import sys; sys.modules.update(dict.fromkeys({hidden()!r}))" + PLAIN
        cmd = [sys.executable, "-c", code, str(idx), str(epochs)]
    else:
        log = work / f"events-{time.time_ns()}.jsonl"
        run_dir = work / f"run-{time.time_ns()}"
        env["DYNARCH_FAST_EXIT"] = "1" if row == "dynarch" else "0"
        cmd = [sys.executable, str(Path(__file__)), "--child", str(log), "--", "data=idx", f"data.path={idx}"]
        cmd += [f"trainer.epochs={epochs}", "trainer.verbose=0", f"hydra.run.dir={run_dir}"]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=work)
    t_end = time.time()
    if proc.returncode:
        raise RuntimeError(f"{row} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    wall = t_end - t0
    if row in ("plain", "plain_hidden"):
        r = json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))[7:])
        return split(wall, r["epoch_s"], r["n_train"]) | {"keras_import": r["keras_import_s"]}
    events = [json.loads(ln) for ln in log.read_text().splitlines()]
    history = (run_dir / "history.csv").read_text().splitlines()
    col = history[0].split(",").index("epoch_time_s")
    epoch_s = [float(ln.split(",")[col]) for ln in history[1:]]
    n_train = json.loads((run_dir / "metrics.json").read_text())["data_sizes"]["train"]
    return split(wall, epoch_s, n_train) | parts(events, t0, t_end, epoch_s)


def hidden() -> list[str]:
    """The names dynarch hides on TensorFlow (pure Python: importing the list imports no framework)."""
    from dynarch.runtime.lean import HIDDEN

    return list(HIDDEN["tensorflow"])


def split(wall: float, epoch_s: list[float], n: int) -> dict:
    per = statistics.median(epoch_s[1:] or epoch_s) / n
    return {"wall": wall, "per_sample_epoch_us": per * 1e6, "fixed": wall - per * n * len(epoch_s), "epoch_s": epoch_s}


def parts(events: list[dict], t0: float, t_end: float, epoch_s: list[float]) -> dict:
    spans: dict[str, float] = {}
    for e in events:
        if e["event"] == "span":
            spans[e["name"]] = spans.get(e["name"], 0.0) + e["s"]
    first = {e.get("name", e["event"]): e for e in reversed(events)}
    ready = first["python_ready"]["t"]
    compose_end = first["resolve_config"]["start"] if "resolve_config" in first else ready
    exit_t = max(e["t"] for e in events if e["event"] == "exit_call")
    train_end = max(e["start"] + e["s"] for e in events if e.get("name") == "train_call")
    steady = statistics.median(epoch_s[1:] or epoch_s)
    return {
        "interpreter_start": ready - t0,
        "imports_and_hydra_compose": compose_end - ready,
        "tensorflow_start": spans.get("tensorflow_start", 0.0),
        "data_load": spans.get("data_load", 0.0),
        "model_build": spans.get("model_build", 0.0),
        "epoch1_tracing": epoch_s[0] - steady,
        "validation_and_fit_overhead": spans.get("keras_fit", 0.0) - sum(epoch_s),
        "test_evaluate": spans.get("test_evaluate", 0.0),
        "clear_session": spans.get("clear_session", 0.0),
        "curves_png": spans.get("curves_png", 0.0),
        "final_checkpoint": spans.get("final_checkpoint", 0.0),
        "after_train_to_exit": exit_t - train_end,
        "process_teardown": t_end - exit_t,
    }


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        return child(sys.argv[2], sys.argv[4:])
    sys.path.insert(0, str(HERE.parent))  # experiments/argtypes.py
    import argtypes

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="5000,60000", type=argtypes.positive_ints, help="training samples per row")
    p.add_argument("--epochs", type=argtypes.at_least(1), default=5)
    p.add_argument("--repeats", type=argtypes.at_least(1), default=3)
    p.add_argument("--rows", default=",".join(ROWS), type=argtypes.choices(ROWS))
    p.add_argument("--out", type=argtypes.out_dir, default=HERE)
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "experiments" / "gpu"))
    from bench_gpu import write_idx  # the same generated MNIST-format set as the GPU benchmark

    work = Path(tempfile.mkdtemp(prefix="dynarch-fixed-"))
    rows = args.rows.split(",")
    results = {}
    for size in map(int, args.sizes.split(",")):
        idx = work / f"idx-{size}"
        write_idx(idx, size, 42)
        results[size] = {row: [] for row in rows}
        for r in range(args.repeats):
            for row in rows[r % len(rows) :] + rows[: r % len(rows)]:
                m = measure(row, idx, args.epochs, work)
                results[size][row].append(m)
                print(
                    f"{size} {row} r{r}: wall {m['wall']:.2f}s fixed {m['fixed']:.2f}s "
                    f"{m['per_sample_epoch_us']:.1f} us/sample-epoch",
                    flush=True,
                )
    write(results, args)


def med(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def ratio(runs: list[dict], base: list[dict] | None) -> str:
    """Median of the per-repeat wall ratios against `base` (same repeat = same stretch of machine load)."""
    return f"{statistics.median(a['wall'] / b['wall'] for a, b in zip(runs, base)):.2f}" if base else ""


def write(results: dict, args) -> None:
    device = f"CPU, {os.cpu_count()} cores ({platform.processor() or platform.machine()}), TensorFlow backend"
    out = {"device": device, "epochs": args.epochs, "repeats": args.repeats, "hidden": hidden(), "results": results}
    (args.out / "fixed_costs.json").write_text(json.dumps(out, indent=1) + "\n")
    lines = [
        f"Device: {device}; MLP, {args.epochs} epochs, batch 128, {args.repeats} repeats interleaved, medians "
        "(shared machine: other work ran on the same cores meanwhile).",
        "",
        f"Command: `.venv/bin/python experiments/throughput/fixed_costs.py --sizes {args.sizes} --epochs {args.epochs} "
        f"--repeats {args.repeats}`",
        "",
        f"Optional packages hidden: {', '.join(hidden())} — dynarch refuses them while Keras starts "
        "(dynarch/runtime/lean.py; Keras/TF import them only to offer features dynarch does not use); the "
        "'hidden' plain row blocks them for its whole script, i.e. plain Keras where they are not installed. "
        "Ratios are medians of per-repeat ratios (repeats interleaved, so load from other processes hits "
        "every row alike). matplotlib, no longer imported by Keras, is imported on a thread from the end of "
        "epoch 1 (dynarch.artifacts.prefetch_plotting), overlapping training rather than in curves_png.",
        "",
        "| samples | command | wall s | fixed s | µs per sample-epoch | wall / plain Keras | wall / plain, hidden |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for size, by in results.items():
        for row, runs in by.items():
            ratios = [ratio(runs, by.get(base)) for base in ("plain", "plain_hidden")]
            lines.append(
                f"| {int(size):,} | {NAMES[row]} | {med(runs, 'wall'):.2f} | {med(runs, 'fixed'):.2f} | "
                f"{med(runs, 'per_sample_epoch_us'):.1f} | " + " | ".join(ratios) + " |"
            )
    keys = [
        k
        for k in next(iter(next(iter(results.values())).get("dynarch_no_fast_exit", [{}])), {})
        if k not in ("wall", "fixed", "per_sample_epoch_us", "epoch_s")
    ]
    dyn = [r for r in ("dynarch", "dynarch_no_fast_exit") if r in rows_of(results)]
    if keys and dyn:
        lines += [
            "",
            "| part (s, median) | " + " | ".join(f"{NAMES[r]}, {int(s):,}" for s in results for r in dyn) + " |",
            "|---|" + "---:|" * (len(results) * len(dyn)),
        ]
        for k in keys:
            lines.append(f"| {k} | " + " | ".join(f"{med(results[s][r], k):.2f}" for s in results for r in dyn) + " |")
    (args.out / "fixed_costs.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def rows_of(results: dict) -> set[str]:
    return {row for by in results.values() for row in by}


if __name__ == "__main__":
    main()
