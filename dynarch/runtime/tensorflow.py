"""TensorFlow runtime: devices, threads, distribution strategy, precision, seeds, op determinism.

`trainer.batch_size` is the global batch: each of N replicas sees batch_size / N examples per step.
On a CPU-only machine `trainer.logical_cpus=N` splits the CPU into N logical devices, so that the
mirrored path runs (and is tested) exactly as on N GPUs. Several machines: MultiWorkerMirroredStrategy
(`trainer.strategy=multi_worker`), its cluster from TF_CONFIG or from Slurm (SlurmClusterResolver); Keras'
`fit` cannot drive it (keras-team/keras#20585), so runtime/multiworker.py trains with a custom loop.
"""

from __future__ import annotations

import logging
import os
import platform
import re
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


def slurm_resolver() -> Any:
    """TensorFlow's SlurmClusterResolver for this srun step. On nodes without GPUs its default GPU split
    (nvidia-smi, then gpus_per_node // tasks_per_node) yields no tasks at all, so CPU nodes are described
    as one pseudo-GPU per task with CUDA_VISIBLE_DEVICES left alone."""
    resolver_class = tf.distribute.cluster_resolver.SlurmClusterResolver
    raw = os.environ.get("DYNARCH_SLURM_PORT", "8888").strip()  # the first port on each node (one per task)
    if not re.fullmatch(r"[0-9]{1,5}", raw) or not 1024 <= int(raw) <= 65000:
        from ..errors import ConfigError

        raise ConfigError(
            "DYNARCH_SLURM_PORT",
            "the first worker port on each node is not a usable port number",
            expected="an integer in [1024, 65000]",
            received=raw,
            fix="unset DYNARCH_SLURM_PORT (8888) or set it to a free port, e.g. DYNARCH_SLURM_PORT=29500",
        )
    port = int(raw)
    if tf.config.list_physical_devices("GPU"):
        return resolver_class(port_base=port)
    return resolver_class(port_base=port, gpus_per_node=1024, gpus_per_task=1, auto_set_gpu=False)


def multi_worker_strategy(trainer: TrainerConfig) -> tuple[Any, str]:
    """MultiWorkerMirroredStrategy over the cluster in TF_CONFIG, else Slurm's srun step. It must be created
    before TensorFlow runs any op (it configures collectives at start-up): configure() calls it first."""
    from ..cluster import require_cluster, task_from_env
    from ..errors import ConfigError

    task = task_from_env(multi_worker=True)  # validates TF_CONFIG / Slurm's variables (pure Python)
    require_cluster(task, trainer.batch_size)
    logging.getLogger("tensorflow").setLevel(logging.WARNING)  # one INFO line per all-reduce otherwise
    resolver = (
        tf.distribute.cluster_resolver.TFConfigClusterResolver() if task.source == "TF_CONFIG" else slurm_resolver()
    )
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
    except (RuntimeError, ValueError) as e:
        raise ConfigError(
            "trainer.strategy",
            f"MultiWorkerMirroredStrategy could not start ({e})",
            expected="a fresh process per worker, started before TensorFlow ran anything",
            received="multi_worker",
            fix="run each worker as its own `python -m dynarch` process (python -m dynarch.launch_local starts "
            "them), not inside another TensorFlow program or a sweep",
        ) from None
    replicas = strategy.num_replicas_in_sync
    if trainer.batch_size % replicas:
        raise ConfigError(
            "trainer.batch_size",
            f"the global batch {trainer.batch_size} does not split evenly over {replicas} replicas "
            f"({task.num_workers} workers)",
            expected=f"a multiple of {replicas}",
            received=trainer.batch_size,
            fix=f"set trainer.batch_size to a multiple of {replicas}",
        )
    if task.num_workers == 1:
        log.warning("multi_worker with a cluster of one worker: it runs, but on one machine `mirrored` is faster")
    text = (
        f"multi_worker over {task.num_workers} workers, {replicas} replicas "
        f"(this is {task.type} {task.index}, from {task.source})"
    )
    return strategy, text


def make_strategy(trainer: TrainerConfig) -> tuple[Any, str]:
    """The tf.distribute strategy for `trainer.strategy` and a one-line description."""
    # Physical, not logical, devices: listing logical ones starts the runtime too early.
    kind = trainer.strategy
    if kind == "auto":
        kind = "mirrored" if len(tf.config.list_physical_devices("GPU")) > 1 else "default"
    if kind == "multi_worker":
        return multi_worker_strategy(trainer)
    if kind == "mirrored":
        devices = [d.name for d in tf.config.list_logical_devices("GPU")] or [
            d.name for d in tf.config.list_logical_devices("CPU")
        ]
        strategy = tf.distribute.MirroredStrategy(devices=devices)
        return strategy, f"mirrored over {strategy.num_replicas_in_sync} devices ({', '.join(devices)})"
    return tf.distribute.get_strategy(), "default (one device)"


class TensorFlowRuntime:
    name = "tensorflow"
    jobs = 0  # jobs configured in this process

    def __init__(self) -> None:
        self._strategy, self._strategy_text = None, "default (one device)"
        self._chief = True

    @property
    def strategy(self) -> Any:
        """The tf.distribute strategy configure() made (the multi-worker stepper runs under it)."""
        return self._strategy or tf.distribute.get_strategy()

    def configure(self, trainer: TrainerConfig, seed: int, forward_flops: int | None = None) -> None:
        configure_devices(trainer)  # before anything initializes the TF runtime (MWMS too: it runs no op)
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
        self._strategy, self._strategy_text = make_strategy(trainer)  # before any op: MWMS needs that
        if trainer.strategy == "multi_worker":
            from ..cluster import task_from_env

            self._chief = task_from_env(multi_worker=True).is_chief
        # Several jobs in one process (sweeps) must not share graph state. The first job has nothing to
        # collect: skip its garbage collection (0.2-0.6 s measured, experiments/throughput/fixed_costs.md).
        keras.backend.clear_session(free_memory=TensorFlowRuntime.jobs > 0)
        TensorFlowRuntime.jobs += 1
        keras.mixed_precision.set_global_policy(trainer.precision)  # after clear_session, which resets it
        self.reseed(seed)
        if trainer.deterministic:
            tf.config.experimental.enable_op_determinism()

    def reseed(self, seed: int) -> None:
        keras.utils.set_random_seed(seed)

    def scope(self) -> ContextManager[Any]:
        return (self._strategy or tf.distribute.get_strategy()).scope()

    def replicas(self) -> int:
        """Devices the strategy trains on (MirroredStrategy: several; one otherwise)."""
        return (self._strategy or tf.distribute.get_strategy()).num_replicas_in_sync

    def strategy_text(self) -> str:
        return self._strategy_text

    def device_report(self) -> str:
        gpus = tf.config.list_logical_devices("GPU")
        if gpus:
            return f"{len(gpus)} GPU ({', '.join(g.name for g in gpus)})"
        return f"CPU only ({platform.processor() or platform.machine()})"

    def is_chief(self) -> bool:
        return self._chief  # one machine: always; multi_worker: the chief, or worker 0 without one

    def steps_per_execution(self, requested: int) -> int:
        strategy = self._strategy or tf.distribute.get_strategy()
        if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            return requested  # fit never runs it: the custom loop (runtime/multiworker.py) loops K steps itself
        replicas = strategy.num_replicas_in_sync
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
