"""Keras callbacks from config, through an allowlist of classes, and their state across a kill.

    callbacks:                      # a Hydra group: conf/callbacks/*.yaml, `callbacks=early_stopping`
      early_stopping: {_target_: EarlyStopping, monitor: val_loss, patience: 3}

Checking is pure Python (no TensorFlow): an unknown class gets the closest allowed name, an unknown key the
closest key of that class, a wrong value a ConfigError naming `callbacks.<name>.<key>`. The stock Keras
classes run unchanged; each is subclassed only so that a state restored on resume is re-applied AFTER
Keras' `on_train_begin` has reset it (`restore_callback_states`). Every callback lives for the whole run
and is passed to each phase's `fit`: Keras resets EarlyStopping / ReduceLROnPlateau at each `fit`, so with
a schedule they act within a phase (early stopping ends the phase, not the run); BestCheckpoint spans the run.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from .errors import CheckpointError, ConfigError, did_you_mean, shown

log = logging.getLogger(__name__)
METRICS = ("val_loss", "val_accuracy", "loss", "accuracy")  # what every epoch's logs hold
BEST_SUBDIR = "checkpoint-best"
TENSORBOARD_SUBDIR = "tensorboard"
TENSORBOARD_EXTRA = "pip install -e '.[tensorboard]'  (TensorFlow 2.21 no longer installs TensorBoard)"
Check = tuple[Callable[[Any], bool], str]


def _int(low: int = 0) -> Check:
    return (lambda v: isinstance(v, int) and not isinstance(v, bool) and low <= v <= 2**31 - 1, f"an integer >= {low}")


def _num(low: float = 0.0, high: float = math.inf, open_high: bool = False) -> Check:
    def ok(v):
        return (
            isinstance(v, (int, float))
            and not isinstance(v, bool)
            and math.isfinite(v)
            and low <= v
            and (v < high if open_high else v <= high)
        )

    return ok, f"a number in [{low}, {high}{')' if open_high else ']'}"


_BOOL: Check = (lambda v: isinstance(v, bool), "true or false")
_MONITOR: Check = (lambda v: v in METRICS, f"one of {', '.join(METRICS)}")
_MODE: Check = (lambda v: v in ("auto", "min", "max"), "auto, min or max")
_VERBOSE: Check = (lambda v: v in (0, 1), "0 or 1")
_BASELINE: Check = (lambda v: v is None or _num(-math.inf)[0](v), "null or a finite number")
_TENSORBOARD: dict[str, Check] = {
    "histogram_freq": _int(0),
    "write_graph": _BOOL,
    "write_images": _BOOL,
    "write_steps_per_second": _BOOL,
    "update_freq": (lambda v: v == "epoch", "epoch"),
}
# The allowlist: class -> the keys a config may set, each with its check. No key takes code or a path.
CALLBACK_KEYS: dict[str, dict[str, Check]] = {
    "EarlyStopping": {
        "monitor": _MONITOR,
        "min_delta": _num(0),
        "patience": _int(0),
        "verbose": _VERBOSE,
        "mode": _MODE,
        "baseline": _BASELINE,
        "restore_best_weights": _BOOL,
        "start_from_epoch": _int(0),
    },
    "ReduceLROnPlateau": {
        "monitor": _MONITOR,
        "factor": _num(0, 1, open_high=True),
        "patience": _int(0),
        "verbose": _VERBOSE,
        "mode": _MODE,
        "min_delta": _num(0),
        "cooldown": _int(0),
        "min_lr": _num(0),
    },
    "TensorBoard": _TENSORBOARD,
    "BestCheckpoint": {"monitor": _MONITOR, "mode": _MODE, "min_delta": _num(0), "verbose": _VERBOSE},
}
ALLOWED_CALLBACKS = frozenset(CALLBACK_KEYS)
# What each class keeps between epochs (restored on resume); RUN_SCOPED: kept across phases too.
STATE_KEYS = {
    "EarlyStopping": ("wait", "stopped_epoch", "best", "best_epoch"),
    "ReduceLROnPlateau": ("wait", "best", "cooldown_counter"),
    "BestCheckpoint": ("best", "best_epoch"),
    "TensorBoard": (),
}
RUN_SCOPED = frozenset({"BestCheckpoint"})
REFUSED = {
    "TerminateOnNaN": "is built in: dynarch stops on a NaN loss and keeps the last good checkpoint",
    "ModelCheckpoint": "writes files of its own format and names: use BestCheckpoint (RUN/checkpoint-best/, the "
    "safe format of checkpoint/); train-state checkpoints are built in",
    "BackupAndRestore": "is built in: resume=true continues a run bitwise-exactly, even mid-epoch",
    "CSVLogger": "is a logger here: use logger=csv (it keeps one file across phases and resumes)",
    "LambdaCallback": "runs Python code, which a config may not name",
    "LearningRateScheduler": "takes a Python function: use optimizer.schedule (cosine, exponential, piecewise)",
    "RemoteMonitor": "sends every epoch's logs over the network",
    "ProgbarLogger": "is built in: set trainer.verbose",
    "History": "is built in: RUN/history.csv",
}
_PREFIXES = ("keras.callbacks.", "tf.keras.callbacks.", "tensorflow.keras.callbacks.", "dynarch.hooks.", "dynarch.")
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True)
class CallbackSpec:
    """One configured callback: its key under `callbacks`, its class, and its checked keyword arguments."""

    name: str
    kind: str
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.options)


def _error(where: str, problem: str, expected: Any, received: Any, fix: str) -> ConfigError:
    return ConfigError(where, problem, expected=expected, received=received, fix=fix)


def class_name(where: str, target: Any) -> str:
    """`keras.callbacks.EarlyStopping` / `EarlyStopping` / `dynarch.hooks.BestCheckpoint` -> the class name."""
    allowed = ", ".join(sorted(ALLOWED_CALLBACKS))
    if not isinstance(target, str):
        raise _error(
            f"{where}._target_",
            "each callback names its class in _target_",
            f"one of {allowed}",
            "(not set)" if target is None else target,
            f"set {where}._target_: EarlyStopping",
        )
    name = next((target[len(p) :] for p in _PREFIXES if target.startswith(p)), target)
    if name in ALLOWED_CALLBACKS:
        return name
    reason = f" (it {REFUSED[name]})" if name in REFUSED else ""
    raise _error(
        f"{where}._target_",
        f"{target} is not on the allowlist of callbacks{reason}."
        f"{'' if reason else did_you_mean(name, ALLOWED_CALLBACKS)}",
        f"one of {allowed} (keras.callbacks.<Name> or dynarch's BestCheckpoint)",
        target,
        f"remove {where}" if reason else f"set {where}._target_ to one of {allowed}",
    )


def check_options(where: str, kind: str, raw: Mapping[str, Any], keys: Mapping[str, Check]) -> tuple:
    """Refuse keys the class does not take from a config and values of the wrong type or range."""
    out = []
    for key, value in raw.items():
        if key == "log_dir" and "histogram_freq" in keys:
            raise _error(
                f"{where}.log_dir",
                "TensorBoard writes into the run dir's tensorboard/ folder",
                "no log_dir (RUN/tensorboard is used)",
                value,
                f"remove {where}.log_dir",
            )
        if key not in keys:
            raise _error(
                f"{where}.{key}",
                f"{kind} does not take '{key}' from a config.{did_you_mean(key, keys)}",
                f"one of {', '.join(sorted(keys))}",
                key,
                f"rename or remove {where}.{key}",
            )
        check, expected = keys[key]
        if key == "update_freq" and value != "epoch":
            raise _error(
                f"{where}.update_freq",
                "only per-epoch summaries: Keras restarts its batch counter at every "
                "fit (each phase, each resume), so per-batch steps would overwrite each other",
                expected,
                value,
                f"set {where}.update_freq: epoch or remove it",
            )
        if key == "restore_best_weights" and value is True:
            raise _error(
                f"{where}.restore_best_weights",
                "restore_best_weights would keep a second copy of the "
                "weights outside the train-state checkpoint, so a resumed run could not be exact",
                "false",
                value,
                "keep the best weights with a BestCheckpoint callback "
                "(callbacks=[early_stopping,best_checkpoint]) and load RUN/checkpoint-best/",
            )
        if not check(value):
            raise _error(
                f"{where}.{key}",
                f"invalid value for '{key}'",
                expected,
                shown(value),
                f"set {where}.{key} to {expected}",
            )
        out.append((key, value))
    return tuple(out)


def parse_callbacks(raw: Any, where: str = "callbacks") -> tuple[CallbackSpec, ...]:
    """The `callbacks` node (null, or {name: {_target_: Class, key: value}}) -> checked specs (pure Python).

    A callback set to null (`callbacks.early_stopping=null`) is switched off.
    """
    if raw is None:
        return ()
    if not isinstance(raw, Mapping):
        raise _error(
            where,
            "callbacks are a mapping of name -> settings",
            "{early_stopping: {_target_: EarlyStopping, patience: 3}}",
            raw,
            "use callbacks=early_stopping (conf/callbacks/)",
        )
    specs = []
    for name, body in raw.items():
        here = f"{where}.{name}"
        if not isinstance(name, str) or not _NAME.match(name):
            raise _error(
                here,
                "a callback's name is a short word",
                "letters, digits, _ . - (at most 64)",
                name,
                "rename it, e.g. early_stopping",
            )
        if body is None:
            continue
        if not isinstance(body, Mapping):
            raise _error(
                here,
                "a callback's settings are a mapping",
                "{_target_: EarlyStopping, patience: 3}",
                body,
                f"write {here} as a mapping",
            )
        kind = class_name(here, body.get("_target_"))
        options = check_options(here, kind, {k: v for k, v in body.items() if k != "_target_"}, CALLBACK_KEYS[kind])
        specs.append(CallbackSpec(name, kind, options))
    for kind in ("TensorBoard", "BestCheckpoint"):  # both write a fixed folder of the run dir
        names = [s.name for s in specs if s.kind == kind]
        if len(names) > 1:
            raise _error(
                f"{where}.{names[1]}",
                f"two {kind} callbacks would write the same folder",
                f"at most one {kind}",
                names,
                f"keep one of {', '.join(names)}",
            )
    return tuple(specs)


def tensorboard_installed() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


def require_tensorboard(where: str, backend: str = "tensorflow") -> None:
    """Fail before training (and before TensorFlow is imported) when TensorBoard is asked for but missing,
    or under a backend other than TensorFlow (Keras' TensorBoard callback writes through tf.summary)."""
    if backend != "tensorflow":
        raise _error(
            where,
            f"TensorBoard logging needs the TensorFlow backend (this run: backend={backend})",
            "backend=tensorflow",
            backend,
            "use logger=csv or logger=mlflow under this backend",
        )
    if not tensorboard_installed():
        raise _error(
            where,
            "TensorBoard is asked for but the tensorboard package is not installed",
            "the tensorboard extra installed",
            "no module named 'tensorboard'",
            TENSORBOARD_EXTRA,
        )


def check_callbacks(specs: Iterable[CallbackSpec], run, rows: int | None = None) -> None:
    """Checks that need the whole run (pure Python): call after the schedule is attached, before training;
    again with `rows` (the training rows loaded) when the data turned out too small for a validation split."""
    phases = getattr(run, "phases", ())
    data = getattr(run, "data", None)
    no_val = data.no_validation(rows) if hasattr(data, "no_validation") else None
    for spec in specs:
        where, kwargs = f"callbacks.{spec.name}", spec.kwargs
        if spec.kind == "TensorBoard":
            require_tensorboard(where, getattr(run, "backend", "tensorflow"))
        monitor = kwargs.get("monitor", "val_loss")
        if spec.kind != "TensorBoard" and no_val and monitor.startswith("val_"):
            raise _error(
                f"{where}.monitor",
                f"{monitor} does not exist: {no_val}",
                "loss or accuracy, or a validation split",
                monitor,
                f"set {where}.monitor=loss, or {data.validation_remedy(rows)}",
            )
        scheduled = [p for p in phases if getattr(p.optimizer, "schedule", None)]
        if spec.kind == "ReduceLROnPlateau" and scheduled:
            raise _error(
                where,
                "ReduceLROnPlateau sets the learning rate, but a learning-rate schedule "
                f"(optimizer.schedule={scheduled[0].optimizer.schedule}) drives it",
                "a constant learning rate (optimizer.schedule: null)",
                spec.kind,
                f"remove {where} or set optimizer.schedule=null",
            )


# ------------------------------------------------------------------------------------------ runtime side


class Restorable:
    """Mixin for the configured callbacks: a name, a JSON-able state, and a restored state applied after
    Keras' `on_train_begin` (which resets stock callbacks) or at once for run-scoped callbacks."""

    dynarch_name = ""
    dynarch_kind = ""
    _pending: dict[str, Any] | None = None

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self._apply_pending()

    def _apply_pending(self) -> None:
        if self._pending is not None:
            for key, value in self._pending.items():
                setattr(self, key, value)
            self._pending = None

    def dynarch_state(self) -> dict[str, Any]:
        return {k: _plain(getattr(self, k, None)) for k in STATE_KEYS.get(self.dynarch_kind, ())}


def _plain(value: Any) -> Any:
    """Numbers from logs or NumPy as plain Python (JSON-able); anything else as None."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


class BestCheckpointLogic:
    """dynarch's best-only checkpoint: RUN/checkpoint-best/ in the safe format of checkpoint/ (safetensors +
    manifest), rewritten atomically whenever `monitor` improves; the manifest adds best: {monitor, value,
    mode, epoch (1-based, as printed)}. Its state spans the whole run, schedules included."""

    def __init__(
        self,
        out_dir: Path,
        run,
        monitor: str = "val_loss",
        mode: str = "auto",
        min_delta: float = 0.0,
        verbose: int = 0,
    ):
        super().__init__()
        self.folder, self.run = Path(out_dir) / BEST_SUBDIR, run
        self.monitor, self.min_delta, self.verbose = monitor, float(min_delta), verbose
        self.mode = mode if mode != "auto" else ("max" if "acc" in monitor else "min")
        self.best: float | None = None
        self.best_epoch: int | None = None

    def improves(self, value: float) -> bool:
        if self.best is None:
            return True
        return value < self.best - self.min_delta if self.mode == "min" else value > self.best + self.min_delta

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or not math.isfinite(float(value)) or not self.improves(float(value)):
            return
        phase = phase_of(self.model, self.run)
        if phase is None:
            log.warning(
                "best checkpoint skipped at epoch %d: cannot tell which phase's architecture the model "
                "has (set model.dynarch_phase in the phase loop)",
                epoch + 1,
            )
            return
        from .checkpoint import model_manifest, model_tensors, save_checkpoint

        best = {"monitor": self.monitor, "value": float(value), "mode": self.mode, "epoch": epoch + 1}
        extra = {"phase": phase.index, "schedule": self.run.schedule} if self.run.schedule else {}
        save_checkpoint(
            self.folder,
            model_tensors(self.model),
            model_manifest(phase.arch, self.run.variant, kind="best", best=best, seed=self.run.seed, **extra),
        )
        self.best, self.best_epoch = float(value), epoch
        if self.verbose:
            print(f"epoch {epoch + 1}: {self.monitor} improved to {value:.4f}; saved {self.folder}", flush=True)


def phase_of(model, run):
    """The phase whose architecture `model` has: the loop's hint, the only phase, or the one phase whose
    variable shapes match (None when that is ambiguous)."""
    phases = run.phases
    hint = getattr(model, "dynarch_phase", None)
    if isinstance(hint, int) and 0 <= hint < len(phases):
        return phases[hint]
    if len(phases) == 1:
        return phases[0]
    from .migrate import spec_variable_shapes

    shapes = {v.path: tuple(v.shape) for v in model.weights}
    matches = [p for p in phases if spec_variable_shapes(p.arch) == shapes]
    return matches[0] if len(matches) == 1 else None


@functools.cache
def keras_class(kind: str) -> type:
    """The class built for `kind`: Restorable + the stock Keras callback (or dynarch's BestCheckpoint)."""
    import keras

    bases = (
        (BestCheckpointLogic, keras.callbacks.Callback)
        if kind == "BestCheckpoint"
        else (getattr(keras.callbacks, kind),)
    )
    return type(kind, (Restorable, *bases), {"dynarch_kind": kind, "__module__": __name__})


def build_callbacks(specs: Iterable[CallbackSpec], out_dir: Path, run) -> list:
    """Keras callbacks for `specs`, to pass to `train(..., callbacks=...)` (every phase's fit gets them).

    Args:
        specs: from parse_callbacks.
        out_dir: the run dir (TensorBoard writes RUN/tensorboard, BestCheckpoint RUN/checkpoint-best).
        run: the RunConfig (phases: which architecture a best checkpoint belongs to).
    """
    specs = tuple(specs)
    check_callbacks(specs, run)
    out = []
    for spec in specs:
        cls, kwargs = keras_class(spec.kind), spec.kwargs
        if spec.kind == "BestCheckpoint":
            callback = cls(out_dir, run, **kwargs)
        elif spec.kind == "TensorBoard":
            callback = cls(log_dir=str(Path(out_dir) / TENSORBOARD_SUBDIR), **kwargs)
        else:
            callback = cls(**kwargs)
        callback.dynarch_name = spec.name
        out.append(callback)
    return out


def _named(callbacks: Iterable) -> dict[str, Any]:
    """name -> configured callback (unwrapping ContinuedFit), for those built here."""
    out = {}
    for callback in callbacks:
        callback = getattr(callback, "inner", callback)
        if isinstance(callback, Restorable) and callback.dynarch_name:
            out[callback.dynarch_name] = callback
    return out


def callback_states(callbacks: Iterable) -> dict[str, Any]:
    """{name: {class, state}} of the configured callbacks: JSON-able, for the train-state manifest."""
    return {name: {"class": cb.dynarch_kind, "state": cb.dynarch_state()} for name, cb in _named(callbacks).items()}


def restore_callback_states(callbacks: Iterable, states: Any, continues_phase: bool = True) -> None:
    """Arm the configured callbacks with the states a train-state checkpoint recorded.

    A stock callback gets its state right after its next `on_train_begin` (Keras resets it there); a
    run-scoped one (BestCheckpoint) at once. With `continues_phase=False` (the checkpoint's phase had
    ended, the next fit is a new phase) only run-scoped states apply: the others start afresh, as they
    would have without the kill. A callback of another class, or one not configured now, is skipped.
    """
    if not states:
        return
    if not isinstance(states, Mapping):
        raise CheckpointError(
            "callbacks",
            "the train-state manifest has malformed callback states",
            expected="a mapping name -> {class, state}",
            received=type(states).__name__,
            fix="resume from another checkpoint",
        )
    for name, callback in _named(callbacks).items():
        entry = states.get(name)
        if not isinstance(entry, Mapping) or entry.get("class") != callback.dynarch_kind:
            if entry is not None:
                log.warning(
                    "callback %s: the checkpoint holds the state of a %s; it starts afresh",
                    name,
                    entry.get("class") if isinstance(entry, Mapping) else type(entry).__name__,
                )
            continue
        state = entry.get("state")
        keys = STATE_KEYS[callback.dynarch_kind]
        if (
            not isinstance(state, Mapping)
            or set(state) - set(keys)
            or not all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in state.values())
        ):
            raise CheckpointError(
                f"callbacks.{name}",
                "the train-state manifest has a malformed callback state",
                expected=f"numbers or null for {', '.join(keys)}",
                received=repr(state)[:120],
                fix="resume from another checkpoint",
            )
        if callback.dynarch_kind in RUN_SCOPED:
            callback._pending = dict(state)
            callback._apply_pending()
        elif continues_phase:
            callback._pending = dict(state)
