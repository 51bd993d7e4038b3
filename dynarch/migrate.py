"""Weight migration by variable path between any two variants, with a complete report.

The entry points: `plan_migration` (numpy only: the report and the values to assign), `migrate_model`
(load, check, plan and assign into a built model), `spec_variable_shapes` and `check_source_before_build`
(strict mode decided from the config and the source checkpoint alone, before TensorFlow is imported).
The plan's data and walk live in `dynarch.migrate_plan`, the optimizer-state carry-over used at a phase
boundary in `dynarch.optstate`, the command line in `dynarch.migrate_cli`; their public names are
importable from here too.

    python -m dynarch.migrate RUN_DIR --to +arch=deep --dry-run
    python -m dynarch.migrate RUN_DIR --to +arch=deep --out NEW_CKPT [--force]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .checkpoint import WEIGHTS, Checkpoint, check_finite, load_checkpoint
from .errors import CheckpointError
from .migrate_plan import (
    ACTIONS,
    VECTOR_LEAVES,
    Entry,
    IndexMap,
    MigrationReport,
    Planner,
    apply_index_map,
    leaf_blocks,
)
from .optstate import OptimizerReport, OptimizerState, migrate_optimizer, optimizer_state
from .spec import ArchSpec

__all__ = [
    "ACTIONS",
    "Entry",
    "IndexMap",
    "MigrationReport",
    "OptimizerReport",
    "OptimizerState",
    "apply_index_map",
    "check_source_before_build",
    "migrate_model",
    "migrate_optimizer",
    "optimizer_state",
    "plan_migration",
    "spec_variable_shapes",
    "write_report",
]


def _check_source_tensors(source: Checkpoint, target_shapes: dict[str, tuple[int, ...]]) -> None:
    """Refuse source tensors no dynarch model can take: non-float weights, vectors that are not rank 1,
    kernels that are not rank 2 (dense) or 4 (conv2d). The file and the variable are named."""
    where = str(Path(source.path) / WEIGHTS)
    for path, value in source.tensors.items():
        leaf = path.rsplit("/", 1)[-1]
        if path not in target_shapes and leaf not in VECTOR_LEAVES + ("kernel",):
            continue  # not a weight this planner reads
        rank_ok = value.ndim == 1 if leaf in VECTOR_LEAVES else value.ndim in (2, 4) if leaf == "kernel" else True
        if value.dtype.kind != "f" or not rank_ok:
            want = "rank 1" if leaf in VECTOR_LEAVES else "rank 2 or 4" if leaf == "kernel" else "any rank"
            raise CheckpointError(
                where,
                f"tensor '{path}' cannot initialize a model variable",
                expected=f"a floating-point tensor of {want}",
                received=f"{value.dtype} of shape {tuple(value.shape)}",
                fix="use a checkpoint written by dynarch (this one was altered or is foreign)",
            )


def plan_migration(
    source: Checkpoint,
    target: ArchSpec,
    target_shapes: dict[str, tuple[int, ...]],
    *,
    new_blocks: str = "identity",
    seed: int = 0,
    target_variant: str = "target",
) -> tuple[MigrationReport, dict[str, np.ndarray]]:
    """Decide, for every target variable, where its value comes from.

    Args:
        source: the loaded checkpoint (or an in-memory one).
        target: the target ArchSpec (shapes inferred).
        target_shapes: variable path -> shape of the target model (`spec_variable_shapes` or the built model).
        new_blocks: "identity" (function-preserving where possible) or "random" (keep fresh init).
        seed: seeds which units Net2WiderNet replicates.
        target_variant: recorded in the report.

    Returns:
        The report (adapted entries carry their `index_map`) and the values to assign (paths absent from
        it keep their fresh initialization). Raises CheckpointError for source tensors no model can take.
    """
    _check_source_tensors(source, target_shapes)
    src, man = source.tensors, source.manifest
    report = MigrationReport(
        str(source.path), f"{man.get('model', '?')}/{man.get('variant', '?')}", f"{target.name}/{target_variant}"
    )
    report.notes.append("optimizer state is not migrated: the target starts with a fresh optimizer")
    if man.get("num_classes") not in (None, target.num_classes):
        report.notes.append(
            f"class count differs: source {man['num_classes']}, target {target.num_classes}; "
            "the head cannot carry over and is re-initialized"
        )
    if man.get("input_shape") and tuple(man["input_shape"]) != tuple(target.input_shape):
        report.notes.append(
            f"input shape differs: source {tuple(man['input_shape'])}, target "
            f"{tuple(target.input_shape)}; layers reading the input are re-initialized"
        )
    leaves = leaf_blocks(target.blocks)
    planner = Planner(src, target_shapes, new_blocks, np.random.default_rng(seed), leaves[-1] if leaves else None)
    planner.walk(target.blocks)
    for p in target_shapes:  # anything the walk did not reach (e.g. layers the spec does not list)
        if p not in planner.entries:
            if p in src and tuple(src[p].shape) == tuple(target_shapes[p]):
                planner.put(p, "copied", "same path and shape", src[p])
            else:
                planner.put(p, "reinitialized", "new variable" if p not in src else "shape changed")
    for p in src:
        if p not in target_shapes:
            planner.entries[p] = Entry(
                p, "dropped", "not in the target (block removed or disabled)", list(src[p].shape)
            )
    report.entries = sorted(planner.entries.values(), key=lambda e: (ACTIONS.index(e.action), e.path))
    return report, planner.values


def spec_variable_shapes(spec: ArchSpec) -> dict[str, tuple[int, ...]] | None:
    """The target model's variable paths and shapes from the spec alone (pure Python, no TensorFlow):
    dense -> kernel (in, units), bias (units,); conv2d -> kernel (kh, kw, cin, filters), bias (filters,);
    batchnorm -> gamma, beta, moving_mean, moving_variance (channels,); disabled blocks, flatten, pool,
    dropout and identity -> none. Returns None when a `_target_` layer (or an unknown shape) makes the
    variables knowable only from the built model."""
    shapes: dict[str, tuple[int, ...]] = {}
    for _, b in spec.walk():
        if not b.enabled or b.is_group or b.type in ("flatten", "pool", "dropout", "identity"):
            continue
        if b.type not in ("dense", "conv2d", "batchnorm") or not b.input_shape:
            return None
        cin, p = int(b.input_shape[-1]), b.params
        if b.type == "batchnorm":
            shapes.update({f"{b.path}/{n}": (cin,) for n in ("gamma", "beta", "moving_mean", "moving_variance")})
            continue
        if b.type == "dense":
            units = int(p["units"])
            shapes[f"{b.path}/kernel"] = (cin, units)
        else:
            k = p["kernel_size"]
            kh, kw = (k, k) if isinstance(k, int) else (int(k[0]), int(k[1]))
            units = int(p["filters"])
            shapes[f"{b.path}/kernel"] = (kh, kw, cin, units)
        if p["use_bias"]:
            shapes[f"{b.path}/bias"] = (units,)
    return shapes


def _refuse_if_not_carried(report: MigrationReport) -> None:
    """Strict mode: everything must be copied, adapted, or re-initialized in a function-preserving way."""
    if report.not_carried():
        lines = "\n".join(f"    {e.path}: {e.action} ({e.detail})" for e in report.not_carried())
        raise CheckpointError(
            "migrate.strict",
            "not everything carries over from the source",
            expected="every source variable copied or adapted, every new one function-preserving",
            received=f"\n{lines}",
            fix="drop migrate.strict=true to accept re-initialization, or pick a closer source",
        )


def check_source_before_build(run) -> MigrationReport | None:
    """Check `init_from` before TensorFlow is imported: the source checkpoint verifies (hashes, schema,
    finite values) and, with `migrate.strict=true`, everything carries over — the same CheckpointError
    `migrate_model` would raise after the build, ~10 s earlier. Pure numpy; imports neither keras nor
    tensorflow.

    Args:
        run: the RunConfig (its first phase's architecture is the migration target).

    Returns:
        The planned report (values are not kept), or None when there is no `init_from` or the target's
        variables are knowable only after the build (a `_target_` layer): then `migrate_model` decides.
    """
    if not getattr(run, "init_from", None):
        return None
    arch = run.phases[0].arch if getattr(run, "phases", None) else run.arch
    ckpt = load_checkpoint(run.init_from)
    check_finite(ckpt)
    shapes = spec_variable_shapes(arch)
    if shapes is None:
        return None
    report, _ = plan_migration(
        ckpt, arch, shapes, new_blocks=run.migrate.new_blocks, seed=run.seed, target_variant=run.variant
    )
    if run.migrate.strict:
        _refuse_if_not_carried(report)
    return report


check_strict_before_build = check_source_before_build  # the name the issue uses


def migrate_model(
    model,
    spec: ArchSpec,
    source: str | Path | Checkpoint,
    *,
    new_blocks: str = "identity",
    strict: bool = False,
    seed: int = 0,
    target_variant: str = "target",
) -> MigrationReport:
    """Load `source` (unless already loaded), refuse non-finite weights, plan, check strictness, then
    assign the values to `model`."""
    ckpt = source if isinstance(source, Checkpoint) else load_checkpoint(source)
    check_finite(ckpt)
    shapes = {v.path: tuple(v.shape) for v in model.weights}
    report, values = plan_migration(ckpt, spec, shapes, new_blocks=new_blocks, seed=seed, target_variant=target_variant)
    if strict:
        _refuse_if_not_carried(report)
    by_path = {v.path: v for v in model.weights}
    for path, value in values.items():
        by_path[path].assign(value.astype(by_path[path].dtype))
    return report


def write_report(report: MigrationReport, out_dir: Path) -> None:
    from .artifacts import write_json, write_text

    write_text(Path(out_dir) / "migration.md", report.to_markdown())
    write_json(Path(out_dir) / "migration.json", report.to_json())


if __name__ == "__main__":
    # `python -m dynarch.migrate`: the CLI lives in dynarch.migrate_cli, which imports this module (as
    # dynarch.migrate, not as __main__); run by name so that importing dynarch.migrate never loads the CLI.
    import runpy

    runpy.run_module("dynarch.migrate_cli", run_name="__main__", alter_sys=True)
