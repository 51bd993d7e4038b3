"""ArchSpec -> Keras 3 functional model. Layer names are block names, so variable paths are block paths
(`stage1/conv/kernel`) and stay identical across variants; a disabled block is an Identity in its slot."""

from __future__ import annotations

import math
from typing import Callable

import keras

from .blocks import MAX_ACTIVATION, MAX_PARAMS, check_layer_config, check_windows, estimate_params
from .errors import ConfigError
from .spec import ArchSpec, BlockSpec, table_rows


def _layer_seed(rate: float) -> int | None:
    """The seed Keras would draw itself (`make_default_seed`: the same call on the same Python RNG), made
    explicit: under the torch backend a Dropout without a seed draws from torch's global RNG, which
    train-state checkpoints do not hold (resume would not be bitwise); with a seed it uses its own
    seed-generator variable, which they do. TF and JAX models are bit-identical either way."""
    import random

    return random.randint(1, int(1e9)) if rate > 0 else None


@keras.saving.register_keras_serializable(package="dynarch")
class BlockGroup(keras.layers.Layer):
    """Named sub-blocks applied in order; with `residual=True` returns x + f(x).

    A Layer (not a nested Model) so that sub-layer variables get paths `group/child/kernel`.
    """

    def __init__(self, blocks: list[keras.layers.Layer], residual: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.blocks = list(blocks)
        self.residual = residual

    def call(self, x, training=None):
        y = x
        for block in self.blocks:
            y = block(y, training=training)
        return x + y if self.residual else y

    def get_config(self):
        return {
            **super().get_config(),
            "residual": self.residual,
            "blocks": [keras.saving.serialize_keras_object(b) for b in self.blocks],
        }

    @classmethod
    def from_config(cls, config):
        blocks = [keras.saving.deserialize_keras_object(b) for b in config.pop("blocks")]
        return cls(blocks, **config)


def _pool(p: dict, name: str) -> keras.layers.Layer:
    cls = keras.layers.MaxPooling2D if p["kind"] == "max" else keras.layers.AveragePooling2D
    return cls(pool_size=p["pool_size"], strides=p["strides"], padding=p["padding"], name=name)


LAYER_FACTORIES: dict[str, Callable[[dict, str], keras.layers.Layer]] = {
    "dense": lambda p, n: keras.layers.Dense(p["units"], activation=p["activation"], use_bias=p["use_bias"], name=n),
    "conv2d": lambda p, n: keras.layers.Conv2D(
        p["filters"],
        p["kernel_size"],
        strides=p["strides"],
        padding=p["padding"],
        activation=p["activation"],
        use_bias=p["use_bias"],
        name=n,
    ),
    "pool": _pool,
    "flatten": lambda p, n: keras.layers.Flatten(name=n),
    "dropout": lambda p, n: keras.layers.Dropout(p["rate"], seed=_layer_seed(p["rate"]), name=n),
    "batchnorm": lambda p, n: keras.layers.BatchNormalization(momentum=p["momentum"], epsilon=p["epsilon"], name=n),
    "identity": lambda p, n: keras.layers.Identity(name=n),
}


def _target_layer(block: BlockSpec) -> keras.layers.Layer:
    where = f"model.blocks.{block.path.replace('/', '.blocks.')}"
    class_name = block.target.rsplit(".", 1)[1]
    check_layer_config(where, class_name, block.params)  # again: a BlockSpec may be built by hand
    cls = getattr(keras.layers, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, keras.layers.Layer)):
        raise ConfigError(
            f"{where}._target_",
            "not a Keras layer class",
            expected="a class in keras.layers",
            received=block.target,
            fix="check the class name's spelling in the Keras docs",
        )
    try:
        return cls(name=block.name, **block.params)
    except (TypeError, ValueError) as e:
        raise ConfigError(
            where,
            f"{block.target} refused its arguments: {e}",
            expected="keyword arguments of that class",
            received=dict(block.params),
            fix="fix or remove the offending key",
        ) from None


def _check_size(block: BlockSpec, in_shape: tuple, total: int) -> int:
    """Parameters so far plus this block's estimate; refuses absurd sizes the spec could not see (a
    `_target_` layer after one with an undeclared output shape) before Keras allocates them."""
    where = f"model.blocks.{block.path.replace('/', '.blocks.')}"
    count = block.num_params
    if count is None and block.target and block.enabled and None not in in_shape:
        check_windows(where, block.target.rsplit(".", 1)[1], block.params, in_shape)
        count = estimate_params(block.target.rsplit(".", 1)[1], block.params, in_shape)
    total += count or 0
    if total > MAX_PARAMS:
        raise ConfigError(
            where,
            f"the model reaches {total:,} parameters at block '{block.path}'",
            expected=f"at most {MAX_PARAMS:,} parameters",
            received=dict(block.params),
            fix="use fewer units/filters or a smaller kernel",
        )
    return total


def _check_output(block: BlockSpec, out_shape: tuple) -> None:
    """A `_target_` layer's symbolic output (nothing allocated yet) must stay within MAX_ACTIVATION."""
    if None not in out_shape and math.prod(out_shape) > MAX_ACTIVATION:
        raise ConfigError(
            f"model.blocks.{block.path.replace('/', '.blocks.')}",
            f"block '{block.path}' outputs {math.prod(out_shape):,} values per sample",
            expected=f"at most {MAX_ACTIVATION:,}",
            received=out_shape,
            fix="use a smaller size/padding/repeat count",
        )


def make_layer(block: BlockSpec) -> keras.layers.Layer:
    """The Keras layer for one block; Identity (same name) when the block is disabled."""
    if not block.enabled:
        return keras.layers.Identity(name=block.name)
    if block.is_group:
        return BlockGroup([make_layer(c) for c in block.children], residual=block.type == "residual", name=block.name)
    if block.type == "target":
        return _target_layer(block)
    return LAYER_FACTORIES[block.type](dict(block.params), block.name)


def build_model(spec: ArchSpec) -> keras.Model:
    """Build the functional model; raises ConfigError if Keras finds a shape the spec could not check."""
    inputs = keras.Input(shape=spec.input_shape, name="input")
    x = inputs
    total = 0
    for i, block in enumerate(spec.blocks):
        total = _check_size(block, tuple(x.shape[1:]), total)
        try:
            layer = make_layer(block)
            if i == len(spec.blocks) - 1 and keras.config.dtype_policy().name != "float32":
                layer.dtype_policy = "float32"  # mixed precision: the head and its softmax stay float32
            x = layer(x)
            _check_output(block, tuple(x.shape[1:]))
        except ConfigError:
            raise
        except Exception as e:  # only reachable through `_target_` layers with undeclared shapes
            raise ConfigError(
                f"model.blocks.{block.name}",
                f"Keras could not build block '{block.path}': {e}",
                expected="a shape this layer accepts",
                received=f"input shape {tuple(x.shape[1:])}",
                fix="declare output_shape on `_target_` blocks or reorder the blocks",
            ) from None
    out = tuple(x.shape[1:])
    if out != (spec.num_classes,):
        raise ConfigError(
            "model.blocks",
            f"the built model outputs {out} but the data has {spec.num_classes} classes",
            expected=(spec.num_classes,),
            received=out,
            fix="end with a flatten and a dense head",
        )
    return keras.Model(inputs, x, name=spec.name)


def find_layer(model: keras.Model, path: str) -> keras.layers.Layer:
    """The layer at block path `a/b/c` (descending through BlockGroups)."""
    parts = path.split("/")
    layer = model.get_layer(parts[0])
    for part in parts[1:]:
        layer = next(b for b in layer.blocks if b.name == part)
    return layer


def model_table(spec: ArchSpec, model: keras.Model) -> str:
    """Markdown table: block, type, status, output shape, params (counted by Keras)."""

    def keras_count(depth: int, b: BlockSpec) -> int:
        layer = find_layer(model, b.path) if b.enabled or depth == 0 else None
        return layer.count_params() if layer is not None and layer.built else 0

    lines = ["| block | type | status | output shape | params |", "|---|---|---|---|---:|"]
    for r in table_rows(spec, keras_count):
        lines.append(f"| {'&nbsp;&nbsp;' * r.depth}{r.path} | {r.kind} | {r.status} | {r.shape} | {r.params:,} |")
    lines.append(f"| **total** | | | {spec.output_shape or (spec.num_classes,)} | {model.count_params():,} |")
    return "\n".join(lines)
