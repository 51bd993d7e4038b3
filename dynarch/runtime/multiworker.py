"""The multi-worker stepper: a custom training loop under MultiWorkerMirroredStrategy (MWMS).

Keras 3's `fit` cannot consume MWMS's per-replica batches (keras-team/keras#20585); TensorFlow's own
"custom training loop with Keras and MultiWorkerMirroredStrategy" way is used instead, behind the step-loop
seam (dynarch/steploop.py calls reset_metrics / train / evaluate).

Data: every worker holds the same arrays and computes the same epoch order
(`epoch_order(n, seed, epoch)`); global batch b is `order[b*B:(b+1)*B]` and global replica r takes rows
`[r*B/R, (r+1)*B/R)` of it (a partial last batch is split as evenly as it goes). So the union of what the
replicas train on is exactly the single-process batch, and a resumed run replays the same rows.

Step: replica loss = sum of per-example losses / GLOBAL batch rows (+ regularization / R); Keras' optimizer
all-reduces (sums) the gradients across replicas and workers, so every worker applies the same update and
the weights stay identical. Up to `trainer.steps_per_execution` steps run per compiled call (a tf.range
loop inside one tf.function). Metrics are sums (loss, correct, rows) all-reduced every step, so the logs are
global and identical on every worker (callbacks decide alike everywhere).
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
from typing import Any, Iterator

import keras
import numpy as np
import tensorflow as tf

from ..data.arrays import epoch_order

log = logging.getLogger(__name__)
FAULT_ENV = "DYNARCH_FAULT_KILL"  # "WORKER:STEP": that worker SIGKILLs itself after STEP (tests of recovery)


class MultiWorkerStepper:
    def __init__(self, model, arrays, run, runtime):
        self.model, self.arrays, self.run = model, arrays, run
        self.strategy = runtime.strategy
        self.replicas = self.strategy.num_replicas_in_sync
        self.batch = run.trainer.batch_size
        self.per_call = max(1, int(run.trainer.steps_per_execution))
        self.totals = np.zeros(3)  # global sums since reset: loss, correct, rows
        # uint8 pixels travel as uint8 (scaled on the device); every split shares the train split's dtype
        self._x_dtype = np.uint8 if arrays.train[0].dtype == np.uint8 else np.float32
        ids = self.strategy.experimental_distribute_values_from_function(lambda ctx: ctx.replica_id_in_sync_group)
        self._local = sorted(int(i) for i in self.strategy.experimental_local_results(ids))  # this worker's
        self._train_call = self._compile(training=True)
        self._eval_call = self._compile(training=False)
        self._fault = _fault_step(runtime)

    # -- the seam --------------------------------------------------------------------------------------
    def reset_metrics(self) -> None:
        self.totals[:] = 0.0

    def train(self, epoch: int, first: int, count: int) -> dict[str, float]:
        x, y = self.arrays.train
        order = epoch_order(len(y), self.run.seed, epoch)
        for rows in self._calls(order, first, first + count):
            self.totals += self._run(self._train_call, x, y, rows)
            if self._fault is not None and int(self.model.optimizer.iterations.numpy()) >= self._fault:
                os.kill(os.getpid(), signal.SIGKILL)  # a real, unannounced worker loss, mid-epoch
        return self._logs(self.totals)

    def evaluate(self, split: str) -> dict[str, float]:
        data = getattr(self.arrays, split)
        if data is None or len(data[1]) == 0:
            return {}
        if split == "test":  # the end of the run: every worker must hold the same weights
            self.check_in_sync()
        x, y = data
        steps = -(-len(y) // self.batch)
        totals = np.zeros(3)
        for rows in self._calls(np.arange(len(y)), 0, steps):
            totals += self._run(self._eval_call, x, y, rows)
        return self._logs(totals)

    def all_workers(self, flag: bool) -> bool:
        """True when `flag` is true on any worker (a collective: every worker must call it at the same point).
        The driver asks it at chunk ends so that a signal seen by one worker stops all of them together."""
        value = tf.constant(1.0 if flag else 0.0)
        total = self.strategy.reduce(
            tf.distribute.ReduceOp.SUM,
            self.strategy.experimental_distribute_values_from_function(lambda ctx: value),
            axis=None,
        )
        return bool(total.numpy() > 0)

    def fingerprint(self) -> str:
        """sha256 of every model variable's bytes (weights, RNG states): equal on all workers, bit for bit."""
        digest = hashlib.sha256()
        for v in sorted(self.model.variables, key=lambda v: v.path):
            digest.update(v.path.encode() + np.ascontiguousarray(np.asarray(v.numpy())).tobytes())
        return "sha256:" + digest.hexdigest()[:16]

    def check_in_sync(self) -> None:
        """All-reduce 40 bits of the fingerprint (exact in float64): the sum is workers x own only when every
        worker holds the same bits. Logged on success; a divergence is an error, never silently written."""
        own = self.fingerprint()
        value = float(int(own[7:17], 16))
        total = self.strategy.reduce(
            tf.distribute.ReduceOp.SUM,
            self.strategy.experimental_distribute_values_from_function(lambda ctx: tf.constant(value, tf.float64)),
            axis=None,
        )
        workers = self.strategy.extended._num_workers if hasattr(self.strategy.extended, "_num_workers") else 1
        if float(total.numpy()) != value * self.replicas:
            from ..errors import DynarchError

            raise DynarchError(
                "trainer.strategy=multi_worker",
                "the workers ended with different weights (a dynarch bug, or workers with different code/data)",
                expected=f"the same weights on all {workers} workers",
                received=f"{own} here",
                fix="run every worker with the same dynarch version, data and overrides",
            )
        log.info("final weights identical on all %d workers (%s)", workers, own)

    # -- batches ---------------------------------------------------------------------------------------
    def _calls(self, order: np.ndarray, first: int, end: int) -> Iterator[np.ndarray]:
        """Global batches first..end-1 grouped per compiled call: [k, B] index arrays of full batches (up to
        `per_call` of them), and a partial last batch alone as [1, b]."""
        B, n, K = self.batch, len(order), self.per_call
        full_end = min(end, n // B)
        start = first
        while start < full_end:  # K steps per call, the remainder one step per call: at most 3 shapes to trace
            k = K if full_end - start >= K else 1
            yield order[start * B : (start + k) * B].reshape(k, B)
            start += k
        if end > full_end and full_end * B < n and first <= full_end:
            yield order[full_end * B :][None, :]

    def _run(self, call, x: np.ndarray, y: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """One compiled call on this worker's columns of `rows` (its local replicas' slices of each batch)."""
        bounds = np.linspace(0, rows.shape[1], self.replicas + 1).round().astype(np.int32)
        mine = rows[:, bounds[self._local[0]] : bounds[self._local[-1] + 1]]
        sums = call(
            tf.constant(x[mine].astype(self._x_dtype, copy=False)),
            tf.constant(y[mine].astype(np.int64, copy=False)),
            tf.constant(bounds - bounds[self._local[0]]),
            tf.constant(float(rows.shape[1]), tf.float32),
        )
        return sums.numpy().astype(np.float64)

    # -- compiled calls --------------------------------------------------------------------------------
    def _compile(self, training: bool):
        model, strategy, replicas = self.model, self.strategy, self.replicas
        loss_fn = keras.losses.get(model.loss) if isinstance(model.loss, str) else model.loss

        def per_example(x, y, train: bool):
            if x.dtype == tf.uint8:  # the same bits as numpy_pipeline.scale: IEEE division in float32
                x = tf.cast(x, tf.float32) / 255.0
            pred = model(x, training=train)
            losses = tf.cast(tf.reshape(loss_fn(y, pred), [-1]), tf.float32)
            hits = tf.cast(tf.equal(tf.cast(tf.argmax(pred, -1), y.dtype), y), tf.float32)
            rows = tf.cast(tf.shape(y)[0], tf.float32)
            return losses, tf.stack([tf.reduce_sum(losses), tf.reduce_sum(hits), rows])

        def train_step(x, y, global_rows):
            with tf.GradientTape() as tape:
                losses, sums = per_example(x, y, True)
                loss = tf.reduce_sum(losses) / global_rows  # the GLOBAL mean once gradients are summed
                if model.losses:
                    loss += tf.add_n([tf.cast(v, tf.float32) for v in model.losses]) / replicas
                scaled = model.optimizer.scale_loss(loss) if hasattr(model.optimizer, "scale_loss") else loss
            variables = model.trainable_variables
            grads = tape.gradient(scaled, variables)
            model.optimizer.apply_gradients(zip(grads, variables))  # all-reduce (SUM) inside Keras' optimizer
            return sums

        def eval_step(x, y, global_rows):
            return per_example(x, y, False)[1]

        step = train_step if training else eval_step

        def replica_fn(xs, ys, bounds, i, global_rows):  # this replica's columns of batch i
            r = tf.distribute.get_replica_context().replica_id_in_sync_group
            lo, hi = bounds[r], bounds[r + 1]
            return step(xs[i, lo:hi], ys[i, lo:hi], global_rows)

        signature = [
            tf.TensorSpec([None, None, *self.arrays.train[0].shape[1:]], self._x_dtype),
            tf.TensorSpec([None, None], tf.int64),
            tf.TensorSpec([replicas + 1], tf.int32),
            tf.TensorSpec([], tf.float32),
        ]

        @tf.function(input_signature=signature)  # one trace for every chunk shape
        def call(xs, ys, bounds, global_rows):
            total = tf.zeros([3], tf.float32)
            for i in tf.range(tf.shape(xs)[0]):
                per_replica = strategy.run(replica_fn, args=(xs, ys, bounds, i, global_rows))
                total += strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
            return total

        return call

    @staticmethod
    def _logs(totals: np.ndarray) -> dict[str, float]:
        loss, correct, rows = totals
        return {"loss": float(loss / rows), "accuracy": float(correct / rows)} if rows else {}


def _fault_step(runtime: Any) -> int | None:
    """The step after which this worker kills itself, from DYNARCH_FAULT_KILL=WORKER:STEP (tests only)."""
    spec = os.environ.get(FAULT_ENV, "")
    if ":" not in spec:
        return None
    from ..cluster import task_from_env

    worker, step = spec.split(":", 1)
    return (
        int(step)
        if worker.isdigit() and step.isdigit() and task_from_env(multi_worker=True).index == int(worker)
        else None
    )
