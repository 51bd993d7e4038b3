"""Weight migration by variable path between any two variants, with a complete report.

Every target variable is *copied* (same path and shape), *adapted* (Net2WiderNet widening, truncation,
fan-in remapped after an upstream width change) or *re-initialized* (new block — as an identity map
when widths allow, Net2DeeperNet — or a shape that cannot be carried); every source variable that the
target lacks is *dropped*. Optimizer state is never migrated. The planning is numpy only.

    python -m dynarch.migrate RUN_DIR --to +arch=deep --dry-run
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .checkpoint import Checkpoint, load_checkpoint
from .errors import CheckpointError, DynarchError
from .spec import ArchSpec, BlockSpec

ACTIONS = ("copied", "adapted", "reinitialized", "dropped")
CHANNEL_KEEPING = ("dropout", "identity", "pool")      # pass a feature mapping through unchanged
NONNEG_ACTIVATIONS = ("relu", "relu6", "sigmoid", "softmax", "hard_sigmoid", "softplus", "exponential")


@dataclass
class Entry:
    path: str
    action: str                      # one of ACTIONS
    detail: str
    source_shape: list[int] | None = None
    target_shape: list[int] | None = None
    identity_init: bool = False      # a new block set to an identity map: nothing was lost


@dataclass
class MigrationReport:
    source: str
    source_variant: str
    target_variant: str
    entries: list[Entry] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {a: sum(e.action == a for e in self.entries) for a in ACTIONS}

    def not_carried(self) -> list[Entry]:
        """What strict mode refuses: dropped source variables and randomly re-initialized target ones."""
        return [e for e in self.entries if e.action == "dropped"
                or (e.action == "reinitialized" and not e.identity_init)]

    def to_markdown(self) -> str:
        c = self.counts()
        lines = [f"# Migration {self.source_variant} -> {self.target_variant}", "",
                 f"source: `{self.source}`", "",
                 f"copied {c['copied']}, adapted {c['adapted']}, re-initialized {c['reinitialized']}, "
                 f"dropped {c['dropped']}", ""]
        lines += [f"- {n}" for n in self.notes] + ([""] if self.notes else [])
        lines += ["| variable | action | detail | source shape | target shape |", "|---|---|---|---|---|"]
        for e in self.entries:
            fmt = lambda s: "—" if s is None else str(tuple(s))
            lines.append(f"| {e.path} | {e.action} | {e.detail} | {fmt(e.source_shape)} | {fmt(e.target_shape)} |")
        return "\n".join(lines) + "\n"

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "counts": self.counts()}


@dataclass
class _Mapping:
    """Target features -> source features for the activations flowing between blocks."""
    index: np.ndarray                # index[j] = source feature feeding target feature j
    divisor: np.ndarray              # how many target features share that source feature

    def flatten(self, spatial: int, source_channels: int) -> "_Mapping":
        pos = np.repeat(np.arange(spatial), len(self.index))
        return _Mapping(pos * source_channels + np.tile(self.index, spatial), np.tile(self.divisor, spatial))


def _widen_mapping(src_width: int, tgt_width: int, rng: np.random.Generator) -> _Mapping:
    """Net2WiderNet: keep the first units, replicate random ones; or keep the first units when shrinking."""
    if tgt_width <= src_width:
        index = np.arange(tgt_width)
    else:
        index = np.concatenate([np.arange(src_width), rng.integers(0, src_width, tgt_width - src_width)])
    counts = np.bincount(index, minlength=src_width)
    return _Mapping(index, counts[index].astype(np.float64) if tgt_width > src_width else np.ones(tgt_width))


def _leaves(spec: ArchSpec) -> list[tuple[BlockSpec, bool]]:
    """Enabled leaf blocks in order, each with whether it sits inside a residual group."""
    out = []

    def rec(blocks, in_residual):
        for b in blocks:
            if not b.enabled:
                continue
            if b.is_group:
                rec(b.children, in_residual or b.type == "residual")
            else:
                out.append((b, in_residual))
    rec(spec.blocks, False)
    return out


def _identity_kernel(block: BlockSpec, shape: tuple[int, ...]) -> np.ndarray | None:
    """Identity-map kernel for a new dense/conv block whose input and output widths agree, else None."""
    if shape[-1] != shape[-2]:
        return None
    if block.type == "dense":
        return np.eye(shape[-1], dtype=np.float32)
    kh, kw = shape[0], shape[1]
    if block.params["padding"] != "same" or kh % 2 == 0 or kw % 2 == 0 or block.params["strides"] not in (1, [1, 1]):
        return None
    kernel = np.zeros(shape, np.float32)
    kernel[kh // 2, kw // 2] = np.eye(shape[-1], dtype=np.float32)
    return kernel


def plan_migration(source: Checkpoint, target: ArchSpec, target_shapes: dict[str, tuple[int, ...]], *,
                   new_blocks: str = "identity", seed: int = 0, target_variant: str = "target"
                   ) -> tuple[MigrationReport, dict[str, np.ndarray]]:
    """Decide, for every target variable, where its value comes from.

    Args:
        source: the loaded checkpoint.
        target: the target ArchSpec (shapes inferred).
        target_shapes: variable path -> shape of the built target model (includes `_target_` layers).
        new_blocks: "identity" (function-preserving where widths agree) or "random" (keep fresh init).
        seed: seeds which units Net2WiderNet replicates.
        target_variant: recorded in the report.

    Returns:
        The report and the values to assign (paths absent from it keep their fresh initialization).
    """
    src = source.tensors
    man = source.manifest
    report = MigrationReport(str(source.path), f"{man.get('model', '?')}/{man.get('variant', '?')}",
                             f"{target.name}/{target_variant}")
    report.notes.append("optimizer state is not migrated: the target starts with a fresh optimizer")
    if man.get("num_classes") not in (None, target.num_classes):
        report.notes.append(f"class count differs: source {man['num_classes']}, target {target.num_classes}; "
                            "the head cannot carry over and is re-initialized")
    if man.get("input_shape") and tuple(man["input_shape"]) != tuple(target.input_shape):
        report.notes.append(f"input shape differs: source {tuple(man['input_shape'])}, target "
                            f"{tuple(target.input_shape)}; layers reading the input are re-initialized")
    rng = np.random.default_rng(seed)
    values: dict[str, np.ndarray] = {}
    entries: dict[str, Entry] = {}
    mapping: _Mapping | None = None   # how the features entering the next block map to the source's
    nonneg = False                    # are those features known to be >= 0 (ReLU-like output)?
    src_channels = None               # source width of the features entering the next block

    def put(path, action, detail, value=None, identity_init=False):
        entries[path] = Entry(path, action, detail, list(src[path].shape) if path in src else None,
                              list(target_shapes[path]), identity_init)
        if value is not None:
            values[path] = np.asarray(value, dtype=src[path].dtype if path in src else np.float32)

    leaves = _leaves(target)
    for block, in_residual in leaves:
        paths = sorted(p for p in target_shapes if p.rsplit("/", 1)[0] == block.path)
        if block.type in CHANNEL_KEEPING:
            continue
        if block.type == "flatten":
            if mapping is not None and block.input_shape:
                mapping = mapping.flatten(int(np.prod(block.input_shape[:-1])), src_channels)
                src_channels = int(np.prod(block.input_shape[:-1])) * src_channels
            continue
        if in_residual or block.type == "target":
            mapping = None  # x + f(x) and arbitrary layers: only exact-shape copies are safe
        if block.type in ("dense", "conv2d") and f"{block.path}/kernel" in target_shapes:
            mapping, src_channels, nonneg = _migrate_weighted(
                block, src, target_shapes, mapping, src_channels, nonneg, new_blocks, rng, put,
                is_head=block is leaves[-1][0])
            continue
        for p in paths:  # batchnorm, `_target_` layers: per-channel vectors or exact copies
            if p in src and mapping is not None and block.type == "batchnorm" and src[p].ndim == 1 \
                    and len(mapping.index) == target_shapes[p][0] and src[p].shape[0] == src_channels:
                put(p, "adapted", "per-channel values follow the widened input (Net2WiderNet)", src[p][mapping.index])
            elif p in src and tuple(src[p].shape) == tuple(target_shapes[p]):
                put(p, "copied", "same path and shape", src[p])
            elif p in src:
                put(p, "reinitialized", f"shape changed {tuple(src[p].shape)} -> {tuple(target_shapes[p])}")
            else:
                put(p, "reinitialized", "new block: fresh initialization")
        nonneg = False
        if block.type != "batchnorm":  # normalization keeps channels, so the mapping survives it
            mapping = None
    for p in target_shapes:  # anything the walk did not reach (e.g. layers the spec does not list)
        if p not in entries:
            if p in src and tuple(src[p].shape) == tuple(target_shapes[p]):
                put(p, "copied", "same path and shape", src[p])
            else:
                put(p, "reinitialized", "new variable" if p not in src else "shape changed")
    for p in src:
        if p not in target_shapes:
            entries[p] = Entry(p, "dropped", "not in the target (block removed or disabled)", list(src[p].shape))
    report.entries = sorted(entries.values(), key=lambda e: (ACTIONS.index(e.action), e.path))
    return report, values


def _migrate_weighted(block, src, target_shapes, mapping, src_channels, nonneg, new_blocks, rng, put,
                      is_head=False):
    """Dense / conv2d: returns (mapping of its output features, their source width, output >= 0).

    The head's output units are classes, not features: they are never replicated or truncated.
    """
    kpath, bpath = f"{block.path}/kernel", f"{block.path}/bias"
    tk = tuple(target_shapes[kpath])
    out_nonneg = block.params.get("activation") in NONNEG_ACTIVATIONS
    if kpath not in src:  # a block the source did not have
        eye = _identity_kernel(block, tk) if new_blocks == "identity" else None
        if eye is None:
            why = "new block: fresh initialization" + (" (widths differ, no identity map)" if new_blocks == "identity" else "")
            put(kpath, "reinitialized", why)
            if bpath in target_shapes:
                put(bpath, "reinitialized", why)
            return None, None, out_nonneg
        act = block.params.get("activation")
        exact = act in (None, "linear") or (act in ("relu", "relu6") and nonneg)
        detail = "new block: identity map (Net2DeeperNet)" + ("" if exact else f", approximate through {act}")
        put(kpath, "reinitialized", detail, eye, identity_init=True)
        if bpath in target_shapes:
            put(bpath, "reinitialized", "new block: zero bias (Net2DeeperNet)", np.zeros(target_shapes[bpath]),
                identity_init=True)
        return mapping, src_channels, nonneg and exact
    kernel, how = src[kpath], []
    if mapping is not None and kernel.shape[-2] == src_channels and len(mapping.index) == tk[-2]:
        shape = [1] * kernel.ndim
        shape[-2] = -1
        kernel = kernel.take(mapping.index, axis=-2) / mapping.divisor.reshape(shape)
        how.append("fan-in follows the widened input (rows divided by replication)"
                   if (mapping.divisor > 1).any() else "fan-in follows the input's kept units")
    out_mapping, out_channels = None, None
    if is_head and kernel.shape[-1] != tk[-1]:
        why = f"class count differs (source {kernel.shape[-1]}, target {tk[-1]})"
        put(kpath, "reinitialized", why)
        if bpath in target_shapes:
            put(bpath, "reinitialized", why)
        return None, None, out_nonneg
    if kernel.shape[:-1] == tk[:-1] and kernel.shape[-1] != tk[-1]:
        out_mapping, out_channels = _widen_mapping(kernel.shape[-1], tk[-1], rng), kernel.shape[-1]
        kernel = kernel.take(out_mapping.index, axis=-1)
        how.append(f"Net2WiderNet: {kernel.shape[-1] - out_channels} units replicated" if tk[-1] > out_channels
                   else f"kept the first {tk[-1]} of {out_channels} units")
    if kernel.shape != tk:
        put(kpath, "reinitialized", f"shape changed {tuple(src[kpath].shape)} -> {tk}")
        if bpath in target_shapes:
            if bpath in src and src[bpath].shape == tuple(target_shapes[bpath]):
                put(bpath, "copied", "same path and shape", src[bpath])
            else:
                put(bpath, "reinitialized", "its kernel was re-initialized")
        return None, None, out_nonneg
    put(kpath, "adapted" if how else "copied", "; ".join(how) or "same path and shape", kernel)
    if bpath in target_shapes and bpath in src:
        bias = src[bpath] if out_mapping is None else src[bpath][out_mapping.index]
        put(bpath, "adapted" if out_mapping is not None else "copied",
            "follows the kernel's units" if out_mapping is not None else "same path and shape", bias)
    elif bpath in target_shapes:
        put(bpath, "reinitialized", "the source block had no bias")
    return out_mapping, out_channels, out_nonneg


def migrate_model(model, spec: ArchSpec, source: str | Path | Checkpoint, *, new_blocks: str = "identity",
                  strict: bool = False, seed: int = 0, target_variant: str = "target") -> MigrationReport:
    """Load `source` (unless already loaded), plan, check strictness, then assign the values to `model`."""
    ckpt = source if isinstance(source, Checkpoint) else load_checkpoint(source)
    shapes = {v.path: tuple(v.shape) for v in model.weights}
    report, values = plan_migration(ckpt, spec, shapes, new_blocks=new_blocks, seed=seed,
                                    target_variant=target_variant)
    if strict and report.not_carried():
        lines = "\n".join(f"    {e.path}: {e.action} ({e.detail})" for e in report.not_carried())
        raise CheckpointError("migrate.strict", "not everything carries over from the source",
                              expected="every source variable copied or adapted", received=f"\n{lines}",
                              fix="drop migrate.strict=true to accept re-initialization, or pick a closer source")
    by_path = {v.path: v for v in model.weights}
    for path, value in values.items():
        by_path[path].assign(value.astype(by_path[path].dtype))
    return report


def write_report(report: MigrationReport, out_dir: Path) -> None:
    from .artifacts import write_json, write_text
    write_text(Path(out_dir) / "migration.md", report.to_markdown())
    write_json(Path(out_dir) / "migration.json", report.to_json())


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dynarch.migrate", description=(
        "Show (and optionally write) how an earlier run's weights carry over to a variant."))
    parser.add_argument("source", help="run dir, checkpoint folder, or weights.safetensors")
    parser.add_argument("--to", nargs="*", default=[], metavar="OVERRIDE",
                        help="Hydra overrides describing the target, e.g. +arch=deep model=cnn")
    parser.add_argument("--dry-run", action="store_true", help="print the report only (the default)")
    parser.add_argument("--out", type=Path, help="write the migrated weights as a checkpoint folder here")
    parser.add_argument("--new-blocks", choices=("identity", "random"), default="identity")
    parser.add_argument("--strict", action="store_true")
    args = parser.parse_args(argv)
    try:
        from .compose import compose_run
        run = compose_run(args.to)
        variant = run.variant
        source = load_checkpoint(args.source)  # a bad source fails before TensorFlow is imported
        from .build import build_model
        model = build_model(run.arch)
        report = migrate_model(model, run.arch, source, new_blocks=args.new_blocks, strict=args.strict,
                               seed=run.seed, target_variant=variant)
    except DynarchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report.to_markdown())
    if args.out and not args.dry_run:
        from .checkpoint import model_tensors, save_checkpoint
        save_checkpoint(args.out, model_tensors(model), {
            "arch": dict(run.arch.raw), "model": run.arch.name, "variant": variant,
            "num_classes": run.arch.num_classes, "input_shape": list(run.arch.input_shape),
            "migrated_from": str(report.source), "migration": report.counts()})
        print(f"migrated checkpoint written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
