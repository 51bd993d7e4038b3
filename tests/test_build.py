"""Builder: every valid model x arch builds; names are stable block paths; disabled blocks are Identity."""

import keras
import numpy as np
import pytest
from conftest import ARCHS, MODELS, run_config
from helpers import fits

from dynarch import blocks, build
from dynarch.build import build_model, find_layer, model_table

VALID = [(m, a) for m in MODELS for a in [None, *ARCHS] if fits(m, a)]


def spec_for(model, arch=None):
    return run_config([f"model={model}"] + ([f"+arch={arch}"] if arch else [])).arch


def test_every_registry_type_has_a_keras_factory():
    groups = {n for n, t in blocks.REGISTRY.items() if t.is_group}
    assert set(build.LAYER_FACTORIES) | groups == set(blocks.REGISTRY)


@pytest.mark.parametrize("model,arch", VALID)
def test_builds_names_identity_and_param_counts(model, arch):
    spec = spec_for(model, arch)
    net = build_model(spec)
    assert [layer.name for layer in net.layers[1:]] == [b.name for b in spec.blocks]
    for _, block in spec.walk():
        parent_live = all(
            find_layer(net, "/".join(block.path.split("/")[:i])).__class__ is build.BlockGroup
            for i in range(1, block.path.count("/") + 1)
        )
        if not parent_live:
            continue
        layer = find_layer(net, block.path)
        if not block.enabled:
            assert isinstance(layer, keras.layers.Identity), block.path
            assert layer.count_params() == 0
        elif block.num_params is not None:
            assert layer.count_params() == block.num_params, block.path
    if spec.num_params is not None:
        assert net.count_params() == spec.num_params
    out = net(np.zeros((2, *spec.input_shape), np.float32))
    assert out.shape == (2, 10)
    assert "| **total** |" in model_table(spec, net)


def test_variable_paths_are_block_paths_and_stable_across_variants():
    base = {v.path for v in build_model(spec_for("mlp")).weights}
    assert base == {"dense/kernel", "dense/bias", "head/kernel", "head/bias"}
    deep = {v.path for v in build_model(spec_for("mlp", "deep")).weights}
    assert deep == base | {"extra/kernel", "extra/bias"}
    no_dense = {v.path for v in build_model(spec_for("mlp", "no_dense")).weights}
    assert no_dense == {"head/kernel", "head/bias"}
    cnn = {v.path for v in build_model(spec_for("cnn", "no_conv1")).weights}
    assert cnn == {"stage2/conv/kernel", "stage2/conv/bias", "head/kernel", "head/bias"}


def test_head_is_reshaped_when_hidden_block_is_disabled():
    net = build_model(spec_for("mlp", "no_dense"))
    assert tuple(net.get_layer("head").kernel.shape) == (784, 10)
    assert isinstance(net.get_layer("dense"), keras.layers.Identity)


def test_target_layer_with_undeclared_shape_is_checked_at_build():
    from dynarch.errors import ConfigError

    spec = run_config(
        ["model=resnet_mlp", "+model.blocks.res1.blocks.fc2={_target_: keras.layers.Dense, units: 7}"]
    ).arch
    assert spec.output_shape is not None  # residual keeps the declared input shape
    with pytest.raises(ConfigError, match="Keras could not build block 'res1'"):
        build_model(spec)


def test_target_layer_bad_kwargs_named():
    from dynarch.errors import ConfigError

    with pytest.raises(ConfigError, match=r"res1\.blocks\.norm\.bogus.*does not take 'bogus'"):
        run_config(["model=resnet_mlp", "+model.blocks.res1.blocks.norm.bogus=1"])  # before TensorFlow
    spec = run_config(["model=resnet_mlp", "+model.blocks.res1.blocks.norm.axis=abc"]).arch
    with pytest.raises(ConfigError, match=r"res1\.blocks\.norm.*refused its arguments"):
        build_model(spec)  # a key it takes, a value only Keras can judge


def test_layer_allowlist_matches_keras_and_holds_no_code_or_file_reference():
    """Every allowed class exists in Keras 3, takes every key the table allows, and none takes a
    function, module, file path or another layer."""
    import inspect as pyinspect

    from dynarch.layer_allowlist import BASE_KEYS, LAYER_KEYS, REFUSED

    for name, keys in LAYER_KEYS.items():
        cls = getattr(keras.layers, name)
        params = set(pyinspect.signature(cls.__init__).parameters)
        assert keys - set(BASE_KEYS) <= params, (name, keys - params)
        assert not params & {"filepath", "function", "module", "layer", "cell", "call_fn", "init_fn"}, name
    for name in REFUSED:
        assert hasattr(keras.layers, name) and name not in LAYER_KEYS


def test_allowed_target_layers_build_and_the_table_counts_with_keras():
    spec = run_config(
        [
            "model=cnn",
            "+model.blocks.stage1.blocks.aug={_target_: keras.layers.RandomFlip, mode: horizontal, output_shape: same}",
            "+model.blocks.stage2.blocks.bn={_target_: keras.layers.BatchNormalization, "
            "gamma_initializer: ones, beta_regularizer: l2}",
        ]
    ).arch
    net = build_model(spec)
    table = model_table(spec, net)
    assert "| &nbsp;&nbsp;stage2/bn | BatchNormalization | enabled | ? | 128 |" in table
    assert f"| **total** | | | (10,) | {net.count_params():,} |" in table


def test_target_output_beyond_the_bound_is_refused_at_build_before_allocation():
    from dynarch.errors import ConfigError
    from dynarch.spec import parse_arch

    spec = parse_arch(
        {
            "name": "m",
            "input_shape": [28, 28, 1],
            "blocks": {
                "same": {"_target_": "keras.layers.Identity"},  # no declared shape: the spec stops checking
                "up": {"_target_": "keras.layers.UpSampling2D", "size": 100000},
                "flatten": {"type": "flatten"},
                "head": {"type": "dense", "units": 10},
            },
        },
        num_classes=10,
    )
    with pytest.raises(ConfigError, match=r"model\.blocks\.up.*values per sample"):
        build_model(spec)
