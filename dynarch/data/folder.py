"""`data=folder data.path=DIR`: one sub-folder per class of PNG/JPEG images.

Layout: DIR/train/<class>/*.png and DIR/test/<class>/*.png; or DIR/<class>/*.png, in which case every
fifth image of each class (in name order) is the test split. Classes are the sub-folder names in sorted
order (label 0 = first name), as in `keras.utils.image_dataset_from_directory`. Images are decoded with
Pillow (no TensorFlow needed to load), converted to grayscale (data.input_shape[-1] = 1) or RGB (3), and
resized to data.input_shape[:2] with bilinear filtering when their size differs.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from .arrays import Splits

KEYS = ("path",)
SUFFIXES = (".png", ".jpg", ".jpeg")
MODES = {1: "L", 3: "RGB"}
TEST_EVERY = 5  # class-only layout: every fifth image is held out for testing


def check(cfg) -> None:
    if not cfg.path:
        raise ConfigError(
            "data.path",
            "the folder source needs the image folder",
            expected="DIR/train/<class>/*.png and DIR/test/<class>/*.png, or DIR/<class>/*.png",
            received=cfg.path,
            fix="add data.path=/path/to/images",
        )
    if cfg.input_shape is not None and (len(cfg.input_shape) != 3 or cfg.input_shape[-1] not in MODES):
        raise ConfigError(
            "data.input_shape",
            "folder images are loaded as height x width x 1 (grayscale) or x 3 (RGB)",
            expected="[H, W, 1] or [H, W, 3]",
            received=list(cfg.input_shape),
            fix="set data.input_shape=[64, 64, 3] (images are resized to H x W)",
        )


def _classes(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES)


def _decode(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # a bomb is refused, not decoded
            with Image.open(path) as image:
                image = image.convert(MODES[shape[-1]])
                if image.size != (shape[1], shape[0]):
                    image = image.resize((shape[1], shape[0]), Image.Resampling.BILINEAR)
                array = np.asarray(image, np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DataError(
            str(path),
            f"cannot decode the image ({e})",
            expected="a PNG or JPEG file",
            received="an unreadable, damaged or oversized image",
            fix="remove or replace the file",
        ) from None
    return array.reshape(shape)


def _load(groups: list[list[Path]], shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    n = sum(len(g) for g in groups)
    x = np.empty((n, *shape), np.uint8)
    y = np.empty(n, np.int64)
    i = 0
    for label, files in enumerate(groups):
        for path in files:
            x[i], y[i] = _decode(path, shape), label
            i += 1
    return x, y


def load_splits(cfg) -> Splits:
    root = Path(cfg.path).expanduser()
    if not root.is_dir():
        raise DataError(
            f"data.path={root}",
            "no such folder",
            expected="a folder of class sub-folders",
            received="a file" if root.exists() else "nothing there",
            fix="point data.path at the image folder",
        )
    shape = tuple(cfg.input_shape)
    if (root / "train").is_dir() and (root / "test").is_dir():
        names = [[c.name for c in _classes(root / s)] for s in ("train", "test")]
        if names[0] != names[1]:
            raise DataError(
                str(root),
                "train/ and test/ hold different class folders",
                expected=f"the same names: {names[0]}",
                received=f"test/ holds {names[1]}",
                fix="give both splits one sub-folder per class, with the same names",
            )
        train = [_images(c) for c in _classes(root / "train")]
        test = [_images(c) for c in _classes(root / "test")]
        classes = names[0]
    else:
        folders = _classes(root)
        classes = [c.name for c in folders]
        files = [_images(c) for c in folders]
        train = [[p for i, p in enumerate(f) if i % TEST_EVERY != TEST_EVERY - 1] for f in files]
        test = [[p for i, p in enumerate(f) if i % TEST_EVERY == TEST_EVERY - 1] for f in files]
    empty = [c for c, files in zip(classes, train) if not files]
    if len(classes) < 2 or empty:
        raise DataError(
            str(root),
            "need at least two class folders, each with PNG/JPEG images",
            expected="DIR/train/<class>/*.png + DIR/test/<class>/*.png, or DIR/<class>/*.png",
            received=f"class folders {classes[:10]}" + (f"; no images in {empty[:5]}" if empty else ""),
            fix="arrange the images in one sub-folder per class",
        )
    if len(classes) != cfg.num_classes:
        raise DataError(
            str(root),
            f"{len(classes)} class folders, not data.num_classes={cfg.num_classes}",
            expected=f"{cfg.num_classes} class folders",
            received=classes[:20],
            fix=f"set data.num_classes={len(classes)} (the model's head follows it)",
        )
    source = f"folder:{root} ({len(classes)} classes: {', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''})"
    return Splits(_load(train, shape), _load(test, shape), source)
