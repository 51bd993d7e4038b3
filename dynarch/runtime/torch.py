"""PyTorch runtime: device, threads, precision, seeds, determinism, device report — no TensorFlow anywhere.

One device: the one Keras' torch backend picked when it was imported (KERAS_TORCH_DEVICE, else cuda, mps,
cpu). Several devices (`trainer.strategy=mirrored`, `trainer.logical_cpus`) are refused: Keras 3 has no
data-parallel distribution for torch. `steps_per_execution` is always 1: Keras' torch trainer raises
otherwise. Determinism: `torch.use_deterministic_algorithms(True, warn_only=True)` (ops without a
deterministic kernel warn rather than stop a run), cuDNN benchmarking off, and CUBLAS_WORKSPACE_CONFIG set
before CUDA starts (cuBLAS needs it for deterministic matmuls).
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
from typing import Any, ContextManager

import keras
import torch

from ..config import TrainerConfig
from ..errors import ConfigError
from .backend import auto_intra_op_threads, seed_without_tensorflow

log = logging.getLogger(__name__)
CUBLAS_DETERMINISTIC = ":4096:8"  # PyTorch's reproducibility notes: needed by cuBLAS >= 10.2
DEFAULT_THREADS = torch.get_num_threads()  # torch's own choice (the cores), before any job changed it


def _check_trainer(trainer: TrainerConfig) -> None:
    if trainer.strategy in ("mirrored", "multi_worker") or trainer.logical_cpus >= 2:
        key = "trainer.logical_cpus" if trainer.logical_cpus >= 2 else "trainer.strategy"
        raise ConfigError(
            key,
            "several devices are not supported on the PyTorch backend (Keras 3 has no torch DataParallel)",
            expected="trainer.strategy=auto|default and trainer.logical_cpus=0 with backend=torch",
            received=f"strategy={trainer.strategy}, logical_cpus={trainer.logical_cpus}",
            fix="drop the setting, or use backend=jax (keras.distribution.DataParallel) or "
            "backend=tensorflow (MirroredStrategy) for several devices",
        )


def _device() -> str:
    from keras.src.backend.torch.core import get_device

    return str(get_device())


class TorchRuntime:
    name = "torch"

    def __init__(self) -> None:
        self._deterministic = True

    def configure(self, trainer: TrainerConfig, seed: int, forward_flops: int | None = None) -> None:
        _check_trainer(trainer)
        self._deterministic = trainer.deterministic
        if trainer.deterministic:
            # Read by cuBLAS when CUDA initializes; harmless on CPU and once CUDA has started (then unchanged).
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_DETERMINISTIC)
        threads = auto_intra_op_threads(trainer, forward_flops, _device() != "cpu") or DEFAULT_THREADS
        if threads != torch.get_num_threads():  # torch may change it at any time (unlike TF's and XLA's pools):
            torch.set_num_threads(threads)  # each job of a sweep gets its own, not the previous job's
        keras.backend.clear_session()  # several jobs in one process (sweeps) must not share state
        keras.mixed_precision.set_global_policy(trainer.precision)  # after clear_session, which resets it
        torch.use_deterministic_algorithms(trainer.deterministic, warn_only=True)
        torch.backends.cudnn.benchmark = not trainer.deterministic
        torch.backends.cudnn.deterministic = trainer.deterministic
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        seed_without_tensorflow(seed)  # Python, NumPy, Keras (and torch) RNGs; TensorFlow stays unloaded

    def scope(self) -> ContextManager[Any]:
        return contextlib.nullcontext()  # variables are created on Keras' torch device

    def strategy_text(self) -> str:
        return "default (one device)"

    def device_report(self) -> str:
        device = _device()
        if device.startswith("cuda"):
            n = torch.cuda.device_count()
            names = ", ".join(sorted({torch.cuda.get_device_name(i) for i in range(n)}))
            return f"{n} CUDA ({names}); training on {device}"
        if device.startswith("mps"):
            return f"Apple MPS ({platform.machine()}); training on mps"
        return f"CPU only ({platform.processor() or platform.machine()}), {torch.get_num_threads()} threads"

    def is_chief(self) -> bool:
        return True

    def steps_per_execution(self, requested: int) -> int:
        if requested > 1:  # the default is 64: say it once per phase at info level, not as a warning
            log.info("steps_per_execution=%d -> 1 on the PyTorch backend (Keras' torch trainer needs 1)", requested)
        return 1

    def physical_devices(self) -> list[str]:
        devices = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        if torch.backends.mps.is_available():
            devices.append("mps")
        return [*devices, "cpu"]

    def versions(self) -> dict[str, str]:
        return {"torch": torch.__version__, "keras": keras.__version__}
