"""Datasets: one loader per source (tfds, idx, npz, folder, subset; see registry.py), one interface
`load(cfg, seed) -> Arrays`, and the tf.data input pipeline (`Pipelines`). Importing this package does not
import TensorFlow.

    arrays = load(run.data, run.seed)          # checked against data.input_shape / data.num_classes
    data = Pipelines(arrays, batch_size, seed) # .train(epoch, skip), .epoch_dataset(get_epoch), .val(), .test()
"""

from __future__ import annotations

import functools

from ..errors import DataError
from .arrays import Arrays, Splits, check_splits, epoch_order, split_validation
from .catalog import KNOWN
from .pipeline import Pipelines
from .registry import check_config, get_source, sources

__all__ = [
    "Arrays",
    "DataError",
    "KNOWN",
    "Pipelines",
    "Splits",
    "check_config",
    "epoch_order",
    "get_source",
    "load",
    "load_arrays",
    "load_splits",
    "sources",
]


@functools.lru_cache(maxsize=2)
def load_splits(cfg) -> Splits:
    """(train, test, source) for `cfg`, loaded and checked once per process: the jobs of a sweep share it."""
    return check_splits(cfg, get_source(cfg.loader).load_splits(cfg), f"data ({cfg.loader}: {cfg.name})")


def load(cfg, seed: int) -> Arrays:
    """Load the configured dataset, check it against the config, split a validation set off the training split.

    Args:
        cfg: a validated DataConfig (dynarch.config).
        seed: seeds the train/validation split (shuffled before the split).

    Returns:
        Arrays: uint8 (or [0, 1] float32) images N x H x W x C and int64 labels, and a description of the data.
    """
    return split_validation(load_splits(cfg), cfg, seed)


load_arrays = load  # the name train.py and the experiments use
