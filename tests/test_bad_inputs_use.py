"""Bad-input catalogue for using a trained run: python -m dynarch.evaluate / predict / export and load_run.

Every case must exit 2 with one `error:` message that names the thing and carries a `fix:` line, print no
traceback, and leave every file under the test's folder (the trained run included) exactly as it was.
"""

import hashlib
import json
import shutil

import numpy as np
import pytest

import dynarch.checkpoint as ck
from dynarch import evaluate, export, predict
from dynarch.errors import CheckpointError
from dynarch.load import load_run

MODULES = {"evaluate": evaluate, "predict": predict, "export": export}


def train_tiny(out):
    """Train like the CLI does (config.yaml written), in-process."""
    from conftest import TINY
    from omegaconf import OmegaConf

    from dynarch.compose import compose_config, resolve_config
    from dynarch.train import train

    cfg, context = compose_config([*TINY, "trainer.epochs=1"])
    run, container = resolve_config(cfg, **context)
    return train(run, out, resolved_config=OmegaConf.to_yaml(container))


def snapshot(root):
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(root.rglob("*"))
    }


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("bad-use") / "run"
    train_tiny(run_dir)
    return run_dir


# -- ways to damage a copy of the run (each returns nothing; the copy lives in the case's tmp) ----------
def rewrite_manifest(run, change):
    """Change the manifest and re-seal it (valid hashes), so only the content is wrong."""
    path = run / "checkpoint" / ck.MANIFEST
    manifest = json.loads(path.read_text())
    change(manifest)
    manifest["manifest_sha256"] = ck.manifest_digest(manifest)
    path.write_text(json.dumps(manifest))


def flip_weights(run):
    w = run / "checkpoint" / ck.WEIGHTS
    data = bytearray(w.read_bytes())
    data[len(data) // 2] ^= 1
    w.write_bytes(bytes(data))


def bad_arch(run):
    rewrite_manifest(run, lambda m: m["arch"]["blocks"]["dense"].update(units=-3))


def no_arch(run):
    rewrite_manifest(run, lambda m: m.pop("arch"))


def drop_tensor(run):
    ckpt = ck.load_checkpoint(run)
    tensors = {k: v for k, v in ckpt.tensors.items() if k != "head/bias"}
    manifest = {k: v for k, v in ckpt.manifest.items() if k not in ("tensors", "weights_sha256", "manifest_sha256")}
    ck.save_checkpoint(run / "checkpoint", tensors, manifest)


def unfinished(run):
    shutil.rmtree(run / "checkpoint")


def standalone_checkpoint(run):
    shutil.move(str(run / "checkpoint"), str(run.parent / "ckpt"))


# -- inputs made next to the run ------------------------------------------------------------------------
def write_npz(name, **arrays):
    def make(tmp):
        np.savez(tmp / name, **arrays)

    return make


def write_bytes(name, data):
    def make(tmp):
        (tmp / name).write_bytes(data)

    return make


def make_dir(name):
    def make(tmp):
        (tmp / name).mkdir()

    return make


def data_npz(shape, classes, num_classes):
    def make(tmp):
        rng = np.random.default_rng(0)
        np.savez(
            tmp / "data.npz",
            x_train=rng.integers(0, 256, (40, *shape), dtype=np.uint8),
            y_train=rng.integers(0, classes, 40),
            x_test=rng.integers(0, 256, (20, *shape), dtype=np.uint8),
            y_test=rng.integers(0, classes, 20),
        )

    return make


NPZ_DATA = ["data=npz", "data.path={tmp}/data.npz"]
IMG = np.zeros((2, 28, 28, 1), np.uint8)
CASES = {
    # evaluate
    "eval: no such run": ("evaluate", ["{tmp}/nope"], None, None, ["does not exist"]),
    "eval: run never finished": ("evaluate", ["{run}"], unfinished, None, ["no final checkpoint", "resume=true"]),
    "eval: weights bit flip": ("evaluate", ["{run}"], flip_weights, None, ["checksum mismatch", "weights.safetensors"]),
    "eval: arch no longer validates": ("evaluate", ["{run}"], bad_arch, None, ["no longer validates", "units"]),
    "eval: manifest without arch": ("evaluate", ["{run}"], no_arch, None, ["does not describe the model"]),
    "eval: a variable missing": (
        "evaluate",
        ["{run}"],
        drop_tensor,
        None,
        ["do not match the architecture", "head/bias"],
    ),
    "eval: model override": ("evaluate", ["{run}", "model=cnn"], None, None, ["data overrides only", "model=cnn"]),
    "eval: unknown data key": ("evaluate", ["{run}", "data=mnist_subset", "+data.bogus=1"], None, None, ["bogus"]),
    "eval: data of another shape": (
        "evaluate",
        ["{run}", *NPZ_DATA, "data.input_shape=[16,12,3]", "data.num_classes=10"],
        None,
        data_npz((16, 12, 3), 10, 10),
        ["16x12x3", "28x28x1"],
    ),
    "eval: data of another class count": (
        "evaluate",
        ["{run}", *NPZ_DATA, "data.input_shape=[28,28,1]", "data.num_classes=4"],
        None,
        data_npz((28, 28, 1), 4, 4),
        ["4 classes", "model 10"],
    ),
    "eval: --out not empty": (
        "evaluate",
        ["{run}", "--out", "{tmp}/full"],
        None,
        lambda tmp: (tmp / "full").mkdir() or (tmp / "full" / "x").write_text("keep"),
        ["already exists"],
    ),
    "eval: --out parent missing": ("evaluate", ["{run}", "--out", "{tmp}/a/b"], None, None, ["does not exist"]),
    "eval: checkpoint outside a run dir": (
        "evaluate",
        ["{tmp}/ckpt", "data=mnist_subset"],
        standalone_checkpoint,
        None,
        ["not in a run dir", "--out"],
    ),
    "eval: no data config": (
        "evaluate",
        ["{tmp}/ckpt", "--out", "{tmp}/r"],
        standalone_checkpoint,
        None,
        ["no data config", "data=mnist_subset"],
    ),
    "eval: batch size 0": ("evaluate", ["{run}", "--batch-size", "0"], None, None, ["--batch-size"]),
    "eval: no val split": (
        "evaluate",
        ["{run}", "data=mnist_subset", "data.val_fraction=0", "--split", "val"],
        None,
        None,
        ["no val split"],
    ),
    # predict
    "predict: no --input": ("predict", ["{run}"], None, None, ["--input"]),
    "predict: input missing": ("predict", ["{run}", "--input", "{tmp}/x.npz"], None, None, ["does not exist"]),
    "predict: input is a FIFO": (
        "predict",
        ["{run}", "--input", "{tmp}/f.npz"],
        None,
        lambda tmp: __import__("os").mkfifo(tmp / "f.npz"),
        ["not a regular file"],
    ),
    "predict: unsupported type": (
        "predict",
        ["{run}", "--input", "{tmp}/x.txt"],
        None,
        write_bytes("x.txt", b"1"),
        ["unsupported input type", ".txt"],
    ),
    "predict: npz without x": (
        "predict",
        ["{run}", "--input", "{tmp}/a.npz"],
        None,
        write_npz("a.npz", images=IMG),
        ["no 'x' array", "images"],
    ),
    "predict: npz object array": (
        "predict",
        ["{run}", "--input", "{tmp}/a.npz"],
        None,
        write_npz("a.npz", x=np.array([{"a": 1}], dtype=object)),
        ["not a readable .npz"],
    ),
    "predict: npz of another shape": (
        "predict",
        ["{run}", "--input", "{tmp}/a.npz"],
        None,
        write_npz("a.npz", x=np.zeros((2, 16, 16), np.uint8)),
        ["16x16", "28x28x1"],
    ),
    "predict: floats out of range": (
        "predict",
        ["{run}", "--input", "{tmp}/a.npz"],
        None,
        write_npz("a.npz", x=np.full((2, 28, 28, 1), 200.0, np.float32)),
        ["outside [0, 1]", "divide them by 255"],
    ),
    "predict: int64 images": (
        "predict",
        ["{run}", "--input", "{tmp}/a.npz"],
        None,
        write_npz("a.npz", x=np.zeros((2, 28, 28, 1), np.int64)),
        ["dtype int64"],
    ),
    "predict: corrupt png": (
        "predict",
        ["{run}", "--input", "{tmp}/a.png"],
        None,
        write_bytes("a.png", b"\x89PNG\r\n\x1a\nnot really"),
        ["not a readable image"],
    ),
    "predict: empty folder": (
        "predict",
        ["{run}", "--input", "{tmp}/empty"],
        None,
        make_dir("empty"),
        ["holds no image"],
    ),
    "predict: top-k 0": (
        "predict",
        ["{run}", "--input", "{tmp}/a.npz", "--top-k", "0"],
        None,
        write_npz("a.npz", x=IMG),
        ["top-k", "1..10"],
    ),
    "predict: top-k 11": (
        "predict",
        ["{run}", "--input", "{tmp}/a.npz", "--top-k", "11"],
        None,
        write_npz("a.npz", x=IMG),
        ["top-k"],
    ),
    "predict: --out .txt": (
        "predict",
        ["{run}", "--input", "{tmp}/a.npz", "--out", "{tmp}/p.txt"],
        None,
        write_npz("a.npz", x=IMG),
        [".csv or .json"],
    ),
    "predict: --out exists": (
        "predict",
        ["{run}", "--input", "{tmp}/a.npz", "--out", "{tmp}/p.csv"],
        None,
        lambda tmp: write_npz("a.npz", x=IMG)(tmp) or (tmp / "p.csv").write_text("keep"),
        ["already exists", "--force"],
    ),
    "predict: --out is a folder": (
        "predict",
        ["{run}", "--input", "{tmp}/a.npz", "--out", "{tmp}/d.csv", "--force"],
        None,
        lambda tmp: write_npz("a.npz", x=IMG)(tmp) or (tmp / "d.csv").mkdir(),
        ["is a folder"],
    ),
    "predict: damaged run": (
        "predict",
        ["{run}", "--input", "{tmp}/a.npz"],
        flip_weights,
        write_npz("a.npz", x=IMG),
        ["checksum mismatch"],
    ),
    # export
    "export: unknown format": ("export", ["{run}", "--format", "pickle"], None, None, ["invalid choice", "pickle"]),
    "export: no format": ("export", ["{run}"], None, None, ["--format"]),
    "export: wrong suffix": (
        "export",
        ["{run}", "--format", "keras", "--out", "{tmp}/m.h5"],
        None,
        None,
        ["must end .keras"],
    ),
    "export: saved_model as a file": (
        "export",
        ["{run}", "--format", "saved_model", "--out", "{tmp}/m.zip"],
        None,
        None,
        ["is a folder"],
    ),
    "export: --out exists": (
        "export",
        ["{run}", "--format", "litert", "--out", "{tmp}/m.tflite"],
        None,
        write_bytes("m.tflite", b"keep"),
        ["already exists", "--force"],
    ),
    "export: run never finished": ("export", ["{run}", "--format", "keras"], unfinished, None, ["no final checkpoint"]),
    "export: arch no longer validates": (
        "export",
        ["{run}", "--format", "keras", "--out", "{tmp}/m.keras"],
        bad_arch,
        None,
        ["no longer validates"],
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_clear_error_and_changes_nothing(name, source_run, tmp_path, capsys):
    module, argv, damage, prepare, needles = CASES[name]
    run = tmp_path / "run"
    shutil.copytree(source_run, run)
    if damage:
        damage(run)
    if prepare:
        prepare(tmp_path)
    before = snapshot(tmp_path)
    rc = MODULES[module].main([a.format(run=run, tmp=tmp_path) for a in argv])
    out, err = capsys.readouterr()
    assert rc == 2, (rc, out, err)
    assert err.startswith("error: ") and "fix:" in err and "Traceback" not in err + out, err
    for needle in needles:
        assert needle in err, (needle, err)
    assert snapshot(tmp_path) == before


def test_onnx_without_the_extra_is_refused_before_any_work(source_run, tmp_path, capsys):
    import importlib.util

    if importlib.util.find_spec("tf2onnx") is not None:
        pytest.skip("the onnx extra is installed")
    before = snapshot(source_run)
    assert export.main([str(source_run), "--format", "onnx"]) == 2
    assert "'onnx' extra" in capsys.readouterr().err
    assert snapshot(source_run) == before


def test_load_run_raises_checkpoint_errors(source_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(source_run, run)
    bad_arch(run)
    with pytest.raises(CheckpointError, match="no longer validates"):
        load_run(run)
    unfinished(run)
    with pytest.raises(CheckpointError, match="no final checkpoint"):
        load_run(run)
