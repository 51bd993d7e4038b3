"""`python -m dynarch.export RUN --format keras|saved_model|litert|onnx [--out PATH] [--force]`.

The model is rebuilt from the run's checkpoint (`dynarch.load_run`) and written by Keras itself:
`model.save` (.keras archive) or `model.export` (TF SavedModel, LiteRT .tflite, ONNX). ONNX needs the
`onnx` extra (`pip install -e '.[onnx]'`: tf2onnx and onnx); it is never a hard dependency. The output
goes to a temp sibling and is renamed into place when complete; an existing output is replaced only with
--force. Default output: RUN/export/model.keras, RUN/export/saved_model/, RUN/export/model.tflite,
RUN/export/model.onnx.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import sys
import warnings
from pathlib import Path
from typing import Sequence

from .clikit import ArgParser, check_new_output, move_into_place, remove_temp, run_main, temp_sibling
from .errors import ConfigError

PROG = "python -m dynarch.export"
USAGE = "RUN --format keras|saved_model|litert|onnx [--out PATH] [--force]"
# format -> (default name under RUN/export/, required suffix ("" = a folder), Keras export format or None = save)
FORMATS = {
    "keras": ("model.keras", ".keras", None),
    "saved_model": ("saved_model", "", "tf_saved_model"),
    "litert": ("model.tflite", ".tflite", "litert"),
    "onnx": ("model.onnx", ".onnx", "onnx"),
}
EXTRAS = {"onnx": ("onnx", ("tf2onnx", "onnx"))}  # format -> (pip extra, modules it needs)


def check_extra(fmt: str) -> None:
    """A format behind an optional extra: refuse it clearly, before any work, when the extra is missing."""
    if fmt not in EXTRAS:
        return
    extra, modules = EXTRAS[fmt]
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(
            "--format",
            f"the {fmt} export needs the '{extra}' extra, which is not installed",
            expected=f"the modules {', '.join(modules)}",
            received=f"missing {', '.join(missing)}",
            fix=f"pip install -e '.[{extra}]' (or pip install {' '.join(modules)}), then run again",
        )


def output_path(out: Path | None, fmt: str, run_dir: Path | None, checkpoint: Path) -> Path:
    """--out checked against the format's suffix, or the default under RUN/export/."""
    name, suffix, _ = FORMATS[fmt]
    if out is None:
        if run_dir is None:
            raise ConfigError(
                "--out",
                "this checkpoint is not in a run dir: say where the export goes",
                expected=f"--out PATH{suffix or '/'}",
                received=str(checkpoint),
                fix="pass --out",
            )
        return run_dir / "export" / name
    out = Path(out)
    if suffix and out.suffix.lower() != suffix:
        raise ConfigError(
            "--out",
            f"a {fmt} export must end {suffix}",
            expected=f"PATH{suffix}",
            received=out.name,
            fix=f"name it e.g. model{suffix}",
        )
    if not suffix and out.suffix:
        raise ConfigError(
            "--out",
            f"a {fmt} export is a folder, not a {out.suffix} file",
            expected="a folder name",
            received=out.name,
            fix="name it e.g. saved_model",
        )
    return out


def write_export(model, fmt: str, tmp: Path) -> None:
    """Keras' own writers; their progress prints are kept out of the command's output."""
    import numpy as np

    keras_format = FORMATS[fmt][2]
    model(np.zeros((1, *model.input_shape[1:]), np.float32))  # the ONNX writer refuses a never-called model
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # Keras' tf2onnx patch probes np.object
        if keras_format is None:
            model.save(tmp)
        else:
            model.export(str(tmp), format=keras_format, verbose=False)


def export(run: str | Path, fmt: str, out: Path | None = None, force: bool = False) -> Path:
    """Export a trained run's model; returns the path written."""
    if fmt not in FORMATS:
        raise ConfigError(
            "--format",
            f"unknown export format '{fmt}'",
            expected=", ".join(FORMATS),
            received=fmt,
            fix="pick one of those",
        )
    check_extra(fmt)
    from .load import RUN_CHECKPOINTS, checkpoint_folder

    folder = checkpoint_folder(run)  # a bad run is refused before the output is checked
    path = output_path(out, fmt, folder.parent if folder.name in RUN_CHECKPOINTS else None, folder)
    default = out is None
    if not default:
        check_new_output(path, force, f"{fmt} export")
    elif path.exists() and not force:
        check_new_output(path, force, f"{fmt} export", flag="the default output")
    from .load import load_run

    model, _ = load_run(run, compile=False)
    if default:
        path.parent.mkdir(exist_ok=True)  # RUN/export/: inside the run dir
    tmp = temp_sibling(path, FORMATS[fmt][1])
    try:
        write_export(model, fmt, tmp)
        if path.exists() and not force:  # appeared meanwhile: never replaced without --force
            check_new_output(path, force, f"{fmt} export")
        return move_into_place(tmp, path)
    except (ValueError, TypeError, NotImplementedError, ImportError) as e:  # a Keras writer refused the model
        raise ConfigError(
            "--format",
            f"Keras could not export this model as {fmt}: "
            f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}",
            expected="a format this model and backend support",
            received=fmt,
            fix="try --format keras or saved_model",
        ) from None
    finally:
        remove_temp(tmp)


def _parser() -> ArgParser:
    parser = ArgParser(prog=PROG, usage_line=USAGE, description="Export a trained run's model with Keras.")
    parser.add_argument("run", help="run dir, checkpoint folder, weights.safetensors or SWEEP_DIR#JOB")
    parser.add_argument("--format", required=True, choices=tuple(FORMATS))
    parser.add_argument("--out", type=Path, help="output path (default RUN/export/<model.keras|saved_model|...>)")
    parser.add_argument("--force", action="store_true", help="replace an existing output (atomically)")
    return parser


def _run_cli(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    path = export(args.run, args.format, args.out, args.force)
    print(f"{args.format} export written to {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry: every error is one `error:` message and exit status 2, never a traceback."""
    return run_main(_run_cli, argv)


if __name__ == "__main__":
    sys.exit(main())
