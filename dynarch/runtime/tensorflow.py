"""Distribution strategies: one device, or several devices of one machine (MirroredStrategy).
`trainer.batch_size` is the global batch: each of N replicas sees batch_size / N examples per step.
Several machines (MultiWorkerMirroredStrategy) are refused: Keras 3's fit cannot run it (see below).

On a CPU-only machine `trainer.logical_cpus=N` splits the CPU into N logical devices, so that the
mirrored path runs (and is tested) exactly as on N GPUs.
"""
from __future__ import annotations

import logging

from .config import TrainerConfig
from .errors import ConfigError

log = logging.getLogger(__name__)


def configure_devices(trainer: TrainerConfig) -> None:
    """Split the CPU into logical devices; must run before TensorFlow initializes its runtime."""
    import tensorflow as tf

    if trainer.logical_cpus < 2:
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * trainer.logical_cpus)
    except RuntimeError:  # already initialized (a later job in the same process): keep what it has
        log.warning("logical CPU devices stay at %d for this process", len(tf.config.list_logical_devices("CPU")))


def make_strategy(trainer: TrainerConfig):
    """The tf.distribute strategy for `trainer.strategy`; returns (strategy, a one-line description)."""
    import tensorflow as tf

    # Physical, not logical, devices: listing logical ones starts the runtime, after which a
    # multi-worker strategy can no longer configure its collective ops.
    kind = trainer.strategy
    if kind == "auto":
        kind = "mirrored" if len(tf.config.list_physical_devices("GPU")) > 1 else "default"
    if kind == "default":
        return tf.distribute.get_strategy(), "default (one device)"
    if kind == "mirrored":
        devices = ([d.name for d in tf.config.list_logical_devices("GPU")]
                   or [d.name for d in tf.config.list_logical_devices("CPU")])
        strategy = tf.distribute.MirroredStrategy(devices=devices)
        return strategy, f"mirrored over {strategy.num_replicas_in_sync} devices ({', '.join(devices)})"
    # multi_worker: Keras 3 `fit` cannot consume a MultiWorkerMirroredStrategy's per-replica batches
    # ("Attempt to convert a value (PerReplica...)", keras-team/keras#20585, tensorflow#72388; seen here
    # with Keras 3.15 / TF 2.21). Refuse it up front instead of failing in the first step.
    raise ConfigError("trainer.strategy", "multi_worker is not supported by Keras 3's fit in this version",
                      expected="default or mirrored", received="multi_worker",
                      fix="use mirrored on each machine, or spread a sweep over machines with "
                          "hydra/launcher=slurm (keras-team/keras#20585 tracks multi-worker fit)")
