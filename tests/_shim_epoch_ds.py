# temporary test shim: Pipelines.epoch_dataset until the data package lands
import numpy as np
import dynarch.data as D
if not hasattr(D.Pipelines, "epoch_dataset"):
    def epoch_dataset(self, get_epoch):
        import tensorflow as tf
        n, bs = self.n_train, self.batch_size
        def gen():
            yield D.epoch_order(n, self.seed, get_epoch()).astype(np.int64)
        ds = tf.data.Dataset.from_generator(gen, output_signature=tf.TensorSpec([n], tf.int64))
        full = n // bs * bs
        def split(order):
            rows = tf.data.Dataset.from_tensor_slices(tf.reshape(order[:full], [-1, bs]))
            if full < n:
                rows = rows.concatenate(tf.data.Dataset.from_tensors(order[full:]))
            return rows
        idx = ds.flat_map(split).apply(tf.data.experimental.assert_cardinality(self.steps_per_epoch))
        return D._gather_batches(*self._train, idx)
    D.Pipelines.epoch_dataset = epoch_dataset
if not hasattr(D.Pipelines, "probe"):
    def probe(self, n=256):
        import tensorflow as tf
        x = self._val[0] if self._val is not None else self._train[0]
        return (tf.cast(x[:n], tf.float32) / 255.0).numpy()
    D.Pipelines.probe = probe
