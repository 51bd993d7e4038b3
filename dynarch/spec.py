"""ArchSpec: the composed `model` config as a typed, validated tree with shapes inferred. No TensorFlow.

Every check that can be made without building the model is made here, so a bad variant fails in well
under a second, with the block path, the key, what was expected and received, and the fix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

from .blocks import (
    BLOCK_NAME,
    COMMON_KEYS,
    MAX_ACTIVATION,
    REGISTRY,
    REQUIRED,
    RESERVED_NAMES,
    TARGET_KEYS,
    TARGET_PATTERN,
    Shape,
    ShapeProblem,
    check_layer_config,
    check_model_name,
    check_sizes,
    dims_ok,
)
from .errors import ConfigError, did_you_mean, shown, unknown_key_error

MODEL_KEYS = ("name", "input_shape", "blocks")


@dataclass(frozen=True)
class BlockSpec:
    """One named block. `path` ("stage1/conv") is its Keras layer name chain and variable-path prefix."""

    name: str
    path: str
    type: str  # a REGISTRY name, or "target" for a `_target_` Keras layer
    params: Mapping[str, Any]  # validated values with defaults filled in (group children excluded)
    enabled: bool  # effective: false also when a parent group is disabled
    optional: bool
    input_shape: Shape | None
    output_shape: Shape | None
    num_params: int | None  # None when the shape is unknown before build
    children: tuple["BlockSpec", ...] = ()
    target: str | None = None

    @property
    def is_group(self) -> bool:
        return self.type in ("sequential", "residual")


@dataclass(frozen=True)
class ArchSpec:
    """A whole model: input shape, class count and the ordered top-level blocks."""

    name: str
    input_shape: Shape
    num_classes: int
    blocks: tuple[BlockSpec, ...]
    raw: Mapping[str, Any] = field(repr=False, compare=False, default_factory=dict)  # for manifests

    def walk(self) -> Iterator[tuple[int, BlockSpec]]:
        """Yield (depth, block) for every block, parents before children."""

        def rec(blocks, depth):
            for b in blocks:
                yield depth, b
                yield from rec(b.children, depth + 1)

        yield from rec(self.blocks, 0)

    @property
    def output_shape(self) -> Shape | None:
        return self.blocks[-1].output_shape if self.blocks else self.input_shape

    @property
    def num_params(self) -> int | None:
        counts = [b.num_params for b in self.blocks]
        return None if None in counts else sum(counts)

    @property
    def forward_flops(self) -> int | None:
        """Forward FLOPs per sample (2 x multiply-adds of dense and conv blocks); None if a shape is unknown."""
        total = 0
        for _, b in self.walk():
            if not b.enabled or b.is_group or b.type not in ("dense", "conv2d"):
                continue
            if b.input_shape is None or b.output_shape is None:
                return None
            if b.type == "dense":
                total += 2 * math.prod(b.input_shape) * b.params["units"]
            else:
                k = b.params["kernel_size"]
                kh, kw = (k, k) if isinstance(k, int) else k
                total += 2 * kh * kw * b.input_shape[-1] * math.prod(b.output_shape)
        return total

    def enabled_paths(self) -> list[str]:
        """Paths of enabled leaf blocks (groups are listed through their children)."""
        return [b.path for _, b in self.walk() if b.enabled and not b.is_group]


def _check_flag(where: str, raw: Mapping, key: str, default: bool) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(
            f"{where}.{key}",
            f"'{key}' must be a boolean",
            expected="true or false",
            received=value,
            fix=f"set {where}.{key}=true or false",
        )
    return value


def _parse_block(
    name: str,
    raw: Any,
    where: str,
    prefix: str,
    in_shape: Shape | None,
    parent_enabled: bool,
    siblings_of: list[str] = (),
) -> BlockSpec:
    path = f"{prefix}{name}"
    if not BLOCK_NAME.match(name):
        raise ConfigError(
            where,
            f"block name '{name}' is not a valid identifier",
            expected="ASCII letters, digits and underscores, not starting with a digit, at most 100 characters",
            received=name,
            fix="rename the block (its name becomes the Keras layer name)",
        )
    if not prefix and name in RESERVED_NAMES:
        raise ConfigError(
            where,
            f"a top-level block cannot be named '{name}': Keras names the model's Input "
            "layer so, and refuses a second layer of that name",
            expected=f"a name other than {', '.join(sorted(RESERVED_NAMES))}",
            received=name,
            fix=f"rename the block, e.g. '{name}_block'",
        )
    if not isinstance(raw, Mapping):
        raise ConfigError(
            where,
            "a block must be a mapping with a 'type' (or '_target_')",
            expected="e.g. {type: dense, units: 128}",
            received=raw,
            fix=f"write {where} as a mapping",
        )
    if "type" not in raw and "_target_" not in raw:
        siblings = f" (the model's blocks here: {', '.join(siblings_of)})" if siblings_of else ""
        raise ConfigError(
            where,
            f"block '{path}' does not exist in this model (it has neither 'type' nor '_target_')",
            expected=f"type: one of {', '.join(REGISTRY)}",
            received=dict(raw),
            fix="if an arch patch names this block, it does not exist in this model"
            f"{siblings}: pick a variant made for this model, or add a type",
        )
    optional = _check_flag(where, raw, "optional", False)
    enabled = _check_flag(where, raw, "enabled", True)
    if not enabled and not optional:
        raise ConfigError(
            f"{where}.enabled",
            f"block '{path}' is disabled but is not optional",
            expected="enabled: true, or `optional: true` in the model config",
            received="enabled: false",
            fix=f"mark {where}.optional=true in the model file if the model works without it",
        )
    live = enabled and parent_enabled

    if "_target_" in raw:
        return _parse_target(name, raw, where, path, in_shape, optional, live)
    btype = raw.get("type")
    if btype not in REGISTRY:
        raise ConfigError(
            f"{where}.type",
            f"unknown block type '{btype}'.{did_you_mean(btype, REGISTRY)}",
            expected=f"one of {', '.join(REGISTRY)}, or `_target_: keras.layers.<Name>`",
            received=btype,
            fix=f"set {where}.type to a registered type",
        )
    spec = REGISTRY[btype]
    allowed = set(COMMON_KEYS) | set(spec.params)
    for key in raw:
        if key not in allowed:
            raise unknown_key_error(where, key, allowed)
    params: dict[str, Any] = {}
    for key, param in spec.params.items():
        if key not in raw and param.default is REQUIRED:
            raise ConfigError(
                f"{where}.{key}",
                f"missing required key '{key}' for a {btype} block",
                expected=param.expected,
                received="nothing",
                fix=f"add {key}: ... to {where}",
            )
        value = raw.get(key, param.default)
        if key != "blocks" and not param.check(value):
            raise ConfigError(
                f"{where}.{key}",
                f"invalid value for '{key}'",
                expected=param.expected,
                received=shown(value),
                fix=f"set {where}.{key} to {param.expected}",
            )
        params[key] = value

    children: tuple[BlockSpec, ...] = ()
    out_shape: Shape | None
    if spec.is_group:
        if not spec.params["blocks"].check(params["blocks"]):
            raise ConfigError(
                f"{where}.blocks",
                "a group needs named sub-blocks",
                expected=spec.params["blocks"].expected,
                received=params["blocks"],
                fix=f"add sub-blocks under {where}.blocks",
            )
        children = _parse_blocks(params.pop("blocks"), f"{where}.blocks", f"{path}/", in_shape, live)
        # x + f(x) keeps x's shape; a sequential group ends where its last child does.
        out_shape = children[-1].output_shape if live and btype == "sequential" else in_shape
        inner = children[-1].output_shape
        if btype == "residual" and live and None not in (in_shape, inner) and inner != in_shape:
            raise ConfigError(
                where,
                f"residual block '{path}' changes the shape {in_shape} -> {inner}",
                expected=f"its sub-blocks to return {in_shape} so that x + f(x) is defined",
                received=inner,
                fix="make the last sub-block keep the width, or use type: sequential",
            )
        counts = [c.num_params for c in children]
        num_params = (None if None in counts else sum(counts)) if live else 0
    elif not live:  # an identity slot: the shape passes through unchanged
        out_shape, num_params = in_shape, 0
    elif in_shape is None:  # after a `_target_` layer with no declared shape: Keras checks at build
        out_shape, num_params = None, None
    else:
        try:
            out_shape = spec.infer(params, in_shape)
        except ShapeProblem as e:
            raise ConfigError(
                where,
                f"shape cannot flow into block '{path}': {e.problem}",
                expected=e.expected,
                received=f"input shape {in_shape}",
                fix=e.fix,
            ) from None
        num_params = spec.count(params, in_shape)
    return BlockSpec(name, path, btype, params, live, optional, in_shape, out_shape, num_params, children)


def _parse_target(
    name: str, raw: Mapping, where: str, path: str, in_shape: Shape | None, optional: bool, live: bool
) -> BlockSpec:
    target = raw["_target_"]
    if not isinstance(target, str) or not TARGET_PATTERN.match(target):
        raise ConfigError(
            f"{where}._target_",
            "`_target_` may only name a Keras layer class",
            expected="keras.layers.<ClassName> (configs cannot call other Python)",
            received=target,
            fix="use a registered block type or a keras.layers class",
        )
    if "type" in raw:
        raise ConfigError(
            where,
            "a block has either 'type' or '_target_', not both",
            expected="one of them",
            received=f"type={raw['type']}, _target_={target}",
            fix=f"remove {where}.type",
        )
    class_name = target.rsplit(".", 1)[1]
    # EinsumDense has its own `output_shape` argument: it goes to the layer, and Keras checks it at build.
    own = ("output_shape",) if class_name == "EinsumDense" else ()
    kwargs = {k: v for k, v in raw.items() if k not in TARGET_KEYS or k in own}
    if "name" in kwargs:
        raise ConfigError(
            f"{where}.name",
            "a block's layer name is its config key",
            expected="no 'name' key",
            received=kwargs["name"],
            fix=f"remove {where}.name",
        )
    check_layer_config(where, class_name, kwargs)
    declared = None if own else raw.get("output_shape")
    if declared is None or not live:
        out_shape = in_shape if not live else None
    elif declared == "same":
        out_shape = in_shape
    elif isinstance(declared, (list, tuple)) and dims_ok(declared):
        out_shape = tuple(declared)
    else:
        raise ConfigError(
            f"{where}.output_shape",
            "invalid declared output shape",
            expected="null (checked at build), 'same', or a list of positive ints",
            received=declared,
            fix=f"fix {where}.output_shape",
        )
    return BlockSpec(
        name, path, "target", kwargs, live, optional, in_shape, out_shape, 0 if not live else None, target=target
    )


def _parse_blocks(
    raw: Any, where: str, prefix: str, in_shape: Shape | None, parent_enabled: bool = True
) -> tuple[BlockSpec, ...]:
    if not isinstance(raw, Mapping) or not raw:
        raise ConfigError(
            where,
            "blocks must be a non-empty mapping keyed by block name",
            expected="{flatten: {type: flatten}, head: {type: dense, units: 10}}",
            received=raw,
            fix=f"write {where} as a mapping of named blocks",
        )
    out: list[BlockSpec] = []
    shape = in_shape
    for name, block_raw in raw.items():
        typed = [str(k) for k, v in raw.items() if isinstance(v, Mapping) and ("type" in v or "_target_" in v)]
        block = _parse_block(str(name), block_raw, f"{where}.{name}", prefix, shape, parent_enabled, typed)
        out.append(block)
        shape = block.output_shape
    return tuple(out)


def parse_arch(model: Mapping[str, Any], num_classes: int, where: str = "model") -> ArchSpec:
    """Validate a plain `model` mapping and infer every block's shape.

    Args:
        model: the composed `model` config as plain containers (name, input_shape, blocks).
        num_classes: classes in the dataset; the final block must output exactly this many.
        where: config key prefix used in error messages.

    Returns:
        The ArchSpec. Raises ConfigError on the first problem found.
    """
    for key in model:
        if key not in MODEL_KEYS:
            raise unknown_key_error(where, key, MODEL_KEYS)
    shape = model.get("input_shape")
    if not (isinstance(shape, (list, tuple)) and shape and dims_ok(shape)):
        raise ConfigError(
            f"{where}.input_shape",
            "input_shape must be a list of positive integers",
            expected=f"e.g. [28, 28, 1], at most {MAX_ACTIVATION:,} values per sample",
            received=shape,
            fix=f"set {where}.input_shape",
        )
    input_shape = tuple(shape)
    name = check_model_name(model.get("name", "model"), f"{where}.name")
    blocks = _parse_blocks(model.get("blocks"), f"{where}.blocks", "", input_shape)
    spec = ArchSpec(name, input_shape, num_classes, blocks, raw=dict(model))
    check_sizes(spec.walk(), where)
    out = spec.output_shape
    if out is not None and out != (num_classes,):
        last = next((b for b in reversed(blocks) if b.enabled), blocks[-1])
        hint = (
            f"set {where}.blocks.{last.name}.units={num_classes}"
            if last.type == "dense"
            else "end the model with a flatten and a dense head of that many units"
        )
        raise ConfigError(
            f"{where}.blocks.{last.name}",
            f"the model outputs shape {out} but the data has {num_classes} classes",
            expected=f"final output shape ({num_classes},)",
            received=out,
            fix=hint,
        )
    return spec


@dataclass(frozen=True)
class Row:
    """One line of the model table (the inspect printout and the run's model.md)."""

    depth: int
    path: str
    kind: str  # the block type, or the Keras class name of a `_target_` block
    status: str  # enabled | identity
    shape: str  # output shape, "?" when known only after build
    params: int | None  # None: unknown before build


def table_rows(spec: ArchSpec, count: Callable[[int, BlockSpec], int | None] | None = None) -> list[Row]:
    """The model table's rows. `count(depth, block)` overrides the spec's parameter count (build.py passes
    Keras' own count); without it, the spec's count (None where only Keras knows)."""
    rows = []
    for depth, b in spec.walk():
        kind = b.target.split(".")[-1] if b.target else b.type
        shape = "?" if b.output_shape is None else str(tuple(b.output_shape))
        params = count(depth, b) if count is not None else b.num_params
        rows.append(Row(depth, b.path, kind, "enabled" if b.enabled else "identity", shape, params))
    return rows


def describe(spec: ArchSpec) -> list[tuple[str, str, str, str, str]]:
    """Rows (block, type, status, output shape, params) as text, from the spec alone."""
    return [
        ("  " * r.depth + r.path, r.kind, r.status, r.shape, "?" if r.params is None else f"{r.params:,}")
        for r in table_rows(spec)
    ]
