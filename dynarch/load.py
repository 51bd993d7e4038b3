"""Use a trained run from Python: `load_run(RUN) -> (keras.Model, RunMetadata)`.

The model is rebuilt from the checkpoint's manifest (`arch`: the model config it was trained with, parsed
and shape-checked by `dynarch.spec.parse_arch`, built by `dynarch.build.build_model`) and its weights are
assigned from `weights.safetensors` by variable path: no pickle, no `.keras` archive, nothing executed.
For a scheduled run the final checkpoint's `arch` is the last phase's architecture — the one trained last.

    model, meta = dynarch.load_run("outputs/2026-01-01/12-00-00-000000")
    probs = model.predict(dynarch.load.scale_images(x_uint8))
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .checkpoint import MANIFEST, RUN_SUBDIR, WEIGHTS, Checkpoint, check_finite, load_checkpoint
from .errors import CheckpointError, ConfigError, DataError
from .spec import ArchSpec, parse_arch

RUN_CHECKPOINTS = (RUN_SUBDIR, "checkpoint-best")  # checkpoint folders a run dir holds


@dataclass(frozen=True)
class RunMetadata:
    """What a loaded run is: its checkpoint, architecture and the manifest's other fields."""

    checkpoint: Path  # the checkpoint folder that was loaded
    run_dir: Path | None  # the run dir holding it (None for a standalone checkpoint folder)
    arch: ArchSpec = field(repr=False)  # the architecture the weights belong to (last phase of a schedule)
    variant: str = "base"
    num_classes: int = 0
    input_shape: tuple[int, ...] = ()
    manifest: dict[str, Any] = field(default_factory=dict, repr=False)  # metrics, data_source, seed, versions...

    @property
    def model_name(self) -> str:
        return self.arch.name

    @property
    def class_names(self) -> list[str]:
        """The manifest's `class_names` when a run recorded them, else the class indices as strings."""
        names = self.manifest.get("class_names")
        if isinstance(names, list) and len(names) == self.num_classes and all(isinstance(n, str) for n in names):
            return list(names)
        return [str(i) for i in range(self.num_classes)]


def checkpoint_folder(path: str | Path) -> Path:
    """Resolve like `checkpoint.resolve`, with a clearer message for a run dir that never finished."""
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path).strip():  # load_run(None) was a TypeError
        raise CheckpointError(
            "path",
            "no run named: a run dir, its checkpoint folder, weights.safetensors or SWEEP_DIR#JOB is needed",
            expected='a path, e.g. "outputs/my-run"',
            received=repr(path),
            fix='call dynarch.load_run("outputs/my-run")',
        )
    sweep, sep, job = str(path).rpartition("#")
    folder = Path(sweep).expanduser() / job if sep and job.isdigit() else Path(path).expanduser()
    is_run = folder.is_dir() and any((folder / n).exists() for n in ("config.yaml", "state", "history.csv", "model.md"))
    if is_run and not (folder / RUN_SUBDIR / MANIFEST).is_file():
        raise CheckpointError(
            str(path),
            "this run dir has no final checkpoint (the run did not finish)",
            expected=f"{RUN_SUBDIR}/{MANIFEST} and {RUN_SUBDIR}/{WEIGHTS} (written when training ends)",
            received="no checkpoint/" + (" (train-state checkpoints in state/)" if (folder / "state").is_dir() else ""),
            fix="finish the run first (the same training command with "
            f"hydra.run.dir={folder} resume=true), or pass another run",
        )
    from .checkpoint import resolve

    return resolve(path)


def _arch_from_manifest(ckpt: Checkpoint) -> ArchSpec:
    where = str(ckpt.path / MANIFEST)
    man = ckpt.manifest
    if not isinstance(man.get("arch"), dict) or not isinstance(man.get("num_classes"), int):
        raise CheckpointError(
            where,
            "the manifest does not describe the model (no 'arch' or 'num_classes')",
            expected="a checkpoint written by dynarch training or python -m dynarch.migrate --out",
            received=f"fields: {', '.join(sorted(man)[:8])}",
            fix="use the run's checkpoint/ folder (a train-state checkpoint in state/ is not for use)",
        )
    try:
        return parse_arch(man["arch"], man["num_classes"], where="arch")
    except ConfigError as e:
        versions = man.get("versions")
        raise CheckpointError(
            where,
            f"the checkpoint's architecture no longer validates: {e.where}: {e.problem}",
            expected=e.expected,
            received=e.received,
            fix="load it with the dynarch version that wrote it"
            + (f" (versions {versions})" if versions else "")
            + ", or train the variant again",
        ) from None


def _assign(model, ckpt: Checkpoint) -> None:
    """Every model variable from the tensor stored under its path; anything missing or extra is refused."""
    variables = {v.path: v for v in model.weights}
    missing = sorted(set(variables) - set(ckpt.tensors))
    extra = sorted(set(ckpt.tensors) - set(variables))
    if missing or extra:
        raise CheckpointError(
            str(ckpt.path / WEIGHTS),
            "the weights do not match the architecture in the manifest",
            expected=f"exactly the model's {len(variables)} variables",
            received=f"missing {missing[:4]}, unexpected {extra[:4]}",
            fix="use a checkpoint written by dynarch (this one was altered or is foreign)",
        )
    for path, var in variables.items():
        value = ckpt.tensors[path]
        if tuple(var.shape) == () and value.shape == (1,):
            value = value.reshape(())  # scalars are stored as (1,)
        if tuple(value.shape) != tuple(var.shape):
            raise CheckpointError(
                str(ckpt.path / WEIGHTS),
                f"tensor '{path}' has the wrong shape for its model",
                expected=tuple(var.shape),
                received=tuple(value.shape),
                fix="use a checkpoint written by dynarch (this one was altered or is foreign)",
            )
        var.assign(value.astype(var.dtype))


def load_run(path: str | Path, compile: bool = True):
    """Rebuild a trained model from a run dir, a checkpoint folder, its weights file or SWEEP_DIR#JOB.

    Args:
        path: where the run is.
        compile: compile with the training loss and accuracy metric, so `model.evaluate(x, y)` works.

    Returns:
        (keras.Model, RunMetadata). Raises CheckpointError for a run without a (final) checkpoint, a damaged
        or foreign one, non-finite weights, or an architecture that no longer validates.
    """
    ckpt = load_checkpoint(checkpoint_folder(path))  # verifies schema and both hashes before TensorFlow
    check_finite(ckpt)
    arch = _arch_from_manifest(ckpt)
    from .build import build_model

    try:
        model = build_model(arch)
    except ConfigError as e:
        raise CheckpointError(
            str(ckpt.path / MANIFEST),
            f"the architecture cannot be built: {e.problem}",
            expected=e.expected,
            received=e.received,
            fix=e.fix,
        ) from None
    _assign(model, ckpt)
    if compile:
        model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    run_dir = ckpt.path.parent if ckpt.path.name in RUN_CHECKPOINTS else None
    meta = RunMetadata(
        ckpt.path,
        run_dir,
        arch,
        str(ckpt.manifest.get("variant", "base")),
        arch.num_classes,
        tuple(arch.input_shape),
        ckpt.manifest,
    )
    return model, meta


def scale_images(x: np.ndarray, where: str = "input") -> np.ndarray:
    """Images as the model saw them in training: uint8 divided by 255; floats in [0, 1] as they are."""
    x = np.asarray(x)
    if x.dtype == np.uint8:
        return x.astype(np.float32) / np.float32(255.0)
    if x.dtype.kind == "f":
        finite = np.isfinite(x).all()
        if not finite or (x.size and (float(x.min()) < 0.0 or float(x.max()) > 1.0)):
            raise DataError(
                where,
                "float images outside [0, 1]" if finite else "images hold NaN or Inf",
                expected="uint8 pixels 0..255, or floats in [0, 1]",
                received=f"{x.dtype}, range {np.nanmin(x):g}..{np.nanmax(x):g}" if x.size else str(x.dtype),
                fix="save the images as uint8, or divide them by 255",
            )
        return x.astype(np.float32)
    raise DataError(
        where,
        f"images of dtype {x.dtype}",
        expected="uint8 pixels 0..255, or floats in [0, 1]",
        received=str(x.dtype),
        fix="convert the images to uint8 or float32",
    )


def check_input_shape(x: np.ndarray, meta: RunMetadata, where: str) -> None:
    """Refuse images whose per-sample shape differs from the model's input, before anything runs."""
    found = tuple(int(d) for d in x.shape[1:])
    if found != tuple(meta.input_shape):
        raise DataError(
            where,
            f"the images are {'x'.join(map(str, found)) or 'scalars'}, the model takes "
            f"{'x'.join(map(str, meta.input_shape))}",
            expected=f"images of shape {list(meta.input_shape)} (height, width, channels)",
            received=f"{len(x)} images of shape {list(found)}",
            fix="use data of the model's input shape (for image files, predict resizes them)",
        )
