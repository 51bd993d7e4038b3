"""`data=npz data.path=FILE`: x_train, y_train, x_test, y_test arrays in one .npz (numpy.savez).

Images N x H x W (one channel) or N x H x W x C, uint8 (0..255, divided by 255 in the pipeline) or float
in [0, 1] (used as they are, as float32); labels integers. Read with allow_pickle=False: an object array
is refused, never unpickled.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from .arrays import Splits

KEYS = ("path",)
ARRAYS = ("x_train", "y_train", "x_test", "y_test")


def check(cfg) -> None:
    if not cfg.path:
        raise ConfigError(
            "data.path",
            "the npz source needs the .npz file",
            expected="a file saved with numpy.savez(FILE, x_train=..., y_train=..., x_test=..., y_test=...)",
            received=cfg.path,
            fix="add data.path=/path/to/data.npz",
        )


def _images(x: np.ndarray, name: str, path: Path) -> np.ndarray:
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise DataError(
            f"{path}:{name}",
            "images must be N x H x W or N x H x W x C",
            expected="a 3-D or 4-D array",
            received=f"shape {list(x.shape)}",
            fix="reshape the images before saving",
        )
    if x.dtype == np.uint8:
        return x
    if np.issubdtype(x.dtype, np.floating):
        return x.astype(np.float32)  # the range is checked with the other splits' (after loading)
    raise DataError(
        f"{path}:{name}",
        f"images of dtype {x.dtype}",
        expected="uint8 (0..255) or float in [0, 1]",
        received=str(x.dtype),
        fix="save the images as uint8 or as floats in [0, 1]",
    )


def _labels(y: np.ndarray, name: str, path: Path) -> np.ndarray:
    y = y.reshape(-1) if y.ndim == 2 and y.shape[1] == 1 else y
    if y.ndim != 1 or not (np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_):
        raise DataError(
            f"{path}:{name}",
            "labels must be a 1-D array of integer class indices",
            expected="shape (N,), an integer dtype",
            received=f"shape {list(y.shape)}, {y.dtype}",
            fix="save class indices (np.argmax of one-hot labels), as integers",
        )
    return y.astype(np.int64)


def load_splits(cfg) -> Splits:
    path = Path(cfg.path).expanduser()
    if not path.is_file():
        raise DataError(
            f"data.path={path}",
            "no such file",
            expected="an .npz file with " + ", ".join(ARRAYS),
            received="a folder" if path.is_dir() else "nothing there",
            fix="point data.path at the .npz file",
        )
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in ARRAYS if k not in f.files]
            if missing:
                raise DataError(
                    str(path),
                    f"missing arrays {', '.join(missing)}",
                    expected=", ".join(ARRAYS),
                    received=f"arrays {f.files}",
                    fix="save with numpy.savez(FILE, x_train=..., y_train=..., x_test=..., y_test=...)",
                )
            arrays = {k: f[k] for k in ARRAYS}
    except DataError:
        raise
    except ValueError as e:  # an object array: allow_pickle=False refuses to unpickle it
        raise DataError(
            str(path),
            f"cannot read the arrays ({e})",
            expected="plain numeric arrays (no pickled objects)",
            received="an object array or a damaged file",
            fix="save numeric arrays with numpy.savez",
        ) from None
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise DataError(
            str(path),
            f"cannot read the file ({e})",
            expected="a file written by numpy.savez",
            received="an unreadable or damaged file",
            fix="re-create it with numpy.savez",
        ) from None
    train = (_images(arrays["x_train"], "x_train", path), _labels(arrays["y_train"], "y_train", path))
    test = (_images(arrays["x_test"], "x_test", path), _labels(arrays["y_test"], "y_test", path))
    return Splits(train, test, f"npz:{path}")
