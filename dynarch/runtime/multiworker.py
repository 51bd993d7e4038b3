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
        if split == "test":  # the end of the run: say what this worker ended with (they must all agree)
            log.info("final weights on this worker: %s", self.fingerprint())
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

    # -- batches ---------------------------------------------------------------------------------------
    def _calls(self, order: np.ndarray, first: int, end: int) -> Iterator[np.ndarray]:
        """Global batches first..end-1 grouped per compiled call: [k, B] index arrays of full batches (up to
        `per_call` of them), and a partial last batch alone as [1, b]."""
        B, n = self.batch, len(order)
        full_end = min(end, n // B)
        for start in range(first, full_end, self.per_call):
            stop = min(full_end, start + self.per_call)
            yield order[start * B : stop * B].reshape(stop - start, B)
        if end > full_end and full_end * B < n and first <= full_end:
            yield order[full_end * B :][None, :]

    def _run(self, call, x: np.ndarray, y: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """One compiled call: each local replica gets its slice of every global batch in `rows`."""
        bounds = np.linspace(0, rows.shape[1], self.replicas + 1).round().astype(int)

        def shard(ctx):  # called once per LOCAL replica; its id is global across workers
            r = ctx.replica_id_in_sync_group
            take = rows[:, bounds[r] : bounds[r + 1]]
            return x[take], y[take]  # [k, b_r, ...], [k, b_r]

        xs, ys = self.strategy.experimental_distribute_values_from_function(lambda ctx: shard(ctx)[0]), (
            self.strategy.experimental_distribute_values_from_function(lambda ctx: shard(ctx)[1])
        )
        sums = call(xs, ys, tf.constant(float(rows.shape[1]), tf.float32))
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

        @tf.function(reduce_retracing=True)
        def call(xs, ys, global_rows):
            k = tf.shape(strategy.experimental_local_results(ys)[0])[0]
            total = tf.zeros([3], tf.float32)
            for i in tf.range(k):
                per_replica = strategy.run(lambda a, b: step(a[i], b[i], global_rows), args=(xs, ys))
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
    return int(step) if worker.isdigit() and step.isdigit() and task_from_env(multi_worker=True).index == int(worker) else None
