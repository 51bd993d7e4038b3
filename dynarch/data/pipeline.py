"""The tf.data input pipeline over in-memory arrays: a seeded order per epoch, resumable mid-epoch,
optional augmentation of the training split that depends only on (seed, epoch, batch index).

TensorFlow is imported inside functions only: importing the data package stays cheap.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from .arrays import Arrays, epoch_order


def scale_tensor(x):
    """uint8 pixels / 255 (the division, exactly as before, so results stay bitwise identical); float as is."""
    import tensorflow as tf

    return tf.cast(x, tf.float32) / 255.0 if x.dtype == tf.uint8 else tf.cast(x, tf.float32)


def _map(dataset, fn):
    """`dataset.map(fn)`, in parallel unless op determinism is on. Under op determinism tf.data runs a parallel
    map sequentially anyway, and TensorFlow 2.21's rewrite then logs a spurious error line ("NodeDef mentions
    attribute use_unbounded_threadpool which is not in the op definition") into every run's output; asking
    for the sequential map it would get is the same computation without the line."""
    import tensorflow as tf
    from tensorflow.python.framework import config as tf_config  # is_op_determinism_enabled: not in tf.config

    if getattr(tf_config, "is_op_determinism_enabled", lambda: False)():
        return dataset.map(fn)
    return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def fixed_batches(xy, batch_size: int):
    """A split (x, y) in order, in batches of `batch_size` (the last one partial), scaled like the training
    batches: validation and test, for the Keras loop and the fused loop alike."""
    import tensorflow as tf

    x, y = (tf.constant(v) if isinstance(v, np.ndarray) else v for v in xy)
    rows = _index_rows(tf.range(tf.shape(y, out_type=tf.int64)[0]), batch_size)
    return _map(rows, lambda b, i: (scale_tensor(tf.gather(x, i)), tf.gather(y, i))).prefetch(tf.data.AUTOTUNE)


def _index_rows(order, batch_size: int, first_batch: int = 0):
    """(batch index, indices) rows cut from one epoch's order, like Keras' own array adapter: a [k, batch]
    tensor cut into rows plus the partial batch — far cheaper than shuffling element by element."""
    import tensorflow as tf

    n = order.shape[0]
    full = n // batch_size * batch_size
    k = full // batch_size
    rows = tf.data.Dataset.from_tensor_slices(
        (tf.range(first_batch, first_batch + k, dtype=tf.int64), tf.reshape(order[:full], [-1, batch_size]))
    )
    if full < n:
        rows = rows.concatenate(tf.data.Dataset.from_tensors((tf.constant(first_batch + k, tf.int64), order[full:])))
    return rows


class _BatchSeed:
    """Stands in for a keras SeedGenerator inside the input pipeline: each draw is a stateless seed derived
    from (run seed, epoch, batch index, layer, draw), so a batch's augmentation never depends on what ran
    before it — a resumed run augments its remaining batches exactly as an uninterrupted one."""

    def __init__(self, key, layer_index: int):
        self.key, self.layer_index, self.draws = key, layer_index, 0

    def next(self, ordered: bool = True):
        import tensorflow as tf

        self.draws += 1
        return tf.random.experimental.stateless_fold_in(self.key, self.layer_index * 1000 + self.draws)


def build_augment(configs: Sequence[dict]) -> list:
    """Keras augmentation layers from validated configs ({_target_: keras.layers.X, ...}), on [0, 1] floats."""
    import keras

    layers = []
    for config in configs:
        config = dict(config)  # validated configs arrive as hashable ((key, value), ...) items
        kwargs = {k: v for k, v in config.items() if k != "_target_"}
        name = config["_target_"].rsplit(".", 1)[-1]
        if name in ("RandomContrast", "RandomBrightness"):
            kwargs.setdefault("value_range", [0.0, 1.0])  # the pipeline's pixels are in [0, 1], not 0..255
        kwargs.setdefault("dtype", "float32")
        layer = getattr(keras.layers, name)(**kwargs)
        layer.backend.set_backend("tensorflow")  # runs inside tf.data whatever the Keras backend
        layers.append(layer)
    return layers


def _seeded_class(base):
    """A subclass of keras' SeedGenerator (Keras checks isinstance) that draws from a _BatchSeed."""

    class Seed(base):
        def __init__(self, batch_seed: _BatchSeed):  # no variable: nothing stateful inside tf.data
            self._batch_seed = batch_seed

        def next(self, ordered: bool = True):
            return self._batch_seed.next(ordered)

    return Seed


class Pipelines:
    """tf.data pipelines over in-memory tensors: a fresh, seeded order per epoch, resumable mid-epoch."""

    def __init__(self, arrays: Arrays, batch_size: int, seed: int, augment: Sequence[dict] | None = None):
        import tensorflow as tf

        self.batch_size, self.seed = batch_size, seed
        self.n_train = len(arrays.train[1])
        # uint8 in memory (4x smaller, no up-front conversion pass): batches are scaled as they are cut.
        tensors = lambda xy: (tf.constant(xy[0]), tf.constant(xy[1]))  # noqa: E731
        self._train = tensors(arrays.train)
        self._val = None if arrays.val is None else tensors(arrays.val)
        self._test = tensors(arrays.test)
        configs = tuple(arrays.augment if augment is None else augment)
        self._augment = build_augment(configs) if configs else []

    @property
    def steps_per_epoch(self) -> int:
        return -(-self.n_train // self.batch_size)

    def _train_batches(self, rows):
        """(epoch, batch index, indices) -> (augmented images, labels), in order."""
        import tensorflow as tf

        x, y = self._train

        def cut(epoch, batch, index):
            images = scale_tensor(tf.gather(x, index))
            return self._apply_augment(images, epoch, batch), tf.gather(y, index)

        return _map(rows, cut).prefetch(tf.data.AUTOTUNE)

    def _apply_augment(self, images, epoch, batch):
        if not self._augment:
            return images
        import tensorflow as tf
        from keras.random import SeedGenerator

        key = tf.stack([tf.constant(self.seed % (2**31 - 1), tf.int64), epoch * 1_000_003 + batch])
        seed_class = _seeded_class(SeedGenerator)
        for i, layer in enumerate(self._augment):
            transform = layer.get_random_transformation(images, training=True, seed=seed_class(_BatchSeed(key, i)))
            images = layer.transform_images(images, transform, training=True)
        return images

    def train(self, epoch: int, skip_batches: int = 0):
        """Epoch `epoch`'s batches, starting after `skip_batches` already-trained ones."""
        import tensorflow as tf

        order = epoch_order(self.n_train, self.seed, epoch)[skip_batches * self.batch_size :]
        rows = _index_rows(tf.constant(order), self.batch_size, skip_batches)
        rows = rows.map(lambda b, i: (tf.constant(epoch, tf.int64), b, i))
        return self._train_batches(rows)

    def epoch_dataset(self, get_epoch: Callable[[], int]):
        """A dataset that, each time it is iterated, yields the batches of epoch `get_epoch()` (read when the
        iteration starts): one Keras `fit` over many epochs, same batches as `train(epoch)`."""
        import tensorflow as tf

        n, seed = self.n_train, self.seed

        def one_epoch():
            epoch = int(get_epoch())
            yield np.int64(epoch), epoch_order(n, seed, epoch).astype(np.int64)

        orders = tf.data.Dataset.from_generator(
            one_epoch, output_signature=(tf.TensorSpec([], tf.int64), tf.TensorSpec([n], tf.int64))
        )
        rows = orders.flat_map(lambda epoch, order: _index_rows(order, self.batch_size).map(lambda b, i: (epoch, b, i)))
        rows = rows.apply(tf.data.experimental.assert_cardinality(self.steps_per_epoch))
        return self._train_batches(rows)

    def val(self):
        return None if self._val is None else fixed_batches(self._val, self.batch_size)

    def test(self):
        return fixed_batches(self._test, self.batch_size)

    def probe(self, n: int = 256) -> np.ndarray:
        """Up to n scaled, unaugmented inputs (validation split, else training) for output-change checks."""
        x = self._val[0] if self._val is not None else self._train[0]
        return scale_tensor(x[:n]).numpy()
