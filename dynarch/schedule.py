"""Schedules: the phases of one run, each with its own architecture and end. Pure Python, no TensorFlow.

A run without a schedule is one phase of `trainer.epochs` epochs. With `+schedule=NAME`
(conf/schedule/NAME.yaml) it is a list of phases; the architecture changes at each boundary while
training goes on (weights and optimizer state migrate by variable path, the data stream continues).

    phases:
      - epochs: 2                     # the run's own architecture
      - arch: deep                    # a variant from conf/arch/<model>/ (or a list of them), and/or
        model: {blocks: {...}}        #   an inline patch of the model's blocks
        until: {plateau: {monitor: val_loss, patience: 2, min_delta: 0.0}, max_epochs: 6}
        optimizer: {lr: 3.0e-4}       # optional per-phase optimizer settings
      - arch: wide
        epochs: rest                  # last phase: until trainer.epochs in all (equal budgets)

compose.py turns each phase's arch/model patch into a full `model` mapping; this module validates the
rest and parses the architectures into ArchSpecs.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from .errors import ConfigError, unknown_key_error

PHASE_KEYS = ("arch", "model", "epochs", "until", "optimizer", "name")
UNTIL_KEYS = ("plateau", "max_epochs")
PLATEAU_KEYS = ("monitor", "patience", "min_delta", "mode")
MONITORS = ("val_loss", "val_accuracy", "loss", "accuracy")
MAX_PHASES = 64


@dataclass(frozen=True)
class Plateau:
    """End a phase when `monitor` has not improved by more than `min_delta` for `patience` epochs."""

    monitor: str = "val_loss"
    patience: int = 2
    min_delta: float = 0.0
    mode: str = "auto"  # min | max | auto (max for accuracies)

    @property
    def maximize(self) -> bool:
        return self.mode == "max" or (self.mode == "auto" and "acc" in self.monitor)

    def reached(self, values: list[float]) -> bool:
        """Whether the phase's values of the monitored metric (one per epoch, in order) have plateaued."""
        best, wait = None, 0
        for v in values:
            better = best is None or (v > best + self.min_delta if self.maximize else v < best - self.min_delta)
            best, wait = (v, 0) if better else (best, wait + 1)
        return wait >= self.patience


@dataclass(frozen=True)
class PhaseSpec:
    """One phase: its architecture (an ArchSpec), its end, and its optimizer settings."""

    index: int
    name: str  # the variant label shown in reports, e.g. "base", "deep"
    arch: Any  # ArchSpec (typed loosely: config.py imports this module)
    optimizer: Any  # OptimizerConfig
    epochs: int | None = None  # a fixed length, or
    plateau: Plateau | None = None  # until the monitored metric plateaus,
    max_epochs: int | None = None  # capped at this many epochs, or
    rest: bool = False  # (last phase only) until the run has trained trainer.epochs in all

    def end_epoch(self, start: int, run_epochs: int) -> int:
        """The global epoch this phase ends at, at the latest, when it starts at `start`."""
        if self.rest:
            return max(start, run_epochs)
        return start + (self.epochs if self.epochs is not None else int(self.max_epochs))

    def fingerprint(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "arch": dict(self.arch.raw),
            "epochs": self.epochs,
            "max_epochs": self.max_epochs,
            "rest": self.rest,
            "plateau": None if self.plateau is None else dataclasses.asdict(self.plateau),
            "optimizer": dataclasses.asdict(self.optimizer),
        }


def _positive_int(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= 100_000:
        raise ConfigError(
            where,
            "must be a whole number of epochs",
            expected="an integer in [1, 100000]",
            received=value,
            fix=f"set {where} to e.g. 2",
        )
    return value


def parse_until(raw: Any, where: str) -> tuple[Plateau, int]:
    """`until: {plateau: {...}, max_epochs: N}` -> (Plateau, max_epochs)."""
    if not isinstance(raw, Mapping):
        raise ConfigError(
            where,
            "until must be a mapping",
            expected="{plateau: {monitor: val_loss, patience: 2}, max_epochs: 10}",
            received=raw,
            fix=f"write {where} as a mapping",
        )
    for key in raw:
        if key not in UNTIL_KEYS:
            raise unknown_key_error(where, key, UNTIL_KEYS)
    if "max_epochs" not in raw:
        raise ConfigError(
            f"{where}.max_epochs",
            "a plateau phase needs a cap",
            expected="max_epochs: N",
            received="(not set)",
            fix=f"add {where}.max_epochs (the phase ends there at the latest)",
        )
    plateau_raw = raw.get("plateau") or {}
    if not isinstance(plateau_raw, Mapping):
        raise ConfigError(
            f"{where}.plateau",
            "plateau must be a mapping",
            expected="{monitor: val_loss, patience: 2}",
            received=plateau_raw,
            fix=f"write {where}.plateau as a mapping",
        )
    for key in plateau_raw:
        if key not in PLATEAU_KEYS:
            raise unknown_key_error(f"{where}.plateau", key, PLATEAU_KEYS)
    plateau = Plateau(**plateau_raw)
    if plateau.monitor not in MONITORS:
        raise ConfigError(
            f"{where}.plateau.monitor",
            f"unknown metric '{plateau.monitor}'",
            expected=" or ".join(MONITORS),
            received=plateau.monitor,
            fix=f"set {where}.plateau.monitor=val_loss",
        )
    if not isinstance(plateau.patience, int) or isinstance(plateau.patience, bool) or plateau.patience < 1:
        raise ConfigError(
            f"{where}.plateau.patience",
            "patience counts epochs",
            expected="an integer >= 1",
            received=plateau.patience,
            fix=f"set {where}.plateau.patience=2",
        )
    if not isinstance(plateau.min_delta, (int, float)) or isinstance(plateau.min_delta, bool) or plateau.min_delta < 0:
        raise ConfigError(
            f"{where}.plateau.min_delta",
            "min_delta is a non-negative number",
            expected="e.g. 0.001",
            received=plateau.min_delta,
            fix=f"set {where}.plateau.min_delta=0.0",
        )
    if plateau.mode not in ("auto", "min", "max"):
        raise ConfigError(
            f"{where}.plateau.mode",
            "unknown mode",
            expected="auto, min or max",
            received=plateau.mode,
            fix=f"set {where}.plateau.mode=auto",
        )
    return plateau, _positive_int(raw["max_epochs"], f"{where}.max_epochs")


def check_phase_keys(raw: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise ConfigError(
            where,
            "a phase must be a mapping",
            expected="{arch: deep, epochs: 3}",
            received=raw,
            fix=f"write {where} as a mapping",
        )
    for key in raw:
        if key not in PHASE_KEYS:
            raise unknown_key_error(where, key, PHASE_KEYS)
    name = raw.get("name")
    if name is not None and (not isinstance(name, str) or not re.fullmatch(r"[\w.+-]{1,64}", name)):
        raise ConfigError(
            f"{where}.name",
            "a phase's name is a short label",
            expected="1-64 letters, digits, _ . + -",
            received=name,
            fix=f"set {where}.name to e.g. grown, or remove it",
        )
    model = raw.get("model")
    fixed = sorted({"name", "input_shape"} & set(model)) if isinstance(model, Mapping) else []
    if fixed:  # a run has one input and one model name: every phase's variables live under them
        raise ConfigError(
            f"{where}.model.{fixed[0]}",
            "a phase may change the model's blocks only",
            expected="model: {blocks: {...}}",
            received=fixed,
            fix=f"remove {where}.model.{fixed[0]}; set model.{fixed[0]} for the whole run instead",
        )
    has_epochs, has_until = raw.get("epochs") is not None, raw.get("until") is not None
    if has_epochs == has_until:
        raise ConfigError(
            where,
            "a phase ends after a number of epochs or on a plateau (exactly one)",
            expected="epochs: N, or until: {plateau: {...}, max_epochs: N}",
            received={k: raw.get(k) for k in ("epochs", "until")},
            fix=f"set one of {where}.epochs or {where}.until",
        )
    return raw


def phase_list(raw: Any) -> list[Mapping[str, Any]]:
    """`schedule` -> its list of raw phases, shape-checked (not yet parsed)."""
    if not isinstance(raw, Mapping) or set(raw) - {"phases"}:
        extra = sorted(set(raw) - {"phases"}) if isinstance(raw, Mapping) else raw
        raise ConfigError(
            "schedule",
            "a schedule holds only a list of phases",
            expected="phases: [...]",
            received=extra,
            fix="put every setting inside a phase",
        )
    phases = raw.get("phases")
    if not isinstance(phases, list) or not phases or len(phases) > MAX_PHASES:
        raise ConfigError(
            "schedule.phases",
            "a schedule needs a list of phases",
            expected=f"1 to {MAX_PHASES} phases",
            received=phases if not isinstance(phases, list) else f"{len(phases)} phases",
            fix="list the phases, e.g. [{epochs: 2}, {arch: deep, epochs: 3}]",
        )
    return [check_phase_keys(p, f"schedule.phases[{i}]") for i, p in enumerate(phases)]


def unused_epochs_note(schedule: str | None, phases: Sequence[PhaseSpec], run_epochs: int) -> str | None:
    """What to tell a user whose `trainer.epochs` no phase reads (only `epochs: rest` does), when it differs
    from what the schedule trains: `+schedule=grow trainer.epochs=2` trained 5 epochs, and a finished run
    resumed with a higher trainer.epochs trained nothing, both without a word. None when nothing to say."""
    if schedule is None or any(p.rest for p in phases):
        return None
    total = sum(int(p.epochs if p.epochs is not None else p.max_epochs) for p in phases)
    if total == run_epochs:
        return None
    length = f"{total} epochs in all" if all(p.epochs is not None for p in phases) else f"at most {total} epochs"
    return (
        f"trainer.epochs={run_epochs} is not used: every phase of schedule {schedule} sets its own length "
        f"({length}); to change it, set schedule.phases.N.epochs, or end the last phase with 'epochs: rest' "
        "(until trainer.epochs)"
    )


def check_plateau_monitors(phases: Sequence[Any], data: Any, rows: int | None = None) -> None:
    """A val_* monitor without validation never plateaus: the phase would run to its cap silently. Checked
    when the schedule is attached, and again with `rows` once the data is loaded (data.no_validation)."""
    no_val = data.no_validation(rows)
    for phase in phases:
        if phase.plateau is not None and no_val and phase.plateau.monitor.startswith("val_"):
            raise ConfigError(
                f"schedule.phases[{phase.index}].until.plateau.monitor",
                f"{phase.plateau.monitor} does not exist: {no_val}",
                expected="loss or accuracy, or a validation split",
                received=phase.plateau.monitor,
                fix=f"set schedule.phases.{phase.index}.until.plateau.monitor=loss, or {data.validation_remedy(rows)}",
            )
