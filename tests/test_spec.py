"""Spec validation: every bad config fails before TensorFlow, with a message naming key and fix."""

import subprocess
import sys

import pytest
from conftest import ARCHS, MODELS, ROOT, cli, run_config
from helpers import fits, run_module_reporting_tf

from dynarch.errors import ConfigError
from dynarch.spec import describe, parse_arch, table_rows

MLP = {
    "name": "m",
    "input_shape": [28, 28, 1],
    "blocks": {
        "flatten": {"type": "flatten"},
        "dense": {"type": "dense", "units": 16, "optional": True},
        "head": {"type": "dense", "units": 10, "activation": "softmax"},
    },
}


def with_block(**changes):
    import copy

    m = copy.deepcopy(MLP)
    for name, block in changes.items():
        if block is None:
            m["blocks"].pop(name)
        else:
            m["blocks"][name] = block
    return m


BAD = [  # (model mapping, substrings that must all appear in the message)
    (
        with_block(dense={"type": "dense2", "units": 3}),
        ["model.blocks.dense.type", "unknown block type 'dense2'", "Did you mean 'dense'"],
    ),
    (with_block(dense={"type": "dense", "unit": 16}), ["model.blocks.dense.unit", "Did you mean 'units'"]),
    (with_block(dense={"type": "dense", "units": 0}), ["model.blocks.dense.units", "an integer > 0", "received: 0"]),
    (with_block(dense={"type": "dense", "units": -5}), ["model.blocks.dense.units", "received: -5"]),
    (with_block(dense={"type": "dense", "units": 2.5}), ["model.blocks.dense.units", "received: 2.5"]),
    (with_block(dense={"type": "dense"}), ["model.blocks.dense.units", "missing required key"]),
    (with_block(dense={"type": "dropout", "rate": 1.0}), ["model.blocks.dense.rate", "[0, 1)", "received: 1.0"]),
    (with_block(dense={"type": "dropout", "rate": -0.1}), ["model.blocks.dense.rate", "[0, 1)"]),
    (
        with_block(head={"type": "dense", "units": 10, "enabled": False}),
        ["model.blocks.head.enabled", "not optional", "optional=true"],
    ),
    (
        with_block(dense={"type": "conv2d", "filters": 4}),
        ["model.blocks.dense", "conv2d needs a (height, width, channels) input", "(784,)", "before any flatten"],
    ),
    (
        with_block(head={"type": "dense", "units": 7}),
        ["model.blocks.head", "outputs shape (7,)", "10 classes", "model.blocks.head.units=10"],
    ),
    (with_block(dense={"type": "dense", "units": 8, "activation": "relux"}), ["model.blocks.dense.activation", "relu"]),
    (
        with_block(dense={"_target_": "os.system", "command": "echo hi"}),
        ["model.blocks.dense._target_", "only name a Keras layer class"],
    ),
    (with_block(dense={"_target_": "keras.layers.Dense", "units": 3, "name": "x"}), ["model.blocks.dense.name"]),
    (with_block(dense={"enabled": False}), ["model.blocks.dense", "neither 'type' nor '_target_'", "flatten, head"]),
    (with_block(dense={"type": "dense", "units": 4, "enabled": "no"}), ["model.blocks.dense.enabled", "boolean"]),
    (with_block(**{"bad-name": {"type": "identity"}}), ["not a valid identifier"]),
    ({**MLP, "blocks": {}}, ["model.blocks", "non-empty mapping"]),
    ({**MLP, "input_shape": [28, -1]}, ["model.input_shape", "positive integers"]),
    ({**MLP, "blokcs": {}}, ["model.blokcs", "Did you mean 'blocks'"]),
    (
        with_block(res={"type": "residual", "blocks": {"fc": {"type": "dense", "units": 3}}}, head=None),
        ["model.blocks.res", "residual block 'res' changes the shape (16,) -> (3,)"],
    ),
    (with_block(g={"type": "sequential", "blocks": {}}), ["model.blocks.g.blocks", "named sub-blocks"]),
]


@pytest.mark.parametrize("model,needles", BAD, ids=[n[0] for _, n in BAD])
def test_bad_model_config_names_key_and_fix(model, needles):
    with pytest.raises(ConfigError) as err:
        parse_arch(model, num_classes=10)
    message = str(err.value)
    for needle in needles:
        assert needle in message, f"{needle!r} not in:\n{message}"
    assert "expected:" in message and "fix:" in message


def test_pool_that_does_not_fit_and_conv_after_flatten_in_cnn():
    with pytest.raises(ConfigError, match=r"stage2/conv.*conv2d needs"):
        run_config(
            [
                "model=cnn",
                "model.blocks.stage2.blocks.conv.kernel_size=3",
                "+model.blocks.stage1.blocks.flat={type: flatten}",
            ]
        )
    with pytest.raises(ConfigError, match=r"window \(40, 40\) does not fit"):
        run_config(
            [
                "model=cnn",
                "model.blocks.stage1.blocks.conv.kernel_size=40",
                "model.blocks.stage1.blocks.conv.padding=valid",
            ]
        )


@pytest.mark.parametrize(
    "overrides,needles",
    [
        (["trainer.epochs=0"], ["trainer.epochs", "an integer > 0"]),
        (["trainer.batch_size=abc"], ["trainer.batch_size"]),
        (["+trainer.epoch=3"], ["trainer.epoch", "Did you mean 'epochs'"]),
        (["optimizer.lr=-1"], ["optimizer.lr", "a finite number > 0"]),
        (["optimizer.name=adamm"], ["optimizer.name", "adam"]),
        (["data.val_fraction=1.5"], ["data.val_fraction", "[0, 1)"]),
        (["+data.limit_trian=5"], ["data.limit_trian", "Did you mean 'limit_train'"]),
        (["data=idx"], ["data.path", "data.path="]),
        (["+arch=no_conv2"], ["+arch=no_conv2", "no arch named 'no_conv2' for this model", "cnn/no_conv2"]),
        (["+arch=cnn/no_dropout"], ["+arch=cnn/no_dropout", "made for model 'cnn', not 'mlp'", "+arch=mlp/NAME"]),
        (["+seeds=3"], ["seeds", "Did you mean 'seed'"]),
        (["seed=-1"], ["seed", "non-negative"]),
        (["model.input_shape=[32,32,3]"], ["model.input_shape", "differs from the data"]),
        (["trainer.precision=float16"], ["trainer.precision", "mixed_float16"]),
        (["trainer.intra_op_threads=-1"], ["trainer.intra_op_threads", "auto or an integer"]),
    ],
)
def test_bad_run_config(overrides, needles):
    with pytest.raises(ConfigError) as err:
        run_config(overrides)
    for needle in needles:
        assert needle in str(err.value), str(err.value)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("arch", [None, *ARCHS])
def test_every_model_arch_combination_validates_or_says_why(model, arch):
    overrides = [f"model={model}"] + ([f"+arch={arch}"] if arch else [])
    if fits(model, arch):
        run = run_config(overrides)
        assert run.arch.output_shape in ((10,), None)
        assert run.variant == (arch or "base").split("/")[-1]
    else:
        with pytest.raises(ConfigError, match=f"made for model '{arch.split('/')[0]}', not '{model}'"):
            run_config(overrides)


def test_disabled_block_keeps_its_slot_and_shapes_flow():
    base, no_dense = run_config([]).arch, run_config(["+arch=no_dense"]).arch
    assert [b.name for b in base.blocks] == [b.name for b in no_dense.blocks]
    dense = {b.name: b for b in no_dense.blocks}["dense"]
    assert not dense.enabled and dense.output_shape == (784,) and dense.num_params == 0
    head = {b.name: b for b in no_dense.blocks}["head"]
    assert head.input_shape == (784,) and head.num_params == 784 * 10 + 10
    assert ("  stage2/conv", "conv2d", "identity", "(14, 14, 16)", "0") in describe(
        run_config(["model=cnn", "+arch=no_conv2"]).arch
    )


def test_cli_bad_config_fails_with_the_key_and_no_traceback(tmp_path):
    # Fast because TensorFlow is never imported (test_cli_paths_that_must_not_import_tensorflow): no
    # wall-clock assert, which is flaky on a loaded machine.
    proc = cli("model.blocks.dense.units=-3", f"hydra.run.dir={tmp_path}/run")
    assert proc.returncode == 2
    assert "model.blocks.dense.units" in proc.stderr + proc.stdout and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["--cfg", "job", "+arch=no_dense"],
        ["model.blocks.dense.units=0"],
        ["+arch=deep", "trainer.epochs=0"],
    ],
)
def test_cli_paths_that_must_not_import_tensorflow(args, tmp_path):
    code = (
        "import sys, runpy\n"
        f"sys.argv = ['dynarch', *{args!r}, 'hydra.run.dir={tmp_path}/r']\n"
        "try:\n    runpy.run_module('dynarch', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "print('TF_IMPORTED' if 'tensorflow' in sys.modules else 'NO_TF')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip().endswith("NO_TF"), proc.stdout[-500:] + proc.stderr[-500:]


def test_cfg_job_prints_the_patched_config():
    proc = cli("--cfg", "job", "+arch=no_dense")
    assert proc.returncode == 0
    assert "dense:" in proc.stdout and "enabled: false" in proc.stdout


def test_arch_is_not_in_primary_defaults():
    """`+arch=NAME` appends a variant only while `arch` is not in the defaults list; Hydra's recorded choices
    show it (a `- arch: mlp/deep` default would put `arch` there; the composed config would not show it,
    since a variant is `@package _global_`)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        choices = compose("config", return_hydra_config=True).hydra.runtime.choices
        appended = compose("config", overrides=["+arch=mlp/deep"], return_hydra_config=True).hydra.runtime.choices
    assert "arch" not in choices and appended["arch"] == "mlp/deep"


def test_inspect_prints_the_table_without_tensorflow():
    proc = run_module_reporting_tf("dynarch.inspect", ["model=cnn", "+arch=no_conv2"])
    out = proc.stdout
    assert "EXIT 0" in out and out.strip().endswith("NO_TF"), out + proc.stderr
    assert "  stage2/conv   conv2d      identity  (14, 14, 16)  0" in out
    assert "total params 31,530; forward FLOPs per sample 288,512" in out
    bad = subprocess.run(
        [sys.executable, "-m", "dynarch.inspect", "model.blocks.dense.units=0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "model.blocks.dense.units" in bad.stderr and "fix:" in bad.stderr


def test_one_rows_function_feeds_both_tables():
    spec = run_config(["model=cnn", "+arch=cnn/no_conv2"]).arch
    rows = table_rows(spec)
    assert [
        ("  " * r.depth + r.path, r.kind, r.status, r.shape, "?" if r.params is None else f"{r.params:,}") for r in rows
    ] == describe(spec)
    assert [r.params for r in table_rows(spec, lambda depth, b: 7)] == [7] * len(rows)


def test_inspect_lists_block_types_with_their_docs_without_tensorflow():
    code = (
        "import sys, runpy\nsys.argv = ['inspect', '--blocks']\n"
        "try:\n    runpy.run_module('dynarch.inspect', run_name='__main__')\nexcept SystemExit as e:\n"
        "    print('EXIT', e.code)\n"
        "print('TF_IMPORTED' if 'tensorflow' in sys.modules else 'NO_TF')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    out = proc.stdout
    assert "EXIT 0" in out and out.strip().endswith("NO_TF"), out + proc.stderr
    from dynarch.blocks import REGISTRY

    for btype in REGISTRY.values():
        assert f"{btype.name}: {btype.doc}" in out
    assert "    units: an integer > 0" in out and "RandomFlip" in out and "TFSMLayer" not in out


@pytest.mark.parametrize("name", ["stage_1", "_x", "a" * 100])
def test_block_names_keras_accepts_pass(name):
    assert parse_arch(with_block(**{name: {"type": "identity"}}), num_classes=10)


def test_nested_block_may_be_named_input_and_model_name_digits_are_a_name():
    # Keras refuses a second top-level "input" only; nested layers live under their group's path.
    spec = parse_arch(
        {**with_block(g={"type": "sequential", "blocks": {"input": {"type": "identity"}}}), "name": 2024},
        num_classes=10,
    )
    assert spec.name == "2024" and "g/input" in [b.path for _, b in spec.walk()]


def test_allowed_target_layer_with_builtin_initializer_config_passes():
    spec = parse_arch(
        with_block(
            dense={
                "_target_": "keras.layers.Dense",
                "units": 16,
                "activation": "gelu",
                "kernel_initializer": {"class_name": "HeNormal", "config": {"seed": 1}},
                "kernel_regularizer": "l2",
                "output_shape": [16],
            }
        ),
        num_classes=10,
    )
    assert spec.output_shape == (10,)
