"""dynarch: dynamic-architecture training on Keras 3 / TensorFlow, configured with Hydra.

Importing the package does not import TensorFlow: the public names below load their module on first use.

    import dynarch
    run = dynarch.compose_run(["+schedule=grow", "data=mnist_subset"])   # validated, no TensorFlow
    print(dynarch.render(run.arch, run.variant))                         # the block table
    metrics = dynarch.train(run, "outputs/notebook-run")                 # trains; writes the run dir
    model, meta = dynarch.load_run("outputs/notebook-run")               # the trained Keras model back
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"
_EXPORTS = {
    "compose_run": "dynarch.compose",
    "resolve_config": "dynarch.compose",
    "RunConfig": "dynarch.config",
    "load_run_config": "dynarch.config",
    "ArchSpec": "dynarch.spec",
    "parse_arch": "dynarch.spec",
    "render": "dynarch.inspect",
    "build_model": "dynarch.build",
    "train": "dynarch.train",
    "TrainingStopped": "dynarch.train",
    "migrate_model": "dynarch.migrate",
    "plan_migration": "dynarch.migrate",
    "load_checkpoint": "dynarch.checkpoint",
    "load_run": "dynarch.load",
    "RunMetadata": "dynarch.load",
    "DynarchError": "dynarch.errors",
    "ConfigError": "dynarch.errors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = importlib.import_module(_EXPORTS[name])
        # `train` is also a submodule: the package attribute is that module from now on (callable, see
        # dynarch/train.py), so answer the same thing the first time too
        return module if _EXPORTS[name] == f"{__name__}.{name}" else getattr(module, name)
    raise AttributeError(f"module 'dynarch' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
