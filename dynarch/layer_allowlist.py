"""Which Keras layers a config may name through `_target_`, with which keyword arguments. Pure Python.

A module pattern (`keras.layers.*`) is not enough: `keras.layers` also holds layers that run code or read
files (TFSMLayer runs a SavedModel graph, Lambda a Python function, TorchModuleWrapper/JaxLayer/FlaxLayer
foreign modules). So the allowlist names classes, and for each class the keyword arguments it may get.
Values must be plain data; the keys Keras deserializes into objects (activations, initializers,
regularizers, constraints, dtype) accept only Keras' own built-in names. Tables checked against Keras
3.15 by tests/test_spec.py (every class exists, every key is in its signature).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from .errors import ConfigError, did_you_mean

MAX_INT = 2**31 - 1  # TensorFlow shapes, sizes and seeds are int32 in places: refuse bigger ints

# Built-in names Keras 3.15 resolves by string (keras.activations / initializers / regularizers / constraints).
ACTIVATION_NAMES = frozenset(
    {
        "celu",
        "elu",
        "exponential",
        "gelu",
        "glu",
        "hard_shrink",
        "hard_sigmoid",
        "hard_silu",
        "hard_swish",
        "hard_tanh",
        "leaky_relu",
        "linear",
        "log_sigmoid",
        "log_softmax",
        "mish",
        "relu",
        "relu6",
        "selu",
        "sigmoid",
        "silu",
        "soft_shrink",
        "softmax",
        "softplus",
        "softsign",
        "sparse_plus",
        "sparse_sigmoid",
        "sparsemax",
        "squareplus",
        "swish",
        "tanh",
        "tanh_shrink",
        "threshold",
    }
)
INITIALIZER_NAMES = frozenset(
    {
        "Constant",
        "GlorotNormal",
        "GlorotUniform",
        "HeNormal",
        "HeUniform",
        "Identity",
        "LecunNormal",
        "LecunUniform",
        "Ones",
        "Orthogonal",
        "RandomNormal",
        "RandomUniform",
        "TruncatedNormal",
        "VarianceScaling",
        "Zeros",
        "constant",
        "glorot_normal",
        "glorot_uniform",
        "he_normal",
        "he_uniform",
        "identity",
        "lecun_normal",
        "lecun_uniform",
        "normal",
        "one",
        "ones",
        "orthogonal",
        "random_normal",
        "random_uniform",
        "truncated_normal",
        "uniform",
        "variance_scaling",
        "zero",
        "zeros",
    }
)
REGULARIZER_NAMES = frozenset(
    {"L1", "L1L2", "L2", "OrthogonalRegularizer", "l1", "l1l2", "l2", "orthogonal_regularizer"}
)
CONSTRAINT_NAMES = frozenset(
    {"MaxNorm", "MinMaxNorm", "NonNeg", "UnitNorm", "max_norm", "min_max_norm", "non_neg", "unit_norm"}
)
DTYPES = frozenset({"float16", "bfloat16", "float32", "float64", "mixed_float16", "mixed_bfloat16"})
_FAMILIES = {"_initializer": INITIALIZER_NAMES, "_regularizer": REGULARIZER_NAMES, "_constraint": CONSTRAINT_NAMES}

# Layers refused on purpose, with the reason shown to the user.
REFUSED = {
    "TFSMLayer": "loads and runs a SavedModel graph from a file",
    "Lambda": "runs a Python function",
    "TorchModuleWrapper": "wraps a PyTorch module",
    "JaxLayer": "runs JAX functions",
    "FlaxLayer": "wraps a Flax module",
    "Pipeline": "holds other layer objects",
    "TimeDistributed": "wraps another layer object",
    "Bidirectional": "wraps another layer object",
    "RNN": "wraps a cell object",
    "SpectralNormalization": "wraps another layer object",
    "InputLayer": "is created by dynarch itself",
}


def _irc(*weights: str) -> tuple[str, ...]:
    return tuple(f"{w}_{s}" for w in weights for s in ("initializer", "regularizer", "constraint"))


_CONV = (
    "filters",
    "kernel_size",
    "strides",
    "padding",
    "data_format",
    "dilation_rate",
    "activation",
    "use_bias",
    *_irc("kernel", "bias"),
)
_DEPTHWISE = (
    "kernel_size",
    "strides",
    "padding",
    "depth_multiplier",
    "data_format",
    "dilation_rate",
    "activation",
    "use_bias",
    *_irc("depthwise", "bias"),
)
_SEPARABLE = (
    "filters",
    "kernel_size",
    "strides",
    "padding",
    "data_format",
    "dilation_rate",
    "depth_multiplier",
    "activation",
    "use_bias",
)
_POOL = ("pool_size", "strides", "padding", "data_format")
_AFFINE = ("center", "scale", *_irc("beta", "gamma"))
_FILL = ("fill_mode", "interpolation", "seed", "fill_value", "data_format")


def _dims(*names: str) -> list[str]:
    return [n.format(d=d) for n in names for d in (1, 2, 3)]


_TABLE: dict[str, tuple[str, ...]] = {
    "Dense": ("units", "activation", "use_bias", *_irc("kernel", "bias"), "lora_rank", "lora_alpha"),
    "EinsumDense": (
        "equation",
        "output_shape",
        "activation",
        "bias_axes",
        *_irc("kernel", "bias"),
        "lora_rank",
        "lora_alpha",
    ),
    "Identity": (),
    "Activation": ("activation",),
    "ReLU": ("max_value", "negative_slope", "threshold"),
    "LeakyReLU": ("negative_slope",),
    "ELU": ("alpha",),
    "PReLU": (*_irc("alpha"), "shared_axes"),
    "Softmax": ("axis",),
    **{n: (*_CONV, "groups") for n in _dims("Conv{d}D")},
    **{n: (*_CONV, "output_padding") for n in _dims("Conv{d}DTranspose")},
    "DepthwiseConv1D": _DEPTHWISE,
    "DepthwiseConv2D": _DEPTHWISE,
    **{n: (*_SEPARABLE, *_irc("depthwise", "pointwise", "bias")) for n in ("SeparableConv1D", "SeparableConv2D")},
    **{n: _POOL for n in _dims("MaxPooling{d}D", "AveragePooling{d}D", "MaxPool{d}D", "AvgPool{d}D")},
    **{
        n: ("data_format", "keepdims")
        for n in _dims("GlobalMaxPooling{d}D", "GlobalAveragePooling{d}D", "GlobalMaxPool{d}D", "GlobalAvgPool{d}D")
    },
    **{n: ("output_size", "data_format") for n in _dims("AdaptiveMaxPooling{d}D", "AdaptiveAveragePooling{d}D")},
    "BatchNormalization": (
        "axis",
        "momentum",
        "epsilon",
        *_AFFINE,
        "moving_mean_initializer",
        "moving_variance_initializer",
        "renorm",
        "renorm_momentum",
        "synchronized",
    ),
    "LayerNormalization": ("axis", "epsilon", *_AFFINE),
    "GroupNormalization": ("groups", "axis", "epsilon", *_AFFINE),
    "UnitNormalization": ("axis",),
    "RMSNormalization": ("axis", "epsilon"),
    "Flatten": ("data_format",),
    "Reshape": ("target_shape",),
    "Permute": ("dims",),
    "RepeatVector": ("n",),
    "Cropping1D": ("cropping",),
    "Cropping2D": ("cropping", "data_format"),
    "Cropping3D": ("cropping", "data_format"),
    **{n: ("padding", "data_format") for n in _dims("ZeroPadding{d}D")},
    "UpSampling1D": ("size",),
    "UpSampling2D": ("size", "data_format", "interpolation"),
    "UpSampling3D": ("size", "data_format"),
    "Dropout": ("rate", "noise_shape", "seed"),
    "AlphaDropout": ("rate", "noise_shape", "seed"),
    "SpatialDropout1D": ("rate", "seed"),
    "SpatialDropout2D": ("rate", "data_format", "seed"),
    "SpatialDropout3D": ("rate", "data_format", "seed"),
    "GaussianNoise": ("stddev", "seed"),
    "GaussianDropout": ("rate", "seed"),
    "ActivityRegularization": ("l1", "l2"),
    "RandomFlip": ("mode", "seed", "data_format"),
    "RandomRotation": ("factor", *_FILL),
    "RandomTranslation": ("height_factor", "width_factor", *_FILL),
    "RandomZoom": ("height_factor", "width_factor", *_FILL),
    "RandomContrast": ("factor", "value_range", "seed"),
    "RandomBrightness": ("factor", "value_range", "seed"),
    "RandomCrop": ("height", "width", "seed", "data_format"),
    "CenterCrop": ("height", "width", "data_format"),
    "Resizing": (
        "height",
        "width",
        "interpolation",
        "crop_to_aspect_ratio",
        "pad_to_aspect_ratio",
        "fill_mode",
        "fill_value",
        "antialias",
        "data_format",
    ),
    "Rescaling": ("scale", "offset"),
}
BASE_KEYS = ("trainable", "dtype", "activity_regularizer")  # accepted by every Keras layer

# The public allowlist: Keras layer class names a config may name (`_target_: keras.layers.<Name>`).
ALLOWED_LAYERS: frozenset[str] = frozenset(_TABLE)
LAYER_KEYS: dict[str, frozenset[str]] = {name: frozenset((*keys, *BASE_KEYS)) for name, keys in _TABLE.items()}


def _refuse(where: str, problem: str, expected: str, received: Any, fix: str) -> ConfigError:
    return ConfigError(where, problem, expected=expected, received=received, fix=fix)


def check_class(where: str, class_name: Any) -> None:
    """Refuse a class name that is not on ALLOWED_LAYERS; `where` is the block key (model.blocks.x)."""
    if isinstance(class_name, str) and class_name in ALLOWED_LAYERS:
        return
    why = REFUSED.get(class_name) if isinstance(class_name, str) else None
    reason = f" (it {why})" if why else ""
    examples = "Dense, Conv2D, MaxPooling2D, BatchNormalization, Dropout, RandomFlip, Rescaling"
    raise _refuse(
        f"{where}._target_",
        f"keras.layers.{class_name} is not on the allowlist of layer classes{reason}."
        f"{did_you_mean(class_name, ALLOWED_LAYERS)}",
        f"a layer that holds no code or file reference, e.g. {examples} "
        f"({len(ALLOWED_LAYERS)} allowed; see dynarch.blocks.ALLOWED_LAYERS)",
        f"keras.layers.{class_name}",
        "use an allowed layer or a registered block type",
    )


def _named(where: str, key: str, value: Any, names: frozenset[str], kind: str) -> None:
    """A value Keras deserializes: a built-in name, or {class_name: <built-in>, config: {plain values}}."""
    expected = (
        f"one of {', '.join(sorted(n for n in names if n[0].islower()))} (or {{class_name: <built-in>, "
        "config: {plain values}}; no module, no registered_name, no custom objects)"
    )
    if isinstance(value, str) and value in names:
        return
    if isinstance(value, Mapping):
        extra = sorted(set(value) - {"class_name", "config"})
        config = value.get("config", {})
        if extra or not isinstance(config, Mapping) or not all(_plain(v) for v in config.values()):
            raise _refuse(
                f"{where}.{key}",
                f"'{key}' as a mapping may hold only class_name and a config of plain "
                f"values{' (not ' + ', '.join(extra) + ')' if extra else ''}: a config cannot name "
                "modules or custom objects",
                expected,
                value,
                f"remove {', '.join(extra) or 'the nesting'} from {where}.{key}",
            )
        if value.get("class_name") in names:
            return
        value = value.get("class_name")
    raise _refuse(
        f"{where}.{key}",
        f"'{key}' must name a built-in Keras {kind}.{did_you_mean(value, names)}",
        expected,
        value,
        f"set {where}.{key} to a built-in {kind} name",
    )


def _plain(value: Any) -> bool:
    """Numbers (finite, within int32), strings, booleans, null, and lists of them."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return True
    if isinstance(value, int):
        return abs(value) <= MAX_INT
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    return False


# String options Keras does not check itself: RandomFlip(mode="diagonal") builds and silently flips nothing.
CHOICES = {("RandomFlip", "mode"): ("horizontal", "vertical", "horizontal_and_vertical")}


def check_layer_config(where: str, class_name: str, kwargs: Mapping[str, Any]) -> None:
    """Refuse a layer class off the allowlist, keys it does not take, and values that are not plain data.

    Args:
        where: the block's config key, e.g. "model.blocks.stage1.blocks.aug"; errors name `where.<key>`.
        class_name: the class name after `keras.layers.` (e.g. "RandomFlip").
        kwargs: the keyword arguments the layer would be built with (without `name`).
    """
    check_class(where, class_name)
    allowed = LAYER_KEYS[class_name]
    for key, value in kwargs.items():
        if key not in allowed:
            raise _refuse(
                f"{where}.{key}",
                f"keras.layers.{class_name} does not take '{key}' from a config.{did_you_mean(key, allowed)}",
                f"one of {', '.join(sorted(allowed))}",
                key,
                f"rename or remove {where}.{key}",
            )
        if value is None:
            continue
        choices = CHOICES.get((class_name, key))
        if choices and value not in choices:
            raise _refuse(
                f"{where}.{key}",
                f"keras.layers.{class_name} has no {key} {value!r}",
                f"one of {', '.join(choices)}",
                value,
                f"set {where}.{key} to one of those",
            )
        family = next((names for suffix, names in _FAMILIES.items() if key.endswith(suffix)), None)
        if key == "activation" or key.endswith("_activation"):
            _named(where, key, value, ACTIVATION_NAMES, "activation")
        elif family is not None:
            _named(where, key, value, family, key.rsplit("_", 1)[1])
        elif key == "dtype" and not (isinstance(value, str) and value in DTYPES):
            raise _refuse(
                f"{where}.dtype",
                "dtype must be a plain dtype name",
                f"one of {', '.join(sorted(DTYPES))}",
                value,
                f"set {where}.dtype to float32 or remove it",
            )
        elif not _plain(value):
            raise _refuse(
                f"{where}.{key}",
                f"'{key}' must be plain data",
                f"a finite number, an integer within [-{MAX_INT}, {MAX_INT}], a string, a boolean, "
                "null, or a list of those (no mappings, no objects)",
                value,
                f"fix {where}.{key}",
            )


def _ints(value: Any, rank: int) -> tuple[int, ...] | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,) * rank
    if isinstance(value, (list, tuple)) and len(value) == rank and all(isinstance(v, int) for v in value):
        return tuple(value)
    return None


def estimate_params(class_name: str, kwargs: Mapping[str, Any], in_shape: tuple[int, ...]) -> int | None:
    """Parameters a weight-heavy layer would allocate on `in_shape` (None when not estimated).

    Used only to refuse absurd sizes before Keras allocates them; Keras' own count is the one reported.
    """
    units = kwargs.get("units", kwargs.get("filters"))
    bias = 0 if kwargs.get("use_bias") is False else 1
    if not in_shape or not all(isinstance(d, int) for d in in_shape):
        return None
    channels = in_shape[-1]
    if class_name == "Dense" and isinstance(units, int):
        return channels * units + bias * units
    rank = next((d for d in (1, 2, 3) if class_name.endswith(f"{d}D") or class_name.endswith(f"{d}DTranspose")), 0)
    kernel = _ints(kwargs.get("kernel_size"), rank) if rank else None
    if kernel is None:
        return None
    window = math.prod(kernel)
    if class_name.startswith("Conv") and isinstance(units, int):
        return window * channels * units + bias * units
    multiplier = kwargs.get("depth_multiplier", 1)
    if not isinstance(multiplier, int):
        return None
    if class_name.startswith("Depthwise"):
        return window * channels * multiplier + bias * channels * multiplier
    if class_name.startswith("Separable") and isinstance(units, int):
        return window * channels * multiplier + channels * multiplier * units + bias * units
    return None


def check_windows(where: str, class_name: str, kwargs: Mapping[str, Any], in_shape: tuple[int, ...]) -> None:
    """Refuse a kernel or pool window more than twice the input's spatial size: beyond that it covers only
    padding, and TensorFlow grinds through it (a 2e9 pool window hangs). Channels-last inputs only."""
    rank = next((d for d in (1, 2, 3) if f"{d}D" in class_name), 0)
    if not rank or len(in_shape) != rank + 1 or kwargs.get("data_format") == "channels_first":
        return
    for key in ("kernel_size", "pool_size"):
        window = _ints(kwargs.get(key), rank)
        if window and any(w > 2 * d + 1 for w, d in zip(window, in_shape)):
            raise _refuse(
                f"{where}.{key}",
                f"{key} {kwargs[key]} is more than twice the input {in_shape}: beyond "
                "that the window covers only padding",
                f"at most {tuple(2 * d + 1 for d in in_shape[:-1])}",
                kwargs[key],
                f"use a smaller {where}.{key}",
            )
