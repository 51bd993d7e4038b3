"""Migration by name: report for grow / widen / shrink / class-count changes, function-preserving growth."""

import json
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import ROOT, run_config
from helpers import make_source

from dynarch.build import build_model
from dynarch.checkpoint import load_checkpoint, model_tensors, save_checkpoint
from dynarch.errors import CheckpointError
from dynarch.migrate import migrate_model


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


@pytest.mark.parametrize(
    "source,target",
    [
        ([], ["+arch=deep"]),  # grow: a new hidden block, identity-initialized
        ([], ["+arch=wide"]),  # widen: Net2WiderNet
        ([], ["+arch=deep", "model.blocks.dense.units=256", "model.blocks.extra.units=256"]),  # wider and deeper
        (["model=cnn"], ["model=cnn", "+arch=cnn_deep"]),  # grow: centered identity conv kernel
        (["model=cnn"], ["model=cnn", "+arch=cnn_wide"]),  # widen both conv stages, flatten -> head fan-in
        (["+arch=no_dense"], ["+arch=no_dense", "model.blocks.extra.enabled=true", "model.blocks.extra.units=784"]),
    ],
)
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
    assert actions(report) == {
        "dense/kernel": "adapted",
        "dense/bias": "adapted",
        "head/kernel": "adapted",
        "head/bias": "copied",
    }
    src_k = np.asarray(src_model.get_layer("dense").kernel)
    k = np.asarray(model.get_layer("dense").kernel)
    assert np.array_equal(k[:, :128], src_k)  # original units kept in place
    assert all(any(np.array_equal(k[:, j], src_k[:, i]) for i in range(128)) for j in range(128, 140))


def test_shrink_is_best_effort_and_honest(tmp_path):
    src_dir, _ = make_source(tmp_path)
    model, report = migrated(src_dir, ["+arch=no_dense"])
    assert actions(report) == {
        "head/kernel": "reinitialized",
        "head/bias": "copied",
        "dense/kernel": "dropped",
        "dense/bias": "dropped",
    }
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
    assert (
        "| extra/kernel | reinitialized | new block: identity map (Net2DeeperNet) |"
        in (out / "migration.md").read_text()
    )
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
    proc = subprocess.run(
        [sys.executable, "-m", "dynarch.migrate", str(src_dir), "--to", "+arch=deep", "--dry-run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-1500:]
    assert "# Migration mlp/base -> mlp/deep" in proc.stdout and "identity map (Net2DeeperNet)" in proc.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "dynarch.migrate", str(tmp_path / "nope"), "--to", "+arch=deep"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "nope: the path does not exist" in bad.stderr


# ---------------------------------------------------------------------------- residual growth, strictness

RESCNN = {
    "name": "rescnn",
    "input_shape": [12, 12, 1],
    "blocks": {
        "stem": {"type": "conv2d", "filters": 8, "kernel_size": 3, "padding": "same", "activation": "relu"},
        "res1": {
            "type": "residual",
            "blocks": {
                "a": {"type": "conv2d", "filters": 8, "kernel_size": 3, "padding": "same", "activation": "relu"},
                "b": {"type": "conv2d", "filters": 8, "kernel_size": 3, "padding": "same"},
            },
        },
        "res2": {
            "type": "residual",
            "optional": True,
            "enabled": False,
            "blocks": {
                "a": {"type": "conv2d", "filters": 8, "kernel_size": 3, "padding": "same", "activation": "relu"},
                "bn": {"type": "batchnorm"},
                "b": {"type": "conv2d", "filters": 8, "kernel_size": 3, "padding": "same", "activation": "relu"},
            },
        },
        "pool": {"type": "pool"},
        "flatten": {"type": "flatten"},
        "head": {"type": "dense", "units": 10, "activation": "softmax"},
    },
}


@pytest.mark.parametrize("grow", [["model.blocks.res2.enabled=true"], ["+arch=deep"]])
def test_resnet_mlp_new_residual_branch_starts_at_zero(tmp_path, grow):
    src_dir, src_model = make_source(tmp_path, ["model=resnet_mlp"])
    model, report = migrated(src_dir, ["model=resnet_mlp", *grow], strict=True)
    details = {e.path: e.detail for e in report.entries}
    assert details["res2/fc/kernel"] == details["res2/fc/bias"] == "new residual branch: last layer zeroed (f(x) = 0)"
    assert "Net2DeeperNet" not in report.to_markdown() and not report.not_carried()
    assert np.abs(logits(model, X) - logits(src_model, X)).max() < 1e-5


def test_resnet_cnn_new_residual_branch_is_function_preserving(tmp_path):
    import copy

    from dynarch.spec import parse_arch

    source_spec = parse_arch(RESCNN, 10)
    target_raw = copy.deepcopy(RESCNN)
    target_raw["blocks"]["res2"]["enabled"] = True
    target_spec = parse_arch(target_raw, 10)
    src_model = build_model(source_spec)
    rng = np.random.default_rng(1)
    for v in src_model.weights:
        if v.path.endswith("bias"):
            v.assign(rng.normal(0, 0.1, v.shape).astype("float32"))
    save_checkpoint(tmp_path / "src", model_tensors(src_model), {"model": "rescnn", "variant": "base"})
    model = build_model(target_spec)
    report = migrate_model(model, target_spec, tmp_path / "src", strict=True)
    assert actions(report)["res2/b/kernel"] == "reinitialized"
    assert all(e.identity_init for e in report.entries if e.path.startswith("res2/"))
    assert not np.asarray(model.get_layer("res2").blocks[2].kernel).any()  # the last conv is zero
    x = np.random.default_rng(0).random((8, 12, 12, 1)).astype("float32")
    assert np.abs(logits(model, x) - logits(src_model, x)).max() < 1e-5


@pytest.mark.parametrize("act", ["sigmoid", "softplus"])
def test_new_residual_branch_whose_last_activation_is_not_zero_at_zero_fails_strict(tmp_path, act):
    src_dir, _ = make_source(tmp_path, ["model=resnet_mlp"])
    with pytest.raises(CheckpointError, match=rf"(?s)res2/fc/kernel: reinitialized .*approximate: {act}\(0\) != 0"):
        migrated(
            src_dir,
            ["model=resnet_mlp", "model.blocks.res2.enabled=true", f"model.blocks.res2.blocks.fc.activation={act}"],
            strict=True,
        )


def test_identity_through_an_inexact_activation_is_not_function_preserving(tmp_path):
    src_dir, _ = make_source(tmp_path)
    _, report = migrated(src_dir, ["+arch=deep", "model.blocks.extra.activation=tanh"])
    entry = {e.path: e for e in report.entries}["extra/kernel"]
    assert "approximate through tanh" in entry.detail and not entry.identity_init
    with pytest.raises(CheckpointError, match=r"(?s)migrate.strict.*extra/kernel: reinitialized"):
        migrated(src_dir, ["+arch=deep", "model.blocks.extra.activation=tanh"], strict=True)


def test_adapted_variables_record_their_index_maps(tmp_path):
    from dynarch.migrate import apply_index_map

    src_dir, src_model = make_source(tmp_path)
    model, report = migrated(src_dir, ["+arch=wide"])
    maps = {e.path: e.index_map for e in report.entries}
    src_k = np.asarray(src_model.get_layer("dense").kernel)
    assert [axis for axis, _ in maps["dense/kernel"]] == [-1] and maps["dense/bias"] == maps["dense/kernel"]
    assert np.array_equal(apply_index_map(src_k, maps["dense/kernel"]), np.asarray(model.get_layer("dense").kernel))
    assert [axis for axis, _ in maps["head/kernel"]] == [-2] and maps["head/bias"] is None
    json.dumps(report.to_json())  # plain lists: the report stays JSON


# ----------------------------------------------------------------------- spec shapes, strict before TF


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["+arch=deep"],
        ["+arch=no_dense"],
        ["model=cnn"],
        ["model=cnn", "+arch=cnn_deep"],
        ["model=cnn", "+arch=no_conv1"],
    ],
)
def test_spec_variable_shapes_match_the_built_model(overrides):
    from dynarch.migrate import spec_variable_shapes

    run = run_config(overrides)
    assert spec_variable_shapes(run.arch) == {v.path: tuple(v.shape) for v in build_model(run.arch).weights}


def test_spec_variable_shapes_of_batchnorm_and_target_layers():
    from dynarch.migrate import spec_variable_shapes
    from dynarch.spec import parse_arch

    shapes = spec_variable_shapes(
        parse_arch(
            {**RESCNN, "blocks": {**RESCNN["blocks"], "res2": {**RESCNN["blocks"]["res2"], "enabled": True}}}, 10
        )
    )
    assert shapes["res2/bn/moving_variance"] == (8,) and shapes["res2/b/kernel"] == (3, 3, 8, 8)
    assert spec_variable_shapes(run_config(["model=resnet_mlp"]).arch) is None  # a `_target_` layer


def test_strict_is_decided_before_tensorflow_is_imported(tmp_path):
    src_dir, _ = make_source(tmp_path)
    code = (
        "import sys\nsys.path.insert(0, 'tests')\nfrom conftest import run_config\n"
        "from dynarch.errors import CheckpointError\nfrom dynarch.migrate import check_source_before_build\n"
        f"ok = check_source_before_build(run_config(['+arch=deep', 'init_from={src_dir}', 'migrate.strict=true']))\n"
        "print('PLANNED', ok.counts())\n"
        "try:\n"
        f"    check_source_before_build(run_config(['+arch=no_dense', 'init_from={src_dir}', 'migrate.strict=true']))\n"
        "except CheckpointError as e:\n    print('REFUSED', str(e).splitlines()[0])\n"
        "print('TF' if {'tensorflow', 'keras'} & set(sys.modules) else 'NO_TF')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    out = proc.stdout
    assert "PLANNED {'copied': 4, 'adapted': 0, 'reinitialized': 2, 'dropped': 0}" in out, out + proc.stderr[-1500:]
    assert "REFUSED migrate.strict: not everything carries over" in out and out.strip().endswith("NO_TF"), out


def test_init_from_non_finite_weights_is_refused_with_the_variable(tmp_path):
    src_dir, src_model = make_source(tmp_path)
    tensors = model_tensors(src_model)
    tensors["dense/bias"][3] = np.nan
    save_checkpoint(src_dir / "checkpoint", tensors, {"model": "mlp", "variant": "base"})
    with pytest.raises(CheckpointError, match=r"(?s)variable 'dense/bias' holds non-finite.*pick another checkpoint"):
        migrated(src_dir, [])


# ------------------------------------------------------------------------------------- optimizer state

BATCH = (np.random.default_rng(2).random((32, 28, 28, 1)).astype("float32"), np.arange(32) % 10)


def compiled(overrides, optimizer=None):
    run = run_config(list(overrides))
    model = build_model(run.arch)
    model.compile(optimizer=optimizer or keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    model.optimizer.build(model.trainable_variables)
    return run, model


def boundary(old_overrides, new_overrides, optimizer=None, steps=3):
    """Train the old model a few steps, then migrate weights and optimizer state into the new one."""
    from dynarch.boundary import source_of
    from dynarch.migrate import migrate_optimizer, optimizer_state, plan_migration

    old_run, old = compiled(old_overrides, optimizer() if optimizer else None)
    for _ in range(steps):
        old.train_on_batch(*BATCH)
    new_run, new = compiled(new_overrides, optimizer() if optimizer else None)
    report, values = plan_migration(
        source_of(old, old_run.phases[0]), new_run.arch, {v.path: tuple(v.shape) for v in new.weights}
    )
    by_path = {v.path: v for v in new.weights}
    for path, value in values.items():
        by_path[path].assign(value)
    state = optimizer_state(old)
    return old, new, report, state, migrate_optimizer(new, state, report)


def slots(model):
    from dynarch.migrate import optimizer_state

    return optimizer_state(model).slots


def test_copied_variables_carry_adam_slots_bitwise_across_a_drop():
    old, new, report, state, carried = boundary(["+arch=deep"], [])
    assert actions(report)["extra/kernel"] == "dropped"
    assert carried.counts() == {"copied": 4, "adapted": 0, "fresh": 0} and carried["copied"] == 4
    before, after = slots(old), slots(new)
    for path in ("dense/kernel", "dense/bias", "head/kernel", "head/bias"):
        for name in ("momentum", "velocity"):
            assert after[path][name].tobytes() == before[path][name].tobytes(), (path, name)
    assert before["dense/kernel"]["momentum"].any()  # the old optimizer had really moved
    assert int(new.optimizer.iterations.numpy()) == int(old.optimizer.iterations.numpy()) == 3


def test_adapted_variable_slots_follow_the_index_map_undivided():
    from dynarch.migrate import apply_index_map

    old, new, report, state, carried = boundary([], ["+arch=wide"])
    maps = {e.path: e.index_map for e in report.entries}
    before, after = slots(old), slots(new)
    assert carried["adapted"] == 3 and carried["copied"] == 1
    for path in ("dense/kernel", "dense/bias", "head/kernel"):
        for name in ("momentum", "velocity"):
            assert np.array_equal(after[path][name], apply_index_map(before[path][name], maps[path])), (path, name)
    index = np.asarray(maps["head/kernel"][0][1])
    assert np.array_equal(after["head/kernel"]["velocity"][128:], before["head/kernel"]["velocity"][index[128:]])


def test_new_variables_get_fresh_slots_and_training_goes_on():
    old, new, report, state, carried = boundary([], ["+arch=deep"])
    assert carried.entries["extra/kernel"]["action"] == "fresh" and not slots(new)["extra/kernel"]["momentum"].any()
    assert carried["copied"] == 4 and "carried" in carried.learning_rate
    loss = new.train_on_batch(*BATCH)
    assert np.isfinite(loss) and int(new.optimizer.iterations.numpy()) == 4
    json.dumps(carried.to_json())


@pytest.mark.parametrize(
    "make,names",
    [
        (lambda: keras.optimizers.SGD(0.01, momentum=0.9), {"momentum"}),
        (lambda: keras.optimizers.RMSprop(1e-3, momentum=0.5), {"velocity", "momentum"}),
        (lambda: keras.optimizers.AdamW(1e-3, amsgrad=True), {"momentum", "velocity", "velocity_hat"}),
    ],
)
def test_optimizer_state_is_generic_across_keras_optimizers(make, names):
    old, new, report, state, carried = boundary([], [], optimizer=make, steps=2)
    assert set(state.slots["dense/kernel"]) == names and carried["copied"] == 4
    assert all(np.array_equal(slots(new)[p][n], state.slots[p][n]) for p in state.slots for n in names)


def test_unsupported_optimizer_is_refused_clearly():
    from dynarch.errors import ConfigError
    from dynarch.migrate import optimizer_state

    _, model = compiled([], keras.optimizers.Adafactor())
    with pytest.raises(ConfigError, match=r"(?s)cannot carry the state of a Adafactor optimizer.*fix:"):
        optimizer_state(model)
