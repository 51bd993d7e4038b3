"""`python -m dynarch.evaluate RUN [DATA_OVERRIDE ...]`: re-evaluate a trained run on any compatible data.

Without overrides the run's own data config (RUN/config.yaml) is used; with them the data is composed
exactly as a training command with those overrides would compose it (`data=idx data.path=DIR`,
`data=mnist_subset data.limit_test=200`, `seed=7`). The data's shape and class count are checked against
the model before anything is evaluated. The report — accuracy, loss, per-class accuracy and a confusion
matrix (CSV and PNG) — is printed and written to a new folder, RUN/eval-<timestamp>/ or --out DIR, which
appears complete or not at all (written to a temp sibling, then renamed); nothing existing is replaced.
"""

from __future__ import annotations

import io
import re
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .clikit import ArgParser, check_batch_size, move_into_place, remove_temp, run_main, temp_sibling
from .errors import ConfigError, DataError
from .load import RunMetadata, check_input_shape, load_run, scale_images

PROG = "python -m dynarch.evaluate"
USAGE = "RUN [DATA_OVERRIDE ...] [--split test|val|train] [--out DIR] [--batch-size N]"
DATA_OVERRIDE = re.compile(r"^(\+\+|\+|~)?(data([./=]|$)|seed=)")
EPSILON = 1e-7  # Keras' backend epsilon: the loss clips probabilities as `model.evaluate` does


def data_for(meta: RunMetadata, overrides: Sequence[str]):
    """(DataConfig, seed) to evaluate on: composed from `overrides`, or the run's own config.yaml."""
    bad = [o for o in overrides if not DATA_OVERRIDE.match(o)]
    if bad:
        raise ConfigError(
            bad[0],
            "evaluate takes data overrides only (the model comes from the checkpoint)",
            expected="data=NAME, data.KEY=VALUE or seed=N",
            received=" ".join(bad),
            fix="drop the model/trainer overrides; to evaluate another model pass its run dir",
        )
    from .compose import compose_run, resolve_config

    if overrides:
        run = compose_run(list(overrides))
        seeded = any(o.lstrip("+~").startswith("seed=") for o in overrides)
        return run.data, run.seed if seeded else int(meta.manifest.get("seed", run.seed))
    config = meta.run_dir / "config.yaml" if meta.run_dir is not None else None
    if config is None or not config.is_file():
        raise ConfigError(
            str(config or meta.checkpoint),
            "no data config to evaluate on (no config.yaml beside the checkpoint)",
            expected="a run dir written by python -m dynarch, or data overrides",
            received="a checkpoint without its run's config",
            fix="pass the data as overrides, e.g. data=mnist_subset",
        )
    from omegaconf import OmegaConf

    from .compose import check_yaml_file

    try:
        run, _ = resolve_config(OmegaConf.create(check_yaml_file(config)), "base")
    except ConfigError as e:
        raise ConfigError(
            str(config),
            f"the run's config no longer validates: {e.where}: {e.problem}",
            expected=e.expected,
            received=e.received,
            fix="pass the data as overrides instead, e.g. data=mnist_subset",
        ) from None
    return run.data, run.seed


def check_data(x: np.ndarray, y: np.ndarray, num_classes: int, meta: RunMetadata, where: str) -> None:
    """The data must fit the model: same per-sample shape, same class count, labels in range."""
    check_input_shape(x, meta, where)
    if num_classes != meta.num_classes:
        raise DataError(
            where,
            f"the data has {num_classes} classes, the model {meta.num_classes}",
            expected=f"data.num_classes={meta.num_classes}",
            received=num_classes,
            fix="evaluate on data with the classes the model was trained on",
        )
    if len(y) == 0:
        raise DataError(
            where,
            "the split holds no samples",
            expected="at least one labelled image",
            received="0 samples",
            fix="use another split or raise data.limit_test",
        )
    if int(y.min()) < 0 or int(y.max()) >= meta.num_classes:
        raise DataError(
            where,
            "labels out of range for the model",
            expected=f"labels 0..{meta.num_classes - 1}",
            received=f"labels {int(y.min())}..{int(y.max())}",
            fix="use data labelled like the run's",
        )


def scores(probs: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Accuracy, loss (sparse categorical cross-entropy on the model's probabilities, clipped like Keras),
    per-class accuracy and the confusion matrix (rows: true class, columns: predicted)."""
    n, k = probs.shape
    p = probs.astype(np.float64) / probs.astype(np.float64).sum(axis=1, keepdims=True)
    loss = float(np.mean(-np.log(np.clip(p[np.arange(n), y], EPSILON, 1 - EPSILON))))
    pred = probs.argmax(axis=1)
    confusion = np.zeros((k, k), np.int64)
    np.add.at(confusion, (y, pred), 1)
    support = confusion.sum(axis=1)
    per_class = [None if s == 0 else float(confusion[c, c] / s) for c, s in enumerate(support)]
    return {
        "accuracy": float(np.mean(pred == y)),
        "loss": loss,
        "samples": int(n),
        "per_class_accuracy": per_class,
        "support": support.tolist(),
        "confusion": confusion.tolist(),
    }


def report_markdown(result: dict[str, Any], names: list[str]) -> str:
    lines = [
        f"# Evaluation of {result['run']}",
        "",
        f"data: {result['data_source']} ({result['split']} split, {result['samples']} samples)",
        "",
        f"accuracy {result['accuracy']:.4f}, loss {result['loss']:.4f}",
        "",
        "| class | samples | accuracy |",
        "|---|---:|---:|",
    ]
    for name, n, acc in zip(names, result["support"], result["per_class_accuracy"]):
        lines.append(f"| {name} | {n} | {'—' if acc is None else f'{acc:.4f}'} |")
    return "\n".join(lines) + "\n"


def confusion_csv(confusion: list[list[int]], names: list[str]) -> str:
    import csv

    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["true \\ predicted", *names])
    for name, row in zip(names, confusion):
        writer.writerow([name, *row])
    return buf.getvalue()


def plot_confusion(path: Path, confusion: list[list[int]], names: list[str], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .artifacts import save_figure

    matrix = np.asarray(confusion)
    k = len(names)
    fig, ax = plt.subplots(figsize=(min(2 + 0.5 * k, 14), min(1.6 + 0.5 * k, 13)))
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax)
    if k <= 30:  # counts stay readable
        ax.set_xticks(range(k), names, rotation=90 if k > 12 else 0)
        ax.set_yticks(range(k), names)
        for (i, j), count in np.ndenumerate(matrix):
            ax.text(
                j,
                i,
                str(count),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if count > matrix.max() / 2 else "black",
            )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    save_figure(fig, path)


def write_report(out: Path, result: dict[str, Any], names: list[str]) -> Path:
    """report.md, report.json, confusion.csv, confusion.png into a temp folder, then renamed to `out`."""
    from .artifacts import write_json, write_text

    tmp = temp_sibling(out)
    try:
        tmp.mkdir()
        write_text(tmp / "report.md", report_markdown(result, names))
        write_json(tmp / "report.json", result)
        write_text(tmp / "confusion.csv", confusion_csv(result["confusion"], names))
        plot_confusion(
            tmp / "confusion.png",
            result["confusion"],
            names,
            f"{result['model']} / {result['variant']}: accuracy {result['accuracy']:.4f}",
        )
        if out.exists() and (not out.is_dir() or any(out.iterdir())):  # appeared meanwhile: never replaced
            raise ConfigError(
                str(out),
                "--out appeared while evaluating",
                expected="a new or empty folder",
                received="an existing one",
                fix="pass a new folder",
            )
        return move_into_place(tmp, out)
    finally:
        remove_temp(tmp)


def output_dir(out: Path | None, meta: RunMetadata) -> Path:
    """--out, or RUN/eval-<timestamp>; refused when it exists (unless an empty folder) or cannot be made."""
    if out is None:
        if meta.run_dir is None:
            raise ConfigError(
                "--out",
                "this checkpoint is not in a run dir: say where the report goes",
                expected="--out DIR",
                received=str(meta.checkpoint),
                fix="pass --out DIR (a new folder)",
            )
        stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{time.time_ns() // 1000 % 1_000_000:06d}"
        out = meta.run_dir / f"eval-{stamp}"
    out = Path(out)
    if out.is_symlink() or (out.exists() and (not out.is_dir() or any(out.iterdir()))):
        raise ConfigError(
            str(out),
            "--out already exists",
            expected="a new or empty folder",
            received="an existing " + ("folder" if out.is_dir() else "file"),
            fix="pass a new folder; nothing existing is replaced",
        )
    if not out.parent.is_dir():
        raise ConfigError(
            str(out),
            "the folder of --out does not exist",
            expected="an existing folder",
            received=str(out.parent),
            fix=f"create {out.parent} first, or pass another --out",
        )
    return out


def evaluate(
    run: str | Path, overrides: Sequence[str] = (), split: str = "test", batch_size: int = 256, out: Path | None = None
) -> tuple[dict[str, Any], Path]:
    """Evaluate a run on data composed from `overrides` (default: its own); returns (result, report dir)."""
    model, meta = load_run(run, compile=False)
    cfg, seed = data_for(meta, overrides)
    target = output_dir(out, meta)  # refused before the data is loaded
    from .data import load_arrays

    arrays = load_arrays(cfg, seed)
    xy = getattr(arrays, split, None)
    if xy is None:
        raise ConfigError(
            "--split",
            f"the data has no {split} split",
            expected="test or train (val needs data.val_fraction > 0)",
            received=split,
            fix="pick another --split",
        )
    x, y = np.asarray(xy[0]), np.asarray(xy[1]).astype(np.int64)
    where = f"{arrays.source} ({split})"
    check_data(x, y, cfg.num_classes, meta, where)
    probs = np.asarray(model.predict(scale_images(x, where), batch_size=batch_size, verbose=0))
    result = {
        "run": str(meta.run_dir or meta.checkpoint),
        "checkpoint": str(meta.checkpoint),
        "model": meta.model_name,
        "variant": meta.variant,
        "data_source": arrays.source,
        "split": split,
        "classes": meta.class_names,
        **scores(probs, y),
    }
    return result, write_report(target, result, meta.class_names)


def _parser() -> ArgParser:
    parser = ArgParser(
        prog=PROG,
        usage_line=USAGE,
        description=(
            "Re-evaluate a trained run (accuracy, loss, per-class accuracy, confusion matrix) on its own data or "
            "on data given as Hydra overrides."
        ),
    )
    parser.add_argument("run", help="run dir, checkpoint folder, weights.safetensors or SWEEP_DIR#JOB")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="DATA_OVERRIDE",
        help="data=NAME, data.KEY=VALUE, seed=N (default: the run's own data config)",
    )
    parser.add_argument("--split", choices=("test", "val", "train"), default="test")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--out", type=Path, help="a new folder for the report (default RUN/eval-TIMESTAMP)")
    return parser


def _run_cli(argv: Sequence[str] | None) -> int:
    args = _parser().parse_intermixed_args(argv)
    check_batch_size(args.batch_size)
    result, out = evaluate(args.run, args.overrides, args.split, args.batch_size, args.out)
    print(report_markdown(result, result["classes"]))
    print(f"report written to {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry: every error is one `error:` message and exit status 2, never a traceback."""
    return run_main(_run_cli, argv)


if __name__ == "__main__":
    sys.exit(main())
