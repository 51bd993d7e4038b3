"""Typed run settings built from the composed config. Only the entry point touches DictConfig; this
module takes plain containers and returns dataclasses, failing on unknown keys with a suggestion."""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping

from .data.catalog import register_resolver
from .errors import ConfigError, shown, unknown_key_error
from .optim import RANGES as OPTIMIZER_RANGES
from .schedule import PhaseSpec
from .spec import ArchSpec, parse_arch

register_resolver()  # `${dynarch.dataset:input_shape,${.name}}` in conf/data/*.yaml (data lines)
PRIMITIVES = (str, int, float, bool, type(None))
INT32_MAX = 2**31 - 1
SEED_MAX = 2**32 - 1  # numpy.random.seed and keras.utils.set_random_seed refuse larger seeds


@dataclass(frozen=True)
class DataConfig:
    """Where the data comes from and what it holds: the common keys, then the keys of one source (tfds:
    name, data_dir, offline_fallback, probe_*; idx / npz / folder: path). `dynarch.data.check_config` refuses
    another source's keys, fills input_shape / num_classes from the dataset table (tfds) and checks the rest."""

    loader: str = "tfds"  # a source module of dynarch/data/: tfds | idx | npz | folder | subset
    name: str = "mnist"
    input_shape: tuple[int, ...] | None = None  # null: from the table of known datasets (tfds)
    num_classes: int | None = None  # null: likewise
    val_fraction: float = 0.1
    limit_train: int | None = None
    limit_test: int | None = None
    augment: Any = None  # [{_target_: keras.layers.RandomFlip, ...}]: training split only
    data_dir: str | None = None  # tfds
    offline_fallback: bool = True  # tfds: offline, MNIST (only) may use the shipped 5,000 digits
    probe_host: str | None = None  # tfds: null = the dataset's download host (from the table)
    probe_port: int | None = None
    probe_timeout_s: float = 3.0
    path: str | None = None  # idx (folder), npz (file), folder (folder)

    def no_validation(self, rows: int | None = None) -> str | None:
        """Why this data will have no validation split, or None. `rows`: the training rows the source holds,
        once loaded (before: `limit_train`, when set, bounds them). The split is `round(rows * val_fraction)`
        rows (data/arrays.py split_validation), so a small limit leaves none: 5 x 0.1 rounds to 0."""
        if self.val_fraction == 0:
            return "data.val_fraction is 0 (no validation)"
        rows = rows if rows is not None else self.limit_train
        if rows is None or int(round(rows * self.val_fraction)) >= 1:
            return None
        where = "data.limit_train" if rows == self.limit_train else "the training split"
        return f"{where} leaves no validation example ({rows} x data.val_fraction={self.val_fraction} rounds to 0)"

    def validation_remedy(self, rows: int | None = None) -> str:
        """What gives this data a validation split (for the `fix:` of an error built on no_validation)."""
        if self.val_fraction == 0:
            return "data.val_fraction=0.1"
        rows = rows if rows is not None else self.limit_train
        need = max(1, int(0.5 / self.val_fraction))  # the fewest rows whose split rounds to >= 1
        while int(round(need * self.val_fraction)) < 1:
            need += 1
        fraction = math.ceil(50 / rows + 1e-9) / 100 if rows else 1.0  # the least fraction (in %) that does
        while rows and int(round(rows * fraction)) < 1:
            fraction += 0.01
        options = [f"data.val_fraction={fraction:g}"] if rows and rows >= 2 and fraction < 1 else []
        if rows == self.limit_train:
            options.insert(0, f"data.limit_train={need} or more")
        return ", or ".join(options) or "more training data"

    @classmethod
    def from_raw(cls, raw: Any) -> "DataConfig":
        """The `data` node -> DataConfig: types and ranges here, then the source's own checks (pure Python)."""
        from .data import check_config

        if not isinstance(raw, Mapping):
            return from_mapping(cls, raw, "data")  # the error for a non-mapping
        plain = {k: v for k, v in raw.items() if k != "augment"}  # a list of mappings: checked by the source
        shape = plain.get("input_shape")
        if isinstance(shape, (list, tuple)) and shape and all(d is None for d in shape):
            plain["input_shape"] = None  # the table's [h, w, c] for a name it does not list: unknown
        data = dataclasses.replace(from_mapping(cls, plain, "data"), augment=raw.get("augment"))
        return check_config(data, list(raw))


@dataclass(frozen=True)
class TrainerConfig:
    epochs: int = 5
    batch_size: int = 128
    steps_per_execution: int = 64
    jit_compile: str | bool = "auto"
    deterministic: bool = True
    verbose: int = 2
    intra_op_threads: str | int = "auto"
    precision: str = "float32"
    checkpoint_every: int = 256
    keep_checkpoints: int = 2
    export_keras: bool = False
    strategy: str = "auto"
    logical_cpus: int = 0
    loop: str = "auto"  # keras (one fit per phase) | fused (K steps per compiled call, data on the device) | auto
    device_data_mb: int = 1024  # fused loop: the training split is placed on the device only below this size
    # JAX persistent compilation cache: auto (the sweep dir, else RUN/.cache) | off. Never a path from a config:
    # configs cannot write outside the run; DYNARCH_COMPILE_CACHE (the user's environment) may name a directory.
    compile_cache: str = "auto"


@dataclass(frozen=True)
class OptimizerConfig:
    """Any Keras optimizer and learning-rate schedule as plain data (built by dynarch/optim.py through
    `keras.optimizers.get`). A key left null is not passed to Keras, so the optimizer's own Keras default
    applies; a key set for an optimizer or schedule that does not take it is refused, never ignored."""

    name: str = "adam"  # adam | adamw | sgd | rmsprop | ... or a Keras class name (AdamW)
    lr: float = 1e-3  # the (peak) learning rate
    weight_decay: float | None = 0.0  # 0: none; passed as written (AdamW too: no hidden 0.004)
    momentum: float | None = None  # sgd, rmsprop
    nesterov: bool | None = None  # sgd
    beta_1: float | None = None  # adam, adamw, nadam, adamax, lion
    beta_2: float | None = None
    epsilon: float | None = None
    rho: float | None = None  # rmsprop, adadelta
    amsgrad: bool | None = None  # adam, adamw
    centered: bool | None = None  # rmsprop
    clipnorm: float | None = None  # at most one of the three clipping settings
    clipvalue: float | None = None
    global_clipnorm: float | None = None
    schedule: str | None = None  # null (constant) | cosine | exponential | piecewise
    decay_steps: int | None = None  # cosine, exponential
    warmup_steps: int | None = None  # cosine: linear warm-up from 0 to lr, then cosine decay
    alpha: float | None = None  # cosine: final lr as a fraction of lr (default 0)
    decay_rate: float | None = None  # exponential; piecewise: lr factor at each boundary
    staircase: bool | None = None  # exponential
    boundaries: tuple[int, ...] | None = None  # piecewise: steps where lr is multiplied by decay_rate

    def __post_init__(self):
        from .optim import check_optimizer

        check_optimizer(self)


@dataclass(frozen=True)
class MigrateConfig:
    strict: bool = False  # fail before training unless everything carries over
    new_blocks: str = "identity"  # identity (Net2DeeperNet where widths agree) | random


@dataclass(frozen=True)
class LineageConfig:
    parent: str | None = None  # sweeps: every job warm-starts from this run (= init_from)


@dataclass(frozen=True)
class RunConfig:
    """Everything one training run needs, validated."""

    arch: ArchSpec
    data: DataConfig
    trainer: TrainerConfig
    optimizer: OptimizerConfig
    seed: int = 42
    init_from: str | None = None
    migrate: MigrateConfig = field(default_factory=MigrateConfig)
    optimized_metric: str = "val_accuracy"
    resume: bool = False
    variant: str = "base"
    schedule: str | None = None  # the `+schedule` name; None: one phase of trainer.epochs
    callbacks: tuple = ()  # hooks.CallbackSpec per `callbacks.<name>` (not in the resume fingerprint)
    loggers: tuple = ()  # loggers.LoggerSpec per `logger.<name>`
    phases: tuple[PhaseSpec, ...] = ()  # filled in by __post_init__ or schedule.attach_schedule
    backend: str = "tensorflow"  # the `backend` key, else KERAS_BACKEND (runtime/backend.py)
    loop: str = "keras"  # trainer.loop resolved: keras | fused | auto (decided at start-up: steploop.pick_loop)

    def __post_init__(self):
        if not self.phases:  # a plain run is one phase with the run's own architecture
            object.__setattr__(
                self, "phases", (PhaseSpec(0, self.variant, self.arch, self.optimizer, epochs=self.trainer.epochs),)
            )

    @property
    def total_epochs(self) -> int | None:
        """Epochs of the whole run; None when a phase ends on a plateau (known only while training)."""
        if self.phases[-1].rest:
            return self.trainer.epochs
        lengths = [p.epochs for p in self.phases]
        return None if None in lengths else sum(lengths)


# (key, check, expected) per field whose valid range is narrower than its type.
RULES: dict[str, tuple[Any, str]] = {
    "data.loader": (lambda v: v.isidentifier(), "a source name: tfds, idx, npz, folder or subset"),
    "data.input_shape": (
        lambda v: v is None or (len(v) == 3 and all(d <= 65_536 for d in v)),
        "null or [height, width, channels], each at most 65536",
    ),
    "data.num_classes": (lambda v: v is None or 2 <= v <= 1_000_000, "null or an integer in [2, 1000000]"),
    "data.val_fraction": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "data.limit_train": (lambda v: v is None or 0 < v <= INT32_MAX, f"null or an integer in [1, {INT32_MAX}]"),
    "data.limit_test": (lambda v: v is None or 0 < v <= INT32_MAX, f"null or an integer in [1, {INT32_MAX}]"),
    "data.probe_timeout_s": (lambda v: 0 < v <= 30, "a number of seconds in (0, 30]"),
    "data.probe_port": (lambda v: v is None or 0 < v < 65_536, "null or a TCP port in [1, 65535]"),
    # Upper bounds: TensorFlow takes sizes and counters as int32; more is a typo, and would fail deep inside TF.
    "trainer.epochs": (lambda v: 0 < v <= 100_000, "an integer > 0 (at most 100000)"),
    "trainer.batch_size": (lambda v: 0 < v <= INT32_MAX, f"an integer > 0 (at most {INT32_MAX})"),
    "trainer.steps_per_execution": (lambda v: 0 < v <= INT32_MAX, f"an integer > 0 (at most {INT32_MAX})"),
    "trainer.jit_compile": (lambda v: v in ("auto", True, False), "auto, true or false"),
    "trainer.verbose": (lambda v: v in (0, 1, 2), "0, 1 or 2"),
    "trainer.intra_op_threads": (
        lambda v: v == "auto" or (isinstance(v, int) and 0 <= v <= 1024),
        "auto or an integer in [0, 1024] (0 = TensorFlow's default)",
    ),
    "trainer.checkpoint_every": (
        lambda v: 0 <= v <= INT32_MAX,
        f"an integer >= 0 (0 = only at epoch ends; at most {INT32_MAX})",
    ),
    "trainer.keep_checkpoints": (lambda v: 1 <= v <= 1000, "an integer in [1, 1000]"),
    "trainer.strategy": (
        lambda v: v in ("auto", "default", "mirrored", "multi_worker"),
        "auto, default, mirrored or multi_worker",
    ),
    "trainer.loop": (lambda v: v in ("auto", "keras", "fused"), "auto, keras or fused"),
    "trainer.device_data_mb": (lambda v: 0 <= v <= 1_048_576, "an integer in [0, 1048576] (MiB; 0 = always stream)"),
    "trainer.compile_cache": (lambda v: v in ("auto", "off"), "auto or off (a directory: DYNARCH_COMPILE_CACHE=DIR)"),
    "trainer.logical_cpus": (lambda v: 0 <= v <= 64, "an integer in [0, 64] (0 = no split)"),
    "trainer.precision": (
        lambda v: v in ("float32", "mixed_float16", "mixed_bfloat16"),
        "float32, mixed_float16 or mixed_bfloat16",
    ),
    # optimizer.*: one table (optim.RANGES) for the ranges; names and cross-key rules in optim.check_optimizer.
    **{
        f"optimizer.{key}": (lambda v, check=check: v is None or check(v), expected)
        for key, (check, expected) in OPTIMIZER_RANGES.items()
    },
    "migrate.new_blocks": (lambda v: v in ("identity", "random"), "'identity' or 'random'"),
}


_UnionType = type(int | None)


def _type_ok(value: Any, annotation: Any) -> tuple[bool, Any]:
    """Check `value` against a simple annotation; returns (ok, value converted to that type)."""
    options = (
        typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, _UnionType) else (annotation,)
    )
    for option in options:
        if option is type(None) and value is None:
            return True, None
        if option is bool and isinstance(value, bool):
            return True, value
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return True, value
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        if option is str and isinstance(value, str):
            return True, value
        if (
            typing.get_origin(option) is tuple
            and isinstance(value, (list, tuple))
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
        ):
            return True, tuple(value)
    return False, value


def from_mapping(cls: type, raw: Mapping[str, Any] | None, where: str) -> Any:
    """Build dataclass `cls` from `raw`, refusing unknown keys and wrongly typed or out-of-range values."""
    raw = raw or {}
    if not isinstance(raw, Mapping):
        raise ConfigError(
            where,
            f"'{where}' must be a mapping of settings",
            expected="key: value pairs",
            received=raw,
            fix=f"set individual keys, e.g. {where}.<key>=VALUE",
        )
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    values = {}
    for key, value in raw.items():
        if key not in fields:
            raise unknown_key_error(where, key, fields)
        ok, value = _type_ok(value, hints[key])
        rule = RULES.get(f"{where}.{key}")
        if ok and rule and not rule[0](value):
            ok = False
        if not ok:
            expected = rule[1] if rule else str(hints[key]).replace("typing.", "")
            raise ConfigError(
                f"{where}.{key}",
                f"invalid value for '{key}'",
                expected=expected,
                received=shown(value),
                fix=f"set {where}.{key} to {expected}",
            )
        values[key] = value
    return cls(**values)


def _check_primitive_leaves(node: Any, where: str) -> None:
    """Refuse anything but plain data: an interpolation must never smuggle in a callable or object."""
    if isinstance(node, Mapping):
        for k, v in node.items():
            _check_primitive_leaves(v, f"{where}.{k}" if where else str(k))
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            _check_primitive_leaves(v, f"{where}[{i}]")
    elif not isinstance(node, PRIMITIVES):
        raise ConfigError(
            where,
            "config values must be plain data",
            expected="str, int, float, bool or null",
            received=type(node).__name__,
            fix="remove the interpolation or resolver producing it",
        )


TOP_KEYS = (
    "model",
    "data",
    "trainer",
    "optimizer",
    "seed",
    "init_from",
    "migrate",
    "lineage",
    "optimized_metric",
    "resume",
    "callbacks",
    "logger",
    "backend",
)
METRICS = ("val_accuracy", "test_accuracy")


def load_run_config(cfg: Mapping[str, Any], variant: str = "base") -> RunConfig:
    """Validate a resolved, plain-container config (without its `hydra` node) into a RunConfig.

    Args:
        cfg: `OmegaConf.to_container(cfg, resolve=True)` minus `hydra`.
        variant: the `+arch` choice, recorded in manifests and reports ("base" when none).

    Returns:
        The RunConfig. Raises ConfigError naming the first bad key.
    """
    from .hooks import parse_callbacks  # pure Python: no TensorFlow
    from .loggers import parse_loggers
    from .runtime.backend import resolve_backend  # pure Python: decides the backend before any framework import

    _check_primitive_leaves(cfg, "")
    for key in cfg:
        if key not in TOP_KEYS:
            raise unknown_key_error("", key, TOP_KEYS)
    data = DataConfig.from_raw(cfg.get("data"))  # per-source keys; shape and classes from the table
    backend = resolve_backend(cfg.get("backend"), data)
    seed = cfg.get("seed", 42)
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= SEED_MAX:
        raise ConfigError(
            "seed",
            "seed must be a non-negative integer that NumPy and Keras accept",
            expected=f"an integer in [0, {SEED_MAX}] (2**32 - 1), e.g. 42",
            received=seed,
            fix="set seed=42",
        )
    init_from = cfg.get("init_from")
    if init_from is not None and not isinstance(init_from, str):
        raise ConfigError(
            "init_from",
            "init_from must be a path",
            expected="a run dir or checkpoint file",
            received=init_from,
            fix="set init_from=outputs/DATE/TIME",
        )
    parent = from_mapping(LineageConfig, cfg.get("lineage"), "lineage").parent
    if parent is not None and init_from is not None and parent != init_from:
        raise ConfigError(
            "lineage.parent",
            "both lineage.parent and init_from name a source",
            expected="one warm-start source",
            received=f"lineage.parent={parent}, init_from={init_from}",
            fix="drop one of them (lineage.parent is init_from for every job of a sweep)",
        )
    for key, value in (("init_from", init_from), ("lineage.parent", parent)):
        if isinstance(value, str) and not value.strip():  # '' would silently train from scratch
            raise ConfigError(
                key,
                f"{key} is an empty path",
                expected="a run dir or checkpoint, or null",
                received=repr(value),
                fix=f"set {key}=RUN_DIR, or {key}=null to train from scratch",
            )
    init_from = init_from if init_from is not None else parent
    metric = cfg.get("optimized_metric", "val_accuracy")
    if metric not in METRICS:
        raise ConfigError(
            "optimized_metric",
            "unknown metric to return to the sweeper",
            expected=" or ".join(METRICS),
            received=metric,
            fix="set optimized_metric=val_accuracy",
        )
    if "model" not in cfg:
        raise ConfigError(
            "model", "no model selected", expected="model=mlp or model=cnn", received="(not set)", fix="add model=mlp"
        )
    arch = parse_arch(cfg["model"], data.num_classes)
    if tuple(arch.input_shape) != tuple(data.input_shape):
        raise ConfigError(
            "model.input_shape",
            "the model's input shape differs from the data's",
            expected=data.input_shape,
            received=arch.input_shape,
            fix="leave model.input_shape as ${data.input_shape}",
        )
    trainer = from_mapping(TrainerConfig, cfg.get("trainer"), "trainer")
    return RunConfig(
        arch=arch,
        data=data,
        trainer=trainer,
        optimizer=from_mapping(OptimizerConfig, cfg.get("optimizer"), "optimizer"),
        seed=seed,
        init_from=init_from,
        variant=variant,
        migrate=from_mapping(MigrateConfig, cfg.get("migrate"), "migrate"),
        optimized_metric=metric,
        resume=_resume_flag(cfg.get("resume", False)),
        callbacks=parse_callbacks(cfg.get("callbacks")),
        loggers=parse_loggers(cfg.get("logger")),
        backend=backend,
        loop=resolve_loop(trainer, backend, data),
    )


def resolve_loop(trainer: TrainerConfig, backend: str, data: DataConfig) -> str:
    """`trainer.loop` -> keras | fused | auto, from the config alone; `fused` where it cannot run is refused.
    `auto` (where both loops can run) is decided when the devices are known: steploop.pick_loop."""
    if trainer.strategy == "multi_worker":
        from .cluster import require_cluster, task_from_env

        if backend != "tensorflow":
            raise ConfigError(
                "trainer.strategy",
                f"multi_worker is not supported on the {backend} backend: it trains under TensorFlow's "
                "MultiWorkerMirroredStrategy",
                expected="backend=tensorflow with trainer.strategy=multi_worker",
                received=f"backend={backend}",
                fix="set backend=tensorflow, or use trainer.strategy=mirrored/auto on one machine",
            )

        require_cluster(task_from_env(multi_worker=True), trainer.batch_size)  # TF_CONFIG / Slurm, before TF
        return "fused"  # the custom loop under MultiWorkerMirroredStrategy (fit cannot drive it)
    several = trainer.strategy == "mirrored" or trainer.logical_cpus >= 2
    reasons = [
        (backend == "torch", "backend=torch", "the PyTorch backend trains with Keras fit only"),
        (bool(data.augment), "data.augment", "augmentation runs in the tf.data pipeline of the Keras loop"),
        (
            several,
            "trainer.logical_cpus" if trainer.logical_cpus >= 2 else "trainer.strategy",
            "the fused loop runs on one device",
        ),
    ]
    blocked = [(key, why) for hit, key, why in reasons if hit]
    if trainer.loop == "fused" and blocked:
        key, why = blocked[0]
        raise ConfigError(
            "trainer.loop",
            f"trainer.loop=fused cannot run with {key}: {why}",
            expected="trainer.loop=keras or auto with this setting",
            received="fused",
            fix=f"set trainer.loop=auto (it picks the Keras loop here), or drop {key}",
        )
    if trainer.loop == "auto" and blocked:
        return "keras"
    return trainer.loop


def _resume_flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(
            "resume",
            "resume is a switch",
            expected="true or false",
            received=value,
            fix="resume=true, with hydra.run.dir=RUN_DIR naming the run to continue",
        )
    return value
