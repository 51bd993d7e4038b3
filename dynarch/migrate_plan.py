"""The migration plan's data and its walk: what happens to each variable (`Entry`, `MigrationReport`,
`apply_index_map`) and the `Planner` that decides it block by block.

Every target variable is *copied* (same path and shape), *adapted* (Net2WiderNet widening, truncation,
fan-in remapped after an upstream width change) or *re-initialized* (a new block — as an identity map
when widths allow, Net2DeeperNet; a new residual branch with its last layer zeroed so that x + f(x) = x;
or a shape that cannot be carried); every source variable that the target lacks is *dropped*. Each
adapted variable records the index maps it was built with (`Entry.index_map`: take along axis -1 for
widened/truncated units, along axis -2 for fan-in rows), so the optimizer slots can follow the same map.
`identity_init` marks re-initializations that are exactly function-preserving; strict mode accepts only
those. Numpy only: nothing here imports TensorFlow. The entry points are in `dynarch.migrate`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .spec import BlockSpec

ACTIONS = ("copied", "adapted", "reinitialized", "dropped")
CHANNEL_KEEPING = ("dropout", "identity", "pool")  # pass a feature mapping through unchanged
NONNEG_ACTIVATIONS = ("relu", "relu6", "sigmoid", "softmax", "hard_sigmoid", "softplus", "exponential")
ZERO_AT_ZERO = (
    None,
    "linear",
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
    "softsign",
)  # act(0) == 0: a zeroed layer outputs exactly 0
KEEPS_ZERO = ("dropout", "identity", "pool", "batchnorm")  # 0 in, 0 out (a fresh batchnorm: beta = mean = 0)
VECTOR_LEAVES = ("bias", "gamma", "beta", "moving_mean", "moving_variance")
IndexMap = list  # [[axis, [source index per target position]], ...] applied in order


@dataclass
class Entry:
    path: str
    action: str  # one of ACTIONS
    detail: str
    source_shape: list[int] | None = None
    target_shape: list[int] | None = None
    identity_init: bool = False  # re-initialized, but exactly function-preserving: nothing was lost
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
        return [
            e for e in self.entries if e.action == "dropped" or (e.action == "reinitialized" and not e.identity_init)
        ]

    def to_markdown(self) -> str:
        c = self.counts()
        lines = [
            f"# Migration {self.source_variant} -> {self.target_variant}",
            "",
            f"source: `{self.source}`",
            "",
            f"copied {c['copied']}, adapted {c['adapted']}, re-initialized {c['reinitialized']}, "
            f"dropped {c['dropped']}",
            "",
        ]
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

    index: np.ndarray  # index[j] = source feature feeding target feature j
    divisor: np.ndarray  # how many target features share that source feature

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


def leaf_blocks(blocks) -> list[BlockSpec]:
    """Enabled leaf blocks in order, descending into enabled groups."""
    out: list[BlockSpec] = []
    for b in blocks:
        if b.enabled:
            out.extend(leaf_blocks(b.children) if b.is_group else [b])
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


class Planner:
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
        self.entries[path] = Entry(
            path,
            action,
            detail,
            list(src[path].shape) if path in src else None,
            list(self.shapes[path]),
            identity_init,
            index_map,
        )
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
        leaves = leaf_blocks(group.children)
        weighted = [b for b in leaves if b.type in ("dense", "conv2d") and f"{b.path}/kernel" in self.shapes]
        paths = sorted(p for p in self.shapes if p.startswith(group.path + "/"))
        if not weighted:
            for p in paths:
                self.put(
                    p,
                    "reinitialized",
                    "new block: fresh initialization (a new residual branch with no dense/conv layer to zero)",
                )
            return False
        last = weighted[-1]
        act = last.params.get("activation")
        problems = [f"{act}(0) != 0"] if act not in ZERO_AT_ZERO else []
        problems += [
            f"{b.path} after it may not map 0 to 0"
            for b in leaves[leaves.index(last) + 1 :]
            if b.type not in KEEPS_ZERO
        ]
        exact = not problems
        for p in paths:
            if p.rsplit("/", 1)[0] == last.path:
                detail = "new residual branch: last layer zeroed (f(x) = 0)" + (
                    "" if exact else f", approximate: {'; '.join(problems)}"
                )
                self.put(p, "reinitialized", detail, np.zeros(self.shapes[p], np.float32), identity_init=exact)
            else:
                self.put(
                    p,
                    "reinitialized",
                    "new residual branch: fresh initialization (the branch's last layer is zeroed)",
                    identity_init=exact,
                )
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
        if (
            p in src
            and m is not None
            and block.type == "batchnorm"
            and src[p].ndim == 1
            and len(m.index) == self.shapes[p][0]
            and src[p].shape[0] == self.src_channels
        ):
            self.put(
                p,
                "adapted",
                "per-channel values follow the widened input (Net2WiderNet)",
                src[p][m.index],
                index_map=[[-1, m.index.tolist()]],
            )
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
            how.append(
                "fan-in follows the widened input (rows divided by replication)"
                if (m.divisor > 1).any()
                else "fan-in follows the input's kept units"
            )
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
            how.append(
                f"Net2WiderNet: {kernel.shape[-1] - out_channels} units replicated"
                if tk[-1] > out_channels
                else f"kept the first {tk[-1]} of {out_channels} units"
            )
        if kernel.shape != tk:
            self.put(kpath, "reinitialized", f"shape changed {tuple(src[kpath].shape)} -> {tk}")
            if bpath in self.shapes:
                if bpath in src and src[bpath].shape == tuple(self.shapes[bpath]):
                    self.put(bpath, "copied", "same path and shape", src[bpath])
                else:
                    self.put(bpath, "reinitialized", "its kernel was re-initialized")
            return
        self.put(
            kpath,
            "adapted" if how else "copied",
            "; ".join(how) or "same path and shape",
            kernel,
            index_map=index_map or None,
        )
        if bpath in self.shapes and bpath in src:
            if out_mapping is None:
                self.put(bpath, "copied", "same path and shape", src[bpath])
            else:
                self.put(
                    bpath,
                    "adapted",
                    "follows the kernel's units",
                    src[bpath][out_mapping.index],
                    index_map=[[-1, out_mapping.index.tolist()]],
                )
        elif bpath in self.shapes:
            self.put(bpath, "reinitialized", "the source block had no bias")
        self.mapping, self.src_channels = out_mapping, out_channels

    def new_weighted(self, block, kpath, bpath, tk, act) -> None:
        """A dense/conv block the source did not have: an identity map (Net2DeeperNet) where widths agree.
        It is function-preserving only if act(x) = x on its input: linear, or ReLU on inputs >= 0."""
        eye = _identity_kernel(block, tk) if self.new_blocks == "identity" else None
        if eye is None:
            why = "new block: fresh initialization" + (
                " (widths differ, no identity map)" if self.new_blocks == "identity" else ""
            )
            for p in (kpath, bpath):
                if p in self.shapes:
                    self.put(p, "reinitialized", why)
            self.mapping, self.src_channels, self.nonneg = None, None, act in NONNEG_ACTIVATIONS
            return
        exact = act in (None, "linear") or (act == "relu" and self.nonneg)
        detail = "new block: identity map (Net2DeeperNet)" + ("" if exact else f", approximate through {act}")
        self.put(kpath, "reinitialized", detail, eye, identity_init=exact)
        if bpath in self.shapes:
            self.put(
                bpath,
                "reinitialized",
                "new block: zero bias (Net2DeeperNet)",
                np.zeros(self.shapes[bpath]),
                identity_init=exact,
            )
        # the mapping passes through an identity map unchanged
        self.nonneg = act in NONNEG_ACTIVATIONS or (exact and self.nonneg)
