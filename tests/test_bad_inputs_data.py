"""Bad-input catalogue for data: crafted IDX headers, corrupted and bomb gzip streams, npz and image folders
that are not what they claim, data that disagrees with data.input_shape / data.num_classes, unknown dataset
names, offline non-MNIST datasets. Each: a dynarch error naming the thing, with `fix:`, no traceback, and no
file outside the run dir changed."""

import gzip
import hashlib
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, TINY, run_config
from datagen import make_idx_folder, make_image_folder, make_npz

from dynarch.errors import DynarchError

IMAGES = "train-images-idx3-ubyte"
OFFLINE = ["data.probe_host=127.0.0.1", "data.probe_port=1"]


def snapshot(root):
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def header(dims):
    return bytes([0, 0, 8, len(dims)]) + b"".join(int(d).to_bytes(4, "big") for d in dims)


def bomb(path, dims=(100, 28, 28), members=64):
    """A 1 MB gzip whose header declares 78 kB but whose stream inflates to 1 GiB (gzip members of zeros)."""
    chunk = 1 << 24
    first = gzip.compress(header(dims) + bytes(chunk - len(header(dims))), 9)
    rest = gzip.compress(bytes(chunk), 9)
    path.write_bytes(first + rest * (members - 1))
    return path


def idx_with(damage, gz=False):
    def prepare(tmp):
        folder = make_idx_folder(tmp / "idx", gz=gz)
        damage(folder)
        return ["data=idx", f"data.path={folder}"]

    return prepare


def overflow(folder):  # 2^32-1 cubed: a Python int, never an allocation
    (folder / IMAGES).write_bytes(header((2**32 - 1,) * 3) + bytes(100))


def overflow_gz(folder):
    (folder / f"{IMAGES}.gz").unlink()
    (folder / f"{IMAGES}.gz").write_bytes(gzip.compress(header((60_000, 4096, 4096)) + bytes(1000)))


def disagree(folder):  # declares more images than the file holds
    (folder / IMAGES).write_bytes(header((500, 28, 28)) + bytes(120 * 28 * 28))


def corrupt_gz(folder):
    path = folder / f"{IMAGES}.gz"
    data = bytearray(path.read_bytes())
    for i in range(40, len(data) - 20, 97):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))


def gzip_bomb(folder):
    (folder / f"{IMAGES}.gz").unlink()
    bomb(folder / f"{IMAGES}.gz", (120, 28, 28))


def int_type(folder):  # 0x0C: 32-bit ints, not unsigned bytes
    (folder / IMAGES).write_bytes(bytes([0, 0, 0x0C, 3]) + header((120, 28, 28))[4:] + bytes(120 * 28 * 28 * 4))


def npz(input_shape="[16,12,3]", **kw):
    def prepare(tmp):
        return [
            "data=npz",
            f"data.path={make_npz(tmp / 'd.npz', **kw)}",
            f"data.input_shape={input_shape}",
            "data.num_classes=4",
        ]

    return prepare


def broken_png(tmp):
    root = make_image_folder(tmp / "img")
    (root / "train" / "dog" / "001.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    return ["data=folder", f"data.path={root}", "data.input_shape=[16,16,3]", "data.num_classes=3"]


def config(*overrides):
    return lambda tmp, extra: run_config([*overrides, *extra])


def train(*overrides):
    def act(tmp, extra):
        from dynarch.train import train as run_train

        return run_train(run_config([*TINY, "trainer.epochs=1", *overrides, *extra]), tmp / "run")

    return act


CASES = {  # name: (act, prepare, substrings of the message)
    "idx header overflows": (train(), idx_with(overflow), [IMAGES, "declares a size the file cannot hold"]),
    "idx gz header beyond deflate": (train(), idx_with(overflow_gz, gz=True), ["declares a size the file cannot hold"]),
    "idx header disagrees with file": (train(), idx_with(disagree), [IMAGES, "truncated"]),
    "idx corrupted gzip": (train(), idx_with(corrupt_gz, gz=True), [IMAGES, "cannot read the file"]),
    "idx gzip bomb": (train(), idx_with(gzip_bomb, gz=True), [IMAGES, "trailing bytes"]),
    "idx int32 payload": (train(), idx_with(int_type), [IMAGES, "not an unsigned-byte IDX file"]),
    "idx shape != input_shape": (
        train("data.input_shape=[20,20,1]"),
        idx_with(lambda f: None),
        ["28x28x1, not data.input_shape=[20, 20, 1]", "data.input_shape=[28, 28, 1]"],
    ),
    "idx labels beyond num_classes": (
        train("data.num_classes=4"),
        idx_with(lambda f: None),
        ["labels out of range for data.num_classes=4", "data.num_classes=10"],
    ),
    "npz object array": (train(), npz(y_test=np.array([None] * 20, dtype=object)), ["cannot read the arrays"]),
    "npz missing array": (train(), npz(x_test=None), ["missing arrays x_test"]),
    "npz 5-D images": (train(), npz(x_train=np.zeros((60, 2, 16, 12, 3), np.uint8)), ["x_train", "N x H x W"]),
    "npz float images 0..255": (
        train(),
        npz(dtype=np.float32, x_train=np.full((60, 16, 12, 3), 7.0, np.float32)),
        ["within [0, 1]", "divide by 255"],
    ),
    "npz shape != input_shape": (train(), npz("[12,16,3]"), ["16x12x3", "data.input_shape=[16, 12, 3]"]),
    "npz string labels": (train(), npz(y_train=np.array(["a"] * 60)), ["y_train", "integer class indices"]),
    "npz not a zip": (
        train(),
        lambda tmp: [
            "data=npz",
            f"data.path={(tmp / 'x.npz').write_text('no') and tmp / 'x.npz'}",
            "data.input_shape=[16,12,3]",
            "data.num_classes=4",
        ],
        ["cannot read"],
    ),
    "folder broken png": (train(), broken_png, ["001.png", "cannot decode the image"]),
    "folder class count": (
        train("data=folder", "data.input_shape=[16,16,3]", "data.num_classes=5"),
        lambda tmp: [f"data.path={make_image_folder(tmp / 'img')}"],
        ["3 class folders, not data.num_classes=5"],
    ),
    "folder 2 channels": (
        config("data=folder", "data.path=/x", "data.input_shape=[16,16,2]", "data.num_classes=3"),
        None,
        ["data.input_shape", "[H, W, 1] or [H, W, 3]"],
    ),
    "unknown dataset name": (config("data.name=fashion_mnst"), None, ["data.name", "Did you mean 'fashion_mnist'"]),
    "dataset name with a path": (config("data.name=../mnist"), None, ["not a TFDS dataset name"]),
    "unknown loader": (config("data.loader=npzz"), None, ["data.loader", "Did you mean 'npz'"]),
    "path under tfds": (config("+data.path=/x"), None, ["'path' is a setting of the", "data.loader=tfds"]),
    "probe key under idx": (config("data=idx", "data.path=/x", "+data.probe_host=h"), None, ["tfds source"]),
    "npz without shape": (config("data=npz", "data.path=/x"), None, ["data.input_shape", "before loading"]),
    "augment not a list": (config("data.augment=3"), None, ["data.augment", "a list"]),
    "augment code layer": (
        config("data.augment=[{_target_: keras.layers.Lambda, function: print}]"),
        None,
        ["data.augment[0]._target_", "not an augmentation layer"],
    ),
    "augment own seed": (
        config("data.augment=[{_target_: keras.layers.RandomFlip, seed: 3}]"),
        None,
        ["data.augment[0].seed", "seeded by dynarch"],
    ),
    "augment flip mode Keras ignores": (
        config("data.augment=[{_target_: keras.layers.RandomFlip, mode: diagonal}]"),
        None,
        ["data.augment[0].mode", "horizontal_and_vertical"],
    ),
    "input_shape rank 2": (config("data=idx", "data.path=/x", "data.input_shape=[28,28]"), None, ["data.input_shape"]),
    "num_classes 1": (config("data.num_classes=1"), None, ["data.num_classes", "[2, 1000000]"]),
    "offline fashion_mnist": (
        train("data=mnist", "data.name=fashion_mnist", *OFFLINE),
        lambda tmp: [f"data.data_dir={tmp}/tfds"],
        ["fashion_mnist", "not prepared", "Only MNIST has an offline stand-in", "tfds build"],
    ),
    "offline cifar10 with the cnn": (
        train("model=cnn", "data=mnist", "data.name=cifar10", *OFFLINE),
        lambda tmp: [f"data.data_dir={tmp}/tfds"],
        ["cifar10", "not prepared"],
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_data_gives_a_clear_error_and_touches_nothing_outside_the_run_dir(name, tmp_path):
    act, prepare, needles = CASES[name]
    extra = prepare(tmp_path) if prepare else []
    run_dir = tmp_path / "run"
    outside = lambda: {
        p: h
        for p, h in {**snapshot(tmp_path), **snapshot(ROOT / "conf")}.items()  # noqa: E731
        if run_dir not in p.parents
    }
    before = outside()
    with pytest.raises(DynarchError) as err:
        act(tmp_path, extra)
    message = str(err.value)
    for needle in needles:
        assert needle in message, message
    assert "fix:" in message and "Traceback" not in message
    assert outside() == before
    assert not (run_dir / "checkpoint").exists()


def test_gzip_bomb_fails_with_little_memory(tmp_path):
    """1 MB of gzip inflating to 1 GiB, header declaring 78 kB: refused after reading 78 kB (+1 byte)."""
    path = bomb(tmp_path / f"{IMAGES}.gz")
    assert path.stat().st_size < 2 << 20
    # VmHWM: this process's peak resident memory (ru_maxrss would carry pytest's own over fork + exec).
    code = (
        "import sys; from pathlib import Path; from dynarch.data.idx import read_idx\n"
        "try:\n    read_idx(Path(sys.argv[1]), (3,))\nexcept Exception as e:\n    print(type(e).__name__, e)\n"
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
        "print('peak_mib', int(hwm) // 1024)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, cwd=ROOT, timeout=120
    ).stdout
    assert "DataError" in out and "trailing bytes" in out, out
    assert int(out.rsplit("peak_mib", 1)[1]) < 300, out  # numpy + dynarch.data, not the 1 GiB


def test_unknown_name_is_answered_before_tensorflow():
    code = (
        "import sys\nfrom dynarch.compose import compose_run\ntry:\n    compose_run(['data.name=cifar01'])\n"
        "except Exception as e:\n    print(e)\nprint('tensorflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120).stdout
    assert "Did you mean 'cifar10'" in out and out.strip().endswith("False"), out


def test_cli_offline_non_mnist_exits_2_without_traceback(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dynarch",
            *TINY,
            "data=mnist",
            "data.name=kmnist",
            *OFFLINE,
            f"data.data_dir={tmp_path}/tfds",
            f"hydra.run.dir={tmp_path}/run",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "kmnist" in proc.stderr and "fix:" in proc.stderr and "Traceback" not in proc.stderr + proc.stdout
    assert "mnist_5k" not in proc.stdout + proc.stderr
