"""Bad-input catalogue, checkpoints and the migrate CLI: crafted checkpoints with valid hashes but malformed
manifests or tensors, tampering, non-finite weights, and every bad argument to `python -m dynarch.migrate`.

Each case must raise a dynarch error (never a raw Python exception) whose message names the file or key and
carries a `fix:` line, and must leave every file outside the run dir exactly as it was. Most cases need no
TensorFlow: they fail in `load_checkpoint` or `check_source_before_build`.
"""

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, run_config

import dynarch.checkpoint as ck
from dynarch.errors import DynarchError
from dynarch.migrate import check_source_before_build

GOOD = {
    "dense/kernel": np.full((784, 128), 0.01, np.float32),
    "dense/bias": np.zeros(128, np.float32),
    "head/kernel": np.full((128, 10), 0.01, np.float32),
    "head/bias": np.zeros(10, np.float32),
}
META = {"model": "mlp", "variant": "base", "num_classes": 10, "input_shape": [28, 28, 1], "arch": {"name": "mlp"}}


def snapshot(root):
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def write_source(tmp, tensors=None, meta=None):
    return ck.save_checkpoint(tmp / "src" / "checkpoint", tensors or GOOD, {**META, **(meta or {})})


def rehashed(mutate):
    """A checkpoint whose manifest was changed by `mutate` and re-hashed: only the schema checks can catch it."""

    def prepare(tmp):
        folder = write_source(tmp)
        manifest = json.loads((folder / ck.MANIFEST).read_text())
        mutate(manifest)
        manifest["manifest_sha256"] = ck.manifest_digest(manifest)
        (folder / ck.MANIFEST).write_text(json.dumps(manifest))
        return folder

    return prepare


def raw_manifest(text):
    def prepare(tmp):
        folder = write_source(tmp)
        (folder / ck.MANIFEST).write_bytes(text)
        return folder

    return prepare


def tensors(**changed):
    return lambda tmp: write_source(tmp, {**GOOD, **changed})


def tamper(tmp):
    folder = write_source(tmp)
    path = folder / ck.MANIFEST
    path.write_text(path.read_text().replace('"variant": "base"', '"variant": "bade"'))
    return folder


def setitem(key, value):
    return lambda m: m.__setitem__(key, value)


def load(tmp, folder):
    ck.load_checkpoint(folder)


def init_from(*overrides):
    """As the training entry does before the build: plan against the source, strict or not."""
    return lambda tmp, folder: check_source_before_build(run_config([f"init_from={folder}", *overrides]))


CASES = {  # name: (prepare(tmp) -> checkpoint folder, act(tmp, folder), substrings of the message)
    "manifest_bit_flip": (tamper, load, ["manifest.json", "checksum mismatch"]),
    "manifest_hash_missing": (rehashed(lambda m: m.pop("weights_sha256")), load, ["'weights_sha256' is missing"]),
    "tensors_is_a_list": (rehashed(setitem("tensors", [1, 2])), load, ["'tensors' is not a mapping"]),
    "shape_not_ints": (
        rehashed(lambda m: m["tensors"]["dense/bias"].__setitem__("shape", ["128"])),
        load,
        ["tensor 'dense/bias' is malformed"],
    ),
    "shape_negative": (
        rehashed(lambda m: m["tensors"]["dense/bias"].__setitem__("shape", [-1])),
        load,
        ["tensor 'dense/bias' is malformed"],
    ),
    "dtype_string": (
        rehashed(lambda m: m["tensors"]["dense/bias"].__setitem__("dtype", "str")),
        load,
        ["tensor 'dense/bias' is malformed"],
    ),
    "dtype_not_a_dtype": (
        rehashed(lambda m: m["tensors"]["dense/bias"].__setitem__("dtype", 7)),
        load,
        ["tensor 'dense/bias' is malformed"],
    ),
    "arch_not_a_mapping": (rehashed(setitem("arch", [1])), load, ["'arch' has the wrong type"]),
    "num_classes_a_string": (rehashed(setitem("num_classes", "10")), load, ["'num_classes' has the wrong type"]),
    "input_shape_bad": (rehashed(setitem("input_shape", [28, "x"])), load, ["'input_shape' has the wrong type"]),
    "manifest_a_list": (raw_manifest(b"[1, 2, 3]"), load, ["not a dynarch checkpoint manifest"]),
    "deep_nesting": (raw_manifest(b"[" * 100_000 + b"]" * 100_000), load, ["nests too deeply"]),
    "deep_nesting_unclosed": (raw_manifest(b'{"a": ' + b"[" * 100_000), load, ["nests too deeply"]),
    "manifest_shape_disagrees": (
        rehashed(lambda m: m["tensors"]["dense/bias"].__setitem__("shape", [64, 2])),
        load,
        ["dense/bias", "disagrees with the manifest"],
    ),
    "manifest_dtype_disagrees": (
        rehashed(lambda m: m["tensors"]["dense/bias"].__setitem__("dtype", "float64")),
        load,
        ["dense/bias", "disagrees with the manifest"],
    ),
    "complex_tensor": (
        tensors(**{"dense/bias": np.zeros(128, np.complex64)}),
        load,
        ["tensor 'dense/bias' is malformed"],
    ),
    "int8_kernel": (
        tensors(**{"dense/kernel": np.zeros((784, 128), np.int8)}),
        init_from(),
        ["weights.safetensors", "tensor 'dense/kernel' cannot initialize", "int8"],
    ),
    "rank3_bias": (
        tensors(**{"dense/bias": np.zeros((2, 4, 16), np.float32)}),
        init_from(),
        ["tensor 'dense/bias' cannot initialize", "rank 1"],
    ),
    "rank1_kernel": (
        tensors(**{"head/kernel": np.zeros(1280, np.float32)}),
        init_from(),
        ["tensor 'head/kernel' cannot initialize", "rank 2 or 4"],
    ),
    "scalar_kernel": (
        tensors(**{"head/kernel": np.float32(1.0)}),
        init_from(),
        ["tensor 'head/kernel' cannot initialize"],
    ),
    "nan_weights": (
        tensors(**{"dense/kernel": np.where(np.eye(784, 128) > 0, np.nan, 0.0).astype(np.float32)}),
        init_from(),
        ["dense/kernel", "non-finite", "pick another checkpoint"],
    ),
    "inf_bias": (
        tensors(**{"head/bias": np.full(10, np.inf, np.float32)}),
        init_from("+arch=deep"),
        ["head/bias", "non-finite"],
    ),
    "strict_refused_before_build": (
        lambda tmp: write_source(tmp),
        init_from("+arch=no_dense", "migrate.strict=true"),
        ["migrate.strict", "dense/kernel: dropped"],
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_checkpoint_gives_a_clear_error_and_touches_nothing(name, tmp_path):
    prepare, act, needles = CASES[name]
    folder = prepare(tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(DynarchError) as err:
        act(tmp_path, folder)
    message = str(err.value)
    for needle in needles:
        assert needle in message, message
    assert "fix:" in message and "Traceback" not in message
    assert snapshot(tmp_path) == before


def test_legacy_checkpoints_without_manifest_hash_still_load(tmp_path):
    folder = write_source(tmp_path)
    manifest = json.loads((folder / ck.MANIFEST).read_text())
    manifest.pop("manifest_sha256")
    manifest["format"] = "dynarch-checkpoint/1"
    (folder / ck.MANIFEST).write_text(json.dumps(manifest, indent=2))
    assert ck.load_checkpoint(folder).manifest["variant"] == "base"


def migrate_cli(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "dynarch.migrate", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def one_clear_error(proc, needle):
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-1500:]
    assert "Traceback" not in out and proc.stderr.startswith("error:") and needle in proc.stderr, out[-1500:]
    assert "fix:" in proc.stderr


@pytest.mark.parametrize(
    "args,needle",
    [
        (["{src}", "--to", "model=nope"], "no model config named 'nope'"),
        (["{src}", "--to", "model.blocks.dense.units=abc"], "model.blocks.dense.units"),
        (["{src}", "--to", "x=["], "Hydra cannot parse the override"),
        (["{src}", "--to", "+arch=nope"], "nope"),
        (["{tmp}/nowhere", "--to", "+arch=deep"], "does not exist"),
        ([], "the following arguments are required: source"),
        (["{src}", "--new-blocks", "zeros"], "invalid choice"),
        (["{src}", "--bogus"], "unrecognized arguments"),
        (["{src}", "--to", "+arch=no_dense", "--strict"], "migrate.strict"),
        (["{src}", "--to", "+arch=deep", "--out", "{tmp}/taken"], "non-empty folder that is not a dynarch checkpoint"),
        (["{src}", "--to", "+arch=deep", "--out", "{tmp}/afile"], "--out is not a folder"),
        (["{src}", "--to", "+arch=deep", "--out", "{src}/checkpoint"], "already holds a checkpoint"),
    ],
)
def test_migrate_cli_bad_arguments_give_one_error_and_touch_nothing(tmp_path, args, needle):
    src = write_source(tmp_path).parent
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    (tmp_path / "afile").write_text("mine")
    before = snapshot(tmp_path)
    proc = migrate_cli(*[a.format(src=src, tmp=tmp_path) for a in args])
    one_clear_error(proc, needle)
    assert snapshot(tmp_path) == before


def test_migrate_cli_force_replaces_only_an_existing_checkpoint(tmp_path):
    src = write_source(tmp_path).parent
    out = ck.save_checkpoint(tmp_path / "out", {"x": np.zeros(1, np.float32)}, {})
    (tmp_path / "sibling.txt").write_text("keep me")
    proc = migrate_cli(src, "--to", "+arch=deep", "--out", out, "--force")
    assert proc.returncode == 0, proc.stderr[-1500:]
    assert set(ck.load_checkpoint(out).tensors) == {*GOOD, "extra/kernel", "extra/bias"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "sibling.txt", "src"]
    assert (tmp_path / "sibling.txt").read_text() == "keep me"


def test_a_train_state_whose_phase_starts_after_its_epoch_is_refused(tmp_path):
    """A re-sealed state manifest with phase_start > epoch resumed and trained a silently wrong phase."""
    from types import SimpleNamespace

    from dynarch.resume import read_position

    ckpt = SimpleNamespace(
        path=tmp_path / "state" / "step-000000002",
        manifest={"epoch": 1, "batches_done": 0, "phase": 0, "phase_start": 50, "history": {}},
    )
    with pytest.raises(DynarchError) as err:
        read_position(ckpt)
    assert "phase_start" in str(err.value) and "fix:" in str(err.value)
