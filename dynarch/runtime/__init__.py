"""The one seam to the backend: devices, threads, determinism, precision, strategy, device report, chief.

Like Keras' own `backend/<name>/` layout, each backend is one module implementing the `Runtime` interface
below; nothing outside `dynarch/runtime/` touches `tf.`/`jax.`/`torch.` directly: tensorflow.py, jax.py and
torch.py; another backend is another module and one line in `get_runtime`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ContextManager, Protocol

# Pure Python, no framework: re-exported for the entry point and the runtimes.
from .backend import BACKENDS, auto_intra_op_threads, resolve_backend, use_backend  # noqa: F401

if TYPE_CHECKING:
    from ..config import TrainerConfig


class Runtime(Protocol):
    """What the phase loop needs from a backend."""

    name: str

    def configure(self, trainer: TrainerConfig, seed: int, forward_flops: int | None) -> None:
        """Devices, threads, precision, seeds and determinism, in the order the backend needs."""

    def reseed(self, seed: int) -> None:
        """Seed every global RNG (Python, NumPy, backend) — before building a phase's model."""

    def scope(self) -> ContextManager[Any]:
        """Where variables (model, optimizer) are created, migrated and restored."""

    def strategy_text(self) -> str: ...

    def device_report(self) -> str: ...

    def is_chief(self) -> bool:
        """Whether this process writes the run dir (always true on one machine)."""

    def steps_per_execution(self, requested: int) -> int:
        """The steps per compiled call the backend can run with the current strategy."""

    def versions(self) -> dict[str, str]: ...


def get_runtime(name: str = "tensorflow") -> Runtime:
    """The runtime for a Keras backend name (`use_backend(name)` first, so Keras starts on that backend).

    Keras and the backend are imported with the optional packages they only probe for hidden
    (runtime/lean.py: pandas, matplotlib, sklearn, ...), ~2 s of start-up; they import normally afterwards."""
    from .lean import hide_optional_imports

    use_backend(name)
    with hide_optional_imports(name):
        if name == "tensorflow":
            from .tensorflow import TensorFlowRuntime

            return TensorFlowRuntime()
        if name == "jax":
            from .jax import JaxRuntime

            return JaxRuntime()
        if name == "torch":
            from .torch import TorchRuntime

            return TorchRuntime()
    raise ValueError(f"no runtime for backend {name!r}")
