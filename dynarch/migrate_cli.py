"""`python -m dynarch.migrate`: show (and optionally write) how an earlier run's weights carry over to a
variant, without training.

    python -m dynarch.migrate RUN_DIR --to +arch=deep --dry-run
    python -m dynarch.migrate RUN_DIR --to +arch=deep --out NEW_CKPT [--force]

Every failure is one `error:` message with a `fix:` line and exit status 2; a refused `--out` is
refused before any work, and nothing is written but the `--out` checkpoint (atomically).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .checkpoint import MANIFEST, WEIGHTS, load_checkpoint, model_manifest, model_tensors, save_checkpoint
from .clikit import ArgParser, run_main
from .errors import CheckpointError
from .migrate import check_source_before_build, migrate_model

USAGE = "SOURCE [--to OVERRIDE ...] [--dry-run] [--out DIR [--force]] [--new-blocks identity|random] [--strict]"


def check_out_dir(out: Path, force: bool) -> None:
    """`--out` may be a new or empty folder, or (with --force) an existing dynarch checkpoint folder holding
    nothing else, which is then replaced atomically. Anything else is refused before any work is done."""
    out = Path(out)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise CheckpointError(
            str(out),
            "--out is not a folder",
            expected="a new or empty folder",
            received="a symlink" if out.is_symlink() else "a file",
            fix="pass a new folder name for the migrated checkpoint",
        )
    if not out.exists() or not any(out.iterdir()):
        return
    names = sorted(p.name for p in out.iterdir())
    if set(names) - {MANIFEST, WEIGHTS} or len(names) != 2:
        raise CheckpointError(
            str(out),
            "--out is a non-empty folder that is not a dynarch checkpoint",
            expected="a new or empty folder",
            received=f"holds {', '.join(names[:5])}" + (" ..." if len(names) > 5 else ""),
            fix="pass a new folder name; nothing in this folder was changed",
        )
    if not force:
        raise CheckpointError(
            str(out),
            "--out already holds a checkpoint",
            expected="a new or empty folder",
            received="manifest.json and weights.safetensors",
            fix="pass --force to replace it (atomically), or a new folder name",
        )


def _parser() -> argparse.ArgumentParser:
    parser = ArgParser(
        prog="python -m dynarch.migrate",
        usage_line=USAGE,
        description=("Show (and optionally write) how an earlier run's weights carry over to a variant."),
    )
    parser.add_argument("source", help="run dir, checkpoint folder, or weights.safetensors")
    parser.add_argument(
        "--to",
        nargs="*",
        default=[],
        metavar="OVERRIDE",
        help="Hydra overrides describing the target, e.g. +arch=deep model=cnn",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the report only (the default)")
    parser.add_argument(
        "--out", type=Path, help="write the migrated weights as a checkpoint folder here (a new or empty folder)"
    )
    parser.add_argument("--force", action="store_true", help="let --out replace an existing checkpoint folder")
    parser.add_argument("--new-blocks", choices=("identity", "random"), default="identity")
    parser.add_argument("--strict", action="store_true")
    return parser


def _run_cli(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    from .compose import compose_run

    run = compose_run(args.to)
    variant = run.variant
    write = args.out is not None and not args.dry_run
    if write:
        check_out_dir(args.out, args.force)  # before the build: a refused --out costs nothing
    source = load_checkpoint(args.source)  # a bad source fails before TensorFlow is imported
    if args.strict:  # decided before TensorFlow is imported
        from dataclasses import replace

        from .config import MigrateConfig

        check_source_before_build(
            replace(run, init_from=str(args.source), migrate=MigrateConfig(strict=True, new_blocks=args.new_blocks))
        )
    from .build import build_model

    model = build_model(run.arch)
    report = migrate_model(
        model, run.arch, source, new_blocks=args.new_blocks, strict=args.strict, seed=run.seed, target_variant=variant
    )
    print(report.to_markdown())
    if write:
        check_out_dir(args.out, args.force)  # again: the folder may have changed during the build
        save_checkpoint(
            args.out,
            model_tensors(model),
            model_manifest(run.arch, variant, migrated_from=str(report.source), migration=report.counts()),
        )
        print(f"migrated checkpoint written to {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """CLI entry: every error is one `error:` message on stderr and exit status 2, never a traceback."""
    return run_main(_run_cli, argv)


if __name__ == "__main__":
    sys.exit(main())
