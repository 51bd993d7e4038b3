"""Small real-format data files the tests make themselves: IDX, npz, PNG image folders (a plain helper module:
`from datagen import make_idx_folder`)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from dynarch.data.idx import IDX_FILES


def write_idx(path: Path, array, gz: bool = True) -> Path:
    """`array` as an unsigned-byte IDX file (path + '.gz' when gz)."""
    array = np.asarray(array)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def make_idx_folder(
    folder: Path, n_train=120, n_test=40, gz=True, size=28, channels=None, classes=10, prefix=""
) -> Path:
    """The four MNIST-named IDX files of random images (size x size [x channels]) and labels."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    extra = () if channels is None else (channels,)
    for split, n in (("train", n_train), ("test", n_test)):
        write_idx(
            folder / (prefix + IDX_FILES[f"{split}_x"].replace("idx3", "idx4" if extra else "idx3")),
            rng.integers(0, 256, (n, size, size, *extra)),
            gz,
        )
        write_idx(folder / (prefix + IDX_FILES[f"{split}_y"]), rng.integers(0, classes, n), gz)
    return folder


def make_npz(path: Path, n_train=60, n_test=20, shape=(16, 12, 3), classes=4, dtype=np.uint8, **override) -> Path:
    """x_train, y_train, x_test, y_test in one .npz (uint8 0..255, or floats in [0, 1])."""
    rng = np.random.default_rng(1)

    def images(n):
        x = rng.integers(0, 256, (n, *shape))
        return x.astype(np.uint8) if dtype == np.uint8 else (x / 255.0).astype(dtype)

    arrays = {
        "x_train": images(n_train),
        "y_train": rng.integers(0, classes, n_train),
        "x_test": images(n_test),
        "y_test": rng.integers(0, classes, n_test),
        **override,
    }
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def make_image_folder(
    root: Path, classes=("cat", "dog", "eel"), per_class=(6, 2), size=(20, 14), mode="RGB", split=True, fmt="png"
) -> Path:
    """root/train/<class>/*.png and root/test/<class>/*.png (or root/<class>/ when not split), varied sizes."""
    from PIL import Image

    rng = np.random.default_rng(2)
    for s, n in zip(("train", "test"), per_class) if split else [("", sum(per_class))]:
        for c in classes:
            folder = root / s / c
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                w, h = size[0] + i % 3, size[1]  # sizes differ: the loader resizes
                pixels = rng.integers(0, 256, (h, w, 3) if mode == "RGB" else (h, w)).astype(np.uint8)
                Image.fromarray(pixels, mode).save(folder / f"{i:03d}.{fmt}")
    return root
