"""TensorFlow runtime: devices, threads, distribution strategy, precision, seeds, op determinism.

`trainer.batch_size` is the global batch: each of N replicas sees batch_size / N examples per step.
On a CPU-only machine `trainer.logical_cpus=N` splits the CPU into N logical devices, so that the
mirrored path runs (and is tested) exactly as on N GPUs. Several machines (MultiWorkerMirroredStrategy)
are refused at config validation: Keras 3's fit cannot run it (keras-team/keras#20585).
"""

from __future__ import annotations

import logging
import platform
from typing import Any, ContextManager

import keras
import tensorflow as tf

from ..config import TrainerConfig

log = logging.getLogger(__name__)
SMALL_MODEL_FLOPS = 1_000_000  # forward FLOPs/sample below which a step is overhead-bound on CPU


def intra_op_threads(trainer: TrainerConfig, forward_flops: int | None, has_gpu: bool) -> int:
    """Threads for one op. `auto`: 1 for small models on CPU — measured ~1.3x faster on the MLP with
    2 cores, since tiny matmuls gain nothing from splitting and the input pipeline gets a core —
    else 0 (TensorFlow's default: all cores), which the compute-bound CNN needs."""
    if trainer.intra_op_threads != "auto":
        return int(trainer.intra_op_threads)
    small = forward_flops is not None and forward_flops < SMALL_MODEL_FLOPS
    return 1 if small and not has_gpu else 0


def configure_devices(trainer: TrainerConfig) -> None:
    """Split the CPU into logical devices; must run before TensorFlow initializes its runtime."""
    if trainer.logical_cpus < 2:
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * trainer.logical_cpus)
    except RuntimeError:  # already initialized (a later job in the same process): keep what it has
        log.warning("logical CPU devices stay at %d for this process", len(tf.config.list_logical_devices("CPU")))


def make_strategy(trainer: TrainerConfig) -> tuple[Any, str]:
    """The tf.distribute strategy for `trainer.strategy` and a one-line description."""
    # Physical, not logical, devices: listing logical ones starts the runtime too early.
    kind = trainer.strategy
    if kind == "auto":
        kind = "mirrored" if len(tf.config.list_physical_devices("GPU")) > 1 else "default"
    if kind == "multi_worker":  # refused at config validation too; never silently fall back to one device
        from ..errors import ConfigError

        raise ConfigError(
            "trainer.strategy",
            "multi_worker is not supported by Keras 3's fit in this version",
            expected="default or mirrored",
            received="multi_worker",
            fix="use mirrored on each machine, or spread a sweep over machines with "
            "hydra/launcher=slurm (keras-team/keras#20585 tracks multi-worker fit)",
        )
    if kind == "mirrored":
        devices = [d.name for d in tf.config.list_logical_devices("GPU")] or [
            d.name for d in tf.config.list_logical_devices("CPU")
        ]
        strategy = tf.distribute.MirroredStrategy(devices=devices)
        return strategy, f"mirrored over {strategy.num_replicas_in_sync} devices ({', '.join(devices)})"
    return tf.distribute.get_strategy(), "default (one device)"


class TensorFlowRuntime:
    name = "tensorflow"

    def __init__(self) -> None:
        self._strategy, self._strategy_text = None, "default (one device)"

    def configure(self, trainer: TrainerConfig, seed: int, forward_flops: int | None = None) -> None:
        configure_devices(trainer)  # before anything initializes the TF runtime
        threads = intra_op_threads(trainer, forward_flops, bool(tf.config.list_physical_devices("GPU")))
        if threads != tf.config.threading.get_intra_op_parallelism_threads():
            try:
                tf.config.threading.set_intra_op_parallelism_threads(threads)
            except RuntimeError:  # TF fixes its thread pools at first use: later jobs in a process keep them
                log.warning(
                    "intra-op threads stay at %d for this process (asked for %d): TensorFlow is already initialized",
                    tf.config.threading.get_intra_op_parallelism_threads(),
                    threads,
                )
        self._strategy, self._strategy_text = make_strategy(trainer)
        keras.backend.clear_session()  # several jobs in one process (sweeps) must not share graph state
        keras.mixed_precision.set_global_policy(trainer.precision)  # after clear_session, which resets it
        self.reseed(seed)
        if trainer.deterministic:
            tf.config.experimental.enable_op_determinism()

    def reseed(self, seed: int) -> None:
        keras.utils.set_random_seed(seed)

    def scope(self) -> ContextManager[Any]:
        return (self._strategy or tf.distribute.get_strategy()).scope()

    def strategy_text(self) -> str:
        return self._strategy_text

    def device_report(self) -> str:
        gpus = tf.config.list_logical_devices("GPU")
        if gpus:
            return f"{len(gpus)} GPU ({', '.join(g.name for g in gpus)})"
        return f"CPU only ({platform.processor() or platform.machine()})"

    def is_chief(self) -> bool:
        return True  # one machine; a multi-worker runtime decides from its cluster resolver

    def steps_per_execution(self, requested: int) -> int:
        replicas = (self._strategy or tf.distribute.get_strategy()).num_replicas_in_sync
        if requested > 1 and replicas > 1:
            # Keras 3.15 on TF 2.21 fails with "You must feed a value for placeholder tensor 'while/cond/...'"
            # when several steps run per call under a multi-replica strategy (keras-team/keras#19246).
            log.warning(
                "steps_per_execution=%d is not supported with several replicas in this Keras version "
                "(keras-team/keras#19246): using 1",
                requested,
            )
            return 1
        return requested

    def physical_devices(self) -> list[str]:
        """Lists devices without initializing the runtime (where TensorFlow probes for CUDA)."""
        return [d.name for d in tf.config.list_physical_devices()]

    def versions(self) -> dict[str, str]:
        return {"tensorflow": tf.__version__, "keras": keras.__version__}
