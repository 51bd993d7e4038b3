"""Where should the JAX fused loop compile the epoch's partial batch? (dynarch/runtime/fused_jax.py)

An epoch of n samples at batch B has n // B full batches and one partial batch of n % B rows: another shape,
so another train step for XLA to compile. The fused loop can make it
  - a `cond` branch of the chunk program (one program, but it holds the train step twice), or
  - its own program, traced at the first chunk and compiled on a host thread while the chunk program compiles
    and runs (two programs, compiled side by side).
This measures, on the machine at hand (CPU or GPU JAX, no TensorFlow), in one process, interleaved, with
fresh models and cleared caches (persistent compile cache off):
  1. XLA compile seconds (tracing excluded, except in the reference) of: the chunk program alone, the chunk
     program with the `cond` branch, the partial batch's own program, and the hand-fused epoch of
     experiments/gpu/bench_gpu.py (a `lax.scan`, partial batch dropped) for reference;
  2. the chunk and partial-batch programs compiled one after the other vs side by side (a thread);
  3. the first fused epoch (stepper built, 256 steps, then the rest of the epoch) either way.
It prints one table of medians and writes it to --out as tail_compile.md.

    python experiments/gpu/tail_compile.py --repeats 6                  # 60,000 generated MNIST-like samples
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[1]), str(HERE), str(HERE.parent)]
os.environ["KERAS_BACKEND"] = "jax"

import argtypes  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=argtypes.at_least(1), default=6)
    p.add_argument("--batch", type=argtypes.at_least(1), default=128)
    p.add_argument("--train-size", type=argtypes.at_least(300), default=60000)
    p.add_argument("--out", type=argtypes.out_dir, default=None, help="folder for tail_compile.md (default: print)")
    args = p.parse_args()
    if args.train_size * 0.9 < 2 * args.batch:  # 10% is the validation split
        p.error(f"--train-size {args.train_size} leaves fewer than two batches of {args.batch} to train on")
    with tempfile.TemporaryDirectory(prefix="dynarch-tail-") as tmp:
        table = measure(args, Path(tmp))
    print(table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "tail_compile.md").write_text(table + "\n")


def measure(args, tmp: Path) -> str:
    import bench_gpu
    import jax
    import keras
    import numpy as np

    import dynarch.runtime.fused_jax as fj
    from dynarch.build import build_model
    from dynarch.compose import compose_run
    from dynarch.data import load_arrays
    from dynarch.optim import make_optimizer

    jax.config.update("jax_enable_compilation_cache", False)
    source = bench_gpu.write_idx(tmp, args.train_size, 42)
    base = ["backend=jax", "data=idx", f"data.path={tmp}", "trainer.loop=fused", f"trainer.batch_size={args.batch}"]
    run = compose_run(base)
    arrays = load_arrays(run.data, run.seed)
    pool = ThreadPoolExecutor(max_workers=1)

    def stepper(thread: bool, units: int = 128):
        jax.clear_caches()
        fj.tail_on_thread = lambda: thread
        r = compose_run([*base, f"model.blocks.dense.units={units}"]) if units != 128 else run
        keras.utils.set_random_seed(1)
        model = build_model(r.phases[0].arch)
        opt = make_optimizer(r.phases[0].optimizer)
        model.compile(optimizer=opt, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        model.optimizer.build(model.trainable_variables)
        return fj.JaxFusedStepper(model, arrays, r, None)

    def lowered(s, cond: bool):
        order, _ = s.epoch_order(0)
        s._device_order = jax.device_put(order.astype(np.int32))
        state = s._pull()
        s._branch = cond
        chunk = jax.jit(s._chunk_fn, donate_argnums=0).lower(state, s.x, s.y, s._device_order, 0, 10, True)
        return chunk, jax.jit(s._tail_fn, donate_argnums=0).lower(state, *s._tail_inputs(order))

    def timed(fn, *args) -> float:
        t = time.perf_counter()
        fn(*args)
        return time.perf_counter() - t

    def one_after_the_other(chunk, tail) -> None:
        chunk.compile()
        tail.compile()

    def side_by_side(chunk, tail) -> None:
        pending = pool.submit(tail.compile)
        chunk.compile()
        pending.result()

    def first_epoch(thread: bool) -> float:
        t = time.perf_counter()
        s = stepper(thread)
        steps = -(-s.n // args.batch)
        s.train(0, 0, min(256, steps))
        if steps > 256:
            s.train(0, 256, steps - 256)
        return time.perf_counter() - t

    rows: dict[str, list[float]] = {}

    def add(key: str, seconds: float) -> None:
        rows.setdefault(key, []).append(seconds)

    for r in range(args.repeats):
        s = stepper(False)
        chunk, tail = lowered(s, cond=False)
        add("compile: chunk program alone", timed(chunk.compile))
        add("compile: partial batch's own program", timed(tail.compile))
        add("compile: chunk program with the cond branch", timed(lowered(stepper(False), cond=True)[0].compile))
        add("trace + compile: hand-fused epoch (reference)", hand_fused_compile(arrays, args.batch, stepper(False)))
        # serial vs side by side: distinct widths, so that neither pair finds the other's programs compiled
        for mode in ("serial", "thread") if r % 2 == 0 else ("thread", "serial"):
            chunk, tail = lowered(stepper(False, units=100 + 2 * r + (mode == "thread")), cond=False)
            how = one_after_the_other if mode == "serial" else side_by_side
            add(f"chunk + partial program, {how.__name__.replace('_', ' ')}", timed(how, chunk, tail))
        for thread in (False, True) if r % 2 == 0 else (True, False):
            add(
                f"first fused epoch, partial batch {'on a thread' if thread else 'as a cond branch'}",
                first_epoch(thread),
            )
        print(f"repeat {r + 1}/{args.repeats} done", file=sys.stderr, flush=True)
    device = jax.devices()[0]
    lines = [
        f"Device: {device.device_kind} ({device.platform}), {os.cpu_count()} host cores; jax {jax.__version__}, "
        f"keras {keras.__version__}. Data: {source}; batch {args.batch} ({len(arrays.train[1])} training samples: "
        f"{len(arrays.train[1]) // args.batch} full batches + {len(arrays.train[1]) % args.batch}). "
        f"{args.repeats} interleaved repeats; medians (min-max) in seconds.",
        "",
        "| what | seconds |",
        "|---|---:|",
    ]
    for key, values in rows.items():
        lines.append(f"| {key} | {statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f}) |")
    return "\n".join(lines)


def hand_fused_compile(arrays, batch: int, s) -> float:
    """Trace + compile of bench_gpu.py's hand-fused epoch on the same model (its compile_s)."""
    import bench_gpu
    import jax
    import numpy as np

    model, opt = s.model, s.model.optimizer
    x, y = arrays.train
    xd, yd = jax.device_put(x), jax.device_put(y.astype(np.int32))
    epoch = bench_gpu.hand_fused_epoch(model, opt, len(y), batch)
    groups = (model.trainable_variables, model.non_trainable_variables, opt.variables)
    state = tuple([v.value for v in vs] for vs in groups)
    t = time.perf_counter()
    jax.jit(epoch, donate_argnums=0).lower(state, jax.random.key(0), xd, yd).compile()
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
