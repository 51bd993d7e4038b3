"""An input pipeline that needs no TensorFlow (backends other than TensorFlow): Keras `PyDataset`s over the
in-memory numpy arrays, with the SAME batches as the tf.data pipeline (pipeline.py) — the per-epoch order
`epoch_order(n, seed, epoch)`, the same cut into full batches plus one partial batch, the same mid-epoch
skip on resume and the same uint8 -> float32 scaling (x / 255 in float32, bitwise identical).

Why PyDataset rather than a generator or grain: Keras iterates a PyDataset afresh every epoch with a known
length (one `fit` over many epochs needs that), and with `workers=1` it runs in the training thread, so the
epoch is read when the epoch's batches are cut — nothing is fetched ahead of `on_epoch_begin`. Batches are
a gather over the in-memory split: for dynarch's small images that is cheaper than any worker hand-off.

Keras is imported on first use only: the source registry imports every module of this package while the
config is validated, before the Keras backend is chosen.

Augmentation (`data.augment`) is refused under these backends at config validation (config.py): its
per-batch stateless seeding lives in tf.data today.
"""

from __future__ import annotations

import functools
from typing import Callable

import numpy as np

from .arrays import Arrays, epoch_order

XY = tuple[np.ndarray, np.ndarray]


def scale(x: np.ndarray) -> np.ndarray:
    """uint8 pixels / 255 in float32 (IEEE division: the same bits as tf.cast(x) / 255.0); float as is."""
    return x.astype(np.float32) / np.float32(255.0) if x.dtype == np.uint8 else x.astype(np.float32)


@functools.lru_cache(maxsize=1)
def _batches_class() -> type:
    import keras

    class Batches(keras.utils.PyDataset):
        """Batches `0, 1, ...` of an order over (x, y); `order_of()` is read per batch (the epoch's order,
        cached by NumpyPipelines), so one instance serves every epoch of a `fit`."""

        def __init__(self, xy: XY, batch_size: int, n_batches: int, order_of: Callable[[], np.ndarray]):
            super().__init__(workers=1, use_multiprocessing=False)  # in the training thread: no read-ahead
            self._x, self._y = xy
            self._batch_size, self._n_batches, self._order_of = batch_size, n_batches, order_of

        def __len__(self) -> int:
            return self._n_batches

        def __getitem__(self, index: int) -> XY:
            if index >= self._n_batches:
                raise IndexError(index)
            rows = self._order_of()[index * self._batch_size : (index + 1) * self._batch_size]
            return scale(self._x[rows]), self._y[rows]

    return Batches


def _batches(xy: XY, batch_size: int, n_batches: int, order_of: Callable[[], np.ndarray]):
    return _batches_class()(xy, batch_size, n_batches, order_of)


class NumpyPipelines:
    """The interface of `pipeline.Pipelines` (train, epoch_dataset, val, test, probe, steps_per_epoch,
    n_train) without TensorFlow."""

    def __init__(self, arrays: Arrays, batch_size: int, seed: int):
        self.batch_size, self.seed = batch_size, seed
        self.n_train = len(arrays.train[1])
        self._train, self._val, self._test = arrays.train, arrays.val, arrays.test
        self._orders: dict[int, np.ndarray] = {}

    @property
    def steps_per_epoch(self) -> int:
        return -(-self.n_train // self.batch_size)

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            self._orders = {epoch: epoch_order(self.n_train, self.seed, epoch)}  # one epoch kept: memory stays flat
        return self._orders[epoch]

    def train(self, epoch: int, skip_batches: int = 0):
        """Epoch `epoch`'s batches, starting after `skip_batches` already-trained ones."""
        order = self._order(epoch)[skip_batches * self.batch_size :]
        return _batches(self._train, self.batch_size, -(-len(order) // self.batch_size), lambda: order)

    def epoch_dataset(self, get_epoch: Callable[[], int]):
        """Each epoch of a `fit` yields the batches of epoch `get_epoch()`, like `Pipelines.epoch_dataset`."""
        return _batches(self._train, self.batch_size, self.steps_per_epoch, lambda: self._order(int(get_epoch())))

    def _fixed(self, xy: XY | None):
        if xy is None:
            return None
        order = np.arange(len(xy[1]))
        return _batches(xy, self.batch_size, -(-len(order) // self.batch_size), lambda: order)

    def val(self):
        return self._fixed(self._val)

    def test(self):
        return self._fixed(self._test)

    def probe(self, n: int = 256) -> np.ndarray:
        """Up to n scaled inputs (validation split, else training) for output-change checks."""
        x = self._val[0] if self._val is not None else self._train[0]
        return scale(x[:n])
