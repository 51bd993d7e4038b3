"""GPU benchmark without TensorFlow: `python -m dynarch backend=jax data=idx` against plain Keras on JAX and a
hand-fused JAX loop, at several batch sizes.

Made for a GPU box that has JAX (CUDA), NumPy, h5py, safetensors, matplotlib and rich but no TensorFlow and
no network, where keras, optree, namex, hydra-core, omegaconf and antlr4-python3-runtime arrive as wheels.
It runs on CPU JAX too (the figures are then labelled as such). TensorFlow and tensorflow_datasets are
*blocked* in every process it runs (an import raises ModuleNotFoundError, as on that box) and every attempt
is recorded with the frame that made it; every non-standard top-level module imported is listed, so the
results page says whether anything beyond the box's packages was needed.

For each repeat (interleaved, the order rotated every repeat), model and batch size:
  - dynarch, `trainer.loop=keras` and `trainer.loop=fused`: the real CLI (`runpy` of `dynarch` as
    `python -m dynarch` does, in a fresh process, TensorFlow blocked); a loop that fails is reported, not fatal;
    `fused-warm`: the fused loop with a compilation cache (DYNARCH_COMPILE_CACHE) filled by one earlier,
    unrecorded run of the same model and batch — what a second run of a sweep pays; `fused-branch`: the
    epoch's partial batch as a `cond` branch of the chunk program (what a CPU does) instead of its own
    program compiled on a thread (what an accelerator does), for an A/B of the two on a GPU; `fused-thread`:
    the reverse, for the same A/B on a CPU
  - plain Keras on JAX, in this process: the same model as conf/model/*.yaml, Adam 1e-3, same batch, same
    train/validation/test arrays (dynarch's loader), `steps_per_execution` 1 (Keras' default) and `epoch`
    (the whole epoch per execution)
  - hand-fused JAX, in this process: the same Keras model and optimizer through `stateless_call` /
    `stateless_apply`, one `jax.lax.scan` per epoch over batches gathered from the training split resident on
    the device as uint8, the permutation drawn on the device (`jax.random.permutation`), the partial last
    batch dropped — the limit a hand-written loop reaches (issue #17's reference)
Time-to-target = training seconds (epoch 1's compilation included, validation excluded) until the end of the
first epoch whose validation accuracy reaches --target; samples/s = median over epochs 2.. of training time.

Data: --data DIR (any MNIST-format IDX folder: Fashion-MNIST, MNIST) or, by default, a generated one: the
4,000 real training digits shipped with dynarch (dynarch/data/mnist_5k.npz) tiled to --train-size, every
copy after the first shifted by up to 2 pixels (seeded), plus the 1,000 real held-out test digits.
The page and results.json are rewritten after every run (atomically), so a run cut short keeps what it did;
--deadline-s stops starting new runs after that many seconds.

    python experiments/gpu/bench_gpu.py                       # writes experiments/gpu/results.md + results.json
    python experiments/gpu/bench_gpu.py --tiny --out /tmp/x   # seconds: 1 epoch, 2,000 samples (the test)
"""

from __future__ import annotations

import argparse
import gzip
import importlib.abc
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE.parent))  # experiments/argtypes.py: standard library only, as this box needs
import argtypes  # noqa: E402

BLOCKED = ("tensorflow", "tensorflow_datasets")
# Importable names of the GPU box's packages (device KINDS.md's list, 2026-11-17), the wheels that travel there
# (keras optree namex hydra omegaconf antlr4) and dynarch. Any other non-standard top-level module is refused
# too, so a run here needs what a run there can have, and no more.
GPU_BOX = set(
    """absl accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated_doc anyio attr attrs botorch build
    certifi charset_normalizer chex click cloudpickle cmake colorama contourpy coverage cuda cupy cycler Cython
    cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fontTools formulaic frozenlist
    fsspec gpytorch grpc h11 h5py hf_xet httpcore httpx huggingface_hub humanize hypothesis idna imageio iniconfig
    interface_meta jax jax_plugins jax_cuda13_plugin jax_cuda13_pjrt jaxlib jaxtyping jinja2 joblib kiwisolver
    lazy_loader ml_dtypes lightning lightning_utilities linear_operator lineax llvmlite lxml markdown
    markdown_it markupsafe
    matplotlib mpl_toolkits pylab meson mpi4py mpmath msgpack multidict multipledispatch mypy_extensions nanobind
    narwhals networkx ninja numba numba_cuda numpy numpyro nvidia onnx onnx_ir onnxruntime onnxscript cv2 optax
    opt_einsum opt_einsum_fx optimistix orbax packaging pandas pathspec patsy peft PIL pip pluggy portalocker
    prometheus_client propcache google psutil pyarrow pybind11 cpuinfo pygments pyparsing
    pyproject_hooks pyre_extensions pytest dateutil
    pytorch_lightning yaml regex requests rich sacrebleu safetensors scikit_build_core skimage sklearn scipy
    seaborn sentencepiece sentence_transformers setuptools pkg_resources shellingham simplejson six
    sortedcontainers statsmodels sympy tabulate tensorboard tensorboard_data_server tensorstore threadpoolctl
    tifffile tiktoken timm tokenizers toolz tlz torch torchaudio torchdiffeq torch_geometric torchmetrics
    torchvision tqdm transformers treescope triton typer typing_extensions typing_inspect urllib3 uvloop
    wadler_lindig werkzeug wheel wrapt xarray xxhash yarl zipp
    keras optree namex hydra omegaconf antlr4 dynarch""".split()
)


def allowed(top: str) -> bool:
    return top in GPU_BOX or top in sys.stdlib_module_names or top.startswith("_") or top in sys.builtin_module_names


class ImportGuard(importlib.abc.MetaPathFinder):
    """Refuses TensorFlow (and any package the GPU box lacks) like a machine without them: ModuleNotFoundError.
    Each refusal is logged at once with the frames that asked (so the record survives an os._exit); a library
    probing for an optional package gets the same answer it would get there."""

    def __init__(self, log_path: str):
        self.log_path = log_path

    def find_spec(self, name, path=None, target=None):
        if refused(name):
            stack = [fr for fr in traceback.extract_stack()[:-1] if not fr.filename.startswith("<")]
            frames = [f"{Path(fr.filename).name}:{fr.lineno}" for fr in stack]
            with open(self.log_path, "a") as f:
                f.write(json.dumps({"module": name, "stack": frames[-6:]}) + "\n")
            raise ModuleNotFoundError(f"No module named {name!r} (refused: not on the GPU box)", name=name)
        return None


def refused(name: str) -> bool:
    top = name.partition(".")[0]
    return top in BLOCKED or not allowed(top)


def install_guard(log_path: str) -> None:
    """The import system, importlib.util.find_spec and importlib.metadata all answer 'not installed' for a refused
    package, as they would on the GPU box (libraries probe with all three)."""
    import importlib.metadata
    import importlib.util

    Path(log_path).touch()
    sys.meta_path.insert(0, ImportGuard(log_path))
    find_spec, distribution = importlib.util.find_spec, importlib.metadata.distribution

    def guarded_find_spec(name, package=None):
        return None if refused(importlib.util.resolve_name(name, package)) else find_spec(name, package)

    def guarded_distribution(name):
        if refused(name.replace("-", "_").lower()) and name.replace("-", "_") not in GPU_BOX:
            raise importlib.metadata.PackageNotFoundError(name)
        return distribution(name)

    importlib.util.find_spec = guarded_find_spec
    importlib.metadata.distribution = guarded_distribution
    importlib.metadata.version = lambda name: guarded_distribution(name).version


def read_guard(log_path: Path) -> dict:
    """tensorflow_attempts: every refused TensorFlow import (module and asking frames); probed_absent: other
    packages something asked for that the box does not have (optional probes: the run still has to succeed)."""
    refused = [json.loads(ln) for ln in (log_path.read_text().splitlines() if log_path.exists() else []) if ln]
    tf = [r for r in refused if r["module"].partition(".")[0] in BLOCKED]
    others = sorted({r["module"].partition(".")[0] for r in refused} - set(BLOCKED))
    return {"tensorflow_attempts": tf, "probed_absent": others}


# ---------------------------------------------------------------- data


def write_idx(folder: Path, train_size: int, seed: int) -> str:
    """MNIST-format IDX files from the shipped digits; returns a one-line description."""
    import numpy as np

    from dynarch.data.idx import IDX_FILES
    from dynarch.data.subset import load_mnist_5k

    (x, y), (tx, ty) = load_mnist_5k()
    x, tx = x[..., 0], tx[..., 0]
    rng = np.random.default_rng(seed)
    parts, labels, n = [x], [y], len(y)
    while n < train_size:  # shifted copies: distinct images, same digits
        dy, dx = rng.integers(-2, 3, size=2)
        parts.append(np.roll(x, (int(dy), int(dx)), axis=(1, 2)))
        labels.append(y)
        n += len(y)
    x, y = np.concatenate(parts)[:train_size], np.concatenate(labels)[:train_size]
    folder.mkdir(parents=True, exist_ok=True)
    for key, arr in (("train_x", x), ("train_y", y), ("test_x", tx), ("test_y", ty)):
        header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
        (folder / f"{IDX_FILES[key]}.gz").write_bytes(gzip.compress(header + arr.astype(np.uint8).tobytes(), 1))
    return (
        f"generated: the 4,000 shipped real MNIST training digits tiled to {train_size:,} (copies shifted by up to "
        f"2 px), the 1,000 shipped real test digits"
    )


# ---------------------------------------------------------------- dynarch (subprocess, the real CLI)


def dynarch_overrides(args, model: str, batch: int, loop: str, run_dir: Path) -> list[str]:
    return [
        "backend=jax",
        "data=idx",
        f"data.path={args.data}",
        f"model={model}",
        f"trainer.batch_size={batch}",
        f"trainer.epochs={args.epochs}",
        f"trainer.loop={loop.partition('-')[0]}",
        "trainer.verbose=0",
        f"seed={args.seed}",
        f"hydra.run.dir={run_dir}",
    ] + (["trainer.deterministic=false"] if loop == "fused-nondet" else [])


# dynarch rows beyond trainer.loop's values: what each adds to the command
VARIANTS = {
    "fused-warm": "trainer.loop=fused, warm compile cache",
    "fused-nondet": "trainer.loop=fused, trainer.deterministic=false",
    "fused-branch": "trainer.loop=fused, partial batch as a cond branch (the CPU's way)",
    "fused-thread": "trainer.loop=fused, partial batch compiled on a thread (an accelerator's way)",
}
TAIL_ENV = "BENCH_FUSED_TAIL"  # fused-branch / fused-thread: the child sets what fused_jax.tail_on_thread() says
COMPILE_LINE = re.compile(r"Finished XLA compilation of (.+?) in ([0-9.e-]+) ?s")


def run_dynarch(args, model: str, batch: int, loop: str, work: Path, cache: Path | None = None) -> dict:
    run_dir = work / f"run-{model}-{batch}-{loop}-{time.time_ns()}"
    guard = work / f"guard-{time.time_ns()}.log"
    cmd = [sys.executable, str(Path(__file__)), "--dynarch-child", str(guard), "--"]
    cmd += dynarch_overrides(args, model, batch, loop, run_dir)
    env = {
        **os.environ,
        "KERAS_BACKEND": "jax",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    if cache is not None:  # the user's environment may name a cache directory shared by runs
        env["DYNARCH_COMPILE_CACHE"] = str(cache)
    if args.log_compiles:
        env["JAX_LOG_COMPILES"] = "1"
    env[TAIL_ENV] = loop.removeprefix("fused-") if loop in ("fused-branch", "fused-thread") else ""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=work)
    wall = time.perf_counter() - t0
    out = {"rc": proc.returncode, "wall_s": wall, **read_guard(guard)}
    if proc.returncode or not (run_dir / "metrics.json").exists():
        tail = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        return {**out, "error": " | ".join(tail[-3:])[-600:]}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    history = read_history(run_dir / "history.csv")
    compiles = [(m[1][:80], float(m[2])) for m in COMPILE_LINE.finditer(proc.stderr + proc.stdout)]
    shutil.rmtree(run_dir, ignore_errors=True)  # checkpoints of 60k-sample runs add up over a sweep of runs
    return {
        **out,
        **curve(history["epoch_time_s"], history.get("val_accuracy", []), metrics["data_sizes"]["train"], args.target),
        "test_accuracy": metrics["test_accuracy"],
        "loop": metrics.get("loop"),
        "compile_s": metrics.get("compile_s"),
        "devices": metrics.get("devices"),
        "versions": metrics.get("versions", {}),
        "compiles": compiles,  # (function, seconds) per XLA compilation, with --log-compiles
    }


def read_history(path: Path) -> dict[str, list[float]]:
    import csv

    with open(path) as f:
        rows = list(csv.DictReader(f))
    return {k: [float(r[k]) for r in rows if r.get(k) not in (None, "")] for k in (rows[0] if rows else {})}


def curve(epoch_s: list[float], val_acc: list[float], n_train: int, target: float) -> dict:
    """samples/s (median over epochs 2.., or epoch 1 alone) and time-to-target from per-epoch figures."""
    steady = epoch_s[1:] or epoch_s
    hit = next((i for i, a in enumerate(val_acc) if a >= target), None)
    return {
        "epoch_s": epoch_s,
        "val_accuracy": val_acc,
        "samples_per_s": n_train / statistics.median(steady),
        "first_epoch_s": epoch_s[0],
        "time_to_target_s": sum(epoch_s[: hit + 1]) if hit is not None else None,
        "train_s": sum(epoch_s),
    }


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs `patch(module)` once `name` has been imported by whoever imports it first."""

    def __init__(self, name: str, patch):
        self.name, self.patch = name, patch

    def find_spec(self, name, path=None, target=None):
        if name != self.name:
            return None
        sys.meta_path.remove(self)
        import importlib.util

        spec = importlib.util.find_spec(name)
        run, patch = spec.loader.exec_module, self.patch

        def exec_module(module):
            run(module)
            patch(module)

        spec.loader.exec_module = exec_module
        return spec


def after_import(name: str, patch) -> None:
    """Patch a dynarch module when dynarch imports it, not before: importing it here would import Keras before
    `python -m dynarch` starts it the lean way (runtime/lean.py), and Keras would bring matplotlib in at once.
    That changed what it measured: the curves' imports, which dynarch starts on a thread during training, were
    then already done (the H100 run of 2026-11-26: epoch 2 0.04 s in those rows, 0.19-0.34 s in the others)."""
    sys.meta_path.insert(0, _AfterImport(name, patch))


def dynarch_child(guard_log: str, argv: list[str]) -> None:
    """`python -m dynarch ARGV` with TensorFlow blocked: runpy is what `-m` does."""
    install_guard(guard_log)
    import runpy

    tail = os.environ.get(TAIL_ENV)
    if tail:  # A/B of where the epoch's partial batch compiles (runtime/fused_jax.py)
        after_import(
            "dynarch.runtime.fused_jax", lambda module: setattr(module, "tail_on_thread", lambda: tail == "thread")
        )

    sys.argv = ["dynarch", *argv]
    runpy.run_module("dynarch", run_name="__main__", alter_sys=True)


# ---------------------------------------------------------------- plain Keras and hand-fused JAX (this process)


def plain_model(name: str):
    """conf/model/{mlp,cnn}.yaml written the way a Keras user would."""
    import keras

    L = keras.layers
    if name == "mlp":
        body = [L.Flatten(), L.Dense(128, activation="relu"), L.Dropout(0.2)]
    else:
        body = [L.Conv2D(16, 3, padding="same", activation="relu"), L.MaxPooling2D(2)]
        body += [L.Conv2D(32, 3, padding="same", activation="relu"), L.MaxPooling2D(2), L.Flatten(), L.Dropout(0.25)]
    return keras.Sequential([keras.Input((28, 28, 1)), *body, L.Dense(10, activation="softmax")])


def load_arrays(args):
    """dynarch's loader's splits as uint8 (the hand-fused loop keeps them so on the device) and float32 / 255
    (what a Keras user passes to fit)."""
    from dynarch.compose import compose_run
    from dynarch.data import load_arrays as load

    run = compose_run(["data=idx", f"data.path={args.data}", f"seed={args.seed}"])
    a = load(run.data, run.seed)
    f = lambda x: x.astype("float32") / 255.0  # noqa: E731
    raw = (a.train, a.val, a.test)
    return {"uint8": raw, "float": tuple((f(x), y) for x, y in raw)}


def run_plain(args, model_name: str, batch: int, arrays, spe: str) -> dict:
    import keras

    class Timer(keras.callbacks.Callback):  # training part of each epoch, as dynarch's Throughput
        def __init__(self):
            super().__init__()
            self.epoch_s, self.t0, self.t_end = [], None, None

        def on_epoch_begin(self, epoch, logs=None):
            self.t0, self.t_end = time.perf_counter(), None

        def on_test_begin(self, logs=None):
            if self.t0 is not None and self.t_end is None:
                self.t_end = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.epoch_s.append((self.t_end or time.perf_counter()) - self.t0)
            self.t0 = None

    (x, y), val, test = arrays["float"]
    steps = -(-len(y) // batch)
    keras.backend.clear_session()
    keras.utils.set_random_seed(args.seed)
    t0 = time.perf_counter()
    model = plain_model(model_name)
    model.compile(
        keras.optimizers.Adam(1e-3),
        "sparse_categorical_crossentropy",
        metrics=["accuracy"],
        steps_per_execution=steps if spe == "epoch" else int(spe),
    )
    timer = Timer()
    hist = model.fit(x, y, batch_size=batch, epochs=args.epochs, validation_data=val, callbacks=[timer], verbose=0)
    acc = model.evaluate(*test, batch_size=batch, verbose=0)[1]
    wall = time.perf_counter() - t0
    return {
        "rc": 0,
        "wall_s": wall,
        **curve(timer.epoch_s, hist.history["val_accuracy"], len(y), args.target),
        "test_accuracy": acc,
    }


def hand_fused_epoch(model, opt, n: int, batch: int):
    """epoch(state, key, x, y) -> (state, mean loss): one `lax.scan` over the epoch's full batches, in an order
    drawn on the device, through Keras' `stateless_call` and the optimizer's `stateless_apply` (also used by
    experiments/gpu/tail_compile.py)."""
    import jax
    import jax.numpy as jnp
    import keras

    loss_fn, steps = keras.losses.SparseCategoricalCrossentropy(), n // batch

    def loss_of(tv, ntv, xb, yb):
        pred, ntv = model.stateless_call(tv, ntv, xb, training=True)
        return loss_fn(yb, pred), ntv

    grad = jax.value_and_grad(loss_of, has_aux=True)

    def epoch(state, key, xd, yd):
        order = jax.random.permutation(key, n)[: steps * batch].reshape(steps, batch)

        def body(state, rows):
            tv, ntv, ov = state
            (loss, ntv), g = grad(tv, ntv, xd[rows].astype(jnp.float32) / 255.0, yd[rows])
            tv, ov = opt.stateless_apply(ov, g, tv)
            return (tv, ntv, ov), loss

        state, losses = jax.lax.scan(body, state, order)
        return state, losses.mean()

    return epoch


def run_hand_fused(args, model_name: str, batch: int, arrays) -> dict:
    """One `lax.scan` per epoch over Keras' stateless call and Adam's stateless apply, data on the device."""
    import jax
    import jax.numpy as jnp
    import keras
    import numpy as np

    (x, y), val, test = arrays["uint8"]
    n, steps = len(y), len(y) // batch
    if not steps:  # it drops the partial batch: nothing would be left to train on
        return {"rc": 1, "error": f"the training split ({n}) is smaller than one batch ({batch})"}
    keras.backend.clear_session()
    keras.utils.set_random_seed(args.seed)
    t0 = time.perf_counter()
    model, opt = plain_model(model_name), keras.optimizers.Adam(1e-3)
    opt.build(model.trainable_variables)
    xd, yd = jax.device_put(x), jax.device_put(y.astype(np.int32))
    epoch = hand_fused_epoch(model, opt, n, batch)

    @jax.jit
    def predict(tv, ntv, xb):
        pred, _ = model.stateless_call(tv, ntv, xb.astype(jnp.float32) / 255.0, training=False)
        return jnp.argmax(pred, axis=-1)

    def accuracy(state, xy) -> float:
        xs, ys = xy
        hits = sum(
            int((np.asarray(predict(state[0], state[1], jnp.asarray(xs[i : i + 4096]))) == ys[i : i + 4096]).sum())
            for i in range(0, len(ys), 4096)
        )
        return hits / len(ys)

    groups = (model.trainable_variables, model.non_trainable_variables, opt.variables)
    state = tuple([v.value for v in vs] for vs in groups)
    key = jax.random.key(args.seed)
    tc = time.perf_counter()
    compiled = jax.jit(epoch, donate_argnums=0).lower(state, key, xd, yd).compile()
    compile_s = time.perf_counter() - tc
    epoch_s, val_acc = [], []
    for e in range(args.epochs):
        te = time.perf_counter()
        state, loss = compiled(state, jax.random.fold_in(key, e), xd, yd)
        jax.block_until_ready((state, loss))
        epoch_s.append(time.perf_counter() - te + (compile_s if e == 0 else 0.0))
        val_acc.append(accuracy(state, val))
    test_acc = accuracy(state, test)
    return {
        "rc": 0,
        "wall_s": time.perf_counter() - t0,
        **curve(epoch_s, val_acc, steps * batch, args.target),
        "test_accuracy": test_acc,
        "compile_s": compile_s,
    }


# ---------------------------------------------------------------- driver

LABELS = {
    "dynarch": "dynarch CLI, trainer.loop={}",
    "plain": "plain Keras fit, steps_per_execution={}",
    "hand": "hand-fused JAX (lax.scan per epoch, data on the device)",
}


def configs(args) -> list[tuple[str, str]]:
    rows = [("dynarch", loop) for loop in args.loops.split(",") if loop]
    rows += [("plain", f"spe={spe}") for spe in args.plain_spe.split(",") if spe]
    return rows + ([("hand", "scan")] if args.hand_fused else [])


def label(kind: str, variant: str) -> str:
    if kind == "dynarch" and variant in VARIANTS:
        return f"dynarch CLI, {VARIANTS[variant]}"
    return LABELS[kind].format(variant.removeprefix("spe="))


def main() -> None:
    if sys.argv[1:2] == ["--dynarch-child"]:  # bench_gpu.py --dynarch-child GUARD_LOG -- OVERRIDES...
        return dynarch_child(sys.argv[2], sys.argv[4:])
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, help="IDX folder (MNIST format); default: generate one")
    p.add_argument("--train-size", type=argtypes.at_least(1), default=60000)
    p.add_argument("--models", default="mlp,cnn")
    p.add_argument("--batches", default="128,1024", type=argtypes.positive_ints, help="batch sizes, comma-separated")
    p.add_argument("--epochs", type=argtypes.at_least(1), default=5)
    p.add_argument("--repeats", type=argtypes.at_least(0), default=3, help="0: the data and the page only")
    p.add_argument("--target", type=argtypes.fraction, default=0.95, help="validation accuracy (0.85: Fashion-MNIST)")
    p.add_argument("--loops", default="keras,fused,fused-warm", help="dynarch trainer.loop values, one row each")
    p.add_argument(
        "--plain-spe", default="1,epoch", type=plain_spe, help="plain Keras steps_per_execution (epoch: all)"
    )
    p.add_argument("--no-hand-fused", dest="hand_fused", action="store_false", help="leave out the hand-fused row")
    p.add_argument("--log-compiles", action="store_true", help="JAX_LOG_COMPILES=1 in dynarch runs: each compile")
    p.add_argument("--deadline-s", type=float, default=0, help="start no run after this many seconds (0: none)")
    p.add_argument("--seed", type=argtypes.at_least(0), default=42)
    p.add_argument("--out", type=argtypes.out_dir, default=HERE, help="where results.md and results.json go")
    p.add_argument("--label", default=None, help="device label on the page (default: from JAX)")
    p.add_argument("--tiny", action="store_true", help="2,000 samples, 1 epoch, 1 repeat, MLP (a smoke test)")
    args = p.parse_args()
    if args.tiny:
        args.train_size, args.epochs, args.repeats, args.models, args.batches = 2000, 1, 1, "mlp", "256"
    problem = bad_args(args)
    if problem:
        print(f"error: {problem}\n  fix: see python experiments/gpu/bench_gpu.py --help", file=sys.stderr)
        sys.exit(2)
    try:
        run_bench(args)
    except Exception as e:  # noqa: BLE001 — a dynarch error (bad data folder, ...) is one message, not a traceback
        if type(e).__module__.startswith("dynarch"):
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        raise


def plain_spe(text: str) -> str:
    """--plain-spe: comma-separated integers > 0 or `epoch` (empty: no plain Keras rows), checked."""
    for part in filter(None, (p.strip() for p in text.split(","))):
        if part != "epoch":
            try:
                argtypes.at_least(1)(part)
            except argparse.ArgumentTypeError:
                raise argparse.ArgumentTypeError(f"{part!r}: an integer > 0 or epoch") from None
    return text


def bad_args(args) -> str | None:
    """What is wrong with the arguments, before anything is generated, trained or written (None: fine)."""
    models = {p.stem for p in (ROOT / "conf" / "model").glob("*.yaml")}
    checks = [
        (
            set(args.loops.split(",")) <= {"keras", "fused", "auto", "", *VARIANTS},
            f"--loops {args.loops}: keras, fused, auto or one of {', '.join(VARIANTS)}",
        ),
        (set(args.models.split(",")) <= models, f"--models {args.models}: one of {', '.join(sorted(models))}"),
        (args.data is None or args.data.is_dir(), f"--data {args.data}: not a folder of IDX files"),
    ]
    return next((why for ok, why in checks if not ok), None)


def run_bench(args) -> None:
    work = Path(tempfile.mkdtemp(prefix="dynarch-gpu-bench-"))
    try:
        _run_bench(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # generated data and child run dirs


def _run_bench(args, work: Path) -> None:
    os.environ["KERAS_BACKEND"] = "jax"
    # This process (plain Keras, hand-fused) and each dynarch child share the GPU: none may take 75% of it.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    sys.path.insert(0, str(ROOT))
    install_guard(str(work / "guard-main.log"))
    started = time.monotonic()
    data_note = f"IDX files in {args.data}"
    if args.data is None:
        args.data = work / "idx"
        data_note = write_idx(args.data, args.train_size, args.seed)
    import jax
    import keras

    page = {
        "device": args.label or describe_device(jax),
        "data": data_note,
        "command": " ".join(sys.argv),
        "versions": {"python": platform.python_version(), "jax": jax.__version__, "keras": keras.__version__},
        "args": {k: str(v) for k, v in vars(args).items()},
        "cut_at_deadline": False,
    }
    arrays = load_arrays(args)
    rows = configs(args)
    cells = [(m, int(b)) for m in args.models.split(",") for b in args.batches.split(",")]
    results = {f"{m}-b{b}": {f"{k}:{v}": [] for k, v in rows} for m, b in cells}
    for r in range(args.repeats):
        order = rows[r % len(rows) :] + rows[: r % len(rows)]  # rotate: no configuration always goes first
        for model, batch in cells:
            for kind, variant in order:
                if args.deadline_s and time.monotonic() - started > args.deadline_s:
                    page["cut_at_deadline"] = True
                    break
                res = run_one(args, kind, variant, model, batch, arrays, work)
                results[f"{model}-b{batch}"][f"{kind}:{variant}"].append(res)
                print(f"repeat {r} {model} b{batch} {label(kind, variant)}: " + short(res), flush=True)
                save(page, results, rows, work, args)
    save(page, results, rows, work, args)
    print(f"wrote {args.out / 'results.md'}")


def run_one(args, kind: str, variant: str, model: str, batch: int, arrays, work: Path) -> dict:
    try:
        if kind == "plain":
            return run_plain(args, model, batch, arrays, variant.removeprefix("spe="))
        if kind == "hand":
            return run_hand_fused(args, model, batch, arrays)
    except Exception as e:  # noqa: BLE001 — one failed row is reported on the page, the others still run
        return {"rc": 1, "error": f"{type(e).__name__}: {e}"[-600:]}
    cache = None
    if variant == "fused-warm":
        cache = work / f"cache-{model}-{batch}"
        if not cache.exists():  # one unrecorded run fills it: the recorded ones find every program compiled
            cache.mkdir()
            run_dynarch(args, model, batch, "fused", work, cache)
    return run_dynarch(args, model, batch, variant, work, cache)


def save(page: dict, results: dict, rows, work: Path, args) -> None:
    """results.json and results.md, atomically (a run cut short keeps every finished run)."""
    page = {
        **page,
        "tensorflow_in_this_process": "tensorflow" in sys.modules,
        "guard_this_process": read_guard(work / "guard-main.log"),
        "results": results,
        "summary": summarize(results),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in (
        ("results.json", json.dumps(page, indent=1, default=str) + "\n"),
        ("results.md", render(page)),
    ):
        tmp = args.out / f".{name}.tmp-{os.getpid()}"
        tmp.write_text(text)
        os.replace(tmp, args.out / name)


def describe_device(jax) -> str:
    d = jax.devices()[0]
    if d.platform == "cpu":
        return f"CPU ({os.cpu_count()} cores), JAX, not a GPU"
    return f"{getattr(d, 'device_kind', d.platform)} ({d.platform}), JAX"


def short(res: dict) -> str:
    if "error" in res:
        return f"FAILED rc={res['rc']}: {res['error'][:200]}"
    ttt = res["time_to_target_s"]
    return (
        f"{res['samples_per_s']:,.0f} samples/s, first epoch {res['first_epoch_s']:.2f}s, "
        f"to target {'-' if ttt is None else f'{ttt:.2f}s'}, test acc {res['test_accuracy']:.4f}, "
        f"wall {res.get('wall_s', 0):.1f}s, compile {res.get('compile_s')}"
    )


def med(xs: list) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def summarize(results: dict) -> dict:
    """Per cell and row: medians over repeats; per dynarch row, per-repeat ratios (same-repeat pairs share the
    machine's mood) against the best plain `fit` of that repeat and against the hand-fused loop, then medians."""
    out = {}
    for cell, by in results.items():
        s = {}
        for key, runs in by.items():
            ok = [r for r in runs if "error" not in r]
            ttts = [r["time_to_target_s"] for r in ok]
            s[key] = {
                "ok": len(ok),
                "runs": len(runs),
                "error": next((r["error"] for r in runs if "error" in r), None),
                "samples_per_s": med([r["samples_per_s"] for r in ok]),
                "time_to_target_s": med(ttts) if ok and None not in ttts else None,
                "first_epoch_s": med([r["first_epoch_s"] for r in ok]),
                "compile_s": med([r.get("compile_s") for r in ok]),
                "wall_s": med([r["wall_s"] for r in ok]),
                "test_accuracy": med([r["test_accuracy"] for r in ok]),
                "tensorflow_attempts": sum(len(r.get("tensorflow_attempts", [])) for r in runs),
                "probed_absent": sorted({m for r in runs for m in r.get("probed_absent", [])}),
            }
        plain = [k for k in by if k.startswith("plain:")]
        for key in [k for k in by if k.startswith("dynarch:")]:
            best_fit, vs_hand, ttt_hand = [], [], []
            for i, run in enumerate(by[key]):
                if "error" in run:
                    continue
                fits = [by[k][i]["samples_per_s"] for k in plain if i < len(by[k]) and "error" not in by[k][i]]
                if fits:
                    best_fit.append(run["samples_per_s"] / max(fits))
                hand = by.get("hand:scan", [])
                if i < len(hand) and "error" not in hand[i]:
                    vs_hand.append(run["samples_per_s"] / hand[i]["samples_per_s"])
                    if run["time_to_target_s"] and hand[i]["time_to_target_s"]:
                        ttt_hand.append(run["time_to_target_s"] / hand[i]["time_to_target_s"])
            s[key]["samples_per_s_vs_best_fit"] = med(best_fit)
            s[key]["samples_per_s_vs_hand_fused"] = med(vs_hand)
            s[key]["time_to_target_vs_hand_fused"] = med(ttt_hand)
        out[cell] = s
    return out


def fmt(x, spec=",.0f", none="–") -> str:
    return none if x is None else format(x, spec)


def render(page: dict) -> str:
    a = page["args"]
    lines = [
        "# GPU benchmark without TensorFlow: dynarch on JAX vs plain Keras on JAX vs a hand-fused JAX loop",
        "",
        f"**Device: {page['device']}.** Versions: " + ", ".join(f"{k} {v}" for k, v in page["versions"].items()) + ".",
        "",
        f"Command: `{page['command']}` (script: `experiments/gpu/bench_gpu.py`; its docstring says what each row is).",
        f"Data: {page['data']}. Batches {a['batches']}, {a['epochs']} epochs, {a['repeats']} repeats interleaved "
        f"(order rotated per repeat), seed {a['seed']}, target validation accuracy {a['target']}."
        + (" **Cut at --deadline-s: later repeats are missing.**" if page["cut_at_deadline"] else ""),
        "dynarch rows are whole `python -m dynarch backend=jax data=idx ...` processes (wall = the command); plain "
        "Keras and hand-fused rows run in the script's own process (wall = model build + training + evaluation, "
        "no imports).",
        "Samples/s: median over epochs 2.. of the training part of each epoch; time-to-target: training seconds up to "
        "the first epoch at the target (epoch 1's compilation included); values are medians over repeats; ratios are "
        "medians of same-repeat ratios. The validation split is 10% of the training set: with the generated data it "
        "holds shifted copies of training digits, so it is optimistic; test accuracy is on held-out digits.",
        "Issue #17's GPU targets: fused >= 5x the best Keras `fit` in samples/s (MLP, batch 128); time-to-target "
        "within 1.2x of the hand-fused loop, compilation included.",
        "",
    ]
    for cell, s in page["summary"].items():
        lines += [
            f"## {cell}",
            "",
            "| configuration | samples/s | first epoch s | compile s | time-to-target s | wall s | test acc | runs ok "
            "| TF import attempts |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for key, r in s.items():
            lines.append(
                f"| {label(*key.split(':', 1))} | {fmt(r['samples_per_s'])} | {fmt(r['first_epoch_s'], '.2f')} | "
                f"{fmt(r['compile_s'], '.2f')} | {fmt(r['time_to_target_s'], '.2f', 'not reached')} | "
                f"{fmt(r['wall_s'], '.1f')} | {fmt(r['test_accuracy'], '.4f')} | {r['ok']}/{r['runs']} | "
                f"{r['tensorflow_attempts']} |"
            )
        lines += [
            "",
            "| dynarch row | samples/s ÷ best plain fit | samples/s ÷ hand-fused | time-to-target ÷ hand-fused |",
            "|---|---:|---:|---:|",
        ]
        for key, r in s.items():
            if key.startswith("dynarch:"):
                lines.append(
                    f"| {label(*key.split(':', 1))} | {fmt(r['samples_per_s_vs_best_fit'], '.2f')} | "
                    f"{fmt(r['samples_per_s_vs_hand_fused'], '.2f')} | "
                    f"{fmt(r['time_to_target_vs_hand_fused'], '.2f')} |"
                )
        errors = [(k, r["error"]) for k, r in s.items() if r["error"]]
        lines += [""] + [f"- `{k}` failed: {e}" for k, e in errors] + ([""] if errors else [])
    probed = sorted(
        {m for s in page["summary"].values() for r in s.values() for m in r["probed_absent"]}
        | set(page["guard_this_process"]["probed_absent"])
    )
    tf_here = page["guard_this_process"]["tensorflow_attempts"]
    lines += [
        "## What it needed",
        "",
        f"- TensorFlow blocked in every process; attempts to import it: dynarch runs "
        f"{sum(r['tensorflow_attempts'] for s in page['summary'].values() for r in s.values())}, this process "
        f"{len(tf_here)}"
        + (f" (from {tf_here[0]['stack'][-3:]})" if tf_here else "")
        + f"; `tensorflow` in this process's modules: {page['tensorflow_in_this_process']}.",
        "- Every other package the GPU box lacks is refused the same way; the runs above succeeded without them. "
        f"Optional imports that were asked for and refused: {', '.join(probed) or 'none'}.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
