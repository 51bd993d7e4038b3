"""Which process of a multi-worker job this is, from TF_CONFIG alone (pure Python, before TensorFlow).

TensorFlow's convention (its multi-worker tutorial): the chief — task type "chief", or worker 0 when the
cluster has no chief — writes checkpoints and summaries; every other worker writes only to a scratch
directory that is removed when it ends.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from .errors import ConfigError


@dataclass(frozen=True)
class Task:
    type: str = "worker"
    index: int = 0
    num_workers: int = 1

    @property
    def is_chief(self) -> bool:
        return self.type == "chief" or (self.type == "worker" and self.index == 0)


def task_from_env(environ: dict | None = None) -> Task:
    """This process's task from TF_CONFIG (one worker when it is unset)."""
    raw = (os.environ if environ is None else environ).get("TF_CONFIG", "").strip()
    if not raw:
        return Task()
    try:
        config = json.loads(raw)
        cluster, task = config["cluster"], config["task"]
        workers = len(cluster.get("worker", [])) + len(cluster.get("chief", []))
        return Task(str(task["type"]), int(task["index"]), workers)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ConfigError(
            "TF_CONFIG",
            f"the TF_CONFIG environment variable is not a valid cluster description ({e})",
            expected='{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": 0}}',
            received=raw[:200],
            fix="set TF_CONFIG as TensorFlow documents it, or start workers with python -m dynarch.launch_local",
        ) from None
