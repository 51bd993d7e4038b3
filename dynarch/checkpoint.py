"""Checkpoints: a folder with `weights.safetensors` (tensors keyed by Keras variable path, e.g.
`stage1/conv/kernel`; no pickle, nothing executed on load) and `manifest.json` (arch, variant, classes,
data source, metrics, versions, and the SHA-256 of the weights file, verified on every load).

Saves are atomic: everything is written and fsynced in a sibling temp folder, then renamed into place,
so an interrupted save never leaves a half-written checkpoint under the final name.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CheckpointError

FORMAT = "dynarch-checkpoint/1"
WEIGHTS, MANIFEST = "weights.safetensors", "manifest.json"
RUN_SUBDIR = "checkpoint"


@dataclass
class Checkpoint:
    path: Path                       # the checkpoint folder
    tensors: dict[str, np.ndarray]   # variable path -> value
    manifest: dict[str, Any]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def save_checkpoint(directory: Path, tensors: dict[str, np.ndarray], manifest: dict[str, Any]) -> Path:
    """Write a checkpoint folder atomically; returns its path.

    Args:
        directory: final folder, e.g. RUN/checkpoint. An existing one is replaced only after the new
            one is complete on disk.
        tensors: variable path -> array.
        manifest: JSON-able description; `format`, `weights_sha256` and `tensors` are added here.
    """
    from safetensors.numpy import save

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        blob = save({k: np.ascontiguousarray(v) for k, v in tensors.items()})
        _write_file(tmp / WEIGHTS, blob)
        full = {"format": FORMAT, **manifest, "weights_sha256": hashlib.sha256(blob).hexdigest(),
                "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in tensors.items()}}
        _write_file(tmp / MANIFEST, json.dumps(full, indent=2, default=str).encode())
        _fsync_dir(tmp)
        old = None
        if directory.exists():
            old = directory.parent / f".{directory.name}.old-{os.getpid()}"
            os.replace(directory, old)
        os.replace(tmp, directory)
        _fsync_dir(directory.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as e:  # full disk, permissions: the previous checkpoint (if any) is untouched
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(str(directory), f"could not write the checkpoint ({e.strerror or e})",
                              expected="a writable folder with free space", received=f"errno {e.errno}",
                              fix="free disk space or choose another run dir; "
                                  + ("the previous checkpoint is kept" if directory.exists() else
                                     "nothing was written")) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def resolve(path: str | Path) -> Path:
    """A run dir, a checkpoint folder, its weights file, or SWEEP_DIR#JOB_NUM -> the checkpoint folder."""
    sweep, sep, job = str(path).rpartition("#")
    p = Path(sweep).expanduser() / job if sep and job.isdigit() else Path(path).expanduser()
    if p.is_file() and p.name == WEIGHTS:
        p = p.parent
    elif p.is_dir() and (p / RUN_SUBDIR / MANIFEST).exists():
        p = p / RUN_SUBDIR
    if not (p / MANIFEST).is_file() or not (p / WEIGHTS).is_file():
        what = "does not exist" if not p.exists() else "holds no dynarch checkpoint"
        raise CheckpointError(str(path), f"the path {what}",
                              expected=f"a run dir (with {RUN_SUBDIR}/), a checkpoint folder with {MANIFEST} "
                                       f"and {WEIGHTS}, that {WEIGHTS} file, or SWEEP_DIR#JOB_NUM",
                              received=str(path), fix="pass the output dir of an earlier dynarch run")
    return p


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Load and verify a checkpoint (format, checksum, tensor list) without executing anything."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    folder = resolve(path)
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(str(folder / MANIFEST), f"the manifest is not valid JSON ({e})",
                              expected="a manifest written by dynarch", received="unreadable JSON",
                              fix="the checkpoint is corrupted: use another run's checkpoint") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(str(folder / MANIFEST), "not a dynarch checkpoint manifest",
                              expected=f"format: {FORMAT}", received=manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__,
                              fix="pass a checkpoint written by dynarch")
    blob = (folder / WEIGHTS).read_bytes()
    digest = hashlib.sha256(blob).hexdigest()
    if digest != manifest.get("weights_sha256"):
        raise CheckpointError(str(folder / WEIGHTS), "checksum mismatch: the weights file is corrupted or truncated",
                              expected=f"sha256 {manifest.get('weights_sha256')}", received=f"sha256 {digest} "
                              f"({len(blob)} bytes)", fix="use another checkpoint; this one cannot be trusted")
    try:
        tensors = load(blob)
    except (SafetensorError, ValueError) as e:
        raise CheckpointError(str(folder / WEIGHTS), f"not a readable safetensors file ({e})",
                              expected="a safetensors file", received="unreadable data",
                              fix="use another checkpoint") from None
    if sorted(tensors) != sorted(manifest.get("tensors", {})):
        raise CheckpointError(str(folder), "the manifest and the weights file list different tensors",
                              expected=sorted(manifest.get("tensors", {}))[:5], received=sorted(tensors)[:5],
                              fix="use another checkpoint")
    return Checkpoint(folder, tensors, manifest)


def model_tensors(model) -> dict[str, np.ndarray]:
    """All model variables (trainable and not, e.g. BatchNorm statistics) keyed by variable path."""
    return {v.path: np.asarray(v.numpy()) for v in model.weights}


def export_keras(model, path: Path) -> Path:
    """Save a `.keras` archive (architecture + weights) atomically, for serving or plain Keras users."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    model.save(tmp)
    os.replace(tmp, path)
    return path


def load_keras(path: str | Path):
    """Load a `.keras` archive with Keras' safe_mode: no lambda or other code is deserialized."""
    import keras

    from . import build  # noqa: F401  registers BlockGroup for deserialization
    try:
        return keras.saving.load_model(path, safe_mode=True)
    except (ValueError, OSError, TypeError) as e:
        raise CheckpointError(str(path), f"refused or unreadable .keras file ({str(e).splitlines()[0][:200]})",
                              expected="a .keras file exported by dynarch (safe_mode: no code inside)",
                              received=Path(path).name, fix="export it again with trainer.export_keras=true") from None
