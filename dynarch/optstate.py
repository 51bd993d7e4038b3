"""Optimizer state across a phase boundary inside one run (`optimizer_state`, `migrate_optimizer`).

Slots of copied variables are carried exactly; slots of adapted variables are taken with the variable's
own index map (`dynarch.migrate_plan.apply_index_map`); new or re-initialized variables get the new
optimizer's fresh slots (zeros for Adam, SGD, RMSprop); the iteration count is carried, so learning-rate
schedules continue where they were.

Fan-in rows that Net2WiderNet divided by their replication count keep *undivided* slots: after the
widening the replicas have identical activations and the layer's output is unchanged, so the gradient of
each replicated fan-in row equals the gradient the original row would get — the original row's slots
(Adam m and v) are its consistent history. (The widened layer's own replicated output units see 1/c of
the original gradient, c = replication count; their slots are copied unscaled too: Adam's step m/sqrt(v)
is invariant to a common scale of the gradient, so the replicas take the original unit's step size, and
the difference fades with the moment decay rates.)

Keras is imported inside the functions only, so importing this module stays TensorFlow-free.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .errors import ConfigError
from .migrate_plan import Entry, MigrationReport, apply_index_map


@dataclass
class OptimizerState:
    """A Keras optimizer's state as plain arrays, keyed by the model variable each slot belongs to."""

    kind: str  # class name, e.g. "Adam" (the inner one under loss scaling)
    iterations: int  # optimizer steps taken: the learning-rate schedule position
    learning_rate: float | None  # None: a schedule or callable (its position is `iterations`)
    slots: dict[str, dict[str, np.ndarray]]  # trainable variable path -> slot name ("momentum") -> value
    extras: dict[str, np.ndarray] = field(default_factory=dict)  # e.g. loss-scale state, by variable name


@dataclass
class OptimizerReport:
    """What `migrate_optimizer` did, per target trainable variable."""

    optimizer: str
    iterations: int
    learning_rate: str
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)  # path -> {action, slots, detail}

    def counts(self) -> dict[str, int]:
        return {a: sum(e["action"] == a for e in self.entries.values()) for a in ("copied", "adapted", "fresh")}

    def __getitem__(self, key: str) -> int:  # report["copied"]: the counts read like a dict
        return self.counts()[key]

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "counts": self.counts()}


def _unsupported(opt, why: str) -> ConfigError:
    return ConfigError(
        "optimizer",
        f"cannot carry the state of a {type(opt).__name__} optimizer: {why}",
        expected="an optimizer whose slots have their variable's shape (Adam, AdamW, SGD, "
        "RMSprop, Adagrad, Nadam, Adamax, Lion, ...)",
        received=type(opt).__name__,
        fix="use one of those optimizers for a schedule of phases",
    )


def _core(opt):
    """The optimizer holding the slots (the inner one under mixed-precision loss scaling) and the
    wrapper's own variables (loss scale, its step counter), if any."""
    inner = getattr(opt, "inner_optimizer", None)
    if inner is None:
        return opt, []
    own = [v for v in opt._variables if v is not opt._iterations and v is not getattr(opt, "_learning_rate", None)]
    return inner, own


def _slot_lists(opt) -> dict[str, list]:
    """Slot name -> list aligned with `opt._trainable_variables` (None where a variable has no slot).

    Generic across Keras optimizers: every list attribute as long as the trainable-variable list whose
    items are optimizer variables of their model variable's shape (Adam `_momentums`, `_velocities`;
    SGD `momentums`; RMSprop `_velocities`, `_momentums`, ...). Any other optimizer variable is refused."""
    import keras

    tvars = list(opt._trainable_variables)
    lists: dict[str, list] = {}
    for attr, value in vars(opt).items():
        if attr in ("_variables", "_trainable_variables") or not isinstance(value, list) or len(value) != len(tvars):
            continue
        if (
            not value
            or not all(v is None or isinstance(v, keras.Variable) for v in value)
            or all(v is None for v in value)
            or any(v is t for v, t in zip(value, tvars))
        ):
            continue
        if any(v is not None and tuple(v.shape) != tuple(t.shape) for v, t in zip(value, tvars)):
            raise _unsupported(opt, f"its '{attr}' slots are shaped differently from their variables (factored)")
        first, ref = next((v, t) for v, t in zip(value, tvars) if v is not None)
        prefix = ref.path.replace("/", "_") + "_"
        lists[first.name[len(prefix) :] if first.name.startswith(prefix) else attr.lstrip("_")] = value
    known = {id(v) for vs in lists.values() for v in vs if v is not None}
    known |= {id(opt._iterations), id(getattr(opt, "_learning_rate", None))}
    stray = [v.name for v in opt._variables if id(v) not in known]
    if stray:
        raise _unsupported(opt, f"variables not tied to one model variable: {', '.join(stray[:4])}")
    return lists


def optimizer_state(model) -> OptimizerState:
    """Read `model.optimizer`'s state (built) as arrays keyed by trainable-variable path.

    Raises ConfigError for an optimizer kind whose state cannot be carried per variable (e.g. Adafactor's
    factored slots) and CheckpointError-free otherwise; imports keras lazily."""
    import keras

    opt = getattr(model, "optimizer", None)
    if opt is None or not opt.built:
        raise ConfigError(
            "optimizer",
            "the model's optimizer is not built",
            expected="a compiled model whose optimizer.build(model.trainable_variables) ran",
            received=repr(opt),
            fix="compile the model and build its optimizer before reading its state",
        )
    core, own = _core(opt)
    slots: dict[str, dict[str, np.ndarray]] = {}
    for name, values in _slot_lists(core).items():
        for var, slot in zip(core._trainable_variables, values):
            if slot is not None:
                slots.setdefault(var.path, {})[name] = np.array(slot.numpy())
    lr = core._learning_rate if isinstance(getattr(core, "_learning_rate", None), keras.Variable) else None
    return OptimizerState(
        type(core).__name__,
        int(np.asarray(core._iterations.numpy())),
        None if lr is None else float(np.asarray(lr.numpy())),
        slots,
        {v.name: np.array(v.numpy()) for v in own},
    )


def _carry_slots(
    var_path: str, entry: Entry | None, new_slots: dict[str, Any], old: dict[str, np.ndarray]
) -> dict[str, Any]:
    """Assign one variable's slots from the old state by the plan's action; returns its report entry."""
    action = entry.action if entry is not None else "reinitialized"
    if action not in ("copied", "adapted") or not new_slots:
        why = "no slots" if not new_slots else f"variable {action}: fresh slots"
        return {"action": "fresh" if action not in ("copied", "adapted") else action, "slots": [], "detail": why}
    carried, fresh = [], []
    for name, slot in new_slots.items():
        value = old.get(name)
        if value is not None and action == "adapted":
            value = apply_index_map(value, entry.index_map)
        if value is None or tuple(value.shape) != tuple(slot.shape):
            fresh.append(name)
            continue
        slot.assign(value.astype(slot.dtype))
        carried.append(name)
    if not carried:
        return {"action": "fresh", "slots": [], "detail": f"no matching old slot ({', '.join(fresh)}): fresh"}
    detail = "slots copied exactly" if action == "copied" else "slots taken with the variable's index map"
    return {"action": action, "slots": carried, "detail": detail + (f"; fresh: {', '.join(fresh)}" if fresh else "")}


def migrate_optimizer(
    new_model, old_state: OptimizerState, plan: MigrationReport, *, keep_new_lr: bool = False
) -> OptimizerReport:
    """Fill the new model's (compiled, built) optimizer from `old_state` following the weight plan.

    Copied variables get their slots bit for bit; adapted ones get slots taken with the same index map
    as their weights (fan-in rows undivided, see the module docstring); re-initialized and new variables
    keep the fresh optimizer's slots. The iteration count is carried (schedules continue), and the
    learning-rate variable too unless `keep_new_lr` (a phase that sets its own lr).

    Args:
        new_model: the next model, compiled, with `optimizer.build(new_model.trainable_variables)` done
            (built here if not).
        old_state: `optimizer_state(old_model)`, read before the old model is discarded.
        plan: the MigrationReport that moved the weights (its entries' actions and index maps).
        keep_new_lr: keep the new optimizer's learning-rate value instead of the old one.

    Returns:
        An OptimizerReport (`report["copied"]`, `["adapted"]`, `["fresh"]` count variables).
    """
    import keras

    opt = new_model.optimizer
    if opt is None:
        raise ConfigError(
            "optimizer",
            "the new model is not compiled",
            expected="model.compile(optimizer=...)",
            received="a model with no optimizer",
            fix="compile the new model before migrating the optimizer state",
        )
    if not opt.built:
        opt.build(new_model.trainable_variables)
    core, own = _core(opt)
    lists = _slot_lists(core)
    by_path = {e.path: e for e in plan.entries}
    report = OptimizerReport(type(core).__name__, old_state.iterations, "")
    for i, var in enumerate(core._trainable_variables):
        new_slots = {n: vs[i] for n, vs in lists.items() if vs[i] is not None}
        report.entries[var.path] = _carry_slots(
            var.path, by_path.get(var.path), new_slots, old_state.slots.get(var.path, {})
        )
    core._iterations.assign(old_state.iterations)
    lr = getattr(core, "_learning_rate", None)
    if not isinstance(lr, keras.Variable):
        report.learning_rate = "schedule: its position is carried by the iteration count"
    elif keep_new_lr or old_state.learning_rate is None:
        report.learning_rate = f"kept the new value {float(np.asarray(lr.numpy())):g}"
    else:
        lr.assign(old_state.learning_rate)
        report.learning_rate = f"carried ({old_state.learning_rate:g})"
    for v in own:
        if v.name in old_state.extras and tuple(old_state.extras[v.name].shape) == tuple(v.shape):
            v.assign(old_state.extras[v.name].astype(v.dtype))
    if old_state.kind != report.optimizer:
        report.learning_rate += f"; optimizer changed {old_state.kind} -> {report.optimizer}: slots by name only"
    return report
