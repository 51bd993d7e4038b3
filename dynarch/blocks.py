"""Block registry, pure Python: each block type's keys, value checks, shape rule and parameter count.

The Keras side of each type lives in build.py (LAYER_FACTORIES); a test keeps the two registries in step.
Shapes exclude the batch axis; None means "not known before build" (a `_target_` layer that declares none).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from .errors import ConfigError
from .layer_allowlist import (  # noqa: F401 — ALLOWED_LAYERS, check_layer_config, check_windows: public here too
    ALLOWED_LAYERS,
    MAX_INT,
    check_layer_config,
    check_windows,
    estimate_params,
)

Shape = tuple[int, ...]
REQUIRED = object()

# Keras activation names accepted by string; anything else must be a separate block.
ACTIVATIONS = frozenset(
    {
        "relu",
        "relu6",
        "leaky_relu",
        "elu",
        "selu",
        "gelu",
        "silu",
        "swish",
        "mish",
        "tanh",
        "sigmoid",
        "hard_sigmoid",
        "softmax",
        "log_softmax",
        "softplus",
        "softsign",
        "exponential",
        "linear",
    }
)
# `_target_` must read keras.layers.<Name> (no other module), and <Name> must be on ALLOWED_LAYERS.
TARGET_PATTERN = re.compile(r"^keras\.layers\.[A-Z][A-Za-z0-9]*$")
COMMON_KEYS = ("type", "optional", "enabled")
TARGET_KEYS = ("_target_", "optional", "enabled", "output_shape")
# Block names become Keras layer names and variable paths: ASCII identifiers only (Keras itself accepts
# non-ASCII, but paths land in file names, logs and safetensors keys), and not "input" at the top level
# (Keras refuses: the model's Input layer is named "input").
BLOCK_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,99}$")
RESERVED_NAMES = frozenset({"input"})
# Keras refuses only "/" in a model name; dynarch also keeps it printable ASCII (it is logged and reported).
MODEL_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")
# Sizes refused before anything is allocated: a config that asks for more is a typo, not a model.
MAX_PARAMS = 2_000_000_000  # parameters of the whole model (8 GB of float32 weights)
MAX_ACTIVATION = 2**28  # values in one block's output for ONE sample (1 GiB of float32)


class ShapeProblem(Exception):
    """Raised by a shape rule; spec.py turns it into a ConfigError naming the block path."""

    def __init__(self, problem: str, expected: str, fix: str):
        super().__init__(problem)
        self.problem, self.expected, self.fix = problem, expected, fix


@dataclass(frozen=True)
class Param:
    """One block key: its default (REQUIRED if none), a check returning True when valid, and its doc."""

    default: Any
    check: Callable[[Any], bool]
    expected: str


@dataclass(frozen=True)
class BlockType:
    name: str
    params: dict[str, Param]
    infer: Callable[[dict, Shape], Shape]
    count: Callable[[dict, Shape], int] = lambda p, s: 0
    is_group: bool = False
    doc: str = ""


def _pos_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_INT


def _pair(v: Any) -> bool:
    return _pos_int(v) or (isinstance(v, (list, tuple)) and len(v) == 2 and all(map(_pos_int, v)))


def _as_pair(v: int | list) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _activation(v: Any) -> bool:
    return v is None or v in ACTIVATIONS


def _rate(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1  # NaN fails too


def _bool(v: Any) -> bool:
    return isinstance(v, bool)


def _positive(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < math.inf


ACTIVATION = Param(None, _activation, f"null or one of {', '.join(sorted(ACTIVATIONS))}")


def dims_ok(dims: Any) -> bool:
    """Positive int dimensions whose product (values per sample) stays within MAX_ACTIVATION."""
    return (
        all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in dims)
        and math.prod(dims) <= MAX_ACTIVATION
    )


def check_model_name(name: Any, where: str) -> str:
    """`model.name` as a string Keras and the reports accept (an int is taken as its digits)."""
    name = str(name) if isinstance(name, int) and not isinstance(name, bool) else name
    if not isinstance(name, str) or not MODEL_NAME.match(name):
        raise ConfigError(
            where,
            "the model name is not one Keras and dynarch's reports accept",
            expected="ASCII letters, digits, '_', '.', '-' (no '/', which Keras refuses; no "
            "spaces), at most 100 characters",
            received=name,
            fix=f"set {where}=my_model",
        )
    return name


def block_key(where: str, path: str) -> str:
    return f"{where}.blocks.{path.replace('/', '.blocks.')}"


def check_sizes(walk: Iterable[tuple[int, Any]], where: str) -> None:
    """Refuse absurd sizes (a typo like units=10**9) before Keras would try to allocate them.

    Leaf blocks only: a group's output is its last child's (or its input), so the leaf that grows is named.
    """
    total = 0
    for _, b in walk:  # (depth, BlockSpec) pairs, parents first
        if not b.enabled or b.is_group:
            continue
        count = b.num_params
        if count is None and b.target and b.input_shape is not None:
            check_windows(block_key(where, b.path), b.target.rsplit(".", 1)[1], b.params, b.input_shape)
            count = estimate_params(b.target.rsplit(".", 1)[1], b.params, b.input_shape)
        total += count or 0
        if total > MAX_PARAMS:
            raise ConfigError(
                block_key(where, b.path),
                f"the model reaches {total:,} parameters at block '{b.path}' ({count:,} of them here)",
                expected=f"at most {MAX_PARAMS:,} parameters",
                received=dict(b.params),
                fix="use fewer units/filters or a smaller kernel",
            )
        if b.output_shape is not None and math.prod(b.output_shape) > MAX_ACTIVATION:
            raise ConfigError(
                block_key(where, b.path),
                f"block '{b.path}' outputs {math.prod(b.output_shape):,} values per sample",
                expected=f"at most {MAX_ACTIVATION:,} (1 GiB of float32)",
                received=b.output_shape,
                fix="use fewer units/filters or a smaller input",
            )


def _need_image(kind: str, shape: Shape) -> None:
    if len(shape) != 3:
        raise ShapeProblem(
            f"{kind} needs a (height, width, channels) input but receives shape {shape}",
            "an input of rank 3",
            "place this block before any flatten/dense block, or disable the block that flattens",
        )


def _spatial(size: int, window: int, stride: int, padding: str) -> int:
    return math.ceil(size / stride) if padding == "same" else (size - window) // stride + 1


def _window_out(
    kind: str, shape: Shape, window: tuple[int, int], stride: tuple[int, int], padding: str, channels: int
) -> Shape:
    _need_image(kind, shape)
    if any(window[i] > 2 * shape[i] + 1 for i in (0, 1)):  # TF would grind through a window of padding
        raise ShapeProblem(
            f"{kind} window {window} is more than twice its input {shape}: beyond that it covers only padding",
            f"a window of at most {(2 * shape[0] + 1, 2 * shape[1] + 1)}",
            "use a smaller window",
        )
    h, w = (_spatial(shape[i], window[i], stride[i], padding) for i in (0, 1))
    if h < 1 or w < 1:
        raise ShapeProblem(
            f"{kind} window {window} does not fit its input {shape} with padding '{padding}'",
            f"spatial input of at least {window}",
            "use padding: same, a smaller window, or remove a pooling stage before this block",
        )
    return (h, w, channels)


def _dense_shape(p: dict, s: Shape) -> Shape:
    if not s:
        raise ShapeProblem("dense needs an input with a feature axis", "rank >= 1", "flatten first")
    return (*s[:-1], p["units"])


def _conv_shape(p: dict, s: Shape) -> Shape:
    return _window_out("conv2d", s, _as_pair(p["kernel_size"]), _as_pair(p["strides"]), p["padding"], p["filters"])


def _conv_count(p: dict, s: Shape) -> int:
    kh, kw = _as_pair(p["kernel_size"])
    return kh * kw * s[-1] * p["filters"] + (p["filters"] if p["use_bias"] else 0)


def _pool_shape(p: dict, s: Shape) -> Shape:
    stride = p["strides"] if p["strides"] is not None else p["pool_size"]
    _need_image("pool", s)
    return _window_out("pool", s, _as_pair(p["pool_size"]), _as_pair(stride), p["padding"], s[-1])


def _same(p: dict, s: Shape) -> Shape:
    return s


POS_INT = f"an integer > 0 (at most {MAX_INT})"
POS_PAIR = f"an integer > 0 or a pair [h, w] (at most {MAX_INT})"
PADDING = Param("valid", lambda v: v in ("valid", "same"), "'valid' or 'same'")

REGISTRY: dict[str, BlockType] = {
    t.name: t
    for t in [
        BlockType(
            "dense",
            {
                "units": Param(REQUIRED, _pos_int, POS_INT),
                "activation": ACTIVATION,
                "use_bias": Param(True, _bool, "true or false"),
            },
            _dense_shape,
            lambda p, s: s[-1] * p["units"] + (p["units"] if p["use_bias"] else 0),
            doc="fully connected layer on the last axis",
        ),
        BlockType(
            "conv2d",
            {
                "filters": Param(REQUIRED, _pos_int, POS_INT),
                "kernel_size": Param(3, _pair, POS_PAIR),
                "strides": Param(1, _pair, POS_PAIR),
                "padding": PADDING,
                "activation": ACTIVATION,
                "use_bias": Param(True, _bool, "true or false"),
            },
            _conv_shape,
            _conv_count,
            doc="2-D convolution over (height, width, channels)",
        ),
        BlockType(
            "pool",
            {
                "kind": Param("max", lambda v: v in ("max", "avg"), "'max' or 'avg'"),
                "pool_size": Param(2, _pair, POS_PAIR),
                "strides": Param(None, lambda v: v is None or _pair(v), f"null (= pool_size) or {POS_PAIR}"),
                "padding": PADDING,
            },
            _pool_shape,
            doc="2-D max or average pooling",
        ),
        BlockType("flatten", {}, lambda p, s: (math.prod(s),), doc="flattens all but the batch axis"),
        BlockType(
            "dropout",
            {"rate": Param(REQUIRED, _rate, "a number in [0, 1)")},
            _same,
            doc="zeroes a fraction `rate` of its inputs while training",
        ),
        BlockType(
            "batchnorm",
            {
                "momentum": Param(0.99, _rate, "a number in [0, 1)"),
                "epsilon": Param(1e-3, _positive, "a finite number > 0"),
            },
            _same,
            lambda p, s: 4 * s[-1],
            doc="batch normalization on the last axis",
        ),
        BlockType("identity", {}, _same, doc="passes its input through"),
        BlockType(
            "sequential",
            {
                "blocks": Param(
                    REQUIRED, lambda v: isinstance(v, dict) and bool(v), "a non-empty mapping of named sub-blocks"
                )
            },
            _same,
            is_group=True,
            doc="named sub-blocks applied in order",
        ),
        BlockType(
            "residual",
            {
                "blocks": Param(
                    REQUIRED, lambda v: isinstance(v, dict) and bool(v), "a non-empty mapping of named sub-blocks"
                )
            },
            _same,
            is_group=True,
            doc="x + f(x) over named sub-blocks; f must keep the shape",
        ),
    ]
}
