"""A variant's blocks, shapes, parameters and FLOPs from the config alone — TensorFlow is not imported.

python -m dynarch.inspect +arch=no_dense
python -m dynarch.inspect model=cnn +arch=cnn_wide
python -m dynarch.inspect +schedule=grow    # every phase's table and what changes at each boundary
python -m dynarch.inspect --blocks          # the block types, their keys and the allowed Keras layers
"""

from __future__ import annotations

import sys

from .blocks import ALLOWED_LAYERS, COMMON_KEYS, REGISTRY, REQUIRED
from .errors import DynarchError
from .spec import ArchSpec, describe


def render(spec: ArchSpec, variant: str) -> str:
    rows = [("block", "type", "status", "output shape", "params"), *describe(spec)]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = [f"{spec.name} / {variant}: input {spec.input_shape}, {spec.num_classes} classes"]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    total = "?" if spec.num_params is None else f"{spec.num_params:,}"
    flops = "?" if spec.forward_flops is None else f"{spec.forward_flops:,}"
    lines.append(f"total params {total}; forward FLOPs per sample {flops}")
    return "\n".join(lines)


def _phase_end(phase) -> str:
    if phase.rest:
        return "for the rest of trainer.epochs"
    if phase.epochs is not None:
        return f"{phase.epochs} epochs"
    p = phase.plateau
    return (
        f"until {p.monitor} plateaus (patience {p.patience}, min_delta {p.min_delta:g}), "
        f"at most {phase.max_epochs} epochs"
    )


def _changes(before: ArchSpec, after: ArchSpec) -> str:
    """Blocks switched on/off or reshaped between two phases, from the specs alone."""
    old = {b.path: b for _, b in before.walk() if not b.is_group}
    new = {b.path: b for _, b in after.walk() if not b.is_group}
    out = []
    for path, b in new.items():
        a = old.get(path)
        if a is None or (b.enabled and not a.enabled):
            out.append(f"+{path}")
        elif a.enabled and not b.enabled:
            out.append(f"-{path}")
        elif b.enabled and a.output_shape != b.output_shape:
            out.append(f"~{path} {a.output_shape}->{b.output_shape}")
    out += [f"-{path}" for path, a in old.items() if path not in new and a.enabled]
    return ", ".join(out) or "no block changes"


def render_run(run) -> str:
    """The run's table, or for a schedule each phase's table and the block changes at each boundary."""
    if not run.schedule:
        return render(run.arch, run.variant)
    parts = [
        f"schedule {run.schedule}: {len(run.phases)} phases"
        + (f", {run.total_epochs} epochs in all" if run.total_epochs else "")
    ]
    for phase in run.phases:
        header = f"phase {phase.index}: {phase.name}, {_phase_end(phase)}"
        if phase.index:
            header += f"; at the boundary: {_changes(run.phases[phase.index - 1].arch, phase.arch)}"
        parts.append(header + "\n" + render(phase.arch, phase.name))
    return "\n\n".join(parts)


def _yaml(value: object) -> str:
    """A default as it is written in YAML (null, true, false)."""
    if value is None:
        return "null"
    return str(value).lower() if isinstance(value, bool) else str(value)


def render_block_types() -> str:
    """Every registered block type with its doc and keys (expected values, defaults), then `_target_`."""
    lines = []
    for btype in REGISTRY.values():
        lines.append(f"{btype.name}: {btype.doc}")
        for key, param in btype.params.items():
            default = "required" if param.default is REQUIRED else f"default {_yaml(param.default)}"
            lines.append(f"    {key}: {param.expected} ({default})")
    lines.append(
        f"every block also takes: {', '.join(k for k in COMMON_KEYS if k != 'type')} (optional: false, enabled: true)"
    )
    lines.append(
        "_target_: keras.layers.<Name> with that layer's keyword arguments, and output_shape: "
        "same|[dims] to let the shape check continue; <Name> one of:"
    )
    lines.append("    " + ", ".join(sorted(ALLOWED_LAYERS)))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from hydra.errors import HydraException

    from .compose import compose_run

    overrides = sys.argv[1:] if argv is None else argv
    if overrides == ["--blocks"]:
        print(render_block_types())
        return 0
    try:
        run = compose_run(overrides)
    except (DynarchError, HydraException) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(render_run(run))
    return 0


if __name__ == "__main__":
    sys.exit(main())
