"""What every source returns and how it is checked: uint8 (or [0, 1] float32) images NHWC, int64 labels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from ..errors import DataError

XY = tuple[np.ndarray, np.ndarray]


class Splits(NamedTuple):
    """What a source's `load_splits(cfg)` returns: the train and test splits and a description of the data."""

    train: XY
    test: XY
    source: str  # recorded in metrics.json: which data was really used


@dataclass
class Arrays:
    """Train / validation / test splits as numpy arrays, plus where they came from."""

    train: XY
    val: XY | None
    test: XY
    source: str
    augment: tuple = ()  # validated data.augment layer configs: the training pipeline applies them

    def sizes(self) -> dict[str, int]:
        return {
            "train": len(self.train[1]),
            "val": 0 if self.val is None else len(self.val[1]),
            "test": len(self.test[1]),
        }


def fits_device(arrays: Arrays, budget_mb: int) -> bool:
    """Whether the training split (images + labels, as stored) fits a device-memory budget in MiB."""
    x, y = arrays.train
    return (x.nbytes + y.nbytes) / 2**20 <= budget_mb


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The sample order of one epoch: a function of (seed, epoch) only, so a resumed run replays it."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def check_splits(cfg: Any, splits: Splits, where: str) -> Splits:
    """Refuse data that disagrees with data.input_shape / data.num_classes, saying what was found.

    Runs after loading and before anything is built, for every source.
    """
    for split, (x, y) in (("train", splits.train), ("test", splits.test)):
        if len(x) != len(y):
            raise DataError(
                where,
                f"the {split} images and labels differ in count",
                expected="one label per image",
                received=f"{len(x)} images, {len(y)} labels",
                fix="use matching image and label files/arrays",
            )
        found = tuple(int(d) for d in x.shape[1:])
        if found != tuple(cfg.input_shape):
            raise DataError(
                where,
                f"the {split} images are {'x'.join(map(str, found)) or 'scalars'}, "
                f"not data.input_shape={list(cfg.input_shape)}",
                expected=f"images of shape {list(cfg.input_shape)} (height, width, channels)",
                received=f"{len(x)} images of shape {list(found)}",
                fix=f"set data.input_shape={list(found)} (the model follows it), or use data that matches"
                if len(found) == 3
                else "give images as height x width x channels",
            )
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= cfg.num_classes):
            raise DataError(
                where,
                f"{split} labels out of range for data.num_classes={cfg.num_classes}",
                expected=f"labels 0..{cfg.num_classes - 1}",
                received=f"labels {int(y.min())}..{int(y.max())}",
                fix=f"set data.num_classes={int(y.max()) + 1} (the model's head follows it), or fix the labels"
                if int(y.min()) >= 0
                else "labels must be >= 0",
            )
        _check_pixels(x, split, where)
    for array in (*splits.train, *splits.test):
        array.flags.writeable = False  # shared between the jobs of a sweep: nobody may change it in place
    return splits


def _check_pixels(x: np.ndarray, split: str, where: str) -> None:
    """uint8 images are scaled by 1/255 in the pipeline; float images must already be in [0, 1]."""
    if x.dtype == np.uint8:
        return
    if x.dtype != np.float32:
        raise DataError(
            where,
            f"the {split} images are {x.dtype}",
            expected="uint8 (0..255) or float32 in [0, 1]",
            received=str(x.dtype),
            fix="convert them to uint8 or float32 before saving",
        )
    if x.size and not (np.isfinite(x).all() and x.min() >= 0.0 and x.max() <= 1.0):
        lo, hi = float(np.nanmin(x)), float(np.nanmax(x))
        raise DataError(
            where,
            f"the {split} float images are not all finite and within [0, 1]",
            expected="float pixels in [0, 1] (used as they are) or uint8 0..255 (divided by 255)",
            received=f"values in [{lo:g}, {hi:g}]" + ("" if np.isfinite(x).all() else " with NaN/Inf"),
            fix="divide by 255 (or save uint8); standardization belongs in the model",
        )


def split_validation(splits: Splits, cfg: Any, seed: int) -> Arrays:
    """Apply the limits and split a validation set off the (seed-shuffled) training split."""
    (x, y), (tx, ty) = splits.train, splits.test
    order = np.random.default_rng(seed).permutation(len(y))[: cfg.limit_train]
    x, y = x[order], y[order]
    tx, ty = tx[: cfg.limit_test], ty[: cfg.limit_test]
    n_val = int(round(len(y) * cfg.val_fraction))
    if len(y) - n_val < 1 or len(ty) < 1:
        raise DataError(
            "data",
            "not enough examples to train and test",
            expected=">= 1 train and test example",
            received=f"{len(y) - n_val} train, {len(ty)} test",
            fix="raise data.limit_train / data.limit_test or lower data.val_fraction",
        )
    val = (x[len(y) - n_val :], y[len(y) - n_val :]) if n_val else None
    return Arrays(
        (x[: len(y) - n_val], y[: len(y) - n_val]),
        val,
        (tx, ty),
        splits.source,
        tuple(getattr(cfg, "augment", None) or ()),
    )
