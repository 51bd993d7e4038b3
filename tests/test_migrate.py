"""Migration by name: report for grow / widen / shrink / class-count changes, function-preserving growth."""
import json
import subprocess
import sys

import keras
import numpy as np
import pytest

from conftest import ROOT, run_config
from dynarch.build import build_model
from dynarch.checkpoint import load_checkpoint, model_tensors, save_checkpoint
from dynarch.errors import CheckpointError
from dynarch.migrate import migrate_model


def make_source(tmp_path, overrides=(), name="src"):
    """A checkpoint of a built (untrained, biases perturbed) model: as a real run would leave it."""
    run = run_config(list(overrides))
    model = build_model(run.arch)
    rng = np.random.default_rng(1)
    for v in model.weights:
        if v.path.endswith("bias"):
            v.assign(rng.normal(0, 0.1, v.shape).astype("float32"))
    save_checkpoint(tmp_path / name / "checkpoint", model_tensors(model), {
        "model": run.arch.name, "variant": run.variant, "num_classes": run.arch.num_classes,
        "input_shape": list(run.arch.input_shape)})
    return tmp_path / name, model


def logits(model, x):
    """Pre-softmax outputs: penultimate features times the head's kernel, plus its bias."""
    head = model.get_layer("head")
    features = keras.Model(model.input, head.input)(x, training=False)
    return np.asarray(features) @ np.asarray(head.kernel) + np.asarray(head.bias)


def migrated(src_dir, overrides, **kw):
    run = run_config(list(overrides))
    model = build_model(run.arch)
    report = migrate_model(model, run.arch, src_dir, seed=0, target_variant=run.variant, **kw)
    return model, report


def actions(report):
    return {e.path: e.action for e in report.entries}


X = np.random.default_rng(0).random((16, 28, 28, 1)).astype("float32")


@pytest.mark.parametrize("source,target", [
    ([], ["+arch=deep"]),                             # grow: a new hidden block, identity-initialized
    ([], ["+arch=wide"]),                             # widen: Net2WiderNet
    ([], ["+arch=deep", "model.blocks.dense.units=256", "model.blocks.extra.units=256"]),  # wider and deeper
    (["model=cnn"], ["model=cnn", "+arch=cnn_deep"]),  # grow: centered identity conv kernel
    (["model=cnn"], ["model=cnn", "+arch=cnn_wide"]),  # widen both conv stages, flatten -> head fan-in
    (["+arch=no_dense"], ["+arch=no_dense", "model.blocks.extra.enabled=true", "model.blocks.extra.units=784"]),
])
def test_growth_is_function_preserving(tmp_path, source, target):
    src_dir, src_model = make_source(tmp_path, source)
    model, report = migrated(src_dir, target)
    assert not report.not_carried(), report.to_markdown()
    diff = np.abs(logits(model, X) - logits(src_model, X)).max()
    assert diff < 1e-5, f"max |logits diff| = {diff}\n{report.to_markdown()}"
    assert report.counts()["copied"] + report.counts()["adapted"] > 0


def test_grow_with_random_new_blocks_is_reported_and_not_preserving(tmp_path):
    src_dir, src_model = make_source(tmp_path)
    model, report = migrated(src_dir, ["+arch=deep"], new_blocks="random")
    assert actions(report)["extra/kernel"] == "reinitialized"
    assert "fresh initialization" in {e.path: e.detail for e in report.entries}["extra/kernel"]
    assert np.abs(logits(model, X) - logits(src_model, X)).max() > 1e-3


def test_widen_report_and_replication(tmp_path):
    src_dir, src_model = make_source(tmp_path)
    model, report = migrated(src_dir, ["+arch=wide"])
    assert actions(report) == {"dense/kernel": "adapted", "dense/bias": "adapted", "head/kernel": "adapted",
                               "head/bias": "copied"}
    src_k = np.asarray(src_model.get_layer("dense").kernel)
    k = np.asarray(model.get_layer("dense").kernel)
    assert np.array_equal(k[:, :128], src_k)  # original units kept in place
    assert all(any(np.array_equal(k[:, j], src_k[:, i]) for i in range(128)) for j in range(128, 140))


def test_shrink_is_best_effort_and_honest(tmp_path):
    src_dir, _ = make_source(tmp_path)
    model, report = migrated(src_dir, ["+arch=no_dense"])
    assert actions(report) == {"head/kernel": "reinitialized", "head/bias": "copied",
                               "dense/kernel": "dropped", "dense/bias": "dropped"}
    assert "shape changed (128, 10) -> (784, 10)" in report.to_markdown()
    wide_dir, _ = make_source(tmp_path, ["+arch=wide"], name="wide")
    _, report = migrated(wide_dir, [])
    assert actions(report)["dense/kernel"] == "adapted"
    assert "kept the first 128 of 512 units" in report.to_markdown()


def test_disabled_slot_and_reenabled_block_round_trip(tmp_path):
    """no_dense -> base: dense is new (784->128, no identity); the head cannot carry over."""
    src_dir, _ = make_source(tmp_path, ["+arch=no_dense"])
    _, report = migrated(src_dir, [])
    assert actions(report)["dense/kernel"] == "reinitialized"
    assert "widths differ" in report.to_markdown()


def test_class_count_change_is_reported(tmp_path):
    src_dir, _ = make_source(tmp_path, ["data.num_classes=5"])
    model, report = migrated(src_dir, [])
    assert actions(report)["head/kernel"] == "reinitialized" and actions(report)["dense/kernel"] == "copied"
    assert "class count differs (source 5, target 10)" in report.to_markdown()
    assert any("class count differs: source 5, target 10" in n for n in report.notes)


def test_input_shape_change_is_reported(tmp_path):
    src_dir, _ = make_source(tmp_path)
    run = run_config(["data.input_shape=[14,14,1]"])
    model = build_model(run.arch)
    report = migrate_model(model, run.arch, src_dir)
    assert any("input shape differs" in n for n in report.notes)
    assert actions(report)["dense/kernel"] == "reinitialized"


def test_strict_refuses_with_the_list(tmp_path):
    src_dir, _ = make_source(tmp_path)
    migrated(src_dir, ["+arch=wide"], strict=True)  # everything carries over
    migrated(src_dir, ["+arch=deep"], strict=True)  # the new block is an identity map
    with pytest.raises(CheckpointError, match=r"(?s)migrate.strict.*head/kernel: reinitialized.*dense/kernel: dropped"):
        migrated(src_dir, ["+arch=no_dense"], strict=True)


def test_strict_failure_happens_before_training_and_writes_nothing_else(tmp_path, tiny_run):
    src_dir, _ = make_source(tmp_path)
    with pytest.raises(CheckpointError, match="migrate.strict"):
        tiny_run(["+arch=no_dense", f"init_from={src_dir}", "migrate.strict=true"], name="strict")
    assert not (tmp_path / "strict" / "metrics.json").exists()
    assert not (tmp_path / "strict" / "checkpoint").exists()


def test_end_to_end_warm_start_writes_report(tiny_run):
    base_metrics, base_dir = tiny_run([], name="base")
    metrics, out = tiny_run(["+arch=deep", f"init_from={base_dir}", "trainer.epochs=1"], name="deep")
    assert metrics["migrated_from"] == str(base_dir / "checkpoint")
    report = json.loads((out / "migration.json").read_text())
    assert report["counts"] == {"copied": 4, "adapted": 0, "reinitialized": 2, "dropped": 0}
    assert "| extra/kernel | reinitialized | new block: identity map (Net2DeeperNet) |" in (out / "migration.md").read_text()
    assert load_checkpoint(out).manifest["migrated_from"] == str(base_dir / "checkpoint")
    # Warm start: one more epoch from the base cannot be much worse than the base.
    assert metrics["test_accuracy"] > base_metrics["test_accuracy"] - 0.05


def test_corrupted_source_is_named_and_run_dir_untouched(tmp_path, tiny_run):
    src_dir, _ = make_source(tmp_path)
    weights = src_dir / "checkpoint" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    before = weights.read_bytes()
    with pytest.raises(CheckpointError, match=r"weights.safetensors: checksum mismatch"):
        tiny_run([f"init_from={src_dir}"], name="after")
    assert weights.read_bytes() == before
    assert not (tmp_path / "after" / "checkpoint").exists()


def test_sweep_job_syntax(tmp_path):
    src_dir, _ = make_source(tmp_path, name="3")
    _, report = migrated(f"{tmp_path}#3", [])
    assert set(actions(report).values()) == {"copied"}


def test_dry_run_cli_prints_report(tmp_path):
    src_dir, _ = make_source(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "dynarch.migrate", str(src_dir), "--to", "+arch=deep", "--dry-run"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-1500:]
    assert "# Migration mlp/base -> mlp/deep" in proc.stdout and "identity map (Net2DeeperNet)" in proc.stdout
    bad = subprocess.run([sys.executable, "-m", "dynarch.migrate", str(tmp_path / "nope"), "--to", "+arch=deep"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "nope: the path does not exist" in bad.stderr
