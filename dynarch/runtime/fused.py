"""What the fused steppers of every backend share (fused_jax.py, fused_tf.py; the driver is steploop.py).
Backend-neutral: no TensorFlow or JAX here."""

from __future__ import annotations

import logging
from typing import Callable

log = logging.getLogger(__name__)


class FusedStepper:
    """What the fused steppers of every backend share (runtime/fused_jax.py, runtime/fused_tf.py): the run's
    sizes, whether the training split stays on the device, the epoch's order (cached: one epoch at a time),
    the running logs and the evaluation of a split. A backend adds its compiled chunk and `train`."""

    def __init__(self, model, arrays, run):
        from ..data.arrays import fits_device

        self.model, self.arrays, self.run = model, arrays, run
        self.batch, self.n, self.seed = run.trainer.batch_size, len(arrays.train[1]), run.seed
        self.resident = fits_device(arrays, run.trainer.device_data_mb)
        self._order_epoch, self._order = None, None
        # Python work the caller wants done while this stepper's host thread waits in a compile (the curves'
        # imports: PhaseLoop.prefetch_plotting); a backend that has such a wait calls it once, else nobody does
        self.on_host_idle: Callable[[], object] | None = None
        if not self.resident:
            log.info(
                "fused loop: the training split (%.0f MiB) exceeds trainer.device_data_mb=%d: it is streamed, "
                "each chunk's batches gathered on the host and sent with the call",
                (arrays.train[0].nbytes + arrays.train[1].nbytes) / 2**20,
                run.trainer.device_data_mb,
            )

    def epoch_order(self, epoch: int):
        """(order as numpy, True when it was just computed) — the same order as the Keras loop's pipeline."""
        if self._order_epoch == epoch:
            return self._order, False
        from ..data.arrays import epoch_order

        self._order_epoch, self._order = epoch, epoch_order(self.n, self.seed, epoch)
        return self._order, True

    def reset_metrics(self) -> None:
        self.model.reset_metrics()

    def logs(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.model.get_metrics_result().items()}

    def evaluate(self, split: str) -> dict[str, float]:
        """Loss and metrics on the val or test split, in the Keras loop's batches ({} when there is none)."""
        xy = self.arrays.val if split == "val" else self.arrays.test
        if xy is None:
            return {}
        result = self.model.evaluate(**self.eval_inputs(xy), verbose=0, return_dict=True)
        return {k: float(v) for k, v in result.items()}

    def eval_inputs(self, xy) -> dict:
        """`evaluate`'s data for a split: the scaled arrays in batches (a backend may give a dataset)."""
        from ..data.numpy_pipeline import scale

        return {"x": scale(xy[0]), "y": xy[1], "batch_size": self.batch}
