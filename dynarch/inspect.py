"""A variant's blocks, shapes, parameters and FLOPs from the config alone — TensorFlow is not imported.

    python -m dynarch.inspect +arch=no_dense
    python -m dynarch.inspect model=cnn +arch=cnn_wide
"""
from __future__ import annotations

import sys

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


def _main(argv: list[str] | None = None) -> int:
    from hydra.errors import HydraException

    from .compose import compose_run
    overrides = sys.argv[1:] if argv is None else argv
    try:
        run = compose_run(overrides)
    except (DynarchError, HydraException) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(render(run.arch, run.variant))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
