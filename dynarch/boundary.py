"""A phase boundary inside one run: the next phase's freshly built model receives, by variable path,
the weights (the migration planner: copy, Net2Net growth, truncation, drop), the dropout RNG states and
the optimizer state (slots of carried variables, the step count, hence the learning-rate schedule position)
of the model that trained so far. Nothing is read from disk: both models are in memory.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .checkpoint import Checkpoint, model_manifest, model_tensors
from .migrate import MigrationReport, plan_migration
from .resume import model_state_variables

log = logging.getLogger(__name__)


def source_of(model, phase) -> Checkpoint:
    """An in-memory 'checkpoint' of the model that trained `phase`, as the planner reads one."""
    return Checkpoint(
        Path(f"phase {phase.index} ({phase.name})"), model_tensors(model), model_manifest(phase.arch, phase.name)
    )


def migrate_weights(old_model, new_model, old_phase, new_phase, *, new_blocks: str, seed: int):
    """Plan by variable path and assign; returns (report, plan values)."""
    shapes = {v.path: tuple(v.shape) for v in new_model.weights}
    report, values = plan_migration(
        source_of(old_model, old_phase),
        new_phase.arch,
        shapes,
        new_blocks=new_blocks,
        seed=seed,
        target_variant=new_phase.name,
    )
    by_path = {v.path: v for v in new_model.weights}
    for path, value in values.items():
        by_path[path].assign(value.astype(by_path[path].dtype))
    return report, values


def carry_rng_states(old_model, new_model) -> int:
    """Dropout (and other) RNG states follow their block: the data and noise stream go on as before."""
    old = {k: v for k, v in model_state_variables(old_model).items() if "seed_generator_" in k}
    carried = 0
    for key, var in model_state_variables(new_model).items():
        if key in old and tuple(old[key].shape) == tuple(var.shape):
            var.assign(old[key].numpy())
            carried += 1
    return carried


def output_change(old_model, new_model, probe: np.ndarray) -> float:
    """Largest change of the model's outputs on `probe` across the boundary (inference mode): ~0 when the
    migration preserved the function (growth), large when information was dropped (a shrink)."""
    import keras

    # convert_to_numpy: a torch output requires grad and refuses np.asarray
    before = np.asarray(keras.ops.convert_to_numpy(old_model(probe, training=False)), dtype=np.float64)
    after = np.asarray(keras.ops.convert_to_numpy(new_model(probe, training=False)), dtype=np.float64)
    return float(np.max(np.abs(before - after)))


def migrate_boundary(
    old_model,
    new_model,
    old_phase,
    new_phase,
    *,
    new_blocks: str,
    seed: int,
    lr_changed: bool,
    probe: np.ndarray | None = None,
) -> MigrationReport:
    """Weights, RNG states and optimizer state across one boundary; the report lists every variable and,
    given a probe batch, how far the outputs moved (`output_change`)."""
    report, _ = migrate_weights(old_model, new_model, old_phase, new_phase, new_blocks=new_blocks, seed=seed)
    if probe is not None:
        report.output_change = output_change(old_model, new_model, probe)  # type: ignore[attr-defined]
        report.notes.append(
            f"outputs on {len(probe)} validation images moved by at most "
            f"{report.output_change:.2e} (0 = the function is preserved)"
        )
    rng = carry_rng_states(old_model, new_model)
    carried = carry_optimizer_state(old_model, new_model, report, keep_new_lr=lr_changed)
    counts = carried.counts()
    report.notes = [n for n in report.notes if not n.startswith("optimizer state is not migrated")]
    report.notes.append(
        f"optimizer state ({carried.optimizer}, step {carried.iterations} carried): slots of "
        f"{counts['copied']} variables copied exactly, {counts['adapted']} adapted with their "
        f"variable's index map, {counts['fresh']} fresh (new or re-initialized); {rng} RNG states "
        "carried"
    )
    report.optimizer = carried.to_json()  # type: ignore[attr-defined]
    return report


def carry_optimizer_state(old_model, new_model, report: MigrationReport, keep_new_lr: bool):
    """The planner's slot transform: copied variables' slots exact, adapted ones through the same index map,
    fresh slots for new variables, the step count (and so the learning-rate schedule position) carried."""
    from .migrate import migrate_optimizer, optimizer_state

    return migrate_optimizer(new_model, optimizer_state(old_model), report, keep_new_lr=keep_new_lr)
