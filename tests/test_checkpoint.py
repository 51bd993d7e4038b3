"""Checkpoints: round trip by variable path, corruption detected with the file named, atomic saves."""

import json

import numpy as np
import pytest

import dynarch.checkpoint as ck
from dynarch.errors import CheckpointError

TENSORS = {"dense/kernel": np.arange(12, dtype=np.float32).reshape(3, 4), "head/bias": np.ones(4, np.float32)}


def saved(tmp_path):
    return ck.save_checkpoint(tmp_path / "run" / "checkpoint", TENSORS, {"variant": "base", "num_classes": 10})


def test_round_trip_from_run_dir_folder_or_file(tmp_path):
    folder = saved(tmp_path)
    for path in (tmp_path / "run", folder, folder / ck.WEIGHTS):
        c = ck.load_checkpoint(path)
        assert c.path == folder and set(c.tensors) == set(TENSORS)
        assert np.array_equal(c.tensors["dense/kernel"], TENSORS["dense/kernel"])
        assert c.manifest["format"] == ck.FORMAT and c.manifest["tensors"]["head/bias"]["shape"] == [4]


@pytest.mark.parametrize("damage", ["flip", "truncate", "zero", "empty"])
def test_corrupted_weights_are_detected_and_named(tmp_path, damage):
    folder = saved(tmp_path)
    path = folder / ck.WEIGHTS
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[-3] ^= 0x40
    elif damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "zero":
        data = bytearray(len(data))
    else:
        data = bytearray()
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"weights.safetensors: checksum mismatch"):
        ck.load_checkpoint(folder)


def test_bad_manifest_and_foreign_paths(tmp_path):
    folder = saved(tmp_path)
    (folder / ck.MANIFEST).write_text("{not json")
    with pytest.raises(CheckpointError, match=r"manifest.json: the manifest is not valid JSON"):
        ck.load_checkpoint(folder)
    (folder / ck.MANIFEST).write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(CheckpointError, match=r"not a dynarch checkpoint manifest"):
        ck.load_checkpoint(folder)
    with pytest.raises(CheckpointError, match=r"nowhere: the path does not exist"):
        ck.load_checkpoint(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"holds no dynarch checkpoint"):
        ck.load_checkpoint(tmp_path / "empty")


def test_interrupted_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    folder = saved(tmp_path)
    before = (folder / ck.WEIGHTS).read_bytes()
    real = ck._write_file

    def disk_full(path, data):
        if path.name == ck.MANIFEST:
            raise OSError(28, "No space left on device")
        real(path, data)

    monkeypatch.setattr(ck, "_write_file", disk_full)
    with pytest.raises(
        CheckpointError,
        match=r"could not write the checkpoint \(No space left on device\)(?s:.*)previous checkpoint is kept",
    ):
        ck.save_checkpoint(folder, {"x": np.zeros(3, np.float32)}, {})
    assert (folder / ck.WEIGHTS).read_bytes() == before
    assert sorted(p.name for p in folder.parent.iterdir()) == ["checkpoint"]  # no temp left behind
    ck.load_checkpoint(folder)


def test_keras_export_round_trips_in_safe_mode_and_refuses_code(tmp_path):
    import keras
    from conftest import run_config

    from dynarch.build import build_model

    spec = run_config(["model=cnn", "+arch=no_conv1"]).arch
    model = build_model(spec)
    path = ck.export_keras(model, tmp_path / "model.keras")
    loaded = ck.load_keras(path)
    x = np.random.default_rng(0).random((4, 28, 28, 1)).astype("float32")
    assert np.allclose(loaded(x), model(x)) and loaded.get_layer("stage1").__class__.__name__ == "Identity"
    inp = keras.Input((3,))
    evil = keras.Model(inp, keras.layers.Lambda(lambda t: t * 2)(inp))
    evil.save(tmp_path / "evil.keras")
    with pytest.raises(CheckpointError, match="evil.keras: refused or unreadable"):
        ck.load_keras(tmp_path / "evil.keras")


def test_manifest_is_covered_by_its_own_hash(tmp_path):
    folder = saved(tmp_path)
    manifest = json.loads((folder / ck.MANIFEST).read_text())
    assert manifest["format"] == ck.FORMAT and manifest["manifest_sha256"] == ck.manifest_digest(manifest)
    text = (folder / ck.MANIFEST).read_bytes()
    at = text.index(b'"num_classes": 10') + len(b'"num_classes": 1')
    (folder / ck.MANIFEST).write_bytes(text[:at] + bytes([text[at] ^ 0x01]) + text[at + 1 :])  # 10 -> 11
    with pytest.raises(CheckpointError, match=r"manifest.json: checksum mismatch(?s:.*)fix:"):
        ck.load_checkpoint(folder)


def test_scalars_and_non_json_values_round_trip(tmp_path):
    folder = ck.save_checkpoint(
        tmp_path / "c",
        {"step": np.int64(7), "w": np.ones((2, 2), np.float16)},
        {"path": tmp_path, "metrics": {"loss": float("nan")}},
    )
    c = ck.load_checkpoint(folder)
    assert int(c.tensors["step"].reshape(())) == 7 and c.manifest["path"] == str(tmp_path)


def test_check_finite_names_the_variable(tmp_path):
    folder = ck.save_checkpoint(
        tmp_path / "c", {"a": np.ones(3, np.float32), "b": np.array([1, np.inf], np.float32)}, {}
    )
    with pytest.raises(CheckpointError, match=r"variable 'b' holds non-finite values(?s:.*)0 NaN and 1 Inf"):
        ck.check_finite(ck.load_checkpoint(folder))
