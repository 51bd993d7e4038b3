"""JAX runtime: devices, precision, seeds, determinism, device report — no TensorFlow anywhere.

One device (the first of `jax.devices()`): `trainer.strategy=mirrored` and `trainer.logical_cpus` are
refused here until the DataParallel path exists (issue #14). Determinism: XLA on CPU runs the same ops in
the same order on every run; on GPU `--xla_gpu_deterministic_ops=true` is added to XLA_FLAGS when
`trainer.deterministic` and JAX has not started its backend yet (XLA reads the flags once).
Threads: XLA's CPU thread pool is fixed when JAX starts, so `trainer.intra_op_threads` is not applied.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
from typing import Any, ContextManager

import keras

from ..config import TrainerConfig
from ..errors import ConfigError

log = logging.getLogger(__name__)
DETERMINISTIC_GPU_FLAG = "--xla_gpu_deterministic_ops=true"


def _backend_started() -> bool:
    """Whether JAX has created its device clients (after which XLA_FLAGS are no longer read)."""
    try:
        from jax._src import xla_bridge

        return bool(getattr(xla_bridge, "_backends", {}))
    except ImportError:  # a JAX without this private module: assume started, change nothing
        return True


def _check_trainer(trainer: TrainerConfig) -> None:
    if trainer.strategy == "mirrored" or trainer.logical_cpus >= 2:
        key = "trainer.strategy" if trainer.strategy == "mirrored" else "trainer.logical_cpus"
        raise ConfigError(
            key,
            "several devices are not supported on the JAX backend yet",
            expected="trainer.strategy=auto|default and trainer.logical_cpus=0 with backend=jax",
            received=f"strategy={trainer.strategy}, logical_cpus={trainer.logical_cpus}",
            fix="drop the setting, or use backend=tensorflow for mirrored training (JAX's "
            "DataParallel is tracked in issue #14)",
        )


class JaxRuntime:
    name = "jax"

    def configure(self, trainer: TrainerConfig, seed: int, forward_flops: int | None = None) -> None:
        _check_trainer(trainer)
        if trainer.deterministic and not _backend_started():
            flags = os.environ.get("XLA_FLAGS", "")
            if DETERMINISTIC_GPU_FLAG not in flags:  # harmless on CPU; must precede JAX's first device use
                os.environ["XLA_FLAGS"] = f"{flags} {DETERMINISTIC_GPU_FLAG}".strip()
        if trainer.intra_op_threads not in ("auto", 0):
            log.warning(
                "trainer.intra_op_threads=%s is not applied on the JAX backend (XLA fixes its CPU thread "
                "pool at start-up)",
                trainer.intra_op_threads,
            )
        keras.backend.clear_session()  # several jobs in one process (sweeps) must not share state
        keras.mixed_precision.set_global_policy(trainer.precision)  # after clear_session, which resets it
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        keras.utils.set_random_seed(seed)  # Python, NumPy and Keras' global SeedGenerator

    def scope(self) -> ContextManager[Any]:
        return contextlib.nullcontext()  # variables live on JAX's default device

    def strategy_text(self) -> str:
        return "default (one device)"

    def device_report(self) -> str:
        import jax

        devices = jax.devices()
        if devices and devices[0].platform != "cpu":
            kinds = ", ".join(sorted({d.device_kind for d in devices}))
            return f"{len(devices)} {devices[0].platform.upper()} ({kinds}); training on {devices[0]}"
        return f"CPU only ({platform.processor() or platform.machine()})"

    def is_chief(self) -> bool:
        return True

    def steps_per_execution(self, requested: int) -> int:
        return requested

    def physical_devices(self) -> list[str]:
        import jax

        return [str(d) for d in jax.devices()]

    def versions(self) -> dict[str, str]:
        import jax
        import jaxlib

        return {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "keras": keras.__version__}
