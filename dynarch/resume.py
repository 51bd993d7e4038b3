"""Train-state checkpoints for bitwise-exact resume: model variables (weights, dropout RNG states),
optimizer variables (step, slots), data position (epoch, batches done) and history so far.

Layout in a run dir: `state/step-000000123/` (checkpoint folders, see checkpoint.py) and `state/latest`,
a one-line pointer replaced atomically only after the folder it names is complete on disk. Loading
falls back to the newest older checkpoint that verifies when the latest one is damaged.
"""
from __future__ import annotations

import dataclasses
import json
import math
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .artifacts import write_text
from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .config import RunConfig
from .errors import CheckpointError

log = logging.getLogger(__name__)
STATE_DIR, LATEST = "state", "latest"


@dataclass
class Position:
    """Where training stands: `epoch` in progress and the batches of it already trained."""
    epoch: int = 0
    batches_done: int = 0
    history: dict[str, list[float]] = field(default_factory=dict)


def fingerprint(run: RunConfig) -> dict[str, Any]:
    """What a resume must share with the run it continues (epochs may grow; nothing else may change)."""
    fp = {"arch": dict(run.arch.raw), "optimizer": dataclasses.asdict(run.optimizer),
          "batch_size": run.trainer.batch_size, "seed": run.seed, "precision": run.trainer.precision,
          "data": {k: v for k, v in dataclasses.asdict(run.data).items() if not k.startswith("probe")}}
    return json.loads(json.dumps(fp))  # as it reads back from a manifest (tuples become lists)


def _state_tensors(model) -> dict[str, np.ndarray]:
    # Keyed by position too: variable paths of RNG states are not unique across layers.
    tensors = {f"model/{i:04d}/{v.path}": np.asarray(v.numpy()) for i, v in enumerate(model.variables)}
    tensors.update({f"optimizer/{i:04d}/{v.path}": np.asarray(v.numpy())
                    for i, v in enumerate(model.optimizer.variables)})
    return tensors


def save_state(run_dir: Path, model, position: Position, run: RunConfig, keep: int = 2) -> Path:
    """Write a train-state checkpoint, point `latest` at it, then drop all but the newest `keep`."""
    state = Path(run_dir) / STATE_DIR
    step = int(model.optimizer.iterations.numpy())
    folder = save_checkpoint(state / f"step-{step:09d}", _state_tensors(model), {
        "kind": "train-state", "step": step, "epoch": position.epoch, "batches_done": position.batches_done,
        "history": position.history, "fingerprint": fingerprint(run), "variant": run.variant,
        "migrated_from": run.init_from})
    write_text(state / LATEST, folder.name + "\n")
    for old in sorted(state.glob("step-*"))[:-keep]:
        if old.name != folder.name:
            shutil.rmtree(old, ignore_errors=True)
    return folder


def has_state(run_dir: Path) -> bool:
    return (Path(run_dir) / STATE_DIR).is_dir() and any((Path(run_dir) / STATE_DIR).glob("step-*"))


def load_latest_state(run_dir: Path) -> Checkpoint:
    """The newest train-state checkpoint that verifies; damaged ones are named in warnings and skipped."""
    state = Path(run_dir) / STATE_DIR
    pointer = state / LATEST
    candidates = sorted(state.glob("step-*"), reverse=True)
    if pointer.is_file():
        named = state / pointer.read_text().strip()
        candidates = [named] + [c for c in candidates if c != named]
    errors = []
    for folder in candidates:
        try:
            return load_checkpoint(folder)
        except CheckpointError as e:
            errors.append(str(e).splitlines()[0])
            log.warning("skipping damaged checkpoint: %s", errors[-1])
    raise CheckpointError(str(state), "no usable train-state checkpoint to resume from",
                          expected="state/step-*/ written by an earlier run of this dir",
                          received="; ".join(errors) or "none", fix="start a fresh run (resume=false, new dir)")


def restore(model, ckpt: Checkpoint, run: RunConfig) -> Position:
    """Check the checkpoint belongs to this config, then load every variable; returns the position."""
    saved, now = ckpt.manifest.get("fingerprint", {}), fingerprint(run)
    diff = [k for k in now if saved.get(k) != now[k]]
    if diff:
        raise CheckpointError(str(ckpt.path), f"resume refused: the config differs in {', '.join(diff)}",
                              expected={k: saved.get(k) for k in diff}, received={k: now[k] for k in diff},
                              fix="resume with the original overrides (only trainer.epochs may change), "
                                  "or start a new run with init_from=RUN_DIR to migrate the weights")
    groups = {"model": list(model.variables), "optimizer": list(model.optimizer.variables)}
    counts = {g: sum(k.startswith(g + "/") for k in ckpt.tensors) for g in groups}
    if counts != {g: len(v) for g, v in groups.items()}:
        raise CheckpointError(str(ckpt.path), "the checkpoint does not match the model's variables",
                              expected={g: len(v) for g, v in groups.items()}, received=counts,
                              fix="resume with the original config")
    for key, value in ckpt.tensors.items():
        group, index, path = key.split("/", 2)
        var = groups[group][int(index)]
        if var.path != path or math.prod(var.shape) != value.size:  # safetensors stores scalars as (1,)
            raise CheckpointError(str(ckpt.path), "the checkpoint does not match the model's variables",
                                  expected=f"{var.path} {tuple(var.shape)}", received=f"{path} {value.shape}",
                                  fix="resume with the original config")
        var.assign(value.reshape(tuple(var.shape)))
    m = ckpt.manifest
    return Position(int(m["epoch"]), int(m["batches_done"]), m.get("history", {}))
