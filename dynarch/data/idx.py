"""`data=idx data.path=DIR`: any IDX image set (MNIST, Fashion-MNIST, KMNIST, EMNIST files as they are).

The folder holds four files whose names end in the MNIST names, optionally gzipped and with a prefix
(`emnist-digits-train-images-idx3-ubyte.gz` works): images N x H x W (idx3) or N x H x W x C (idx4), labels N.
Sizes are computed with Python ints and checked against the file before anything is allocated; a gzip
stream is decompressed into a buffer of exactly the size the header declares, so a bomb stops at once.
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from .arrays import Splits

KEYS = ("path",)
ROLES = {"train_x": "train-images", "train_y": "train-labels", "test_x": "t10k-images", "test_y": "t10k-labels"}
IDX_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
UBYTE = 0x08
# Deflate cannot expand more than 1032:1; a header declaring more than that is a lie (or a bomb).
MAX_DEFLATE_RATIO = 1032
MAX_BYTES = 1 << 36  # 64 GiB: beyond any dataset that fits in memory here


def check(cfg) -> None:
    if not cfg.path:
        raise ConfigError(
            "data.path",
            "the idx source needs the folder holding the IDX files",
            expected="a folder with train-images-idx3-ubyte[.gz] and the three other files",
            received=cfg.path,
            fix="add data.path=/path/to/folder",
        )


def find(folder: Path, role: str) -> Path:
    """The one file in `folder` for `role` (name ending in e.g. train-images-idx3-ubyte, .gz allowed)."""
    if not folder.is_dir():
        raise DataError(
            f"data.path={folder}",
            "no such folder",
            expected="a folder with the four IDX files",
            received="no such folder" if not folder.exists() else "a file, not a folder",
            fix="point data.path at the folder with the IDX files",
        )
    stem = ROLES[role]
    found = sorted(p for p in folder.iterdir() if p.is_file() and _matches(p.name, stem))
    if len(found) != 1:
        names = sorted(p.name for p in folder.iterdir())
        problem = (
            f"missing IDX file '{IDX_FILES[role]}' (or '{IDX_FILES[role]}.gz')"
            if not found
            else f"{len(found)} files could be the {stem} file"
        )
        raise DataError(
            f"data.path={folder}",
            problem,
            expected="one of each: " + ", ".join(IDX_FILES.values()) + " (optionally .gz or prefixed)",
            received=f"folder holds {names[:8] or 'nothing'}" if not found else [p.name for p in found],
            fix="point data.path at a folder with exactly one file of each kind",
        )
    return found[0]


def _matches(name: str, stem: str) -> bool:
    base = name[:-3] if name.endswith(".gz") else name
    return any(base.endswith(f"{stem}-idx{d}-ubyte") for d in (1, 3, 4))


def _bad(path: Path, problem: str, expected: str, received, fix: str = "re-download or regenerate the file"):
    return DataError(str(path), problem, expected=expected, received=received, fix=fix)


def read_idx(path: Path, ranks: tuple[int, ...]) -> np.ndarray:
    """One unsigned-byte IDX file of one of `ranks`, checked before allocating and read without a bomb."""
    gz = path.name.endswith(".gz")
    try:
        with gzip.open(path, "rb") if gz else open(path, "rb") as f:
            head = _read_exact(f, 4)
            rank = head[3] if len(head) == 4 else -1
            if len(head) < 4 or head[:2] != b"\0\0" or head[2] != UBYTE or rank not in ranks:
                raise _bad(
                    path,
                    "not an unsigned-byte IDX file of the expected rank",
                    f"magic 0x0000 08 then rank {' or '.join(map(str, ranks))} "
                    f"({'images' if max(ranks) > 1 else 'labels'})",
                    f"header {head.hex() or 'empty'}",
                    "check the file is the right one of the four (images are 3-D, labels 1-D)",
                )
            raw_dims = _read_exact(f, 4 * rank)
            if len(raw_dims) < 4 * rank:
                raise _bad(path, "the header is truncated", f"{4 * rank} bytes of dimensions", f"{len(raw_dims)}")
            dims = tuple(int.from_bytes(raw_dims[4 * i : 4 * i + 4], "big") for i in range(rank))
            count = math.prod(dims)  # Python int: cannot overflow
            _check_declared(path, gz, dims, count, 4 + 4 * rank)
            data = np.empty(count, np.uint8)
            got = f.readinto(memoryview(data)) if count else 0
            while got < count:
                more = f.readinto(memoryview(data)[got:])
                if not more:
                    break
                got += more
            extra = len(f.read(1))
    except DataError:
        raise
    except (OSError, EOFError, zlib.error) as e:
        raise _bad(
            path,
            f"cannot read the file ({e})",
            "a readable (gzip) IDX file",
            "an unreadable, corrupted or truncated file",
        ) from None
    if got < count or extra:
        raise _bad(
            path,
            "the file is truncated or has trailing bytes",
            f"{count} data bytes for dims {dims}",
            f"{got} bytes" if got < count else "more bytes than that",
        )
    return data.reshape(dims)


def _read_exact(f, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = f.read(n - len(out))
        if not chunk:
            break
        out += chunk
    return out


def _check_declared(path: Path, gz: bool, dims: tuple[int, ...], count: int, header: int) -> None:
    """The header's size against the file, before a byte is allocated."""
    size = path.stat().st_size
    limit = (size * MAX_DEFLATE_RATIO) if gz else size - header
    if count > MAX_BYTES or (gz and count > limit):
        raise _bad(
            path,
            "the header declares a size the file cannot hold",
            f"dims whose product fits the file ({size:,} bytes{', gzip: at most 1032x that' if gz else ''}) "
            f"and at most {MAX_BYTES:,} bytes",
            f"dims {list(dims)} = {count:,} bytes",
        )
    if not gz and count != limit:
        raise _bad(
            path,
            "the file is truncated or has trailing bytes",
            f"{count:,} data bytes for dims {list(dims)}",
            f"{limit:,} bytes after the header",
        )
    if 0 in dims[1:]:
        raise _bad(path, "the header declares an empty image size", "dims > 0", f"dims {list(dims)}")


def load_splits(cfg) -> Splits:
    folder = Path(cfg.path).expanduser()
    out = []
    for split in ("train", "test"):
        x = read_idx(find(folder, f"{split}_x"), (3, 4))
        y = read_idx(find(folder, f"{split}_y"), (1,)).astype(np.int64)
        out.append((x[..., None] if x.ndim == 3 else x, y))
    return Splits(out[0], out[1], f"idx:{folder}")
