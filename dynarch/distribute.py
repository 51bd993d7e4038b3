"""Distribution strategies: one device, several devices of one machine (MirroredStrategy), or several
machines (MultiWorkerMirroredStrategy, configured by TF_CONFIG). `trainer.batch_size` is the global
batch: each of N replicas sees batch_size / N examples per step.

On a CPU-only machine `trainer.logical_cpus=N` splits the CPU into N logical devices, so that the
mirrored path runs (and is tested) exactly as on N GPUs.
"""
from __future__ import annotations

import json
import logging
import os

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


def tf_config() -> dict:
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except ValueError:
        raise ConfigError("TF_CONFIG", "the TF_CONFIG environment variable is not JSON",
                          expected='{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": 0}}',
                          received=raw[:200], fix="export a valid TF_CONFIG on every worker") from None


def is_chief() -> bool:
    """The one process that writes checkpoints and artifacts: the chief, or worker 0 when there is none."""
    cfg = tf_config()
    task = cfg.get("task", {})
    if not task:
        return True
    has_chief = "chief" in cfg.get("cluster", {})
    return task.get("type") == "chief" or (not has_chief and task.get("type") == "worker" and task.get("index") == 0)


def make_strategy(trainer: TrainerConfig):
    """The tf.distribute strategy for `trainer.strategy`; returns (strategy, a one-line description)."""
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    kind = trainer.strategy
    if kind == "auto":
        kind = "mirrored" if len(gpus) > 1 else "default"
    if kind == "default":
        return tf.distribute.get_strategy(), "default (one device)"
    if kind == "mirrored":
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        strategy = tf.distribute.MirroredStrategy(devices=devices)
        return strategy, f"mirrored over {strategy.num_replicas_in_sync} devices ({', '.join(devices)})"
    cfg = tf_config()
    if not cfg.get("cluster"):
        raise ConfigError("trainer.strategy", "multi_worker needs a cluster description in TF_CONFIG",
                          expected="TF_CONFIG with cluster.worker addresses and this task's type/index",
                          received="no TF_CONFIG", fix="export TF_CONFIG on each worker (see README, Scaling out)")
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    task = cfg.get("task", {})
    return strategy, (f"multi_worker: {task.get('type')} {task.get('index')} of "
                      f"{sum(len(v) for v in cfg['cluster'].values())} workers, "
                      f"{strategy.num_replicas_in_sync} replicas")
