"""Which Keras backend a run uses, decided from the config alone before any framework is imported
(config.py calls `resolve_backend`; the entry point and `get_runtime` call `use_backend`). Pure Python."""

from __future__ import annotations

import os
import sys
from typing import Any

from ..errors import ConfigError, DataError

BACKENDS = ("tensorflow", "jax", "torch")
# The module each backend needs importable; the extra that installs it is named after the backend
# (pip install 'dynarch[jax]', 'dynarch[torch]').
EXTRA = {"jax": "jax", "tensorflow": "tensorflow", "torch": "torch"}
SMALL_MODEL_FLOPS = 1_000_000  # forward FLOPs/sample below which a step is overhead-bound on CPU


def _installed(module: str) -> bool:
    """Whether `module` can be imported, without importing it (a module blocked in sys.modules counts as absent)."""
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: sys.modules[module] is None or has no spec
        return False


def resolve_backend(value: Any, data: Any) -> str:
    """The Keras backend of a run, decided from the config alone (no framework is imported).

    Precedence: the config key `backend` (written in the run's config.yaml, so a resume or a rerun uses the
    same one), else the KERAS_BACKEND environment variable, else tensorflow. Keras' own ~/.keras/keras.json
    is never consulted: dynarch always sets KERAS_BACKEND before Keras is imported.

    Args:
        value: the raw `backend` key (None: not set).
        data: the validated DataConfig (TFDS needs TensorFlow; augmentation runs in tf.data).
    """
    where = "backend"
    if value is None:
        env = os.environ.get("KERAS_BACKEND", "").strip()
        value, where = (env, "KERAS_BACKEND") if env else ("tensorflow", where)
    if value not in BACKENDS:
        raise ConfigError(
            where,
            f"unknown Keras backend '{value}'",
            expected=", ".join(BACKENDS[:-1]) + " or " + BACKENDS[-1],
            received=value,
            fix="set backend=tensorflow, backend=jax or backend=torch"
            + (" (or unset KERAS_BACKEND)" if where == "KERAS_BACKEND" else ""),
        )
    if not _installed(EXTRA[value]):
        raise ConfigError(
            where,
            f"the {value} backend is not installed",
            expected=f"the '{EXTRA[value]}' package",
            received="not importable",
            fix=f"pip install 'dynarch[{value}]'"
            if value != "tensorflow"
            else "pip install dynarch (TensorFlow is its default dependency)",
        )
    if value != "tensorflow":
        if getattr(data, "augment", None):
            raise ConfigError(
                "data.augment",
                f"augmentation runs in the tf.data pipeline, which backend={value} does not use",
                expected="no data.augment with this backend",
                received="augment layers",
                fix="drop data.augment (data.augment=null), or use backend=tensorflow",
            )
        if getattr(data, "loader", None) == "tfds" and not (
            _installed("tensorflow_datasets") and _installed("tensorflow")
        ):
            raise DataError(
                "data",
                f"data.loader=tfds ('{getattr(data, 'name', '?')}') needs TensorFlow and "
                f"tensorflow-datasets, which are not installed here (backend={value} does not need "
                "them otherwise)",
                expected="a source without TensorFlow: data=idx|npz|folder|mnist_subset",
                received="data.loader=tfds",
                fix="export the dataset to files on a machine with TFDS and use data=npz data.path=FILE "
                "(or data=idx / data=folder), or install tensorflow and tensorflow-datasets",
            )
    return value


def auto_intra_op_threads(trainer: Any, forward_flops: int | None, has_accelerator: bool) -> int:
    """Threads for one op (0: the backend's default, all cores), from `trainer.intra_op_threads`. `auto`: 1
    for small models on CPU — tiny matmuls gain nothing from splitting and the input pipeline gets a core
    (measured ~1.3x faster on the MLP with 2 cores under TensorFlow) — else 0, which the CNN needs."""
    if trainer.intra_op_threads != "auto":
        return int(trainer.intra_op_threads)
    small = forward_flops is not None and forward_flops < SMALL_MODEL_FLOPS
    return 1 if small and not has_accelerator else 0


def use_backend(name: str) -> None:
    """Make Keras run on `name`: sets KERAS_BACKEND before Keras is imported; once it is (Keras fixes its
    backend per process), a different backend is refused rather than silently ignored."""
    keras = sys.modules.get("keras")
    if keras is None:
        os.environ["KERAS_BACKEND"] = name
        return
    current = keras.backend.backend()
    if current != name:
        raise ConfigError(
            "backend",
            f"Keras already runs on {current} in this process; it cannot switch to {name}",
            expected=f"backend={current} (or a fresh process)",
            received=name,
            fix=f"run `python -m dynarch backend={name} ...` in its own process (not in one sweep with "
            f"another backend), or set KERAS_BACKEND={name} before importing keras",
        )


def seed_without_tensorflow(seed: int) -> None:
    """`keras.utils.set_random_seed(seed)` for a backend other than TensorFlow, without importing TensorFlow:
    Keras probes `tensorflow.available` there (keras/src/utils/rng_utils.py), and that probe IMPORTS TensorFlow
    wherever it is installed — seconds of start-up and its log lines, only to seed an RNG these backends
    never use. Unless something already imported it, Keras' lazy handle is told it is not available."""
    import keras

    if "tensorflow" not in sys.modules:
        try:
            from keras.src.utils import module_utils  # a private module: guarded, a newer Keras may move it

            if getattr(module_utils.tensorflow, "_available", False) is None:
                module_utils.tensorflow._available = False
        except (ImportError, AttributeError):
            pass
    keras.utils.set_random_seed(seed)  # Python, NumPy, Keras' global SeedGenerator (and torch's, under torch)
