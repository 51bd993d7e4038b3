"""Data: every source with data the tests make (IDX, npz, PNG folders, TFDS through tfds.testing.mock_data),
honest offline behaviour, the dataset table, and the pipeline (order, resume, epoch_dataset, augmentation)."""

import numpy as np
import pytest
from conftest import TINY, run_config
from datagen import make_idx_folder, make_image_folder, make_npz, write_idx  # noqa: F401 (re-exported)

from dynarch.data import KNOWN, Pipelines, epoch_order, load_arrays
from dynarch.data.idx import IDX_FILES
from dynarch.data.probe import probe
from dynarch.data.subset import load_mnist_5k
from dynarch.errors import ConfigError, DataError

OFFLINE = ["data.probe_host=127.0.0.1", "data.probe_port=1"]


def idx_run(folder, *extra):
    return run_config(["data=idx", f"data.path={folder}", *extra])


@pytest.mark.parametrize("gz", [True, False])
def test_idx_reads_generated_files(tmp_path, gz):
    folder = make_idx_folder(tmp_path / "idx", gz=gz)
    arrays = load_arrays(idx_run(folder, "data.val_fraction=0.25").data, seed=1)
    assert arrays.sizes() == {"train": 90, "val": 30, "test": 40}
    assert arrays.train[0].shape == (90, 28, 28, 1) and arrays.train[0].dtype == np.uint8
    assert arrays.source == f"idx:{folder}"


def test_idx_of_another_shape_with_channels_and_prefixed_names(tmp_path):
    folder = make_idx_folder(tmp_path / "idx", size=20, channels=3, classes=5, prefix="emnist-x-")
    arrays = load_arrays(idx_run(folder, "data.input_shape=[20,20,3]", "data.num_classes=5").data, seed=0)
    assert arrays.train[0].shape[1:] == (20, 20, 3) and arrays.sizes()["test"] == 40


def test_idx_missing_file_lists_what_is_there(tmp_path):
    folder = make_idx_folder(tmp_path / "idx")
    (folder / (IDX_FILES["test_y"] + ".gz")).unlink()
    with pytest.raises(
        DataError, match=r"missing IDX file 't10k-labels-idx1-ubyte'.*\n.*expected.*\n.*received: folder holds"
    ):
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
    with pytest.raises(
        DataError,
        match=r"images are 32x32x1, not data.input_shape=\[28, 28, 1\](.*\n)*.*"
        r"fix: set data.input_shape=\[32, 32, 1\]",
    ):
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
    with pytest.raises(DataError, match=r"labels out of range(.*\n)*.*fix: set data.num_classes=13"):
        load_arrays(idx_run(folder).data, seed=0)


def test_npz_uint8_and_float(tmp_path):
    run = run_config(
        [
            "data=npz",
            f"data.path={make_npz(tmp_path / 'a.npz')}",
            "data.input_shape=[16,12,3]",
            "data.num_classes=4",
            "data.val_fraction=0",
        ]
    )
    arrays = load_arrays(run.data, seed=0)
    assert arrays.train[0].dtype == np.uint8 and arrays.sizes() == {"train": 60, "val": 0, "test": 20}
    path = make_npz(tmp_path / "f.npz", shape=(16, 12), dtype=np.float64)
    arrays = load_arrays(
        run_config(["data=npz", f"data.path={path}", "data.input_shape=[16,12,1]", "data.num_classes=4"]).data, seed=0
    )
    assert arrays.train[0].dtype == np.float32 and arrays.train[0].shape[1:] == (16, 12, 1)
    x, _ = next(iter(Pipelines(arrays, 8, 0).test()))
    assert np.allclose(x.numpy(), arrays.test[0][:8])  # floats in [0, 1] are used as they are


def test_npz_refuses_pickles_and_out_of_range_floats(tmp_path):
    base = ["data=npz", "data.input_shape=[16,12,3]", "data.num_classes=4"]
    path = make_npz(tmp_path / "o.npz", y_train=np.array([object()] * 60, dtype=object))
    with pytest.raises(DataError, match=r"cannot read the arrays(.*\n)*.*fix:"):
        load_arrays(run_config([*base, f"data.path={path}"]).data, seed=0)
    path = make_npz(tmp_path / "big.npz", dtype=np.float32, x_test=np.full((20, 16, 12, 3), 255.0, np.float32))
    with pytest.raises(DataError, match=r"not all finite and within \[0, 1\](.*\n)*.*received: values in \[255, 255\]"):
        load_arrays(run_config([*base, f"data.path={path}"]).data, seed=0)


def test_image_folder_split_and_unsplit(tmp_path):
    root = make_image_folder(tmp_path / "img")
    run = run_config(["data=folder", f"data.path={root}", "data.input_shape=[16,16,3]", "data.num_classes=3"])
    arrays = load_arrays(run.data, seed=0)
    assert arrays.sizes()["test"] == 6 and arrays.train[0].shape[1:] == (16, 16, 3)
    assert "cat, dog, eel" in arrays.source
    root = make_image_folder(tmp_path / "flat", mode="L", split=False, fmt="jpg")
    run = run_config(
        ["data=folder", f"data.path={root}", "data.input_shape=[8,8,1]", "data.num_classes=3", "data.val_fraction=0"]
    )
    arrays = load_arrays(run.data, seed=0)
    assert arrays.sizes() == {"train": 21, "val": 0, "test": 3}  # every fifth image of each class (8 each)
    with pytest.raises(DataError, match=r"3 class folders, not data.num_classes=5(.*\n)*.*data.num_classes=3"):
        load_arrays(
            run_config(["data=folder", f"data.path={root}", "data.input_shape=[8,8,1]", "data.num_classes=5"]).data,
            seed=0,
        )


def test_subset_is_real_stratified_mnist():
    (x, y), (tx, ty) = load_mnist_5k()
    assert x.shape == (4000, 28, 28, 1) and tx.shape == (1000, 28, 28, 1)
    assert np.bincount(y).tolist() == [400] * 10 and np.bincount(ty).tolist() == [100] * 10
    assert 0.05 < (x > 0).mean() < 0.4  # digits: mostly background


def test_table_gives_shape_and_classes_before_tensorflow():
    run = run_config(["model=cnn", "data.name=cifar10"])
    assert run.data.input_shape == (32, 32, 3) and run.data.num_classes == 10
    assert run.arch.input_shape == (32, 32, 3)
    assert run_config(["data=tfds", "data.name=cifar100"]).data.num_classes == 100
    assert KNOWN["fashion_mnist"].input_shape == (28, 28, 1)


def test_unknown_name_gets_the_closest_names():
    with pytest.raises(ConfigError, match=r"'mnsit' is not in dynarch's table(.*\n)*.*fix: data.name=mnist"):
        run_config(["data.name=mnsit"])
    with pytest.raises(ConfigError, match=r"not a TFDS dataset name"):
        run_config(["data.name=../../etc"])


def test_keys_of_another_source_are_refused():
    with pytest.raises(
        ConfigError,
        match=r"data.path: 'path' is a setting of the folder / idx / npz source, not of "
        r"data.loader=tfds",
    ):
        run_config(["+data.path=/x"])
    with pytest.raises(ConfigError, match=r"data.data_dir: 'data_dir' is a setting of the tfds source"):
        run_config(["data=npz", "data.path=/x", "+data.data_dir=/y"])
    with pytest.raises(ConfigError, match=r"data.input_shape(.*\n)*.*fix: set data.input_shape="):
        run_config(["data=npz", "data.path=/x"])


def _mock_tfds(monkeypatch):
    import tensorflow_datasets as tfds

    import dynarch.data.tfds

    monkeypatch.setattr(dynarch.data.tfds, "probe", lambda *a: None)  # mock_data replaces the download itself
    return tfds.testing.mock_data(num_examples=64)


@pytest.mark.parametrize("name,shape", [("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))])
def test_tfds_loading_through_mock_data(tmp_path, monkeypatch, name, shape):
    run = run_config([f"data.name={name}", "data.limit_train=50", "data.limit_test=20", f"data.data_dir={tmp_path}"])
    with _mock_tfds(monkeypatch):
        arrays = load_arrays(run.data, seed=0)
    assert arrays.source == f"tfds:{name}"
    assert arrays.sizes() == {"train": 45, "val": 5, "test": 20}
    assert arrays.train[0].shape[1:] == shape and arrays.train[0].dtype == np.uint8


def test_tfds_metadata_disagreeing_with_the_config_is_a_clear_error(tmp_path, monkeypatch):
    run = run_config(["data.name=cifar10", "data.num_classes=20", f"data.data_dir={tmp_path}"])
    with (
        _mock_tfds(monkeypatch),
        pytest.raises(
            DataError,
            match=r"holds \[32, 32, 3\] images in 10 classes(.*\n)*"
            r".*fix: set data.input_shape=\[32, 32, 3\] data.num_classes=10",
        ),
    ):
        load_arrays(run.data, seed=0)


def test_cifar10_trains_end_to_end_with_the_cnn(tmp_path, monkeypatch):
    from dynarch.train import train

    run = run_config(
        [
            *TINY,
            "model=cnn",
            "data=tfds",
            "data.name=cifar10",
            f"data.data_dir={tmp_path / 'tfds'}",
            "data.limit_train=64",
            "data.limit_test=32",
            "trainer.epochs=1",
            "trainer.batch_size=32",
        ]
    )
    with _mock_tfds(monkeypatch):
        metrics = train(run, tmp_path / "run")
    assert metrics["data_source"] == "tfds:cifar10" and metrics["data_sizes"]["test"] == 32


def test_offline_mnist_uses_the_shipped_digits_and_says_so(tmp_path):
    arrays = load_arrays(run_config([f"data.data_dir={tmp_path}", *OFFLINE]).data, seed=0)
    assert arrays.source == "subset:mnist_5k (offline stand-in for tfds:mnist)"
    assert arrays.sizes()["test"] == 1000


@pytest.mark.parametrize("extra", [["data.name=fashion_mnist"], ["data.name=cifar10"], ["data.offline_fallback=false"]])
def test_offline_anything_else_is_a_clear_error_never_mnist(tmp_path, extra):
    run = run_config([f"data.data_dir={tmp_path}", *OFFLINE, *extra])
    with pytest.raises(
        DataError, match=r"not prepared(.*\n)*.*fix: data.data_dir=(.*)tfds build(.*)data=idx\|npz\|folder"
    ):
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


def subset_arrays(n=300, *extra):
    return load_arrays(
        run_config(["data=mnist_subset", f"data.limit_train={n}", "data.val_fraction=0", *extra]).data, seed=3
    )


def labels(ds):
    return np.concatenate([y.numpy() for _, y in ds])


def test_pipeline_orders_by_seed_and_epoch_and_resumes_mid_epoch():
    arrays = subset_arrays()
    a, b = Pipelines(arrays, 64, seed=3), Pipelines(arrays, 64, seed=3)
    first, second = labels(a.train(0)), labels(a.train(1))
    assert sorted(first) == sorted(arrays.train[1]) and not np.array_equal(first, second)  # reshuffled
    assert np.array_equal(first, labels(b.train(0)))  # same seed and epoch, same order
    assert np.array_equal(first[2 * 64 :], labels(a.train(0, skip_batches=2)))  # resume after 2 batches
    assert np.array_equal(arrays.train[1][epoch_order(300, 3, 0)], first)
    assert a.steps_per_epoch == 5 and [len(y) for _, y in a.train(0)] == [64, 64, 64, 64, 44]
    x, _ = next(iter(a.test()))
    assert x.shape == (64, 28, 28, 1) and float(x.numpy().max()) <= 1.0
    assert a.probe(10).shape == (10, 28, 28, 1)


def _same_batches(ds, reference):
    got, want = list(ds), list(reference)
    assert len(got) == len(want)
    for (x, y), (rx, ry) in zip(got, want):
        assert np.array_equal(x.numpy(), rx.numpy()) and np.array_equal(y.numpy(), ry.numpy())


@pytest.mark.parametrize("augment", [False, True])
def test_epoch_dataset_reads_the_epoch_each_time_it_is_iterated(augment):
    aug = ["data.augment=[{_target_: keras.layers.RandomTranslation, height_factor: 0.2, width_factor: 0.2}]"]
    arrays = subset_arrays(200, *(aug if augment else []))
    data = Pipelines(arrays, 64, seed=3)
    epoch = [3]
    ds = data.epoch_dataset(lambda: epoch[0])
    assert int(ds.cardinality()) == data.steps_per_epoch == 4
    _same_batches(ds, data.train(3))
    epoch[0] = 4
    _same_batches(ds, data.train(4))


def test_augmentation_is_seeded_per_batch_and_resumes_exactly():
    aug = [
        "data.augment=[{_target_: keras.layers.RandomFlip, mode: horizontal}, "
        "{_target_: keras.layers.RandomTranslation, height_factor: 0.2, width_factor: 0.2}]"
    ]
    arrays = subset_arrays(200, *aug)
    data, plain = Pipelines(arrays, 64, seed=3), Pipelines(arrays, 64, seed=3, augment=())
    full = [x.numpy() for x, _ in data.train(1)]
    assert not np.array_equal(full[0], next(iter(plain.train(1)))[0].numpy())  # it does augment
    assert np.array_equal(full[0], next(iter(Pipelines(arrays, 64, seed=3).train(1)))[0].numpy())  # same seed
    resumed = [x.numpy() for x, _ in data.train(1, skip_batches=2)]
    assert all(np.array_equal(a, b) for a, b in zip(full[2:], resumed))  # batch 2 is batch 2 after a resume
    assert not np.array_equal(full[0], next(iter(data.train(2)))[0].numpy())


def test_augment_layers_are_checked_against_the_allowlist():
    with pytest.raises(
        ConfigError,
        match=r"data.augment\[0\]._target_: 'keras.layers.Lambda' is not an "
        r"augmentation layer",
    ):
        run_config(["data.augment=[{_target_: keras.layers.Lambda}]"])
    with pytest.raises(ConfigError, match=r"data.augment\[0\].fill: keras.layers.RandomFlip does not take 'fill'"):
        run_config(["data.augment=[{_target_: keras.layers.RandomFlip, fill: 1}]"])


def test_table_values_survive_in_place_resolution():
    from conftest import compose_cfg
    from omegaconf import OmegaConf

    import dynarch.config  # noqa: F401  registers the resolver

    cfg = compose_cfg(["model=cnn", "data.name=svhn_cropped"])
    OmegaConf.resolve(cfg)  # what `--cfg job --resolve` does
    assert list(cfg.model.input_shape) == [32, 32, 3] and cfg.data.num_classes == 10


def test_name_outside_the_table_is_checked_against_tfds_at_load_time(tmp_path):
    run = run_config(
        ["data.name=cifar11", "data.input_shape=[32,32,3]", "data.num_classes=10", f"data.data_dir={tmp_path}"]
    )
    with pytest.raises(DataError, match=r"TFDS has no dataset 'cifar11'(.*\n)*.*fix: data.name=cifar10"):
        load_arrays(run.data, seed=0)


@pytest.mark.parametrize("source", ["idx", "npz", "folder"])
def test_own_data_of_a_non_mnist_shape_trains_end_to_end(tmp_path, source):
    from dynarch.train import train

    made = {
        "idx": lambda: [
            "data=idx",
            f"data.path={make_idx_folder(tmp_path / 'i', size=20, channels=3, classes=5)}",
            "data.input_shape=[20,20,3]",
            "data.num_classes=5",
        ],
        "npz": lambda: [
            "data=npz",
            f"data.path={make_npz(tmp_path / 'd.npz')}",
            "data.input_shape=[16,12,3]",
            "data.num_classes=4",
        ],
        "folder": lambda: [
            "data=folder",
            f"data.path={make_image_folder(tmp_path / 'f')}",
            "data.input_shape=[16,16,3]",
            "data.num_classes=3",
        ],
    }[source]()
    run = run_config([*TINY, "model=cnn", *made, "trainer.epochs=1", "trainer.batch_size=8"])
    metrics = train(run, tmp_path / "run")
    assert metrics["data_source"].startswith(f"{source}:") and metrics["params"] > 0


@pytest.mark.parametrize("loop", ["fused", "keras"])
def test_a_deterministic_run_prints_no_tf_data_rewrite_error(tmp_path, loop):
    """Under op determinism (the default) tf.data runs parallel maps sequentially; TensorFlow 2.21's rewrite
    logged "E0000 ... NodeDef mentions attribute use_unbounded_threadpool ..." into every run. dynarch's
    pipelines ask for the sequential map themselves (data/pipeline._map) and the fused loop evaluates through
    them, so a default run's output carries no such line."""
    from conftest import TINY, cli

    proc = cli(*TINY, f"trainer.loop={loop}", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "use_unbounded_threadpool" not in proc.stderr + proc.stdout
    assert "E0000" not in proc.stderr
