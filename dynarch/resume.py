"""Train-state checkpoints for bitwise-exact resume: model variables (weights, dropout RNG states),
optimizer variables (step, slots), where training stands (phase, epoch, batches done) and the history.

Tensors are keyed by stable names, never by position, so a state written in one phase of a schedule
reads back into that phase's model however the other phases look: weights by variable path
(`dense/kernel`), RNG states by the block that owns them (`dropout/seed_generator_0`), optimizer variables by
their path without the optimizer's own auto-numbered name (`dense_kernel_momentum`).

Layout in a run dir: `state/step-000000123/` (checkpoint folders, see checkpoint.py) and `state/latest`,
a one-line pointer replaced atomically only after the folder it names is complete on disk. Loading
falls back to the newest older checkpoint that verifies when the latest one is damaged.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .artifacts import write_text
from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .config import RunConfig
from .errors import CheckpointError

log = logging.getLogger(__name__)
STATE_DIR, LATEST = "state", "latest"


@dataclass
class Position:
    """Where training stands: the phase, the global `epoch` in progress, the batches of it already
    trained, the epoch its phase started at, whether that phase has ended early, and the history so far."""

    epoch: int = 0
    batches_done: int = 0
    history: dict[str, list[float]] = field(default_factory=dict)
    phase: int = 0
    phase_start: int = 0
    phase_done: bool = False


def fingerprint(run: RunConfig) -> dict[str, Any]:
    """What a resume must share with the run it continues (epochs may grow; nothing else may change)."""
    fp = {
        "arch": dict(run.arch.raw),
        "optimizer": dataclasses.asdict(run.optimizer),
        "batch_size": run.trainer.batch_size,
        "seed": run.seed,
        "precision": run.trainer.precision,
        "data": {k: v for k, v in dataclasses.asdict(run.data).items() if not k.startswith("probe")},
        "schedule": [p.fingerprint() for p in run.phases] if run.schedule else None,
        "backend": run.backend,
        "loop": run.loop,  # the fused and Keras loops agree to float tolerance, not bit for bit
    }
    return json.loads(json.dumps(fp, default=str))  # as it reads back from a manifest (tuples become lists)


def _layers_with_paths(model):
    """(block path, layer) for every layer of a dynarch model, descending into block groups."""

    def rec(layers, prefix):
        for layer in layers:
            if type(layer).__name__ == "InputLayer":
                continue
            path = f"{prefix}{layer.name}"
            yield path, layer
            yield from rec(getattr(layer, "blocks", []) if type(layer).__name__ == "BlockGroup" else [], path + "/")

    yield from rec(model.layers, "")


def model_state_variables(model) -> dict[str, Any]:
    """Every model variable under a stable key: weights by path, RNG states by owning block path."""
    out = {v.path: v for v in model.weights}
    for path, layer in _layers_with_paths(model):
        for i, generator in enumerate(getattr(layer, "_seed_generators", [])):
            out[f"{path}/seed_generator_{i}"] = generator.state
    missing = [v.path for v in model.variables if not any(v is w for w in out.values())]
    if missing:  # a layer kind this walk does not know: refuse rather than resume inexactly
        raise CheckpointError(
            "model",
            "variables without a stable name",
            expected="weights and RNG states",
            received=missing[:5],
            fix="report this model config as a dynarch bug",
        )
    return out


def optimizer_state_variables(optimizer) -> dict[str, Any]:
    """Optimizer variables keyed by path minus the optimizer's own (auto-numbered) name.

    Under mixed_float16 Keras wraps the optimizer in a LossScaleOptimizer whose `variables` hold its own
    (iteration, learning_rate, loss scale) and the inner optimizer's (iteration, learning_rate, slots): the
    inner ones are keyed `inner/...` so both `iteration`s are kept. Unwrapped optimizers keep their keys."""
    inner = getattr(optimizer, "inner_optimizer", None)
    inner_ids = {id(v) for v in inner.variables} if inner is not None else set()
    out = {}
    for v in optimizer.variables:
        key = ("inner/" if id(v) in inner_ids else "") + v.path.split("/", 1)[-1]
        if key in out:
            raise CheckpointError(
                "optimizer",
                f"two optimizer variables named {key}",
                expected="unique names",
                received=key,
                fix="rename one of the blocks whose names collide",
            )
        out[key] = v
    return out


def state_tensors(model) -> dict[str, np.ndarray]:
    # Scalars (the step count, the learning rate) as shape (1,): what safetensors reads back for them.
    tensors = {f"model/{k}": np.atleast_1d(v.numpy()) for k, v in model_state_variables(model).items()}
    tensors.update(
        {f"optimizer/{k}": np.atleast_1d(v.numpy()) for k, v in optimizer_state_variables(model.optimizer).items()}
    )
    return tensors


def snapshot_state(
    run_dir: Path, model, position: Position, run: RunConfig, keep: int = 2, callbacks: dict | None = None
) -> tuple[Path, Callable[[], Path]]:
    """A train-state checkpoint: what it holds, copied now, and the write of it — which creates the folder,
    points `latest` at it, then drops all but the newest `keep`. Made for a background writer (PhaseLoop.save):
    the model trains on meanwhile, so nothing in the snapshot may share memory with it. `callbacks`: the state
    of callbacks from config (EarlyStopping's wait and best, ...), restored on resume.
    Returns (the folder the write will create, the write)."""
    state = Path(run_dir) / STATE_DIR
    step = int(model.optimizer.iterations.numpy())
    # np.array(copy=True): a backend's `.numpy()` is not promised to copy (a CPU torch tensor's `.numpy()` shares
    # its memory); measured, Keras 3.15's copy on all three backends today — one more copy of a small state
    tensors = {k: np.array(v, copy=True) for k, v in state_tensors(model).items()}
    manifest = copy.deepcopy(
        {
            "kind": "train-state",
            "step": step,
            "epoch": position.epoch,
            "batches_done": position.batches_done,
            "phase": position.phase,
            "phase_start": position.phase_start,
            "phase_done": position.phase_done,
            "history": position.history,
            "fingerprint": fingerprint(run),
            "variant": run.variant,
            "callbacks": callbacks or {},
            "migrated_from": run.init_from,
        }
    )
    target = state / f"step-{step:09d}"

    def write() -> Path:
        folder = save_checkpoint(target, tensors, manifest)
        write_text(state / LATEST, folder.name + "\n")
        for old in sorted(state.glob("step-*"))[:-keep]:
            if old.name != folder.name:
                shutil.rmtree(old, ignore_errors=True)
        return folder

    return target, write


def has_state(run_dir: Path) -> bool:
    return (Path(run_dir) / STATE_DIR).is_dir() and any((Path(run_dir) / STATE_DIR).glob("step-*"))


def load_latest_state(run_dir: Path) -> Checkpoint:
    """The newest train-state checkpoint that verifies; damaged ones are named in warnings and skipped."""
    state = Path(run_dir) / STATE_DIR
    pointer = state / LATEST
    candidates = sorted(state.glob("step-*"), reverse=True)
    if pointer.is_file():
        named = state / pointer.read_text(errors="replace").strip()
        candidates = [named] + [c for c in candidates if c != named]
    errors = []
    for folder in candidates:
        try:
            ckpt = load_checkpoint(folder)
            read_position(ckpt)
            return ckpt
        except CheckpointError as e:
            errors.append(str(e).splitlines()[0])
            log.warning("skipping damaged checkpoint: %s", errors[-1])
    raise CheckpointError(
        str(state),
        "no usable train-state checkpoint to resume from",
        expected="state/step-*/ written by an earlier run of this dir",
        received="; ".join(errors) or "none",
        fix="start a fresh run (resume=false, new dir)",
    )


def _int(manifest: dict, key: str, default: int | None = None) -> int:
    value = manifest.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise CheckpointError(
            key,
            f"the train-state manifest has an invalid '{key}'",
            expected="an integer >= 0",
            received=value,
            fix="resume from another checkpoint",
        )
    return value


def read_position(ckpt: Checkpoint) -> Position:
    """The position a train-state checkpoint records, with every field type-checked."""
    m = ckpt.manifest
    history = m.get("history", {})
    if not isinstance(history, dict) or not all(
        isinstance(k, str) and isinstance(v, list) and all(isinstance(x, (int, float)) for x in v)
        for k, v in history.items()
    ):
        raise CheckpointError(
            str(ckpt.path),
            "the train-state manifest has a malformed history",
            expected="a mapping of metric -> list of numbers",
            received=type(history).__name__,
            fix="resume from another checkpoint",
        )
    epoch, phase_start = _int(m, "epoch"), _int(m, "phase_start", 0)
    if phase_start > epoch:  # a phase cannot have started after the epoch the checkpoint was taken at
        raise CheckpointError(
            str(ckpt.path),
            "the train-state manifest has an invalid 'phase_start'",
            expected=f"phase_start <= epoch ({epoch})",
            received=phase_start,
            fix="resume from another checkpoint",
        )
    return Position(
        epoch, _int(m, "batches_done"), history, _int(m, "phase", 0), phase_start, bool(m.get("phase_done", False))
    )


OVERRIDE_OF = {"backend": "backend", "loop": "trainer.loop"}  # fingerprint key -> the override that sets it


def check_compatible(ckpt: Checkpoint, run: RunConfig) -> Position:
    """Refuse a checkpoint of another config, or one that already trained past this run's end."""
    saved, now = ckpt.manifest.get("fingerprint", {}), fingerprint(run)
    if isinstance(saved, dict):  # written before the backend / loop were recorded
        saved = {"backend": "tensorflow", "loop": "keras", **saved}
    diff = [k for k in now if not isinstance(saved, dict) or saved.get(k) != now[k]]
    if diff:
        saved = saved if isinstance(saved, dict) else {}
        # the keys a user changes by a plain override get it spelled out (the loop is not a key of its own here)
        spelled = [f"{OVERRIDE_OF[k]}={saved[k]}" for k in diff if k in OVERRIDE_OF and saved.get(k) is not None]
        run_dir = Path(ckpt.path).parent.parent
        raise CheckpointError(
            str(ckpt.path),
            f"resume refused: the config differs in {', '.join(diff)}",
            expected={k: saved.get(k) for k in diff},
            received={k: now[k] for k in diff},
            fix=(f"add {' '.join(spelled)}; " if spelled else "")
            + "resume with the original overrides (only trainer.epochs may grow; the first command's are in "
            f"{run_dir / '.hydra' / 'overrides.yaml'}), or start a new run with init_from=RUN_DIR to migrate "
            "the weights",
        )
    position = read_position(ckpt)
    total = run.total_epochs
    if position.phase >= len(run.phases) or (total is not None and position.epoch > total):
        raise CheckpointError(
            "trainer.epochs",
            f"resume refused: the run already trained {position.epoch} epochs",
            expected=f"trainer.epochs >= {position.epoch}",
            received=total,
            fix=f"resume with trainer.epochs={position.epoch} or more",
        )
    return position


def restore(model, ckpt: Checkpoint) -> None:
    """Assign every model and optimizer variable from the checkpoint (names, shapes and dtypes checked)."""
    targets = {f"model/{k}": v for k, v in model_state_variables(model).items()}
    targets.update({f"optimizer/{k}": v for k, v in optimizer_state_variables(model.optimizer).items()})
    if sorted(targets) != sorted(ckpt.tensors):
        missing, extra = sorted(set(targets) - set(ckpt.tensors)), sorted(set(ckpt.tensors) - set(targets))
        raise CheckpointError(
            str(ckpt.path),
            "the checkpoint does not match the model's variables",
            expected=f"also {missing[:4]}" if missing else "no extra tensors",
            received=f"extra {extra[:4]}" if extra else "missing some",
            fix="resume with the original config",
        )
    for key, var in targets.items():
        value = ckpt.tensors[key]
        if math.prod(var.shape) != value.size or value.dtype.kind not in "fiub":  # safetensors stores scalars as (1,)
            raise CheckpointError(
                str(ckpt.path),
                "the checkpoint does not match the model's variables",
                expected=f"{key} {tuple(var.shape)}",
                received=f"{key} {value.shape} {value.dtype}",
                fix="resume with the original config",
            )
        var.assign(value.reshape(tuple(var.shape)).astype(var.dtype))
