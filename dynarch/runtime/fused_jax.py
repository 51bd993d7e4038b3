"""The fused training loop on JAX: a chunk of K steps is ONE compiled call (`lax.fori_loop` over Keras' own
stateless `train_step`), with the training split resident on the device as uint8.

Why not Keras `fit` here: Keras 3 on JAX runs `steps_per_execution` as a Python loop of one-step compiled
calls (keras/src/backend/jax/trainer.py `_make_function`), so every step pays a dispatch; for dynarch's small
models that dispatch is most of the step. Here the loop runs inside XLA:

- the state is the one Keras' JAX trainer passes around (trainable, non-trainable — seed generators
  included, so Dropout's RNG is checkpointed — optimizer and metric variables), read from the model's
  variables at the start of a chunk and written back at its end: between chunks the model is an ordinary
  Keras model (callbacks, checkpoints, migration read it as usual);
- a batch is `order[b*B:(b+1)*B]` gathered on the device and scaled like the NumPy pipeline (uint8 / 255 in
  float32), with the per-epoch order computed on the host by `epoch_order(n, seed, epoch)` (the SAME batches
  as the Keras loop: the two give the same loss curve, and positions are interchangeable) and sent once per
  epoch (4 bytes a sample);
- the trip count is a traced argument (`fori_loop` with a dynamic bound lowers to a while loop), so one
  compilation serves every chunk length. The epoch's partial last batch has another shape, so another train
  step, compiled where it costs least (see `tail_on_thread`): on an accelerator, a second program compiled on
  a host thread while the chunk program compiles and runs (on an H100 that program cost 0.8-0.9 s of compile
  for the MLP, 2.8-3.2 s for the CNN, all of it inside the first epoch when compiled in turn —
  experiments/gpu/README.md); on a CPU, a `cond` branch of the chunk program (the same cores would compile
  and train: one program is the least work there);
- each program returns the metrics' results (the epoch's running loss and accuracy) beside the state: one
  transfer per chunk, no eager metric ops (each a small compile of its own in the first epoch);
- when the split exceeds `trainer.device_data_mb`, it streams instead: blocks of STREAM_STEPS batches are
  gathered on the host and sent per call (same batches, same compiled loop, padded to one shape).
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import jax
import jax.numpy as jnp
import keras
import numpy as np

from .fused import FusedStepper

STREAM_STEPS = 64  # batches per host->device block when the split is streamed
# XLA compiles outside the GIL: the partial-batch program compiles here while the main thread compiles and runs
# the chunk. One worker, not daemon: an interpreter exit waits for a compile under way rather than killing it
# inside XLA.
_COMPILER: ThreadPoolExecutor | None = None


def _compile_soon(lowered) -> Future:
    global _COMPILER
    if _COMPILER is None:
        _COMPILER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dynarch-compile")
    return _COMPILER.submit(lowered.compile)


def tail_on_thread() -> bool:
    """Whether the partial batch's step is its own program compiled on a host thread (an accelerator trains:
    the host's cores are free to compile) rather than a `cond` branch of the chunk program (a CPU trains: its
    cores compile too). On 2 CPU cores the branch compiled in 0.96 s, the two programs in 1.34 s, side by side
    or not (experiments/gpu/tail_compile_cpu.md)."""
    return jax.default_backend() != "cpu"


def host_free_while_compiling() -> bool:
    """Whether a host core is free while XLA compiles: on an accelerator (the compile uses a core or two of
    the host's), not on a CPU (XLA:CPU's compile uses every core, and the same cores then train)."""
    return jax.default_backend() != "cpu"


def _scale(x):
    """uint8 / 255 in float32 (IEEE division: the bits of numpy_pipeline.scale); float as is."""
    return x.astype(jnp.float32) / jnp.float32(255.0) if x.dtype == jnp.uint8 else x.astype(jnp.float32)


class JaxFusedStepper(FusedStepper):
    """Trains chunks of batches of one phase's model; see the module docstring and steploop.Stepper."""

    def __init__(self, model, arrays, run, runtime):
        super().__init__(model, arrays, run)
        if self.resident:
            if getattr(arrays, "_jax_resident", None) is None:  # one device copy, shared by the phases
                x, y = arrays.train
                arrays._jax_resident = (jax.device_put(x), jax.device_put(y.astype(np.int32)))
            self.x, self.y = arrays._jax_resident
        x0, y0 = arrays.train[0][:1], arrays.train[1][:1].astype(np.int32)
        model._symbolic_build(data_batch=(_scale(jnp.asarray(x0)), jnp.asarray(y0)))  # metric variables exist
        self.full, self.rest = divmod(self.n, self.batch)  # full batches an epoch; rows of its partial one
        # the partial batch: a `cond` branch of the chunk program, or its own program (see tail_on_thread);
        # streamed, the chunk program never sees it (its data come per block)
        self._branch = bool(self.rest) and self.resident and not tail_on_thread()
        self._chunk_program = None  # compiled at the first chunk (`_chunk`): traced, then compiled
        self._tail: Future | None = None  # the partial batch's own program, compiling from the first chunk on
        self._result_names: list[str] = []  # the metrics' names, in the order of the results the programs return

    # -- compiled parts ----------------------------------------------------------------------------------
    def _chunk_fn(self, state, x, y, order, first, count, tail):
        batch = self.batch

        def body(i, state):
            rows = jax.lax.dynamic_slice_in_dim(order, (first + i) * batch, batch)
            _, state = self.model.train_step(state, (_scale(x[rows]), y[rows]))
            return state

        if self.full:  # a split smaller than one batch has none: `body` could not even be traced
            state = jax.lax.fori_loop(0, count, body, state)
        if self._branch:
            state = jax.lax.cond(tail, lambda state: self._tail_step(state, x, y, order), lambda state: state, state)
        return state, self._results(state)

    def _tail_fn(self, state, x, y, order):
        state = self._tail_step(state, x, y, order)
        return state, self._results(state)

    def _tail_step(self, state, x, y, order):
        rows = order[len(order) - self.rest :]  # the order's last `rest` rows: the epoch's partial batch
        _, state = self.model.train_step(state, (_scale(x[rows]), y[rows]))
        return state

    def _results(self, state) -> list:
        """The metrics' results (`get_metrics_result`) from the state's metric variables, inside the program: a
        list in the names' order (JAX returns a dict's keys sorted: history.csv's columns would change order)."""
        with keras.StatelessScope(state_mapping=list(zip(self.model.metrics_variables, state[3]))):
            results = self.model.get_metrics_result()
        self._result_names = list(results)  # set while tracing: before any call returns
        return list(results.values())

    def _chunk(self, state, *args):
        """Run the chunk program, compiling it at the first call: traced here, then compiled, and between the
        two, on an accelerator, `on_host_idle` runs. XLA compiles without the GIL, so Python work started
        then (the curves' matplotlib import) uses a host core that training does not; started after the
        first epoch instead, it held the GIL against the chunks' dispatches (H100, MLP b128: epoch 2 took
        0.19-0.34 s instead of 0.04 s; experiments/gpu/README.md), started before the tracing it would slow
        the tracing. On a CPU the compile already uses every core: the caller's default (after epoch 1)
        stays."""
        if self._chunk_program is None:
            lowered = jax.jit(self._chunk_fn, donate_argnums=0).lower(state, *args)
            if self.on_host_idle is not None and host_free_while_compiling():
                self.on_host_idle()
            self._chunk_program = lowered.compile()
        return self._chunk_program(state, *args)

    def _tail_inputs(self, order) -> tuple:
        """(x, y, order) for `_tail_fn`: the resident split and the epoch's order on the device, or the
        partial batch's rows gathered on the host when the split is streamed."""
        if self.resident:
            return self.x, self.y, self._device_order
        rows, (x, y) = order[self.full * self.batch :], self.arrays.train
        return jnp.asarray(x[rows]), jnp.asarray(y[rows].astype(np.int32)), jnp.arange(self.rest, dtype=jnp.int32)

    def _compile_tail(self, state, order) -> None:
        """Trace the partial batch's own program here (Keras tracing is not thread-safe), compile it on a thread."""
        if self._tail is None and self.rest and not self._branch:
            lowered = jax.jit(self._tail_fn, donate_argnums=0).lower(state, *self._tail_inputs(order))
            self._tail = _compile_soon(lowered)

    # -- state in and out of the model -------------------------------------------------------------------
    def _variables(self):
        m = self.model
        return (m.trainable_variables, m.non_trainable_variables, m.optimizer.variables, m.metrics_variables)

    def _pull(self):
        return tuple([v.value for v in group] for group in self._variables())

    def _push(self, state) -> None:
        for group, values in zip(self._variables(), state):
            for ref, value in zip(group, values):
                ref.assign(value)

    # -- the Stepper interface ---------------------------------------------------------------------------
    def train(self, epoch: int, first: int, count: int) -> dict[str, float]:
        order, new = self.epoch_order(epoch)
        if new and self.resident:
            self._device_order = jax.device_put(order.astype(np.int32))  # sent once per epoch
        n_full, tail = max(0, min(first + count, self.full) - first), first + count > self.full
        state, results = self._pull(), None
        self._compile_tail(state, order)  # compiles while the full batches below run
        if self.resident and (n_full or self._branch):  # one call: the full batches, then a `cond` tail
            state, results = self._chunk(state, self.x, self.y, self._device_order, first, n_full, tail)
        elif n_full:
            state, results = self._streamed(state, order, first, n_full)
        if tail and not self._branch:
            state, results = self._tail.result()(state, *self._tail_inputs(order))
        self._push(state)
        return {k: float(v) for k, v in zip(self._result_names, jax.device_get(results))}

    def _streamed(self, state, order, first: int, count: int):
        """(state, results) after batches first..first+count-1, sent in blocks of STREAM_STEPS batches."""
        x, y = self.arrays.train
        batch, results = self.batch, None
        for start in range(first, first + count, STREAM_STEPS):
            steps = min(STREAM_STEPS, first + count - start)
            rows = order[start * batch : (start + steps) * batch]
            pad = STREAM_STEPS * batch - len(rows)  # one block shape: one compilation
            rows = np.concatenate([rows, np.zeros(pad, np.int32)]) if pad else rows
            block = np.arange(STREAM_STEPS * batch, dtype=np.int32)
            xb, yb = jnp.asarray(x[rows]), jnp.asarray(y[rows].astype(np.int32))
            state, results = self._chunk(state, xb, yb, block, 0, steps, False)
        return state, results
