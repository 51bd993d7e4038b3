"""The fused training loop on TensorFlow: a chunk of K steps is ONE `tf.function` call (a `tf.while_loop`
over Keras' own `train_step`), the training split resident on the device as uint8.

Keras' TF `fit` already compiles `steps_per_execution` steps into a while loop; what this loop removes is
the tf.data pipeline between the steps and the per-chunk callback/iterator work: a batch is a `tf.gather`
of the resident split by the epoch's order (`epoch_order(n, seed, epoch)`, the same batches as the Keras
loop), scaled like the tf.data pipeline (`tf.cast(x) / 255`). One trace serves every chunk length (the trip
count and the first batch are tensors) and the partial last batch (the batch dimension is dynamic).
When the split exceeds `trainer.device_data_mb`, each chunk's rows are gathered on the host instead.
"""

from __future__ import annotations

import tensorflow as tf

from ..data.pipeline import scale_tensor as _scale  # the tf.data pipeline's scaling, bit for bit
from .fused import FusedStepper


class TfFusedStepper(FusedStepper):
    """Trains chunks of batches of one phase's model; see the module docstring and steploop.Stepper."""

    def __init__(self, model, arrays, run, runtime):
        super().__init__(model, arrays, run)
        with runtime.scope():
            if self.resident:
                if getattr(arrays, "_tf_resident", None) is None:  # one device copy, shared by the phases
                    arrays._tf_resident = (tf.constant(arrays.train[0]), tf.constant(arrays.train[1]))
                self.x, self.y = arrays._tf_resident
        model._maybe_symbolic_build(data_batch=(_scale(tf.constant(arrays.train[0][:1])), arrays.train[1][:1], None))
        self._chunk = tf.function(self._chunk_fn, reduce_retracing=True)

    def _chunk_fn(self, x, y, order, first, count):
        batch, n = self.batch, tf.shape(order, out_type=tf.int64)[0]
        for i in tf.range(count):
            start = (first + i) * batch
            rows = order[start : tf.minimum(start + batch, n)]
            self.model.train_step((_scale(tf.gather(x, rows)), tf.gather(y, rows)))  # logs: read after the chunk

    def train(self, epoch: int, first: int, count: int) -> dict[str, float]:
        order, new = self.epoch_order(epoch)
        if new and self.resident:
            self._device_order = tf.constant(order)
        steps = tf.constant(count, tf.int64)
        if self.resident:
            self._chunk(self.x, self.y, self._device_order, tf.constant(first, tf.int64), steps)
        else:
            rows = order[first * self.batch : (first + count) * self.batch]
            x, y = self.arrays.train
            local = tf.range(len(rows), dtype=tf.int64)
            self._chunk(tf.constant(x[rows]), tf.constant(y[rows]), local, tf.constant(0, tf.int64), steps)
        return self.logs()

    def eval_inputs(self, xy) -> dict:
        """dynarch's own tf.data batches (data/pipeline.fixed_batches): Keras' array adapter would map in
        parallel, which op determinism turns into a logged rewrite."""
        from ..data.pipeline import fixed_batches

        return {"x": fixed_batches(xy, self.batch)}
