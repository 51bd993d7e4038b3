"""Which process of a multi-worker job this is, from TF_CONFIG or Slurm's environment (pure Python, before
TensorFlow).

TensorFlow's convention (its multi-worker tutorial): the chief — task type "chief", or worker 0 when the
cluster has no chief — writes checkpoints and summaries; every other worker writes only to a scratch
directory that is removed when it ends. Under Slurm (`srun`, no TF_CONFIG) task SLURM_PROCID of
SLURM_STEP_NUM_TASKS is worker SLURM_PROCID, and worker 0 is the chief (TensorFlow's SlurmClusterResolver
numbers them the same way).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Mapping

from .errors import ConfigError

TF_CONFIG_EXAMPLE = '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}'
_ADDRESS = re.compile(r"^[^\s:]+:\d{1,5}$|^\[[0-9A-Fa-f:.]+\]:\d{1,5}$")


@dataclass(frozen=True)
class Task:
    type: str = "worker"
    index: int = 0
    num_workers: int = 1
    source: str = "none"  # TF_CONFIG | slurm | none (one process)
    has_chief_job: bool = False

    @property
    def is_chief(self) -> bool:
        return self.type == "chief" or (self.type == "worker" and self.index == 0 and not self.has_chief_job)


def _bad(problem: str, received: str) -> ConfigError:
    return ConfigError(
        "TF_CONFIG",
        f"the TF_CONFIG environment variable is not a valid cluster description: {problem}",
        expected=TF_CONFIG_EXAMPLE,
        received=received[:200],
        fix="set TF_CONFIG as TensorFlow documents it (every worker gets the same cluster and its own task), "
        "or start workers with python -m dynarch.launch_local --workers N",
    )


def parse_tf_config(raw: str) -> Task:
    """Validate TF_CONFIG (cluster of host:port lists; task type in it; index in range) and return the task."""
    try:
        config = json.loads(raw)
    except ValueError as e:
        raise _bad(f"not JSON ({e})", raw) from None
    if not isinstance(config, dict) or not isinstance(config.get("cluster"), dict):
        raise _bad('no "cluster" object', raw)
    if not isinstance(config.get("task"), dict):
        raise _bad('no "task" object', raw)
    cluster, task = config["cluster"], config["task"]
    for job, addresses in cluster.items():
        if job not in ("chief", "worker"):
            raise _bad(f'job "{job}" (MultiWorkerMirroredStrategy has only "chief" and "worker")', raw)
        if not isinstance(addresses, list) or not addresses:
            raise _bad(f'cluster["{job}"] is not a non-empty list of "host:port"', raw)
        bad = [a for a in addresses if not isinstance(a, str) or not _ADDRESS.match(a)]
        if bad:
            raise _bad(f'cluster["{job}"] has addresses that are not "host:port": {bad[:3]}', raw)
    if len(cluster.get("chief", [])) > 1:
        raise _bad("more than one chief", raw)
    kind, index = task.get("type"), task.get("index")
    if kind not in cluster:
        raise _bad(f"task type {kind!r} is not a job of the cluster ({sorted(cluster)})", raw)
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(cluster[kind]):
        raise _bad(f"task index {index!r} is not in [0, {len(cluster[kind])})", raw)
    workers = sum(len(a) for a in cluster.values())
    return Task(kind, index, workers, "TF_CONFIG", "chief" in cluster)


SLURM_STEP_VARIABLES = ("SLURM_STEP_NUM_TASKS", "SLURM_STEP_NODELIST", "SLURM_STEP_TASKS_PER_NODE")


def _slurm_int(env: Mapping[str, str], name: str) -> int:
    value = env.get(name, "").strip()
    if not re.fullmatch(r"[0-9]{1,9}", value):  # not str.isdigit: it accepts '²', which int() refuses
        raise ConfigError(
            name,
            f"Slurm's {name} is not a number",
            expected="an integer set by srun",
            received=value or "(empty)",
            fix="start the workers with srun inside an sbatch allocation (see experiments/multiworker/), or set "
            "TF_CONFIG",
        )
    return int(value)


def task_from_slurm(env: Mapping[str, str]) -> Task:
    """Task SLURM_PROCID of the job step's tasks (SLURM_STEP_NUM_TASKS, else SLURM_NTASKS)."""
    rank = _slurm_int(env, "SLURM_PROCID")
    name = "SLURM_STEP_NUM_TASKS" if env.get("SLURM_STEP_NUM_TASKS") else "SLURM_NTASKS"
    tasks = _slurm_int(env, name) if env.get(name) else 1
    if rank >= tasks:
        raise ConfigError(
            "SLURM_PROCID",
            f"task {rank} of {tasks} tasks",
            expected=f"SLURM_PROCID < {name}",
            received=rank,
            fix="run the workers with srun (one task per worker)",
        )
    for name in SLURM_STEP_VARIABLES:  # what TensorFlow's SlurmClusterResolver reads (it fails deep inside TF)
        if not env.get(name, "").strip():
            raise ConfigError(
                name,
                f"Slurm's {name} is not set: TensorFlow's SlurmClusterResolver needs it to describe the cluster",
                expected=f"srun's job-step variables ({', '.join(SLURM_STEP_VARIABLES)})",
                received="(unset)",
                fix="start the workers with srun inside an sbatch allocation (see experiments/multiworker/), or "
                "set TF_CONFIG",
            )
    return Task("worker", rank, tasks, "slurm")


def in_slurm_step(env: Mapping[str, str]) -> bool:
    """Inside an srun job step (SLURM_PROCID set) — where SlurmClusterResolver can describe the cluster."""
    return bool(env.get("SLURM_PROCID", "").strip())


def task_from_env(environ: Mapping[str, str] | None = None, multi_worker: bool = False) -> Task:
    """This process's task: from TF_CONFIG; else, for a multi-worker run, from Slurm's srun variables;
    else one worker (the chief)."""
    env = os.environ if environ is None else environ
    raw = env.get("TF_CONFIG", "").strip()
    if raw:
        return parse_tf_config(raw)
    if multi_worker and in_slurm_step(env):
        return task_from_slurm(env)
    return Task()


def require_cluster(task: Task, batch_size: int) -> None:
    """What trainer.strategy=multi_worker needs, checked before TensorFlow starts: a cluster description and
    a global batch that splits evenly over the workers."""
    if task.source == "none":
        raise ConfigError(
            "trainer.strategy",
            "multi_worker needs a cluster description, and neither TF_CONFIG nor Slurm's srun variables are set",
            expected=f"TF_CONFIG={TF_CONFIG_EXAMPLE} (per worker), or srun inside an sbatch job",
            received="no TF_CONFIG, no SLURM_PROCID",
            fix="start the workers with python -m dynarch.launch_local --workers 2 ... (one machine), "
            "srun python -m dynarch.launch_local --slurm ... (Slurm), or set TF_CONFIG on each worker",
        )
    if batch_size % task.num_workers:
        raise ConfigError(
            "trainer.batch_size",
            f"the global batch {batch_size} does not split evenly over {task.num_workers} workers",
            expected=f"a multiple of {task.num_workers}",
            received=batch_size,
            fix=f"set trainer.batch_size={max(1, batch_size // task.num_workers) * task.num_workers} "
            "(it is the global batch: each worker takes batch_size / workers rows of every batch)",
        )
