"""`python -m dynarch.predict RUN --input FILE [--top-k 3] [--out predictions.csv|.json]`: class predictions.

Inputs: an `.npz` with an `x` array (read with allow_pickle=False: N images of the model's input shape, or
one image; uint8 0..255 or floats in [0, 1]), an image file (.png, .jpg, .jpeg, .bmp, .gif, .webp; converted
to the model's channels and resized to its height and width), or a folder of those (sorted by name, not
recursive). Output: one row per image with its top-k classes and probabilities, as CSV on stdout or into
--out (.csv or .json, written atomically; an existing file is replaced only with --force).
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .clikit import ArgParser, check_batch_size, check_new_output, run_main
from .errors import ConfigError, DataError
from .load import RunMetadata, check_input_shape, load_run, scale_images

PROG = "python -m dynarch.predict"
USAGE = "RUN --input FILE.npz|IMAGE|FOLDER [--top-k K] [--out FILE.csv|FILE.json [--force]]"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
PIL_MODES = {1: "L", 3: "RGB", 4: "RGBA"}  # model channels -> the PIL mode that gives them


def read_npz(path: Path, meta: RunMetadata) -> tuple[list[str], np.ndarray]:
    """The `x` array of an .npz: N images of the input shape (or one image; N x H x W for one channel)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            if "x" not in f.files:
                raise DataError(
                    str(path),
                    "the .npz has no 'x' array",
                    expected="an array named x (the images)",
                    received=f"arrays {', '.join(f.files[:6]) or 'none'}",
                    fix="save the images with np.savez(path, x=images)",
                )
            x = f["x"]
    except DataError:
        raise
    except (ValueError, OSError, EOFError) as e:  # object arrays (pickle refused), truncated or foreign files
        raise DataError(
            str(path),
            f"not a readable .npz of numeric arrays ({str(e).splitlines()[0][:120]})",
            expected="np.savez(path, x=images) with uint8 or float images",
            received="an unreadable file or an object array",
            fix="save plain numeric arrays",
        ) from None
    shape = tuple(meta.input_shape)
    if x.shape == shape or (shape[-1] == 1 and x.shape == shape[:-1]):
        x = x[None]  # one image
    if x.ndim == len(shape) and shape[-1] == 1 and x.shape[1:] == shape[:-1]:
        x = x[..., None]  # N x H x W: one channel
    check_input_shape(x, meta, f"{path}:x")
    return [f"{path}[{i}]" for i in range(len(x))], scale_images(x, f"{path}:x")


def read_image(path: Path, meta: RunMetadata) -> np.ndarray:
    """One image file as the model's input: converted to its channels, resized to its height and width."""
    from PIL import Image

    shape = tuple(meta.input_shape)
    if len(shape) != 3 or shape[-1] not in PIL_MODES:
        raise DataError(
            str(path),
            f"image files cannot be made into the model's input shape {list(shape)}",
            expected="a model taking (height, width, 1, 3 or 4 channels)",
            received=list(shape),
            fix="pass the inputs as an .npz with an x array of that shape",
        )
    try:
        with Image.open(path) as image:
            image = image.convert(PIL_MODES[shape[-1]])
            if image.size != (shape[1], shape[0]):
                image = image.resize((shape[1], shape[0]), Image.Resampling.BILINEAR)
            array = np.asarray(image, dtype=np.uint8)
    except Exception as e:  # noqa: BLE001  untrusted file: any decoder failure (or a decompression bomb)
        raise DataError(
            str(path),
            f"not a readable image ({type(e).__name__}: {str(e).splitlines()[0][:120]})",
            expected=f"a {'/'.join(s[1:] for s in IMAGE_SUFFIXES)} image",
            received=path.suffix or "?",
            fix="pass a valid image file",
        ) from None
    return scale_images(array.reshape(shape)[None], str(path))


def read_inputs(path: Path, meta: RunMetadata) -> tuple[list[str], np.ndarray]:
    """(names, images scaled to [0, 1]) from an .npz, an image file, or a folder of them."""
    path = Path(path)
    if not path.exists():
        raise DataError(
            str(path),
            "--input does not exist",
            expected="an .npz, an image file or a folder",
            received=str(path),
            fix="check the path",
        )
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in (*IMAGE_SUFFIXES, ".npz"))
        if not files:
            raise DataError(
                str(path),
                "the folder holds no image or .npz file",
                expected=f"files ending {', '.join(IMAGE_SUFFIXES)} or .npz",
                received="none",
                fix="pass a folder of images, or one file",
            )
    elif not path.is_file():  # a FIFO or device would block the read or never end
        raise DataError(
            str(path),
            "--input is not a regular file",
            expected="an .npz, an image file or a folder",
            received="a FIFO, device or socket",
            fix="pass a regular file or a folder",
        )
    elif path.suffix.lower() in (*IMAGE_SUFFIXES, ".npz"):
        files = [path]
    else:
        raise DataError(
            str(path),
            f"unsupported input type '{path.suffix}'",
            expected=f"an .npz, {', '.join(IMAGE_SUFFIXES)}, or a folder",
            received=path.suffix or path.name,
            fix="convert the input to one of those",
        )
    names: list[str] = []
    arrays: list[np.ndarray] = []
    for file in files:
        if file.suffix.lower() == ".npz":
            n, x = read_npz(file, meta)
        else:
            n, x = [str(file)], read_image(file, meta)
        names += n
        arrays.append(x)
    x = np.concatenate(arrays) if arrays else np.zeros((0, *meta.input_shape), np.float32)
    if len(x) == 0:
        raise DataError(
            str(path), "no images to predict", expected="at least one image", received="0", fix="pass a non-empty input"
        )
    return names, x


def top_k(probs: np.ndarray, names: list[str], classes: list[str], k: int) -> list[dict[str, Any]]:
    """Per input: its name and the k most probable classes (highest first) with their probabilities."""
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [
        {"input": name, "top": [{"class": classes[c], "probability": float(p[c])} for c in row]}
        for name, p, row in zip(names, probs, order)
    ]


def to_csv(rows: list[dict[str, Any]], k: int) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["input", *[f"top{i}_{f}" for i in range(1, k + 1) for f in ("class", "probability")]])
    for row in rows:
        writer.writerow([row["input"], *[v for t in row["top"] for v in (t["class"], f"{t['probability']:.6f}")]])
    return buf.getvalue()


def predict(run: str | Path, inputs: str | Path, k: int = 3, batch_size: int = 256) -> list[dict[str, Any]]:
    """Top-k predictions of a trained run for the images in `inputs`."""
    model, meta = load_run(run, compile=False)
    if not 1 <= k <= meta.num_classes:
        raise ConfigError(
            "--top-k",
            "top-k must be between 1 and the number of classes",
            expected=f"1..{meta.num_classes}",
            received=k,
            fix=f"pass --top-k {min(3, meta.num_classes)}",
        )
    names, x = read_inputs(Path(inputs), meta)
    probs = np.asarray(model.predict(x, batch_size=batch_size, verbose=0), dtype=np.float64)
    return top_k(probs, names, meta.class_names, k)


def _parser() -> ArgParser:
    parser = ArgParser(prog=PROG, usage_line=USAGE, description="Predict classes with a trained run.")
    parser.add_argument("run", help="run dir, checkpoint folder, weights.safetensors or SWEEP_DIR#JOB")
    parser.add_argument("--input", required=True, type=Path, help="an .npz with x, an image, or a folder of them")
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--out", type=Path, help="predictions file: .csv or .json (default: CSV on stdout)")
    parser.add_argument("--force", action="store_true", help="let --out replace an existing file")
    parser.add_argument("--batch-size", type=int, default=256)
    return parser


def _run_cli(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    check_batch_size(args.batch_size)
    if args.out is not None:
        if args.out.suffix.lower() not in (".csv", ".json"):
            raise ConfigError(
                "--out",
                "the predictions file must end .csv or .json",
                expected="FILE.csv or FILE.json",
                received=args.out.name,
                fix="name the file predictions.csv or predictions.json",
            )
        if args.out.is_dir():
            raise ConfigError(
                str(args.out),
                "--out is a folder",
                expected="a file path ending .csv or .json",
                received="an existing folder",
                fix="pass a file name inside it",
            )
        check_new_output(args.out, args.force, "predictions")  # before any work
    rows = predict(args.run, args.input, args.top_k, args.batch_size)
    text = (
        json.dumps(rows, indent=2) + "\n"
        if args.out is not None and args.out.suffix.lower() == ".json"
        else to_csv(rows, args.top_k)
    )
    if args.out is None:
        sys.stdout.write(text)
        return 0
    from .artifacts import write_text

    check_new_output(args.out, args.force, "predictions")  # again: it may have appeared meanwhile
    write_text(args.out, text)
    print(f"{len(rows)} predictions written to {args.out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry: every error is one `error:` message and exit status 2, never a traceback."""
    return run_main(_run_cli, argv)


if __name__ == "__main__":
    sys.exit(main())
