"""Optimizer and learning-rate schedule from plain data, through `keras.optimizers.get`.

`check_optimizer` validates an OptimizerConfig in pure Python (no TensorFlow): the optimizer and schedule
names against static lists of Keras 3.15 class names (closest name suggested), each hyper-parameter's range,
and that every key set is one the chosen optimizer or schedule takes (nothing is silently ignored).
`make_optimizer` turns the config into `{"class_name": ..., "config": {...}}` and lets Keras build it, so
whatever the config says is what Keras gets. Tables checked against Keras by tests/test_optim.py.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable

from .errors import ConfigError, did_you_mean, shown

if TYPE_CHECKING:  # config.py imports this module; the type is only needed for hints
    from .config import OptimizerConfig

# Keras optimizer class -> the OptimizerConfig keys it takes besides the common ones (COMMON_KEYS).
# LossScaleOptimizer and MultiOptimizer wrap other optimizers: not nameable from a config. Lamb is in
# keras.optimizers but keras.optimizers.get cannot resolve it in Keras 3.15, so it is left out.
OPTIMIZERS: dict[str, frozenset[str]] = {
    name: frozenset(keys)
    for name, keys in {
        "Adadelta": ("rho", "epsilon"),
        "Adafactor": (),
        "Adagrad": ("epsilon",),
        "Adam": ("beta_1", "beta_2", "epsilon", "amsgrad"),
        "AdamW": ("beta_1", "beta_2", "epsilon", "amsgrad"),
        "Adamax": ("beta_1", "beta_2", "epsilon"),
        "Ftrl": (),
        "Lion": ("beta_1", "beta_2"),
        "Muon": ("epsilon", "momentum", "nesterov"),
        "Nadam": ("beta_1", "beta_2", "epsilon"),
        "RMSprop": ("rho", "momentum", "epsilon", "centered"),
        "SGD": ("momentum", "nesterov"),
        "ScheduleFreeAdamW": ("beta_1", "beta_2", "epsilon"),
    }.items()
}
COMMON_KEYS = ("weight_decay", "clipnorm", "clipvalue", "global_clipnorm")
# Short names: lower-case class names (adam, adamw, sgd, rmsprop, lion, ...), as Keras itself accepts.
SHORT_NAMES = {name.lower(): name for name in OPTIMIZERS}

# Schedules: dynarch name -> (Keras class, the keys it takes). `lr` is the peak rate in every schedule.
SCHEDULES: dict[str, tuple[str, frozenset[str]]] = {
    "cosine": ("CosineDecay", frozenset({"decay_steps", "alpha", "warmup_steps"})),
    "exponential": ("ExponentialDecay", frozenset({"decay_steps", "decay_rate", "staircase"})),
    "piecewise": ("PiecewiseConstantDecay", frozenset({"boundaries", "decay_rate"})),
}
SCHEDULE_NAMES = {**{k: k for k in SCHEDULES}, **{cls: k for k, (cls, _) in SCHEDULES.items()}, "constant": None}
SCHEDULE_KEYS = frozenset().union(*(keys for _, keys in SCHEDULES.values()))

MAX_STEPS = 2**31 - 1  # schedules compare the int step counter with these: keep them within int32


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _steps(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_STEPS


# key -> (check, expected) for every value that is set (not None).
RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "lr": (lambda v: _number(v) and v > 0, "a finite number > 0"),
    "weight_decay": (lambda v: _number(v) and v >= 0, "a finite number >= 0 (0: none)"),
    "momentum": (lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "beta_1": (lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "beta_2": (lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "rho": (lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "epsilon": (lambda v: _number(v) and v > 0, "a finite number > 0"),
    "clipnorm": (lambda v: _number(v) and v > 0, "a finite number > 0"),
    "clipvalue": (lambda v: _number(v) and v > 0, "a finite number > 0"),
    "global_clipnorm": (lambda v: _number(v) and v > 0, "a finite number > 0"),
    "decay_steps": (_steps, f"an integer in [1, {MAX_STEPS}]"),
    "warmup_steps": (lambda v: _steps(v) or v == 0, f"an integer in [0, {MAX_STEPS}]"),
    "alpha": (lambda v: _number(v) and 0 <= v <= 1, "a number in [0, 1] (the final fraction of lr)"),
    "decay_rate": (lambda v: _number(v) and 0 < v <= 1, "a number in (0, 1]"),
    "boundaries": (
        lambda v: bool(v) and all(_steps(b) for b in v) and list(v) == sorted(set(v)),
        "a non-empty, strictly increasing list of step numbers > 0",
    ),
}


def _where(where: str, key: str) -> str:
    return f"{where}.{key}"


def optimizer_class(name: Any, where: str = "optimizer") -> str:
    """The Keras class name for `optimizer.name` (a short name like adamw, or a class name like AdamW)."""
    if isinstance(name, str):
        if name in OPTIMIZERS:
            return name
        if name.lower() in SHORT_NAMES:
            return SHORT_NAMES[name.lower()]
    options = sorted({*SHORT_NAMES, *OPTIMIZERS})
    raise ConfigError(
        _where(where, "name"),
        f"unknown optimizer '{name}'.{did_you_mean(name, options)}",
        expected=f"one of {', '.join(sorted(SHORT_NAMES))} (or the Keras class name)",
        received=name,
        fix=f"set {where}.name=adam",
    )


def schedule_kind(name: Any, where: str = "optimizer") -> str | None:
    """'cosine', 'exponential', 'piecewise', or None (a constant learning rate)."""
    if name is None or (isinstance(name, str) and name in SCHEDULE_NAMES):
        return None if name is None else SCHEDULE_NAMES[name]
    raise ConfigError(
        _where(where, "schedule"),
        f"unknown learning-rate schedule '{name}'.{did_you_mean(name, SCHEDULE_NAMES)}",
        expected="null (constant), cosine, exponential or piecewise (or the Keras class name)",
        received=name,
        fix=f"set {where}.schedule=cosine or null",
    )


def _set_keys(cfg: OptimizerConfig) -> dict[str, Any]:
    from dataclasses import asdict

    return {k: v for k, v in asdict(cfg).items() if v is not None and k not in ("name", "schedule")}


def check_optimizer(cfg: OptimizerConfig, where: str = "optimizer") -> None:
    """Refuse unknown names, out-of-range values and keys the chosen optimizer or schedule does not take.

    Raises ConfigError naming `where.<key>`; imports nothing from TensorFlow or Keras.
    """
    cls = optimizer_class(cfg.name, where)
    kind = schedule_kind(cfg.schedule, where)
    values = _set_keys(cfg)
    for key, value in values.items():
        check, expected = RANGES.get(key, (lambda v: True, ""))
        if not check(value):
            raise ConfigError(
                _where(where, key),
                f"invalid value for '{key}'",
                expected=expected,
                received=shown(value),
                fix=f"set {where}.{key} to {expected}",
            )
    for key in values:
        if key in SCHEDULE_KEYS:
            takes = SCHEDULES[kind][1] if kind else frozenset()
            if key not in takes:
                users = ", ".join(k for k, (_, keys) in SCHEDULES.items() if key in keys)
                used = f"schedule '{cfg.schedule}'" if kind else "a constant learning rate (schedule: null)"
                raise ConfigError(
                    _where(where, key),
                    f"'{key}' is not used by {used}",
                    expected=f"'{key}' only with schedule {users}",
                    received=values[key],
                    fix=f"remove {where}.{key}, or set {where}.schedule to {users}",
                )
        elif key not in ("lr", *COMMON_KEYS) and key not in OPTIMIZERS[cls]:
            takes = ", ".join(sorted(OPTIMIZERS[cls])) or "none"
            raise ConfigError(
                _where(where, key),
                f"optimizer {cls} does not take '{key}'",
                expected=f"{cls}'s own keys: {takes} (and lr, {', '.join(COMMON_KEYS)})",
                received=values[key],
                fix=f"remove {where}.{key} (set it to null)",
            )
    clips = [k for k in ("clipnorm", "clipvalue", "global_clipnorm") if k in values]
    if len(clips) > 1:
        raise ConfigError(
            _where(where, clips[1]),
            "Keras takes only one of clipnorm, clipvalue, global_clipnorm",
            expected="one clipping setting",
            received=", ".join(clips),
            fix="keep one of them, set the others to null",
        )
    if cls == "AdamW" and cfg.weight_decay is None:
        raise ConfigError(
            _where(where, "weight_decay"),
            "AdamW needs an explicit weight_decay",
            expected="a number >= 0 (Keras' own default is 0.004)",
            received=None,
            fix=f"set {where}.weight_decay=0.004",
        )
    if kind is not None:
        required = {
            "cosine": ("decay_steps",),
            "exponential": ("decay_steps", "decay_rate"),
            "piecewise": ("boundaries", "decay_rate"),
        }[kind]
        for key in required:
            if key not in values:
                raise ConfigError(
                    _where(where, key),
                    f"schedule '{cfg.schedule}' needs '{key}'",
                    expected=RANGES[key][1],
                    received="(not set)",
                    fix=f"set {where}.{key}",
                )


def _schedule(cfg: OptimizerConfig, kind: str) -> dict[str, Any]:
    """The Keras serialization of the learning-rate schedule (module path as Keras writes it)."""
    if kind == "cosine":
        warmup = cfg.warmup_steps or 0
        config = {
            "initial_learning_rate": 0.0 if warmup else cfg.lr,
            "decay_steps": cfg.decay_steps,
            "alpha": 0.0 if cfg.alpha is None else cfg.alpha,
            "warmup_target": cfg.lr if warmup else None,
            "warmup_steps": warmup,
        }
    elif kind == "exponential":
        config = {
            "initial_learning_rate": cfg.lr,
            "decay_steps": cfg.decay_steps,
            "decay_rate": cfg.decay_rate,
            "staircase": bool(cfg.staircase),
        }
    else:  # piecewise: lr until the first boundary, then times decay_rate at each boundary
        config = {
            "boundaries": list(cfg.boundaries),
            "values": [cfg.lr * cfg.decay_rate**i for i in range(len(cfg.boundaries) + 1)],
        }
    return {
        "module": "keras.optimizers.schedules",
        "class_name": SCHEDULES[kind][0],
        "config": config,
        "registered_name": None,
    }


def optimizer_identifier(cfg: OptimizerConfig) -> dict[str, Any]:
    """The plain-data identifier `keras.optimizers.get` builds the optimizer from (no TensorFlow needed)."""
    check_optimizer(cfg)
    cls = optimizer_class(cfg.name)
    kind = schedule_kind(cfg.schedule)
    config: dict[str, Any] = {"learning_rate": _schedule(cfg, kind) if kind else cfg.lr}
    for key, value in _set_keys(cfg).items():
        if key not in SCHEDULE_KEYS and key != "lr":
            config[key] = value
    # 0 means no weight decay; Keras skips the decay step only for None (AdamW requires a number).
    if config.get("weight_decay") == 0 and cls != "AdamW":
        config["weight_decay"] = None
    return {"class_name": cls, "config": config}


def make_optimizer(cfg: OptimizerConfig):
    """Build the Keras optimizer `cfg` describes (imports Keras).

    Args:
        cfg: a validated OptimizerConfig.

    Returns:
        A `keras.optimizers.Optimizer`.
    """
    import keras

    return keras.optimizers.get(optimizer_identifier(cfg))
