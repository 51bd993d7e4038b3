"""JAX runtime: devices, data parallelism, precision, seeds, determinism, compile cache — no TensorFlow.

Several devices: `trainer.strategy=mirrored` (and `auto` when JAX sees more than one accelerator) sets
`keras.distribution.DataParallel` over `jax.devices()` for the whole process: variables are replicated,
each batch is split along its first axis, and `trainer.batch_size` is the GLOBAL batch (as under
TensorFlow's MirroredStrategy) — it must divide by the device count. Keras cannot split a batch whose size
does not divide (jax raises IndivisibleError), so the final partial batch of a split must divide too:
`check_batches` says so before training. `trainer.logical_cpus=N` splits the host CPU into N XLA devices
(XLA_FLAGS=--xla_force_host_platform_device_count=N), which XLA reads once, when JAX starts its backend.

Determinism: XLA on CPU runs the same ops in the same order on every run; on GPU
`--xla_gpu_deterministic_ops=true` is added to XLA_FLAGS when `trainer.deterministic` and JAX has not
started its backend yet. Threads: XLA's CPU thread pool is fixed when JAX starts (intra_op_threads unused).
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import re
from pathlib import Path
from typing import Any, ContextManager

import keras

from ..config import TrainerConfig
from ..errors import ConfigError, DataError
from .backend import seed_without_tensorflow

log = logging.getLogger(__name__)


class _DropStartupInfo(logging.Filter):
    """JAX probes every platform it knows when it starts and logs each it cannot load at INFO, e.g.
    "Unable to initialize backend 'tpu': INTERNAL: Failed to open libtpu.so" on every CPU or GPU run, and
    "Resetting cache at <empty>." when dynarch points the compile cache at the run: Hydra's INFO log level put
    those lines into every JAX run's stderr. Warnings (a GPU present without a CUDA jaxlib) are kept; the device
    line dynarch logs says what is used."""

    PREFIXES = ("Unable to initialize backend", "Resetting cache at")

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno <= logging.INFO and str(record.msg).startswith(self.PREFIXES))


for _name in ("jax._src.xla_bridge", "jax._src.compilation_cache"):
    logging.getLogger(_name).addFilter(_DropStartupInfo())
DETERMINISTIC_GPU_FLAG = "--xla_gpu_deterministic_ops=true"
HOST_DEVICES_FLAG = "--xla_force_host_platform_device_count"
# jax/_src/dispatch.py BACKEND_COMPILE_EVENT: wraps compiler.compile_or_get_cached (an XLA compile, or a
# persistent-cache read on a hit); jax/_src/compiler.py records the cache-hit event.
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"
CACHE_MISS_EVENT = "/jax/compilation_cache/cache_misses"  # jax/_src/compilation_cache.py: looked up, not found
_COMPILE = {"seconds": 0.0, "compiles": 0, "cache_hits": 0, "cache_misses": 0, "listening": False}


def _backend_started() -> bool:
    """Whether JAX has created its device clients (after which XLA_FLAGS are no longer read)."""
    try:
        from jax._src import xla_bridge

        return bool(getattr(xla_bridge, "_backends", {}))
    except ImportError:  # a JAX without this private module: assume started, change nothing
        return True


def _add_xla_flag(flag: str, value: str | None = None) -> None:
    """Set `flag` (=value) in XLA_FLAGS, replacing an earlier value of the same flag."""
    flags = re.sub(rf"\s*{re.escape(flag)}(=\S*)?", "", os.environ.get("XLA_FLAGS", ""))
    os.environ["XLA_FLAGS"] = f"{flags} {flag if value is None else f'{flag}={value}'}".strip()


def _split_host(n: int) -> None:
    """N XLA CPU devices: set before JAX starts its backend; afterwards only a matching count is accepted."""
    import jax

    if not _backend_started():
        _add_xla_flag(HOST_DEVICES_FLAG, str(n))
        return
    have = len(jax.devices("cpu"))
    if have != n:
        raise ConfigError(
            "trainer.logical_cpus",
            f"JAX already started in this process with {have} CPU device(s); XLA reads the device count once",
            expected=f"logical_cpus={have} in this process, or a fresh process",
            received=n,
            fix=f"run with trainer.logical_cpus={n} in its own process (not in one sweep with other counts), or "
            f"set XLA_FLAGS={HOST_DEVICES_FLAG}={n} before starting Python",
        )


def _check_trainer(trainer: TrainerConfig) -> None:
    if trainer.strategy == "multi_worker":
        raise ConfigError(
            "trainer.strategy",
            "multi_worker is not supported on the JAX backend",
            expected="auto, default or mirrored with backend=jax",
            received="multi_worker",
            fix="use trainer.strategy=mirrored (all devices of this machine), or backend=tensorflow",
        )


def _distribution(trainer: TrainerConfig) -> tuple[Any, str]:
    """keras.distribution.DataParallel over every JAX device, or None (one device), and a description."""
    import jax

    devices = jax.devices()
    accelerators = [d for d in devices if d.platform != "cpu"]
    wanted = trainer.strategy == "mirrored" or (trainer.strategy == "auto" and len(accelerators) > 1)
    if not wanted or len(devices) < 2:
        if trainer.strategy == "mirrored":
            log.warning("trainer.strategy=mirrored with one JAX device (%s): training on it alone", devices[0])
        return None, "default (one device)"
    if trainer.batch_size % len(devices):
        lower = trainer.batch_size - trainer.batch_size % len(devices)
        raise ConfigError(
            "trainer.batch_size",
            f"the global batch is split evenly over {len(devices)} devices (keras.distribution.DataParallel)",
            expected=f"a multiple of {len(devices)}",
            received=trainer.batch_size,
            fix=f"set trainer.batch_size={lower or len(devices)} or {lower + len(devices)}",
        )
    names = ", ".join(str(d) for d in devices)
    return keras.distribution.DataParallel(devices=devices), f"data parallel over {len(devices)} devices ({names})"


def _listen_to_compiles() -> None:
    """Sum XLA compile time and count persistent-cache hits in this process (listeners stay registered)."""
    if _COMPILE["listening"]:
        return
    import jax

    def on_duration(event: str, seconds: float, **kwargs: Any) -> None:
        if event == COMPILE_EVENT:
            _COMPILE["seconds"] += seconds
            _COMPILE["compiles"] += 1

    def on_event(event: str, **kwargs: Any) -> None:
        if event in (CACHE_HIT_EVENT, CACHE_MISS_EVENT):
            _COMPILE["cache_hits" if event == CACHE_HIT_EVENT else "cache_misses"] += 1

    jax.monitoring.register_event_duration_secs_listener(on_duration)
    jax.monitoring.register_event_listener(on_event)
    _COMPILE["listening"] = True


class JaxRuntime:
    name = "jax"

    def __init__(self) -> None:
        self._distribution, self._strategy_text = None, "default (one device)"
        _listen_to_compiles()  # before the first compile, so compile_seconds() sees all of them

    def configure(self, trainer: TrainerConfig, seed: int, forward_flops: int | None = None) -> None:
        _check_trainer(trainer)
        if trainer.logical_cpus >= 2:
            _split_host(trainer.logical_cpus)
        if trainer.deterministic and not _backend_started():
            if DETERMINISTIC_GPU_FLAG not in os.environ.get("XLA_FLAGS", ""):  # harmless on CPU
                _add_xla_flag(DETERMINISTIC_GPU_FLAG)
        if trainer.intra_op_threads not in ("auto", 0):
            log.warning(
                "trainer.intra_op_threads=%s is not applied on the JAX backend (XLA fixes its CPU thread "
                "pool at start-up)",
                trainer.intra_op_threads,
            )
        self._distribution, self._strategy_text = _distribution(trainer)
        keras.backend.clear_session()  # several jobs in one process (sweeps) must not share state
        # Process-wide (fit, evaluate and variable creation all read it); None for one device, so a later
        # job of a sweep never inherits an earlier job's distribution.
        keras.distribution.set_distribution(self._distribution)
        keras.mixed_precision.set_global_policy(trainer.precision)  # after clear_session, which resets it
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        seed_without_tensorflow(seed)  # Python, NumPy, Keras (and torch) RNGs; TensorFlow stays unloaded

    def scope(self) -> ContextManager[Any]:
        # The distribution is set process-wide in configure: variables created anywhere get its layout.
        return self._distribution.scope() if self._distribution is not None else contextlib.nullcontext()

    def strategy_text(self) -> str:
        return self._strategy_text

    def batch_multiple(self) -> int:
        """Every batch's size must be a multiple of this (the data-parallel device count; 1 on one device)."""
        return len(self._distribution.device_mesh.devices.flat) if self._distribution is not None else 1

    def check_batches(self, sizes: dict[str, int], batch_size: int) -> None:
        """Refuse splits whose final partial batch cannot be split over the devices (Keras would stop with
        jax's IndivisibleError at the end of the first epoch). `sizes`: split name -> number of examples."""
        n = self.batch_multiple()
        for split, size in sizes.items():
            tail = size % batch_size
            if n > 1 and size and tail % n:
                raise DataError(
                    f"data ({split} split)",
                    f"its last batch has {tail} examples, which cannot be split evenly over {n} devices",
                    expected=f"{split} size % trainer.batch_size to be a multiple of {n}",
                    received=f"{size} examples, batch_size {batch_size}",
                    fix=f"change data.limit_train / data.limit_test (or the validation fraction) by up to {n - 1} "
                    f"examples, or pick a trainer.batch_size (a multiple of {n}) that divides {size}",
                )

    def device_report(self) -> str:
        import jax

        devices = jax.devices()
        where = "" if self._distribution is not None else f"; training on {devices[0]}"
        if devices and devices[0].platform != "cpu":
            kinds = ", ".join(sorted({d.device_kind for d in devices}))
            return f"{len(devices)} {devices[0].platform.upper()} ({kinds}){where}"
        cpu = f"CPU only ({platform.processor() or platform.machine()})"
        return f"{cpu}, {len(devices)} XLA host devices{where}" if len(devices) > 1 else cpu

    def is_chief(self) -> bool:
        return True

    def steps_per_execution(self, requested: int) -> int:
        return requested

    def device_platform(self) -> tuple[str, int]:
        """(platform of the first device: cpu | gpu | tpu ..., number of devices)."""
        import jax

        devices = jax.devices()
        return devices[0].platform, len(devices)

    def physical_devices(self) -> list[str]:
        import jax

        return [str(d) for d in jax.devices()]

    def versions(self) -> dict[str, str]:
        import jax
        import jaxlib

        return {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "keras": keras.__version__}

    # -- compilation ------------------------------------------------------------------------------------
    @staticmethod
    def enable_compile_cache(path: Path) -> None:
        """Keep XLA executables in `path` across processes (JAX's persistent compilation cache). Every
        compile is cached, however small or fast: dynarch's models compile in well under JAX's 1 s default
        threshold, and a sweep recompiles the same step functions in every job."""
        import jax

        _listen_to_compiles()
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        if jax.config.jax_compilation_cache_dir == str(path):
            return
        jax.config.update("jax_compilation_cache_dir", str(path))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)  # no size floor, no override
        try:  # JAX opens the cache once, at the first compile: a new directory needs a reset (private API)
            from jax._src import compilation_cache

            compilation_cache.reset_cache()
        except (ImportError, AttributeError):
            log.warning("could not reset JAX's compilation cache: %s may apply from the next process on", path)

    @staticmethod
    def compile_seconds() -> float:
        """Seconds spent in XLA compilation (or reading compiled code from the persistent cache) so far in
        this process — the sum of JAX's backend-compile duration events since the first JaxRuntime (or
        enable_compile_cache call) of the process registered the listener."""
        _listen_to_compiles()
        return _COMPILE["seconds"]

    @staticmethod
    def compile_stats() -> dict[str, float]:
        """compile_seconds, the number of XLA compiles (cache reads included), persistent-cache hits and
        misses so far in this process."""
        _listen_to_compiles()
        return {k: v for k, v in _COMPILE.items() if k != "listening"}
