"""Where does a fused JAX epoch's time go? Per-call timings inside `JaxFusedStepper.train` and the saves.

Made for one question (the H100 runs of session 6, experiments/gpu/README.md): `fused` MLP epochs 2 took
0.18-0.35 s against 0.04 s in the `fused-branch` rows, while epochs 3 took 0.035 s either way. This runs the
real CLI (generated data, `bench_gpu.py`'s data and overrides) for each MODE/PREFETCH/GUARD combination: the
epoch's partial batch on a thread or as a `cond` branch, the curves' matplotlib prefetch on or off, and
bench_gpu's import guard on or off; and records, per `train` call, the host time to make the epoch's order,
pull the state, trace the tail, dispatch the chunk, wait for the tail's compile, dispatch the tail, push the
state and wait for the results; per save, the time the driver spent in `loop.save` (its snapshot and the wait
for the previous write). Nothing here adds a sync, and dynarch's modules are patched as dynarch imports them
(bench_gpu.after_import), so Keras starts the lean way, as in a user's run.

    python experiments/gpu/epoch_probe.py --out /tmp/probe     # writes epoch_probe.md and epoch_probe.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import argtypes  # noqa: E402
import bench_gpu  # noqa: E402

PARTS = ("order", "pull", "trace_tail", "chunk_dispatch", "tail_wait", "tail_dispatch", "push", "results_wait")
PROBE_ENV = "EPOCH_PROBE"  # the child's settings: "<thread|branch>,<prefetch|noprefetch>,<guard|noguard>,<json path>"


def instrument(mode: str, prefetch: str, out: str) -> None:
    """In the child, before `python -m dynarch` runs: patch the stepper's `train` and the loop's `save` as dynarch
    imports them (bench_gpu.after_import: importing them here would start Keras the non-lean way)."""
    calls: list[dict] = []
    saves: list[float] = []
    clock = time.perf_counter

    def dump() -> None:
        Path(out).write_text(json.dumps({"calls": calls, "saves": saves}))

    def patch_stepper(fj) -> None:
        import jax

        fj.tail_on_thread = lambda: mode == "thread"

        def train(self, epoch, first, count):  # JaxFusedStepper.train, with clocks between its parts
            t = {"epoch": epoch, "first": first, "count": count}
            t0 = clock()
            order, new = self.epoch_order(epoch)
            if new and self.resident:
                self._device_order = jax.device_put(order.astype("int32"))
            n_full, tail = max(0, min(first + count, self.full) - first), first + count > self.full
            t1 = clock()
            state, results = self._pull(), None
            t2 = clock()
            self._compile_tail(state, order)
            t3 = clock()
            if self.resident and (n_full or self._branch):
                state, results = self._chunk(state, self.x, self.y, self._device_order, first, n_full, tail)
            t4 = clock()
            t5 = t6 = t4
            if tail and not self._branch:
                compiled = self._tail.result()
                t5 = clock()
                state, results = compiled(state, *self._tail_inputs(order))
                t6 = clock()
            self._push(state)
            t7 = clock()
            logs = {k: float(v) for k, v in zip(self._result_names, jax.device_get(results))}
            t8 = clock()
            spans = (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5, t7 - t6, t8 - t7, t8 - t0)
            t.update(zip((*PARTS, "total"), spans))
            calls.append(t)
            return logs

        fj.JaxFusedStepper.train = train

    def patch_loop(phases) -> None:
        save = phases.PhaseLoop.save

        def timed_save(self, model):
            t0 = clock()
            try:
                return save(self, model)
            finally:
                saves.append(clock() - t0)
                dump()

        phases.PhaseLoop.save = timed_save
        if prefetch == "noprefetch":
            phases.PhaseLoop.prefetch_plotting = lambda self: None

    bench_gpu.after_import("dynarch.runtime.fused_jax", patch_stepper)
    bench_gpu.after_import("dynarch.phases", patch_loop)
    import atexit

    atexit.register(dump)


def child(argv: list[str]) -> None:
    mode, prefetch, guard, out = os.environ[PROBE_ENV].split(",", 3)
    if guard == "guard":  # bench_gpu.py's import guard, as its dynarch rows run
        bench_gpu.install_guard(out + ".guard")
    instrument(mode, prefetch, out)
    import runpy

    sys.argv = ["dynarch", *argv]
    runpy.run_module("dynarch", run_name="__main__", alter_sys=True)


def run(args, mode: str, prefetch: str, guard: str, work: Path) -> dict:
    run_dir = work / f"run-{mode}-{prefetch}-{time.time_ns()}"
    probe = work / f"probe-{time.time_ns()}.json"
    overrides = bench_gpu.dynarch_overrides(args, "mlp", args.batch, "fused", run_dir)
    env = {
        **os.environ,
        "KERAS_BACKEND": "jax",
        PROBE_ENV: f"{mode},{prefetch},{guard},{probe}",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(bench_gpu.ROOT), os.environ.get("PYTHONPATH")])),
    }
    p = subprocess.run([sys.executable, __file__, "--child", "--", *overrides], env=env, capture_output=True, text=True)
    if p.returncode:
        return {"error": p.stderr[-1500:]}
    history = bench_gpu.read_history(run_dir / "history.csv")
    return {"epoch_s": history["epoch_time_s"], **json.loads(probe.read_text())}


CHOICES = (("thread", "branch"), ("prefetch", "noprefetch"), ("guard", "noguard"))


def combos(text: str) -> list[tuple[str, ...]]:
    """--combos: MODE/PREFETCH/GUARD items, comma-separated, each part one of CHOICES."""
    out = []
    for item in text.split(","):
        parts = tuple(item.strip().split("/"))
        if len(parts) != 3 or any(part not in choice for part, choice in zip(parts, CHOICES)):
            raise argparse.ArgumentTypeError(f"{item!r}: expected MODE/PREFETCH/GUARD, e.g. thread/prefetch/noguard")
        out.append(parts)
    return out


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        return child(sys.argv[3:])
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=argtypes.at_least(1), default=2)
    p.add_argument("--epochs", type=argtypes.at_least(2), default=3)
    p.add_argument("--batch", type=argtypes.at_least(1), default=128)
    p.add_argument("--train-size", type=argtypes.at_least(1), default=60000)
    p.add_argument("--out", type=argtypes.out_dir, default=None)
    p.add_argument(
        "--combos",
        default="thread/prefetch/noguard,thread/noprefetch/noguard,branch/prefetch/noguard,branch/noprefetch/noguard",
        type=combos,
        help="comma-separated MODE/PREFETCH/GUARD: thread|branch, prefetch|noprefetch, guard|noguard",
    )
    args = p.parse_args()
    args.seed = 42
    with tempfile.TemporaryDirectory(prefix="epoch-probe-") as tmp:
        work = Path(tmp)
        args.data = work / "idx"
        bench_gpu.write_idx(args.data, args.train_size, args.seed)
        results: dict[str, list] = {}
        for r in range(args.repeats):
            for mode, prefetch, guard in args.combos:
                res = run(args, mode, prefetch, guard, work)
                results.setdefault(f"{mode},{prefetch},{guard}", []).append(res)
                print(r, mode, prefetch, guard, [round(e, 3) for e in res.get("epoch_s", [])], res.get("error", ""))
    lines = ["# epoch_probe: where a fused epoch's host time goes (seconds, medians over repeats)", ""]
    parts = PARTS
    for key, runs in results.items():
        runs = [x for x in runs if "calls" in x]
        if not runs:
            continue
        lines += [
            f"## {key}",
            "",
            "epochs: " + ", ".join(f"{statistics.median(e):.3f}" for e in zip(*[x["epoch_s"] for x in runs])),
        ]
        lines += ["", "| epoch, first | " + " | ".join(parts) + " | total |", "|---" * (len(parts) + 2) + "|"]
        for i in range(min(len(x["calls"]) for x in runs)):
            c = [x["calls"][i] for x in runs]
            cells = [f"{statistics.median(y[k] for y in c):.4f}" for k in (*parts, "total")]
            lines.append(f"| {c[0]['epoch']}, {c[0]['first']} | " + " | ".join(cells) + " |")
        saves = [statistics.median(s) for s in zip(*[x["saves"] for x in runs])]
        lines += ["", "saves: " + ", ".join(f"{s:.4f}" for s in saves), ""]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "epoch_probe.md").write_text(text + "\n")
        (args.out / "epoch_probe.json").write_text(json.dumps(results))


if __name__ == "__main__":
    main()
