"""Checkpoints: a folder with `weights.safetensors` (tensors keyed by Keras variable path, e.g.
`stage1/conv/kernel`; no pickle, nothing executed on load) and `manifest.json` (arch, variant, classes,
data source, metrics, versions, the SHA-256 of the weights file and `manifest_sha256`, the SHA-256 of the
manifest's own canonical JSON without that field). Both hashes are verified on every load, so one
flipped bit in either file is a CheckpointError naming the file, never a silently different run.

Everything read is untrusted: the manifest is bounded in size and nesting depth before it is parsed,
its schema is checked in one function (`validate_manifest`), and every stored tensor must agree with
the manifest's shape and dtype. Checkpoints of format `dynarch-checkpoint/1` (written before the
manifest hash existed) still load; they carry only the weights hash.

Saves are atomic: everything is written and fsynced in a sibling temp folder, then renamed into place,
so an interrupted save never leaves a half-written checkpoint under the final name.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CheckpointError

FORMAT = "dynarch-checkpoint/2"  # adds manifest_sha256
LEGACY_FORMATS = ("dynarch-checkpoint/1",)  # weights hash only; still read
WEIGHTS, MANIFEST = "weights.safetensors", "manifest.json"
RUN_SUBDIR = "checkpoint"
MAX_MANIFEST_BYTES = 64 << 20  # a manifest holds arch, history and a line per tensor: far below this
MAX_JSON_DEPTH = 64  # configs nest at most 32 deep (compose.MAX_DEPTH); json.loads recurses
TENSOR_KINDS = "fiub"  # float, int, uint, bool: what models and optimizers store
_SHA = re.compile(r"^[0-9a-f]{64}$")
_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"')


@dataclass
class Checkpoint:
    path: Path  # the checkpoint folder
    tensors: dict[str, np.ndarray]  # variable path -> value
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


def manifest_digest(manifest: dict[str, Any]) -> str:
    """SHA-256 of the manifest's canonical JSON (sorted keys, no spaces) without `manifest_sha256`."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


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
        arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}  # scalars are stored as (1,)
        blob = save(arrays)
        _write_file(tmp / WEIGHTS, blob)
        full = {
            "format": FORMAT,
            **{k: v for k, v in manifest.items() if k != "format"},
            "weights_sha256": hashlib.sha256(blob).hexdigest(),
            "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in arrays.items()},
        }
        full.pop("manifest_sha256", None)
        full = json.loads(json.dumps(full, default=str))  # hash exactly what will be read back
        full["manifest_sha256"] = manifest_digest(full)
        _write_file(tmp / MANIFEST, json.dumps(full, indent=2).encode())
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
        raise CheckpointError(
            str(directory),
            f"could not write the checkpoint ({e.strerror or e})",
            expected="a writable folder with free space",
            received=f"errno {e.errno}",
            fix="free disk space or choose another run dir; "
            + ("the previous checkpoint is kept" if directory.exists() else "nothing was written"),
        ) from None
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
        fix = "pass the output dir of an earlier dynarch run"
        if sep and job.isdigit() and Path(sweep).expanduser().is_dir():  # SWEEP#7 of a sweep with jobs 0-3
            jobs = sorted(
                (d.name for d in Path(sweep).expanduser().iterdir() if d.name.isdigit() and (d / RUN_SUBDIR).is_dir()),
                key=int,
            )
            what = f"is not a finished job of that sweep (job {job})"
            fix = f"pass {sweep}#N with N one of: {', '.join(jobs[:20]) or 'none (no job finished)'}"
        raise CheckpointError(
            str(path),
            f"the path {what}",
            expected=f"a run dir (with {RUN_SUBDIR}/), a checkpoint folder with {MANIFEST} "
            f"and {WEIGHTS}, that {WEIGHTS} file, or SWEEP_DIR#JOB_NUM",
            received=str(path),
            fix=fix,
        )
    return p


def _corrupt(where: Path | str, problem: str, expected: Any, received: Any) -> CheckpointError:
    return CheckpointError(
        str(where),
        problem,
        expected=expected,
        received=received,
        fix="use another checkpoint; this one is corrupted or was not written by dynarch",
    )


def _read_manifest(path: Path) -> Any:
    """Parse the manifest, bounding its size and nesting before json.loads (which recurses)."""
    size = path.stat().st_size
    if size > MAX_MANIFEST_BYTES:
        raise _corrupt(path, "the manifest is too large", f"at most {MAX_MANIFEST_BYTES:,} bytes", f"{size:,} bytes")
    raw = path.read_bytes()
    marks = np.frombuffer(_STRINGS.sub(b'""', raw), np.uint8)  # brackets inside strings do not nest
    marks = marks[np.isin(marks, np.frombuffer(b"[]{}", np.uint8))]
    depth = np.cumsum(np.where((marks == ord("[")) | (marks == ord("{")), 1, -1))
    if depth.size and int(depth.max()) > MAX_JSON_DEPTH:
        raise _corrupt(
            path, "the manifest nests too deeply", f"at most {MAX_JSON_DEPTH} levels", f"{int(depth.max())} levels"
        )
    try:
        return json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise CheckpointError(
            str(path),
            f"the manifest is not valid JSON ({str(e)[:120]})",
            expected="a manifest written by dynarch",
            received="unreadable JSON",
            fix="the checkpoint is corrupted: use another run's checkpoint",
        ) from None


def _is_int(v: Any, minimum: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= minimum


def _dtype_ok(name: Any) -> bool:
    try:
        return isinstance(name, str) and np.dtype(name).kind in TENSOR_KINDS
    except (TypeError, ValueError):
        return False


# Optional manifest fields other modules read: field -> (check, expected).
_FIELDS: dict[str, tuple[Any, str]] = {
    "arch": (lambda v: isinstance(v, dict), "a mapping (the model config)"),
    "model": (lambda v: isinstance(v, str), "a string"),
    "variant": (lambda v: isinstance(v, str), "a string"),
    "kind": (lambda v: isinstance(v, str), "a string"),
    "num_classes": (lambda v: _is_int(v, 1), "an integer >= 1"),
    "input_shape": (
        lambda v: isinstance(v, list) and bool(v) and all(_is_int(d, 1) for d in v),
        "a list of positive integers",
    ),
    "migrated_from": (lambda v: v is None or isinstance(v, str), "a path string or null"),
    "migration": (lambda v: v is None or isinstance(v, dict), "a mapping of counts or null"),
    "schedule": (lambda v: v is None or isinstance(v, (list, dict, str)), "the schedule or null"),
}


def validate_manifest(manifest: Any, where: Path | str) -> dict[str, Any]:
    """Check the manifest's schema (types of every field dynarch reads); raise CheckpointError naming
    `where`, the field, what was expected and what was found. Returns the manifest."""
    if not isinstance(manifest, dict):
        raise CheckpointError(
            str(where),
            "not a dynarch checkpoint manifest",
            expected="a JSON object",
            received=type(manifest).__name__,
            fix="pass a checkpoint written by dynarch",
        )
    fmt = manifest.get("format")
    if fmt != FORMAT and fmt not in LEGACY_FORMATS:
        raise CheckpointError(
            str(where),
            "not a dynarch checkpoint manifest",
            expected=f"format: {FORMAT}",
            received=fmt if isinstance(fmt, str) else type(fmt).__name__,
            fix="pass a checkpoint written by dynarch",
        )
    hashes = ["weights_sha256"] + (["manifest_sha256"] if fmt == FORMAT else [])
    for key in hashes:
        if not (isinstance(manifest.get(key), str) and _SHA.match(manifest[key])):
            raise _corrupt(
                where, f"the manifest's '{key}' is missing or malformed", "64 hex digits", repr(manifest.get(key))[:80]
            )
    tensors = manifest.get("tensors")
    if not isinstance(tensors, dict):
        raise _corrupt(
            where,
            "the manifest's 'tensors' is not a mapping",
            "{path: {shape: [...], dtype: ...}}",
            type(tensors).__name__,
        )
    for name, info in tensors.items():
        ok = (
            isinstance(info, dict)
            and isinstance(info.get("shape"), list)
            and all(_is_int(d) for d in info["shape"])
            and _dtype_ok(info.get("dtype"))
        )
        if not ok:
            raise _corrupt(
                where,
                f"the manifest's entry for tensor '{name}' is malformed",
                f"shape: a list of integers >= 0, dtype: a numeric dtype ({TENSOR_KINDS} kinds)",
                repr(info)[:120],
            )
    for key, (check, expected) in _FIELDS.items():
        if key in manifest and not check(manifest[key]):
            raise _corrupt(where, f"the manifest's '{key}' has the wrong type", expected, repr(manifest[key])[:120])
    return manifest


def _check_tensors(folder: Path, tensors: dict[str, np.ndarray], listed: dict[str, Any]) -> None:
    """Every stored tensor must be exactly what the manifest says: same names, shapes and dtypes."""
    if sorted(tensors) != sorted(listed):
        raise CheckpointError(
            str(folder),
            "the manifest and the weights file list different tensors",
            expected=sorted(listed)[:5],
            received=sorted(tensors)[:5],
            fix="use another checkpoint",
        )
    for name, value in tensors.items():
        info = listed[name]
        shape_ok = list(value.shape) == info["shape"] or (info["shape"] == [] and value.shape == (1,))  # older saves
        if value.dtype.kind not in TENSOR_KINDS or not shape_ok or value.dtype != np.dtype(info["dtype"]):
            raise _corrupt(
                folder / WEIGHTS,
                f"tensor '{name}' disagrees with the manifest",
                f"shape {info['shape']} dtype {info['dtype']}",
                f"shape {list(value.shape)} dtype {value.dtype}",
            )


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Load and verify a checkpoint (schema, both checksums, tensor list) without executing anything."""
    from safetensors.numpy import load

    folder = resolve(path)
    manifest = validate_manifest(_read_manifest(folder / MANIFEST), folder / MANIFEST)
    if "manifest_sha256" in manifest and manifest_digest(manifest) != manifest["manifest_sha256"]:
        raise CheckpointError(
            str(folder / MANIFEST),
            "checksum mismatch: the manifest was modified or corrupted",
            expected=f"sha256 {manifest['manifest_sha256']}",
            received=f"sha256 {manifest_digest(manifest)}",
            fix="use another checkpoint; this one cannot be trusted",
        )
    blob = (folder / WEIGHTS).read_bytes()
    digest = hashlib.sha256(blob).hexdigest()
    if digest != manifest["weights_sha256"]:
        raise CheckpointError(
            str(folder / WEIGHTS),
            "checksum mismatch: the weights file is corrupted or truncated",
            expected=f"sha256 {manifest['weights_sha256']}",
            received=f"sha256 {digest} ({len(blob)} bytes)",
            fix="use another checkpoint; this one cannot be trusted",
        )
    try:
        tensors = load(blob)
    except Exception as e:  # noqa: BLE001  untrusted bytes: any parser failure is a corrupt file
        raise CheckpointError(
            str(folder / WEIGHTS),
            f"not a readable safetensors file ({str(e)[:120]})",
            expected="a safetensors file",
            received="unreadable data",
            fix="use another checkpoint",
        ) from None
    _check_tensors(folder, tensors, manifest["tensors"])
    return Checkpoint(folder, tensors, manifest)


def check_finite(ckpt: Checkpoint) -> None:
    """Refuse a checkpoint holding NaN or Inf in any floating tensor, naming the first such variable."""
    for name, value in sorted(ckpt.tensors.items()):
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            nan, inf = int(np.isnan(value).sum()), int(np.isinf(value).sum())
            raise CheckpointError(
                f"{ckpt.path / WEIGHTS}",
                f"variable '{name}' holds non-finite values",
                expected="finite weights",
                received=f"{nan} NaN and {inf} Inf of {value.size}",
                fix="pick another checkpoint (e.g. an earlier run, or one saved before training diverged)",
            )


def model_tensors(model) -> dict[str, np.ndarray]:
    """All model variables (trainable and not, e.g. BatchNorm statistics) keyed by variable path."""
    return {v.path: np.asarray(v.numpy()) for v in model.weights}


def model_manifest(arch, variant: str, **extra: Any) -> dict[str, Any]:
    """The manifest fields that describe the model (the one builder: training and the migrate CLI).

    Args:
        arch: the ArchSpec the weights belong to (its raw mapping rebuilds the model: `dynarch.load_run`).
        variant: the variant name recorded with it.
        **extra: further fields (data_source, migrated_from, metrics, ...), added as given.
    """
    return {
        "arch": dict(arch.raw),
        "model": arch.name,
        "variant": variant,
        "num_classes": arch.num_classes,
        "input_shape": list(arch.input_shape),
        **extra,
    }


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
        raise CheckpointError(
            str(path),
            f"refused or unreadable .keras file ({str(e).splitlines()[0][:200]})",
            expected="a .keras file exported by dynarch (safe_mode: no code inside)",
            received=Path(path).name,
            fix="export it again with trainer.export_keras=true",
        ) from None
