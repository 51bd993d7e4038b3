"""Start Keras without the optional packages it imports only because they happen to be installed.

Keras 3.15 / TensorFlow 2.21 import several third-party packages at module level, each inside
`try: import X / except ImportError: X = None`, only to offer a feature dynarch never uses. With them
installed (dynarch's .venv has them for its own PNG, MLflow, the tests) they cost ~2.4 s of a ~4.5 s
`import keras` on 2 CPU cores. `hide_optional_imports(backend)` wraps dynarch's first import of Keras and
its backend (`get_runtime`) and refuses exactly those imports for the duration of the block; afterwards the
finder is gone and every package imports normally (matplotlib for dynarch's curves.png, pandas for MLflow).
What changes is only that the Keras/TF modules which probed during the block recorded "not installed" for
the rest of the process. Each name, the site that imports it (read in .venv site-packages) and what that
site then lacks:

- `pandas` (every backend; ~0.3-0.5 s with pyarrow): keras/src/trainers/data_adapters/array_slicing.py
  `try: import pandas except ImportError: pandas = None`. Lost: fit/evaluate's special handling of
  pandas.DataFrame/Series inputs (a DataFrame still works through its `__array__`, as one float array).
  dynarch feeds NumPy arrays or tf.data, never a DataFrame.
- `matplotlib` (every backend; ~0.35-0.45 s for pyplot): keras/src/visualization/plot_image_gallery.py
  `try: import matplotlib.pyplot as plt except ImportError: plt = None` and plot_bounding_box_gallery.py
  `try: from matplotlib import patches except ImportError: patches = None`. Lost:
  `keras.visualization.plot_image_gallery / plot_bounding_box_gallery` (ImportError "requires matplotlib").
  dynarch's own curves.png imports matplotlib.figure normally after the block, so for a single CLI run
  most of this cost moves to the PNG step rather than vanishing (it vanishes where no PNG is drawn).
- `sklearn` (every backend; ~0.5-1.0 s with the scipy.stats it pulls): keras/src/wrappers/fixes.py,
  utils.py, sklearn_wrapper.py, each `try: import sklearn ... except ImportError: sklearn = None` (with
  stand-in base classes). Lost: `keras.wrappers.SKLearnClassifier/Regressor/Transformer` (ImportError
  "requires scikit-learn" when built). dynarch does not use them.
- `jax` (tensorflow and torch backends only; ~0.5-0.7 s): tensorflow/lite/python/util.py
  `try: from jax import jit as _jit except ImportError: _jit = None` (imported through tf.compat.v1.lite);
  lost: `tf.lite.TFLiteConverter.experimental_from_jax` only (dynarch's LiteRT export converts the Keras
  model through a SavedModel, keras/src/export/litert.py). Also keras/src/callbacks/orbax_checkpoint.py
  `try: import jax ... except ImportError: pass`, a shim for old JAX's `jax.monitoring.record_scalar`
  (Orbax checkpointing, unused by dynarch). Never hidden on backend=jax.
- `scipy` (tensorflow backend only; ~0.1 s for scipy.sparse): tensorflow/python/keras/engine/
  training_arrays_v1.py and training_v1.py, `try: from scipy.sparse import issparse except ImportError:
  issparse = None`: TF's legacy tf.compat.v1 Keras engine (not Keras 3), imported via feature_column.
  Keras 3's TF backend tells scipy sparse inputs by class name (data_adapter_utils.is_scipy_sparse) and
  resolves scipy lazily (utils/module_utils.LazyModule, whose cached `available` is never probed for a
  hidden name during the import). Kept on jax: jax.experimental.sparse imports it.

Nothing here touches what training needs: NumPy, TensorFlow, tf.data, h5py (.weights.h5 / legacy .h5),
rich (model summaries), PIL, optree, requests, tensorboard are imported exactly as before, so layers,
augmentation, optimizers, losses, metrics, callbacks and saving are the same code with the same numerics.
torch is not imported by a TensorFlow or JAX start, so it is not listed. A name already in sys.modules
when the block starts (or not installed at all) is left alone. The finder is process-wide while it is in
place: another thread importing a hidden package during those seconds would be refused too (dynarch
starts Keras before it starts any thread of its own).

How a refusal looks: importlib.util.find_spec still finds a hidden package (torch._dynamo probes pandas and
sklearn that way while Keras starts on torch, unguarded), but importing it raises ModuleNotFoundError from
the loader, before anything enters sys.modules, which the sites above catch as ImportError.
DYNARCH_LEAN_IMPORTS=0 turns it off (every package imports as Keras asks).
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import logging
import sys
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)
ENV = "DYNARCH_LEAN_IMPORTS"
COMMON = ("pandas", "matplotlib", "sklearn")
HIDDEN = {  # backend -> top-level packages refused while Keras and that backend start (why: module docstring)
    "tensorflow": (*COMMON, "jax", "scipy"),
    "jax": COMMON,
    "torch": (*COMMON, "jax"),
}


def enabled() -> bool:
    from ..envswitch import env_switch

    on = env_switch(ENV, "1 (the default: hide the optional packages while Keras starts) or 0")
    return True if on is None else on


class _Refuse(importlib.abc.Loader):
    """Fails the import before a module object exists, so nothing is left in sys.modules."""

    def __init__(self, refused: list[tuple[str, str]]):
        self.refused = refused

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> Any:
        self.refused.append((spec.name, _asker()))
        raise ModuleNotFoundError(
            f"No module named {spec.name!r} (optional; hidden while Keras starts: {ENV}=0 keeps it)",
            name=spec.name,
        )

    def exec_module(self, module: Any) -> None:  # pragma: no cover - create_module always raises first
        raise ModuleNotFoundError(f"No module named {module.__name__!r}", name=module.__name__)


class HideFinder(importlib.abc.MetaPathFinder):
    """First on sys.meta_path: for a hidden package, the real spec (location and all) with a refusing loader."""

    def __init__(self, names: frozenset[str]):
        self.names = names
        self.refused: list[tuple[str, str]] = []  # (module, the module importing it): imports turned away

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname.partition(".")[0] not in self.names:
            return None
        real = None
        for finder in sys.meta_path:
            if not isinstance(finder, HideFinder) and hasattr(finder, "find_spec"):
                real = finder.find_spec(fullname, path, target)
                if real is not None:
                    break
        if real is None:
            return None  # not installed: the import fails as it would anyway
        spec = importlib.machinery.ModuleSpec(fullname, _Refuse(self.refused), origin=real.origin)
        spec.submodule_search_locations = real.submodule_search_locations
        spec.has_location = real.has_location
        return spec


def _asker() -> str:
    """The module whose import statement is being served (the first frame outside importlib)."""
    frame = sys._getframe(2)
    while frame is not None and (
        frame.f_code.co_filename.startswith("<frozen") or "importlib" in frame.f_code.co_filename
    ):
        frame = frame.f_back  # the import system's own frames
    return frame.f_globals.get("__name__", "?") if frame is not None else "?"


@contextlib.contextmanager
def hide_optional_imports(backend: str) -> Iterator[HideFinder | None]:
    """Refuse HIDDEN[backend]'s packages (those not yet imported) inside the block; yields the finder
    (its `refused` lists what was turned away), or None when there is nothing to do or it is switched off."""
    names = frozenset(n for n in HIDDEN.get(backend, ()) if n not in sys.modules)
    if not names or not enabled():
        yield None
        return
    finder = HideFinder(names)
    sys.meta_path.insert(0, finder)
    try:
        yield finder
    finally:
        with contextlib.suppress(ValueError):  # removed by identity, wherever others' finders put it
            sys.meta_path.remove(finder)
        if finder.refused:
            log.debug("optional imports skipped while %s started: %s", backend, sorted({n for n, _ in finder.refused}))
