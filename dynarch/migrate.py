"""Weight migration by variable path between any two variants, with a complete report.

Every target variable is *copied* (same path and shape), *adapted* (Net2WiderNet widening, truncation,
fan-in remapped after an upstream width change) or *re-initialized* (a new block — as an identity map
when widths allow, Net2DeeperNet; a new residual branch with its last layer zeroed so that x + f(x) = x;
or a shape that cannot be carried); every source variable that the target lacks is *dropped*. Each
adapted variable records the index maps it was built with (`Entry.index_map`: take along axis -1 for
widened/truncated units, along axis -2 for fan-in rows), so the optimizer slots can follow the same map.
`identity_init` marks re-initializations that are exactly function-preserving; strict mode accepts only
those. The planning is numpy only; nothing here imports TensorFlow at module import time, and
`check_source_before_build` decides strict mode from the config and the source checkpoint alone.

Optimizer state (`optimizer_state`, `migrate_optimizer`, used at a phase boundary inside one run):
slots of copied variables are carried exactly; slots of adapted variables are taken with the variable's
own index map; new or re-initialized variables get the new optimizer's fresh slots (zeros for Adam, SGD,
RMSprop); the iteration count is carried, so learning-rate schedules continue where they were.
Fan-in rows that Net2WiderNet divided by their replication count keep *undivided* slots: after the
widening the replicas have identical activations and the layer's output is unchanged, so the gradient of
each replicated fan-in row equals the gradient the original row would get — the original row's slots
(Adam m and v) are its consistent history. (The widened layer's own replicated output units see 1/c of
the original gradient, c = replication count; their slots are copied unscaled too: Adam's step m/sqrt(v)
is invariant to a common scale of the gradient, so the replicas take the original unit's step size, and
the difference fades with the moment decay rates.)

    python -m dynarch.migrate RUN_DIR --to +arch=deep --dry-run
    python -m dynarch.migrate RUN_DIR --to +arch=deep --out NEW_CKPT [--force]
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .checkpoint import MANIFEST, WEIGHTS, Checkpoint, check_finite, load_checkpoint
from .errors import CheckpointError, ConfigError, DynarchError
from .spec import ArchSpec, BlockSpec

ACTIONS = ("copied", "adapted", "reinitialized", "dropped")
CHANNEL_KEEPING = ("dropout", "identity", "pool")      # pass a feature mapping through unchanged
NONNEG_ACTIVATIONS = ("relu", "relu6", "sigmoid", "softmax", "hard_sigmoid", "softplus", "exponential")
ZERO_AT_ZERO = (None, "linear", "relu", "relu6", "leaky_relu", "elu", "selu", "gelu", "silu", "swish", "mish",
                "tanh", "softsign")                     # act(0) == 0: a zeroed layer outputs exactly 0
KEEPS_ZERO = ("dropout", "identity", "pool", "batchnorm")  # 0 in, 0 out (a fresh batchnorm: beta = mean = 0)
VECTOR_LEAVES = ("bias", "gamma", "beta", "moving_mean", "moving_variance")
IndexMap = list  # [[axis, [source index per target position]], ...] applied in order


@dataclass
class Entry:
    path: str
    action: str                      # one of ACTIONS
    detail: str
    source_shape: list[int] | None = None
    target_shape: list[int] | None = None
    identity_init: bool = False      # re-initialized, but exactly function-preserving: nothing was lost
    index_map: IndexMap | None = None  # adapted: how the value was taken from the source (see apply_index_map)


def apply_index_map(value: np.ndarray, index_map: IndexMap | None) -> np.ndarray:
    """Take `value` along each recorded axis in turn: what an adapted variable did to its source value
    (before any division of fan-in rows), reusable for its optimizer slots."""
    for axis, index in index_map or []:
        value = np.take(value, np.asarray(index, dtype=np.int64), axis=axis)
    return value


@dataclass
class MigrationReport:
    source: str
    source_variant: str
    target_variant: str
    entries: list[Entry] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {a: sum(e.action == a for e in self.entries) for a in ACTIONS}

    def not_carried(self) -> list[Entry]:
        """What strict mode refuses: dropped source variables and randomly re-initialized target ones."""
        return [e for e in self.entries if e.action == "dropped"
                or (e.action == "reinitialized" and not e.identity_init)]

    def to_markdown(self) -> str:
        c = self.counts()
        lines = [f"# Migration {self.source_variant} -> {self.target_variant}", "",
                 f"source: `{self.source}`", "",
                 f"copied {c['copied']}, adapted {c['adapted']}, re-initialized {c['reinitialized']}, "
                 f"dropped {c['dropped']}", ""]
        lines += [f"- {n}" for n in self.notes] + ([""] if self.notes else [])
        lines += ["| variable | action | detail | source shape | target shape |", "|---|---|---|---|---|"]
        for e in self.entries:
            fmt = lambda s: "—" if s is None else str(tuple(s))
            lines.append(f"| {e.path} | {e.action} | {e.detail} | {fmt(e.source_shape)} | {fmt(e.target_shape)} |")
        return "\n".join(lines) + "\n"

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "counts": self.counts()}


@dataclass
class _Mapping:
    """Target features -> source features for the activations flowing between blocks."""
    index: np.ndarray                # index[j] = source feature feeding target feature j
    divisor: np.ndarray              # how many target features share that source feature

    def flatten(self, spatial: int, source_channels: int) -> "_Mapping":
        pos = np.repeat(np.arange(spatial), len(self.index))
        return _Mapping(pos * source_channels + np.tile(self.index, spatial), np.tile(self.divisor, spatial))


def _widen_mapping(src_width: int, tgt_width: int, rng: np.random.Generator) -> _Mapping:
    """Net2WiderNet: keep the first units, replicate random ones; or keep the first units when shrinking."""
    if tgt_width <= src_width:
        index = np.arange(tgt_width)
    else:
        index = np.concatenate([np.arange(src_width), rng.integers(0, src_width, tgt_width - src_width)])
    counts = np.bincount(index, minlength=src_width)
    return _Mapping(index, counts[index].astype(np.float64) if tgt_width > src_width else np.ones(tgt_width))


def _leaf_blocks(blocks) -> list[BlockSpec]:
    """Enabled leaf blocks in order, descending into enabled groups."""
    out: list[BlockSpec] = []
    for b in blocks:
        if b.enabled:
            out.extend(_leaf_blocks(b.children) if b.is_group else [b])
    return out


def _identity_kernel(block: BlockSpec, shape: tuple[int, ...]) -> np.ndarray | None:
    """Identity-map kernel for a new dense/conv block whose input and output widths agree, else None."""
    if len(shape) < 2 or shape[-1] != shape[-2]:
        return None
    if block.type == "dense":
        return np.eye(shape[-1], dtype=np.float32)
    kh, kw = shape[0], shape[1]
    if block.params["padding"] != "same" or kh % 2 == 0 or kw % 2 == 0 or block.params["strides"] not in (1, [1, 1]):
        return None
    kernel = np.zeros(shape, np.float32)
    kernel[kh // 2, kw // 2] = np.eye(shape[-1], dtype=np.float32)
    return kernel


def _check_source_tensors(source: Checkpoint, target_shapes: dict[str, tuple[int, ...]]) -> None:
    """Refuse source tensors no dynarch model can take: non-float weights, vectors that are not rank 1,
    kernels that are not rank 2 (dense) or 4 (conv2d). The file and the variable are named."""
    where = str(Path(source.path) / WEIGHTS)
    for path, value in source.tensors.items():
        leaf = path.rsplit("/", 1)[-1]
        if path not in target_shapes and leaf not in VECTOR_LEAVES + ("kernel",):
            continue  # not a weight this planner reads
        rank_ok = value.ndim == 1 if leaf in VECTOR_LEAVES else value.ndim in (2, 4) if leaf == "kernel" else True
        if value.dtype.kind != "f" or not rank_ok:
            want = "rank 1" if leaf in VECTOR_LEAVES else "rank 2 or 4" if leaf == "kernel" else "any rank"
            raise CheckpointError(where, f"tensor '{path}' cannot initialize a model variable",
                                  expected=f"a floating-point tensor of {want}",
                                  received=f"{value.dtype} of shape {tuple(value.shape)}",
                                  fix="use a checkpoint written by dynarch (this one was altered or is foreign)")


class _Planner:
    """One walk over the target's blocks, tracking how the features flowing between blocks relate to the
    source's (`mapping`), their source width, and whether they are known to be >= 0 (`nonneg`: dynarch
    feeds uint8 images scaled to [0, 1], and ReLU-like outputs stay >= 0)."""

    def __init__(self, src, target_shapes, new_blocks, rng, head):
        self.src, self.shapes, self.new_blocks, self.rng, self.head = src, target_shapes, new_blocks, rng, head
        self.values: dict[str, np.ndarray] = {}
        self.entries: dict[str, Entry] = {}
        self.mapping: _Mapping | None = None
        self.src_channels: int | None = None
        self.nonneg = True

    def put(self, path, action, detail, value=None, identity_init=False, index_map=None):
        src = self.src
        self.entries[path] = Entry(path, action, detail, list(src[path].shape) if path in src else None,
                                   list(self.shapes[path]), identity_init, index_map)
        if value is not None:
            self.values[path] = np.asarray(value, dtype=src[path].dtype if path in src else np.float32)

    def walk(self, blocks) -> None:
        for block in blocks:
            if not block.enabled:
                continue
            if block.type == "sequential":
                self.walk(block.children)
            elif block.type == "residual":
                self.residual(block)
            else:
                self.leaf(block)

    def residual(self, group: BlockSpec) -> None:
        """x + f(x): exact-shape copies inside (or Net2Net within the branch); a branch the source lacks
        starts as f(x) = 0 so the sum is x."""
        nonneg_in = self.nonneg
        prefix = group.path + "/"
        if self.new_blocks == "identity" and not any(p.startswith(prefix) for p in self.src):
            exact = self.new_branch(group)  # always runs: it writes the branch's entries
            self.nonneg = nonneg_in and exact
        else:
            self.mapping = None
            self.walk(group.children)
            self.nonneg = nonneg_in and self.nonneg
        self.mapping = None

    def new_branch(self, group: BlockSpec) -> bool:
        """Zero the branch's last weighted layer (kernel and bias); returns whether f(x) = 0 exactly."""
        leaves = _leaf_blocks(group.children)
        weighted = [b for b in leaves if b.type in ("dense", "conv2d") and f"{b.path}/kernel" in self.shapes]
        paths = sorted(p for p in self.shapes if p.startswith(group.path + "/"))
        if not weighted:
            for p in paths:
                self.put(p, "reinitialized", "new block: fresh initialization (a new residual branch with no "
                                             "dense/conv layer to zero)")
            return False
        last = weighted[-1]
        act = last.params.get("activation")
        problems = [f"{act}(0) != 0"] if act not in ZERO_AT_ZERO else []
        problems += [f"{b.path} after it may not map 0 to 0" for b in leaves[leaves.index(last) + 1:]
                     if b.type not in KEEPS_ZERO]
        exact = not problems
        for p in paths:
            if p.rsplit("/", 1)[0] == last.path:
                detail = "new residual branch: last layer zeroed (f(x) = 0)" + (
                    "" if exact else f", approximate: {'; '.join(problems)}")
                self.put(p, "reinitialized", detail, np.zeros(self.shapes[p], np.float32), identity_init=exact)
            else:
                self.put(p, "reinitialized", "new residual branch: fresh initialization (the branch's last "
                                             "layer is zeroed)", identity_init=exact)
        return exact

    def leaf(self, block: BlockSpec) -> None:
        if block.type in CHANNEL_KEEPING:
            return
        if block.type == "flatten":
            if self.mapping is not None and block.input_shape:
                spatial = int(np.prod(block.input_shape[:-1]))
                self.mapping = self.mapping.flatten(spatial, self.src_channels)
                self.src_channels = spatial * self.src_channels
            return
        if block.type == "target":
            self.mapping = None  # arbitrary layers: only exact-shape copies are safe
        if block.type in ("dense", "conv2d") and f"{block.path}/kernel" in self.shapes:
            self.weighted(block)
            return
        for p in sorted(p for p in self.shapes if p.rsplit("/", 1)[0] == block.path):
            self.per_channel(block, p)
        self.nonneg = False
        if block.type != "batchnorm":  # normalization keeps channels, so the mapping survives it
            self.mapping = None

    def per_channel(self, block: BlockSpec, p: str) -> None:
        """batchnorm, `_target_` layers: per-channel vectors follow the widened input, or exact copies."""
        src, m = self.src, self.mapping
        if p in src and m is not None and block.type == "batchnorm" and src[p].ndim == 1 \
                and len(m.index) == self.shapes[p][0] and src[p].shape[0] == self.src_channels:
            self.put(p, "adapted", "per-channel values follow the widened input (Net2WiderNet)", src[p][m.index],
                     index_map=[[-1, m.index.tolist()]])
        elif p in src and tuple(src[p].shape) == tuple(self.shapes[p]):
            self.put(p, "copied", "same path and shape", src[p])
        elif p in src:
            self.put(p, "reinitialized", f"shape changed {tuple(src[p].shape)} -> {tuple(self.shapes[p])}")
        else:
            self.put(p, "reinitialized", "new block: fresh initialization")

    def weighted(self, block: BlockSpec) -> None:
        """Dense / conv2d. The head's output units are classes, not features: never replicated or truncated."""
        kpath, bpath = f"{block.path}/kernel", f"{block.path}/bias"
        tk = tuple(self.shapes[kpath])
        act = block.params.get("activation")
        out_nonneg = act in NONNEG_ACTIVATIONS
        if kpath not in self.src:
            self.new_weighted(block, kpath, bpath, tk, act)
            return
        src, m = self.src, self.mapping
        kernel, how, index_map = src[kpath], [], []
        if m is not None and kernel.ndim >= 2 and kernel.shape[-2] == self.src_channels and len(m.index) == tk[-2]:
            shape = [1] * kernel.ndim
            shape[-2] = -1
            kernel = kernel.take(m.index, axis=-2) / m.divisor.reshape(shape)
            index_map.append([-2, m.index.tolist()])
            how.append("fan-in follows the widened input (rows divided by replication)"
                       if (m.divisor > 1).any() else "fan-in follows the input's kept units")
        out_mapping = out_channels = None
        self.mapping, self.src_channels, self.nonneg = None, None, out_nonneg
        if block is self.head and kernel.shape[-1] != tk[-1]:
            why = f"class count differs (source {kernel.shape[-1]}, target {tk[-1]})"
            self.put(kpath, "reinitialized", why)
            if bpath in self.shapes:
                self.put(bpath, "reinitialized", why)
            return
        if kernel.ndim == len(tk) and kernel.shape[:-1] == tk[:-1] and kernel.shape[-1] != tk[-1]:
            out_mapping, out_channels = _widen_mapping(kernel.shape[-1], tk[-1], self.rng), kernel.shape[-1]
            kernel = kernel.take(out_mapping.index, axis=-1)
            index_map.append([-1, out_mapping.index.tolist()])
            how.append(f"Net2WiderNet: {kernel.shape[-1] - out_channels} units replicated" if tk[-1] > out_channels
                       else f"kept the first {tk[-1]} of {out_channels} units")
        if kernel.shape != tk:
            self.put(kpath, "reinitialized", f"shape changed {tuple(src[kpath].shape)} -> {tk}")
            if bpath in self.shapes:
                if bpath in src and src[bpath].shape == tuple(self.shapes[bpath]):
                    self.put(bpath, "copied", "same path and shape", src[bpath])
                else:
                    self.put(bpath, "reinitialized", "its kernel was re-initialized")
            return
        self.put(kpath, "adapted" if how else "copied", "; ".join(how) or "same path and shape", kernel,
                 index_map=index_map or None)
        if bpath in self.shapes and bpath in src:
            if out_mapping is None:
                self.put(bpath, "copied", "same path and shape", src[bpath])
            else:
                self.put(bpath, "adapted", "follows the kernel's units", src[bpath][out_mapping.index],
                         index_map=[[-1, out_mapping.index.tolist()]])
        elif bpath in self.shapes:
            self.put(bpath, "reinitialized", "the source block had no bias")
        self.mapping, self.src_channels = out_mapping, out_channels

    def new_weighted(self, block, kpath, bpath, tk, act) -> None:
        """A dense/conv block the source did not have: an identity map (Net2DeeperNet) where widths agree.
        It is function-preserving only if act(x) = x on its input: linear, or ReLU on inputs >= 0."""
        eye = _identity_kernel(block, tk) if self.new_blocks == "identity" else None
        if eye is None:
            why = "new block: fresh initialization" + (" (widths differ, no identity map)"
                                                        if self.new_blocks == "identity" else "")
            for p in (kpath, bpath):
                if p in self.shapes:
                    self.put(p, "reinitialized", why)
            self.mapping, self.src_channels, self.nonneg = None, None, act in NONNEG_ACTIVATIONS
            return
        exact = act in (None, "linear") or (act == "relu" and self.nonneg)
        detail = "new block: identity map (Net2DeeperNet)" + ("" if exact else f", approximate through {act}")
        self.put(kpath, "reinitialized", detail, eye, identity_init=exact)
        if bpath in self.shapes:
            self.put(bpath, "reinitialized", "new block: zero bias (Net2DeeperNet)", np.zeros(self.shapes[bpath]),
                     identity_init=exact)
        # the mapping passes through an identity map unchanged
        self.nonneg = act in NONNEG_ACTIVATIONS or (exact and self.nonneg)


def plan_migration(source: Checkpoint, target: ArchSpec, target_shapes: dict[str, tuple[int, ...]], *,
                   new_blocks: str = "identity", seed: int = 0, target_variant: str = "target"
                   ) -> tuple[MigrationReport, dict[str, np.ndarray]]:
    """Decide, for every target variable, where its value comes from.

    Args:
        source: the loaded checkpoint (or an in-memory one).
        target: the target ArchSpec (shapes inferred).
        target_shapes: variable path -> shape of the target model (`spec_variable_shapes` or the built model).
        new_blocks: "identity" (function-preserving where possible) or "random" (keep fresh init).
        seed: seeds which units Net2WiderNet replicates.
        target_variant: recorded in the report.

    Returns:
        The report (adapted entries carry their `index_map`) and the values to assign (paths absent from
        it keep their fresh initialization). Raises CheckpointError for source tensors no model can take.
    """
    _check_source_tensors(source, target_shapes)
    src, man = source.tensors, source.manifest
    report = MigrationReport(str(source.path), f"{man.get('model', '?')}/{man.get('variant', '?')}",
                             f"{target.name}/{target_variant}")
    report.notes.append("optimizer state is not migrated: the target starts with a fresh optimizer")
    if man.get("num_classes") not in (None, target.num_classes):
        report.notes.append(f"class count differs: source {man['num_classes']}, target {target.num_classes}; "
                            "the head cannot carry over and is re-initialized")
    if man.get("input_shape") and tuple(man["input_shape"]) != tuple(target.input_shape):
        report.notes.append(f"input shape differs: source {tuple(man['input_shape'])}, target "
                            f"{tuple(target.input_shape)}; layers reading the input are re-initialized")
    leaves = _leaf_blocks(target.blocks)
    planner = _Planner(src, target_shapes, new_blocks, np.random.default_rng(seed), leaves[-1] if leaves else None)
    planner.walk(target.blocks)
    for p in target_shapes:  # anything the walk did not reach (e.g. layers the spec does not list)
        if p not in planner.entries:
            if p in src and tuple(src[p].shape) == tuple(target_shapes[p]):
                planner.put(p, "copied", "same path and shape", src[p])
            else:
                planner.put(p, "reinitialized", "new variable" if p not in src else "shape changed")
    for p in src:
        if p not in target_shapes:
            planner.entries[p] = Entry(p, "dropped", "not in the target (block removed or disabled)",
                                       list(src[p].shape))
    report.entries = sorted(planner.entries.values(), key=lambda e: (ACTIONS.index(e.action), e.path))
    return report, planner.values


def spec_variable_shapes(spec: ArchSpec) -> dict[str, tuple[int, ...]] | None:
    """The target model's variable paths and shapes from the spec alone (pure Python, no TensorFlow):
    dense -> kernel (in, units), bias (units,); conv2d -> kernel (kh, kw, cin, filters), bias (filters,);
    batchnorm -> gamma, beta, moving_mean, moving_variance (channels,); disabled blocks, flatten, pool,
    dropout and identity -> none. Returns None when a `_target_` layer (or an unknown shape) makes the
    variables knowable only from the built model."""
    shapes: dict[str, tuple[int, ...]] = {}
    for _, b in spec.walk():
        if not b.enabled or b.is_group or b.type in ("flatten", "pool", "dropout", "identity"):
            continue
        if b.type not in ("dense", "conv2d", "batchnorm") or not b.input_shape:
            return None
        cin, p = int(b.input_shape[-1]), b.params
        if b.type == "batchnorm":
            shapes.update({f"{b.path}/{n}": (cin,) for n in ("gamma", "beta", "moving_mean", "moving_variance")})
            continue
        if b.type == "dense":
            units = int(p["units"])
            shapes[f"{b.path}/kernel"] = (cin, units)
        else:
            k = p["kernel_size"]
            kh, kw = (k, k) if isinstance(k, int) else (int(k[0]), int(k[1]))
            units = int(p["filters"])
            shapes[f"{b.path}/kernel"] = (kh, kw, cin, units)
        if p["use_bias"]:
            shapes[f"{b.path}/bias"] = (units,)
    return shapes


def _refuse_if_not_carried(report: MigrationReport) -> None:
    """Strict mode: everything must be copied, adapted, or re-initialized in a function-preserving way."""
    if report.not_carried():
        lines = "\n".join(f"    {e.path}: {e.action} ({e.detail})" for e in report.not_carried())
        raise CheckpointError("migrate.strict", "not everything carries over from the source",
                              expected="every source variable copied or adapted, every new one function-preserving",
                              received=f"\n{lines}",
                              fix="drop migrate.strict=true to accept re-initialization, or pick a closer source")


def check_source_before_build(run) -> MigrationReport | None:
    """Check `init_from` before TensorFlow is imported: the source checkpoint verifies (hashes, schema,
    finite values) and, with `migrate.strict=true`, everything carries over — the same CheckpointError
    `migrate_model` would raise after the build, ~10 s earlier. Pure numpy; imports neither keras nor
    tensorflow.

    Args:
        run: the RunConfig (its first phase's architecture is the migration target).

    Returns:
        The planned report (values are not kept), or None when there is no `init_from` or the target's
        variables are knowable only after the build (a `_target_` layer): then `migrate_model` decides.
    """
    if not getattr(run, "init_from", None):
        return None
    arch = run.phases[0].arch if getattr(run, "phases", None) else run.arch
    ckpt = load_checkpoint(run.init_from)
    check_finite(ckpt)
    shapes = spec_variable_shapes(arch)
    if shapes is None:
        return None
    report, _ = plan_migration(ckpt, arch, shapes, new_blocks=run.migrate.new_blocks, seed=run.seed,
                               target_variant=run.variant)
    if run.migrate.strict:
        _refuse_if_not_carried(report)
    return report


check_strict_before_build = check_source_before_build  # the name the issue uses


def migrate_model(model, spec: ArchSpec, source: str | Path | Checkpoint, *, new_blocks: str = "identity",
                  strict: bool = False, seed: int = 0, target_variant: str = "target") -> MigrationReport:
    """Load `source` (unless already loaded), refuse non-finite weights, plan, check strictness, then
    assign the values to `model`."""
    ckpt = source if isinstance(source, Checkpoint) else load_checkpoint(source)
    check_finite(ckpt)
    shapes = {v.path: tuple(v.shape) for v in model.weights}
    report, values = plan_migration(ckpt, spec, shapes, new_blocks=new_blocks, seed=seed,
                                    target_variant=target_variant)
    if strict:
        _refuse_if_not_carried(report)
    by_path = {v.path: v for v in model.weights}
    for path, value in values.items():
        by_path[path].assign(value.astype(by_path[path].dtype))
    return report


# ------------------------------------------------------------------------------------------ optimizer state

@dataclass
class OptimizerState:
    """A Keras optimizer's state as plain arrays, keyed by the model variable each slot belongs to."""
    kind: str                                  # class name, e.g. "Adam" (the inner one under loss scaling)
    iterations: int                            # optimizer steps taken: the learning-rate schedule position
    learning_rate: float | None                # None: a schedule or callable (its position is `iterations`)
    slots: dict[str, dict[str, np.ndarray]]    # trainable variable path -> slot name ("momentum") -> value
    extras: dict[str, np.ndarray] = field(default_factory=dict)  # e.g. loss-scale state, by variable name


@dataclass
class OptimizerReport:
    """What `migrate_optimizer` did, per target trainable variable."""
    optimizer: str
    iterations: int
    learning_rate: str
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)  # path -> {action, slots, detail}

    def counts(self) -> dict[str, int]:
        return {a: sum(e["action"] == a for e in self.entries.values()) for a in ("copied", "adapted", "fresh")}

    def __getitem__(self, key: str) -> int:  # report["copied"]: the counts read like a dict
        return self.counts()[key]

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "counts": self.counts()}


def _unsupported(opt, why: str) -> ConfigError:
    return ConfigError("optimizer", f"cannot carry the state of a {type(opt).__name__} optimizer: {why}",
                       expected="an optimizer whose slots have their variable's shape (Adam, AdamW, SGD, "
                                "RMSprop, Adagrad, Nadam, Adamax, Lion, ...)",
                       received=type(opt).__name__, fix="use one of those optimizers for a schedule of phases")


def _core(opt):
    """The optimizer holding the slots (the inner one under mixed-precision loss scaling) and the
    wrapper's own variables (loss scale, its step counter), if any."""
    inner = getattr(opt, "inner_optimizer", None)
    if inner is None:
        return opt, []
    own = [v for v in opt._variables if v is not opt._iterations and v is not getattr(opt, "_learning_rate", None)]
    return inner, own


def _slot_lists(opt) -> dict[str, list]:
    """Slot name -> list aligned with `opt._trainable_variables` (None where a variable has no slot).

    Generic across Keras optimizers: every list attribute as long as the trainable-variable list whose
    items are optimizer variables of their model variable's shape (Adam `_momentums`, `_velocities`;
    SGD `momentums`; RMSprop `_velocities`, `_momentums`, ...). Any other optimizer variable is refused."""
    import keras

    tvars = list(opt._trainable_variables)
    lists: dict[str, list] = {}
    for attr, value in vars(opt).items():
        if attr in ("_variables", "_trainable_variables") or not isinstance(value, list) or len(value) != len(tvars):
            continue
        if not value or not all(v is None or isinstance(v, keras.Variable) for v in value) \
                or all(v is None for v in value) or any(v is t for v, t in zip(value, tvars)):
            continue
        if any(v is not None and tuple(v.shape) != tuple(t.shape) for v, t in zip(value, tvars)):
            raise _unsupported(opt, f"its '{attr}' slots are shaped differently from their variables (factored)")
        first, ref = next((v, t) for v, t in zip(value, tvars) if v is not None)
        prefix = ref.path.replace("/", "_") + "_"
        lists[first.name[len(prefix):] if first.name.startswith(prefix) else attr.lstrip("_")] = value
    known = {id(v) for vs in lists.values() for v in vs if v is not None}
    known |= {id(opt._iterations), id(getattr(opt, "_learning_rate", None))}
    stray = [v.name for v in opt._variables if id(v) not in known]
    if stray:
        raise _unsupported(opt, f"variables not tied to one model variable: {', '.join(stray[:4])}")
    return lists


def optimizer_state(model) -> OptimizerState:
    """Read `model.optimizer`'s state (built) as arrays keyed by trainable-variable path.

    Raises ConfigError for an optimizer kind whose state cannot be carried per variable (e.g. Adafactor's
    factored slots) and CheckpointError-free otherwise; imports keras lazily."""
    import keras

    opt = getattr(model, "optimizer", None)
    if opt is None or not opt.built:
        raise ConfigError("optimizer", "the model's optimizer is not built", expected="a compiled model whose "
                          "optimizer.build(model.trainable_variables) ran", received=repr(opt),
                          fix="compile the model and build its optimizer before reading its state")
    core, own = _core(opt)
    slots: dict[str, dict[str, np.ndarray]] = {}
    for name, values in _slot_lists(core).items():
        for var, slot in zip(core._trainable_variables, values):
            if slot is not None:
                slots.setdefault(var.path, {})[name] = np.array(slot.numpy())
    lr = core._learning_rate if isinstance(getattr(core, "_learning_rate", None), keras.Variable) else None
    return OptimizerState(type(core).__name__, int(np.asarray(core._iterations.numpy())),
                          None if lr is None else float(np.asarray(lr.numpy())), slots,
                          {v.name: np.array(v.numpy()) for v in own})


def _carry_slots(var_path: str, entry: Entry | None, new_slots: dict[str, Any], old: dict[str, np.ndarray]
                 ) -> dict[str, Any]:
    """Assign one variable's slots from the old state by the plan's action; returns its report entry."""
    action = entry.action if entry is not None else "reinitialized"
    if action not in ("copied", "adapted") or not new_slots:
        why = "no slots" if not new_slots else f"variable {action}: fresh slots"
        return {"action": "fresh" if action not in ("copied", "adapted") else action, "slots": [], "detail": why}
    carried, fresh = [], []
    for name, slot in new_slots.items():
        value = old.get(name)
        if value is not None and action == "adapted":
            value = apply_index_map(value, entry.index_map)
        if value is None or tuple(value.shape) != tuple(slot.shape):
            fresh.append(name)
            continue
        slot.assign(value.astype(slot.dtype))
        carried.append(name)
    if not carried:
        return {"action": "fresh", "slots": [], "detail": f"no matching old slot ({', '.join(fresh)}): fresh"}
    detail = "slots copied exactly" if action == "copied" else "slots taken with the variable's index map"
    return {"action": action, "slots": carried,
            "detail": detail + (f"; fresh: {', '.join(fresh)}" if fresh else "")}


def migrate_optimizer(new_model, old_state: OptimizerState, plan: MigrationReport, *, keep_new_lr: bool = False
                      ) -> OptimizerReport:
    """Fill the new model's (compiled, built) optimizer from `old_state` following the weight plan.

    Copied variables get their slots bit for bit; adapted ones get slots taken with the same index map
    as their weights (fan-in rows undivided, see the module docstring); re-initialized and new variables
    keep the fresh optimizer's slots. The iteration count is carried (schedules continue), and the
    learning-rate variable too unless `keep_new_lr` (a phase that sets its own lr).

    Args:
        new_model: the next model, compiled, with `optimizer.build(new_model.trainable_variables)` done
            (built here if not).
        old_state: `optimizer_state(old_model)`, read before the old model is discarded.
        plan: the MigrationReport that moved the weights (its entries' actions and index maps).
        keep_new_lr: keep the new optimizer's learning-rate value instead of the old one.

    Returns:
        An OptimizerReport (`report["copied"]`, `["adapted"]`, `["fresh"]` count variables).
    """
    import keras

    opt = new_model.optimizer
    if opt is None:
        raise ConfigError("optimizer", "the new model is not compiled", expected="model.compile(optimizer=...)",
                          received=None, fix="compile the new model before migrating the optimizer state")
    if not opt.built:
        opt.build(new_model.trainable_variables)
    core, own = _core(opt)
    lists = _slot_lists(core)
    by_path = {e.path: e for e in plan.entries}
    report = OptimizerReport(type(core).__name__, old_state.iterations, "")
    for i, var in enumerate(core._trainable_variables):
        new_slots = {n: vs[i] for n, vs in lists.items() if vs[i] is not None}
        report.entries[var.path] = _carry_slots(var.path, by_path.get(var.path), new_slots,
                                                old_state.slots.get(var.path, {}))
    core._iterations.assign(old_state.iterations)
    lr = getattr(core, "_learning_rate", None)
    if not isinstance(lr, keras.Variable):
        report.learning_rate = "schedule: its position is carried by the iteration count"
    elif keep_new_lr or old_state.learning_rate is None:
        report.learning_rate = f"kept the new value {float(np.asarray(lr.numpy())):g}"
    else:
        lr.assign(old_state.learning_rate)
        report.learning_rate = f"carried ({old_state.learning_rate:g})"
    for v in own:
        if v.name in old_state.extras and tuple(old_state.extras[v.name].shape) == tuple(v.shape):
            v.assign(old_state.extras[v.name].astype(v.dtype))
    if old_state.kind != report.optimizer:
        report.learning_rate += f"; optimizer changed {old_state.kind} -> {report.optimizer}: slots by name only"
    return report


def write_report(report: MigrationReport, out_dir: Path) -> None:
    from .artifacts import write_json, write_text
    write_text(Path(out_dir) / "migration.md", report.to_markdown())
    write_json(Path(out_dir) / "migration.json", report.to_json())


def check_out_dir(out: Path, force: bool) -> None:
    """`--out` may be a new or empty folder, or (with --force) an existing dynarch checkpoint folder holding
    nothing else, which is then replaced atomically. Anything else is refused before any work is done."""
    out = Path(out)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise CheckpointError(str(out), "--out is not a folder", expected="a new or empty folder",
                              received="a symlink" if out.is_symlink() else "a file",
                              fix="pass a new folder name for the migrated checkpoint")
    if not out.exists() or not any(out.iterdir()):
        return
    names = sorted(p.name for p in out.iterdir())
    if set(names) - {MANIFEST, WEIGHTS} or len(names) != 2:
        raise CheckpointError(str(out), "--out is a non-empty folder that is not a dynarch checkpoint",
                              expected="a new or empty folder", received=f"holds {', '.join(names[:5])}"
                              + (" ..." if len(names) > 5 else ""),
                              fix="pass a new folder name; nothing in this folder was changed")
    if not force:
        raise CheckpointError(str(out), "--out already holds a checkpoint", expected="a new or empty folder",
                              received="manifest.json and weights.safetensors",
                              fix="pass --force to replace it (atomically), or a new folder name")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one `error:` line and a fix instead of argparse's usage dump
        raise ConfigError("python -m dynarch.migrate", message, expected="SOURCE [--to OVERRIDE ...] "
                          "[--dry-run] [--out DIR [--force]] [--new-blocks identity|random] [--strict]",
                          fix="see python -m dynarch.migrate --help")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m dynarch.migrate", description=(
        "Show (and optionally write) how an earlier run's weights carry over to a variant."))
    parser.add_argument("source", help="run dir, checkpoint folder, or weights.safetensors")
    parser.add_argument("--to", nargs="*", default=[], metavar="OVERRIDE",
                        help="Hydra overrides describing the target, e.g. +arch=deep model=cnn")
    parser.add_argument("--dry-run", action="store_true", help="print the report only (the default)")
    parser.add_argument("--out", type=Path, help="write the migrated weights as a checkpoint folder here "
                                                 "(a new or empty folder)")
    parser.add_argument("--force", action="store_true", help="let --out replace an existing checkpoint folder")
    parser.add_argument("--new-blocks", choices=("identity", "random"), default="identity")
    parser.add_argument("--strict", action="store_true")
    return parser


def _run_cli(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    from .compose import compose_run
    run = compose_run(args.to)
    variant = run.variant
    write = args.out is not None and not args.dry_run
    if write:
        check_out_dir(args.out, args.force)  # before the build: a refused --out costs nothing
    source = load_checkpoint(args.source)  # a bad source fails before TensorFlow is imported
    if args.strict:  # decided before TensorFlow is imported
        from dataclasses import replace

        from .config import MigrateConfig
        check_source_before_build(replace(run, init_from=str(args.source),
                                          migrate=MigrateConfig(strict=True, new_blocks=args.new_blocks)))
    from .build import build_model
    model = build_model(run.arch)
    report = migrate_model(model, run.arch, source, new_blocks=args.new_blocks, strict=args.strict,
                           seed=run.seed, target_variant=variant)
    print(report.to_markdown())
    if write:
        from .checkpoint import model_tensors, save_checkpoint
        check_out_dir(args.out, args.force)  # again: the folder may have changed during the build
        save_checkpoint(args.out, model_tensors(model), {
            "arch": dict(run.arch.raw), "model": run.arch.name, "variant": variant,
            "num_classes": run.arch.num_classes, "input_shape": list(run.arch.input_shape),
            "migrated_from": str(report.source), "migration": report.counts()})
        print(f"migrated checkpoint written to {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """CLI entry: every error is one `error:` message on stderr and exit status 2, never a traceback."""
    try:
        return _run_cli(argv)
    except DynarchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; nothing was written", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001  Hydra/OmegaConf errors compose_run does not wrap, and bugs
        print(f"error: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}\n"
              "  fix: check the arguments; if they are right, report this as a dynarch bug", file=sys.stderr)
        return 2


_main = main  # the name earlier callers used


if __name__ == "__main__":
    sys.exit(main())
