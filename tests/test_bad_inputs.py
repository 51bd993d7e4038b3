"""Bad-input catalogue: configs, CLI overrides, data files, checkpoints and init_from paths.

Each case must raise a dynarch error (no raw TensorFlow/Python exception) whose message names the thing
and carries a `fix:` line, and must leave every file outside the run dir exactly as it was.
"""
import hashlib
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, TINY, run_config
from dynarch.errors import DynarchError
from datagen import make_idx_folder
from test_migrate import make_source


def snapshot(root):
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


class Case:
    """prepare(tmp) -> extra overrides (files made outside the run dir); then act(tmp, extra) must fail."""

    def __init__(self, act, prepare=None):
        self.act, self.prepare = act, prepare or (lambda tmp: [])


def config_case(*overrides):
    return Case(lambda tmp, extra: run_config([*overrides, *extra]))


def compose_case(*overrides):
    from conftest import compose_cfg
    from dynarch.compose import resolve_config
    return Case(lambda tmp, extra: resolve_config(compose_cfg(list(overrides)), "base"))


def train_case(*overrides, prepare=None):
    def act(tmp, extra):
        from dynarch.train import train
        return train(run_config([*TINY, "trainer.epochs=1", *overrides, *extra]), tmp / "run",
                     resume="resume=true" in overrides)
    return Case(act, prepare)


def idx(damage):
    def prepare(tmp):
        folder = make_idx_folder(tmp / "idx", gz=False)
        damage(folder)
        return ["data=idx", f"data.path={folder}"]
    return prepare


def truncate(folder):
    p = folder / "train-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:1000])


def swap(folder):
    (folder / "t10k-images-idx3-ubyte").write_bytes((folder / "t10k-labels-idx1-ubyte").read_bytes())


def source(damage=None, **kw):
    def prepare(tmp):
        src, _ = make_source(tmp, **kw)
        if damage:
            damage(src / "checkpoint")
        return [f"init_from={src}"]
    return prepare


def flip(ckpt):
    w = ckpt / "weights.safetensors"
    data = bytearray(w.read_bytes())
    data[len(data) // 2] ^= 1
    w.write_bytes(bytes(data))


def foreign(ckpt):
    from safetensors.numpy import save_file
    (ckpt / "manifest.json").unlink()
    save_file({"w": np.zeros(3, np.float32)}, str(ckpt / "weights.safetensors"))


def stateful_run(tmp):
    """A finished run in tmp/run: the run dir the failing command points at."""
    from dynarch.train import train
    train(run_config([*TINY, "trainer.epochs=1"]), tmp / "run")
    return []


CASES = {  # name: (action, substrings of the message)
    "unknown block type": (config_case("model.blocks.dense.type=dens"), ["model.blocks.dense.type", "Did you mean 'dense'"]),
    "misspelt block key": (config_case("+model.blocks.dense.unit=3"), ["model.blocks.dense.unit", "Did you mean 'units'"]),
    "non-optional disabled": (config_case("+model.blocks.head.enabled=false"), ["model.blocks.head.enabled", "not optional"]),
    "conv after flatten": (config_case("+model.blocks.dense.filters=3", "model.blocks.dense.type=conv2d",
                                       "~model.blocks.dense.units"), ["conv2d needs a (height, width, channels) input"]),
    "head units != classes": (config_case("model.blocks.head.units=7"), ["outputs shape (7,)", "10 classes"]),
    "units <= 0": (config_case("model.blocks.dense.units=0"), ["model.blocks.dense.units", "an integer > 0"]),
    "dropout rate 1": (config_case("model.blocks.dropout.rate=1.0"), ["model.blocks.dropout.rate", "[0, 1)"]),
    "_target_ outside allowlist": (config_case("+model.blocks.x={_target_: builtins.eval}"),
                                   ["model.blocks.x._target_", "only name a Keras layer class"]),
    "unknown top-level key": (config_case("+optimiser.lr=3"), ["optimiser", "Did you mean 'optimizer'"]),
    "epochs 0": (config_case("trainer.epochs=0"), ["trainer.epochs"]),
    "unknown optimizer": (config_case("optimizer.name=adamx"), ["optimizer.name"]),
    "val_fraction 1": (config_case("data.val_fraction=1"), ["data.val_fraction"]),
    "variant for another model": (config_case("model=cnn", "+arch=mlp/no_dense"), ["made for model 'mlp', not 'cnn'"]),
    "resume not a bool": (config_case("resume=maybe"), ["resume", "true or false"]),
    "lineage and init_from": (config_case("lineage.parent=a", "init_from=b"), ["both lineage.parent and init_from"]),
    "lineage.parent not a path": (config_case("lineage.parent=5"), ["lineage.parent", "str"]),
    "lineage key misspelt": (config_case("+lineage.parnt=x"), ["lineage.parnt", "Did you mean 'parent'"]),
    "migrate not a mapping": (config_case("migrate=3"), ["migrate", "must be a mapping"]),
    "init_from not a path": (config_case("init_from=7"), ["init_from", "must be a path"]),
    "bad precision": (config_case("trainer.precision=half"), ["trainer.precision"]),
    "unresolvable interpolation": (compose_case("model.blocks.dense.units=${nope}"), ["cannot resolve"]),
    "idx without path": (compose_case("data=idx"), ["data.path"]),
    "idx folder missing": (train_case("data=idx", "data.path=/nonexistent/idx"), ["no such folder"]),
    "idx truncated": (train_case(prepare=idx(truncate)), ["train-images-idx3-ubyte", "truncated"]),
    "idx swapped files": (train_case(prepare=idx(swap)), ["t10k-images-idx3-ubyte", "expected rank"]),
    "offline without fallback": (train_case("data=mnist", "data.limit_train=100", "data.probe_host=127.0.0.1",
                                            "data.probe_port=1", "data.offline_fallback=false",
                                            prepare=lambda tmp: [f"data.data_dir={tmp}/tfds"]),
                                 ["not prepared", "unreachable"]),
    "init_from missing": (train_case("init_from=/nonexistent/run"), ["/nonexistent/run", "does not exist"]),
    "init_from not a run": (train_case(prepare=lambda tmp: [f"init_from={ROOT / 'conf'}"]),
                            ["holds no dynarch checkpoint"]),
    "init_from flipped byte": (train_case(prepare=source(flip)), ["weights.safetensors", "checksum mismatch"]),
    "init_from foreign safetensors": (train_case(prepare=source(foreign)), ["holds no dynarch checkpoint"]),
    "init_from garbage manifest": (train_case(prepare=source(lambda c: (c / "manifest.json").write_text("]["))),
                                   ["manifest.json", "not valid JSON"]),
    "strict migration": (train_case("+arch=no_dense", "migrate.strict=true", prepare=source()),
                         ["migrate.strict", "dense/kernel: dropped"]),
    "resume without state": (train_case("resume=true"), ["no usable train-state checkpoint"]),
    "resume other arch": (train_case("resume=true", "+arch=wide", prepare=stateful_run), ["resume refused", "arch"]),
    "fresh run over a run": (train_case(prepare=stateful_run), ["already holds a checkpointed run"]),
    "NaN loss": (train_case("optimizer=sgd", "optimizer.lr=1e12", "trainer.epochs=2"), ["loss became NaN"]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_gives_a_clear_error_and_touches_nothing_outside_the_run_dir(name, tmp_path):
    case, needles = CASES[name]
    extra = case.prepare(tmp_path)
    run_dir = tmp_path / "run"
    outside = lambda: {p: h for p, h in {**snapshot(tmp_path), **snapshot(ROOT / "conf")}.items()
                       if run_dir not in p.parents}
    before = outside()
    with pytest.raises(DynarchError) as err:
        case.act(tmp_path, extra)
    message = str(err.value)
    for needle in needles:
        assert needle in message, message
    assert "fix:" in message and "Traceback" not in message
    assert outside() == before


def test_full_disk_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import dynarch.checkpoint as ck
    from dynarch.train import train
    out = tmp_path / "run"
    train(run_config([*TINY, "trainer.epochs=1"]), out)
    before = snapshot(out / "checkpoint")
    real = ck._write_file

    def full(path, data):
        real(path, data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ck, "_write_file", full)
    with pytest.raises(DynarchError, match="No space left on device"):
        ck.save_checkpoint(out / "checkpoint", {"x": np.ones(1000, np.float32)}, {})
    assert snapshot(out / "checkpoint") == before
    assert not [p for p in out.iterdir() if p.name.startswith(".checkpoint")]


@pytest.mark.parametrize("args,needle", [
    (["data=idx", "data.path=/nonexistent/idx"], "no such folder"),
    (["init_from=/nonexistent/run"], "does not exist"),
    (["model.blocks.dense.units=0"], "model.blocks.dense.units"),
])
def test_cli_errors_have_no_traceback(tmp_path, args, needle):
    proc = subprocess.run([sys.executable, "-m", "dynarch", *TINY, *args, f"hydra.run.dir={tmp_path}/run"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert needle in proc.stderr and "fix:" in proc.stderr and "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "run" / "checkpoint").exists()


def test_catalogue_is_big_enough():
    assert len(CASES) + 1 >= 25
