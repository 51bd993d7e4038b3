"""Bad-input catalogue: configs, CLI overrides, data files, checkpoints and init_from paths.

Each case must raise a dynarch error (no raw TensorFlow/Python exception) whose message names the thing
and carries a `fix:` line, and must leave every file outside the run dir exactly as it was.
"""

import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, TINY, run_config
from datagen import make_idx_folder
from helpers import Case, make_source, snapshot

from dynarch.errors import DynarchError


def config_case(*overrides):
    return Case(lambda tmp, extra: run_config([*overrides, *extra]))


def compose_case(*overrides):
    from conftest import compose_cfg

    from dynarch.compose import resolve_config

    return Case(lambda tmp, extra: resolve_config(compose_cfg(list(overrides)), "base"))


def train_case(*overrides, prepare=None):
    def act(tmp, extra):
        from dynarch.train import train

        return train(
            run_config([*TINY, "trainer.epochs=1", *overrides, *extra]), tmp / "run", resume="resume=true" in overrides
        )

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
    "unknown block type": (
        config_case("model.blocks.dense.type=dens"),
        ["model.blocks.dense.type", "Did you mean 'dense'"],
    ),
    "misspelt block key": (
        config_case("+model.blocks.dense.unit=3"),
        ["model.blocks.dense.unit", "Did you mean 'units'"],
    ),
    "non-optional disabled": (
        config_case("+model.blocks.head.enabled=false"),
        ["model.blocks.head.enabled", "not optional"],
    ),
    "conv after flatten": (
        config_case("+model.blocks.dense.filters=3", "model.blocks.dense.type=conv2d", "~model.blocks.dense.units"),
        ["conv2d needs a (height, width, channels) input"],
    ),
    "head units != classes": (config_case("model.blocks.head.units=7"), ["outputs shape (7,)", "10 classes"]),
    "units <= 0": (config_case("model.blocks.dense.units=0"), ["model.blocks.dense.units", "an integer > 0"]),
    "dropout rate 1": (config_case("model.blocks.dropout.rate=1.0"), ["model.blocks.dropout.rate", "[0, 1)"]),
    "_target_ outside allowlist": (
        config_case("+model.blocks.x={_target_: builtins.eval}"),
        ["model.blocks.x._target_", "only name a Keras layer class"],
    ),
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
    "init_from empty": (config_case("init_from=''"), ["init_from", "empty path"]),
    "lineage.parent blank": (config_case("lineage.parent=' '"), ["lineage.parent", "empty path"]),
    "bad precision": (config_case("trainer.precision=half"), ["trainer.precision"]),
    "unresolvable interpolation": (compose_case("model.blocks.dense.units=${nope}"), ["cannot resolve"]),
    "idx without path": (compose_case("data=idx"), ["data.path"]),
    "idx folder missing": (train_case("data=idx", "data.path=/nonexistent/idx"), ["no such folder"]),
    "idx truncated": (train_case(prepare=idx(truncate)), ["train-images-idx3-ubyte", "truncated"]),
    "idx swapped files": (train_case(prepare=idx(swap)), ["t10k-images-idx3-ubyte", "expected rank"]),
    "offline without fallback": (
        train_case(
            "data=mnist",
            "data.limit_train=100",
            "data.probe_host=127.0.0.1",
            "data.probe_port=1",
            "data.offline_fallback=false",
            prepare=lambda tmp: [f"data.data_dir={tmp}/tfds"],
        ),
        ["not prepared", "unreachable"],
    ),
    "init_from missing": (train_case("init_from=/nonexistent/run"), ["/nonexistent/run", "does not exist"]),
    "init_from not a run": (
        train_case(prepare=lambda tmp: [f"init_from={ROOT / 'conf'}"]),
        ["holds no dynarch checkpoint"],
    ),
    "init_from flipped byte": (train_case(prepare=source(flip)), ["weights.safetensors", "checksum mismatch"]),
    "init_from foreign safetensors": (train_case(prepare=source(foreign)), ["holds no dynarch checkpoint"]),
    "init_from garbage manifest": (
        train_case(prepare=source(lambda c: (c / "manifest.json").write_text("]["))),
        ["manifest.json", "not valid JSON"],
    ),
    "strict migration": (
        train_case("+arch=no_dense", "migrate.strict=true", prepare=source()),
        ["migrate.strict", "dense/kernel: dropped"],
    ),
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
    outside = lambda: {
        p: h for p, h in {**snapshot(tmp_path), **snapshot(ROOT / "conf")}.items() if run_dir not in p.parents
    }
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


@pytest.mark.parametrize(
    "args,needle",
    [
        (["data=idx", "data.path=/nonexistent/idx"], "no such folder"),
        (["init_from=/nonexistent/run"], "does not exist"),
        (["model.blocks.dense.units=0"], "model.blocks.dense.units"),
    ],
)
def test_cli_errors_have_no_traceback(tmp_path, args, needle):
    proc = subprocess.run(
        [sys.executable, "-m", "dynarch", *TINY, *args, f"hydra.run.dir={tmp_path}/run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert needle in proc.stderr and "fix:" in proc.stderr and "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "run" / "checkpoint").exists()


# Command lines refused before Hydra runs (pre-flight): config folders whose files would reach hydra.* (callbacks
# run code, log handlers open files), non-regular YAML files that would hang the read, and the errors Hydra itself
# reports without a fix: line (unparsable overrides, missing config options, a missing primary config or folder).
CALLBACK = "hydra:\n  callbacks:\n    x:\n      _target_: numpy.savetxt\n      fname: {out}\n      X: [1]\n"


def conf_file(rel, text):
    def prepare(tmp):
        path = tmp / "cd" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text.format(out=tmp / "PWNED"))

    return prepare


def special_file(rel, make):
    def prepare(tmp):
        (tmp / "cd" / "model").mkdir(parents=True)
        make(tmp / "cd" / rel)

    return prepare


CD = ["--config-dir", "{tmp}/cd"]
PREFLIGHT_CASES = {  # name: (argv, prepare, needles)
    "model file sets hydra (global)": (
        [*CD, "model=evil"],
        conf_file("model/evil.yaml", "# @package _global_\nmodel: {{name: mlp}}\n" + CALLBACK),
        ["model/evil.yaml", "hydra"],
    ),
    "trainer file sets hydra": (
        [*CD, "trainer=evil"],
        conf_file("trainer/evil.yaml", "# @package _global_\n" + CALLBACK),
        ["trainer/evil.yaml", "hydra"],
    ),
    "defaults entry packaged under hydra": (
        [*CD, "optimizer=evil"],
        conf_file("optimizer/evil.yaml", "defaults:\n  - /model/cb@_global_.hydra\nname: adam\n"),
        ["defaults entry"],
    ),
    "primary config sets hydra": (
        ["--config-name", "evil", *CD],
        conf_file("evil.yaml", "defaults:\n  - model: mlp\n  - data: mnist\n  - _self_\n" + CALLBACK),
        ["evil.yaml", "hydra"],
    ),
    "variant under @hydra on the command line": (
        [*CD, "+arch@hydra=mlp/evil"],
        conf_file("arch/mlp/evil.yaml", "callbacks: {{}}\n"),
        ["+arch@hydra", "hydra"],
    ),
    "variant under @_global_ still checked": (
        [*CD, "+arch@_global_=mlp/evil"],
        conf_file("arch/mlp/evil.yaml", "# @package _global_\n" + CALLBACK),
        ["arch/evil", "may only patch"],
    ),
    "yaml symlink to /dev/zero": (
        CD,
        special_file("model/z.yaml", lambda p: p.symlink_to("/dev/zero")),
        ["z.yaml", "not a regular file"],
    ),
    "yaml FIFO": (CD, special_file("model/f.yaml", lambda p: os.mkfifo(p)), ["f.yaml", "not a regular file"]),
    "folder named x.yaml is skipped, missing option": (
        [*CD, "model=x"],
        special_file("model/x.yaml", Path.mkdir),
        ["model=x", "no model config named 'x'"],
    ),
    "config dir missing": (["--config-dir", "{tmp}/nope"], None, ["nope", "does not exist"]),
    "primary config missing": (["--config-name", "nope"], None, ["--config-name", "'nope'"]),
    "data option typo": (["data=mnsit"], None, ["data=mnsit", "Did you mean 'mnist'"]),
    "swept model typo": (["-m", "model=mlp,cnnn"], None, ["model=cnnn", "Did you mean 'cnn'"]),
    "non-ASCII key": (["+model.blocks.dense.ünits=3"], None, ["cannot parse the override", "quote"]),
}


def regular_files(root):
    """Like snapshot, but links and special files (FIFOs, /dev/zero) are recorded, never read."""
    return {
        p: (hashlib.sha256(p.read_bytes()).hexdigest() if stat.S_ISREG(p.lstat().st_mode) else str(p.lstat().st_mode))
        for p in sorted(root.rglob("*"))
    }


@pytest.mark.parametrize("name", list(PREFLIGHT_CASES))
def test_preflight_refuses_before_hydra_acts(name, tmp_path):
    argv, prepare, needles = PREFLIGHT_CASES[name]
    if prepare:
        prepare(tmp_path)
    before = regular_files(tmp_path)
    args = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    proc = subprocess.run(
        [sys.executable, "-m", "dynarch", *args, f"hydra.run.dir={tmp_path}/run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    for needle in needles:
        assert needle in proc.stderr, proc.stderr
    assert "fix:" in proc.stderr and "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "run").exists()
    assert regular_files(tmp_path) == before


def test_an_error_hydra_reports_itself_still_ends_with_a_fix_line(tmp_path):
    """A type clash found while Hydra merges overrides: Hydra's message, then dynarch's fix line."""
    proc = subprocess.run(
        [sys.executable, "-m", "dynarch", "model.blocks=[]", f"hydra.run.dir={tmp_path}/run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "model.blocks" in proc.stderr and "fix:" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_a_signal_outside_the_loop_is_recorded_even_if_its_exception_is_swallowed():
    """Ctrl-C during start-up raises at once; if that raise lands in a GC callback Python drops it, so the
    handler records the signal first and the training loop stops at its next step."""
    import signal as sig

    from dynarch.train import Interrupted, StopState, _signal_handlers

    stop = StopState()
    previous = _signal_handlers(stop, [False])
    try:
        handler = sig.getsignal(sig.SIGINT)
        with pytest.raises(Interrupted):
            handler(sig.SIGINT, None)
        assert stop.signal == sig.SIGINT
    finally:
        for s, h in previous.items():
            sig.signal(s, h)


def test_ctrl_c_while_hydra_starts_is_one_line_and_exit_130(tmp_path, monkeypatch, capsys):
    """Ctrl-C while Hydra starts (plugins, composition), before any job ran. In-process and deterministic: a
    real SIGINT sent "while Hydra starts" would land at a point that depends on timing."""
    import dynarch.__main__ as entry

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(entry, "hydra_main", interrupted)
    monkeypatch.setattr(sys, "argv", ["dynarch", *TINY, f"hydra.run.dir={tmp_path}/run"])
    with pytest.raises(SystemExit) as exit_:
        entry.main()
    err = capsys.readouterr().err
    assert exit_.value.code == 130 and "interrupted during start-up" in err and "fix:" in err
    assert "Traceback" not in err
