"""Regression random forests in the layout of randomforest-matlab (``regRF_train``), and a fast predictor.

``regRF_train`` returns a struct whose per-node arrays are ``nrnodes x ntree`` (column ``t`` is tree
``t``): ``lDau``/``rDau`` (1-based daughter node numbers, 0 where unused), ``nodestatus``
(-1 terminal, -3 interior, 0 unused), ``upper`` (split thresholds), ``avnode`` (node predictions),
``mbest`` (1-based split variable), plus ``ndtree`` (nodes used per tree), ``nrnodes``, ``ntree``
and, in the newer wrapper, ``coef`` (bias correction, all zero unless trained with it).

Prediction, as ``predictRegTree``/``regForest`` of the C code: from node 1 go left while
``x[mbest] <= upper`` and right otherwise until a terminal node, take its ``avnode``, average over
trees; then ``coef(1) + coef(2) * y`` if ``coef`` has a nonzero entry (``regRF_predict.m``).

:class:`CompiledForests` evaluates several forests at once, vectorised over trees and samples: one
gather per depth level over all (sample, tree) pairs, terminal nodes looping to themselves.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from perceptsr.errors import AssetError

__all__ = [
    "RegressionForest", "CompiledForests", "load_mat_struct", "struct_field", "cells", "synthetic_forest",
    "NODE_TERMINAL",
]

NODE_TERMINAL = -1


@dataclasses.dataclass
class RegressionForest:
    """One randomforest-matlab regression forest; node arrays are ``(ntree, nrnodes)``."""

    lDau: np.ndarray
    rDau: np.ndarray
    nodestatus: np.ndarray
    upper: np.ndarray
    avnode: np.ndarray
    mbest: np.ndarray
    ndtree: np.ndarray | None = None
    coef: np.ndarray | None = None

    def __post_init__(self) -> None:
        shape = self.lDau.shape
        for name in ("rDau", "nodestatus", "upper", "avnode", "mbest"):
            if getattr(self, name).shape != shape:
                raise ValueError(
                    f"regression forest: field {name} has shape {getattr(self, name).shape}, "
                    f"lDau has {shape} (all node arrays must be ntree x nrnodes)"
                )

    @property
    def ntree(self) -> int:
        return int(self.lDau.shape[0])

    @property
    def nrnodes(self) -> int:
        return int(self.lDau.shape[1])

    @classmethod
    def from_struct(cls, s, where: str = "forest") -> "RegressionForest":
        """Build from a loaded MATLAB struct (``scipy.io.loadmat``, any struct mode) or a dict."""
        def get(name, required=True):
            value = struct_field(s, name)
            if value is None and required:
                raise ValueError(f"{where}: field {name!r} is missing (not a randomforest-matlab regRF model?)")
            return value

        ncat = get("ncat", required=False)
        categorical = get("categorical_feature", required=False)
        if (ncat is not None and np.any(np.asarray(ncat) > 1)) or (
            categorical is not None and np.any(np.asarray(categorical, dtype=bool))
        ):
            raise ValueError(f"{where}: categorical predictors are not supported (Ma's forests have none)")
        ntree = get("ntree", required=False)
        arrays = {}
        for name, dtype in (("lDau", np.int64), ("rDau", np.int64), ("nodestatus", np.int64),
                            ("upper", np.float64), ("avnode", np.float64), ("mbest", np.int64)):
            a = np.asarray(get(name), dtype=dtype)
            if a.ndim == 1:
                a = a[:, None]
            if a.ndim != 2:
                raise ValueError(f"{where}: field {name} must be nrnodes x ntree, got shape {a.shape}")
            arrays[name] = a.T  # MATLAB nrnodes x ntree -> (ntree, nrnodes)
        if ntree is not None and int(np.asarray(ntree).ravel()[0]) != arrays["lDau"].shape[0]:
            raise ValueError(
                f"{where}: ntree = {int(np.asarray(ntree).ravel()[0])} but the node arrays hold "
                f"{arrays['lDau'].shape[0]} trees"
            )
        ndtree = get("ndtree", required=False)
        coef = get("coef", required=False)
        return cls(
            **arrays,
            ndtree=None if ndtree is None else np.asarray(ndtree, dtype=np.int64).ravel(),
            coef=None if coef is None or np.asarray(coef).size == 0 else np.asarray(coef, np.float64).ravel(),
        )

    def to_struct(self) -> dict:
        """The MATLAB layout as a dict for ``scipy.io.savemat`` (nrnodes x ntree arrays)."""
        out = {
            "lDau": self.lDau.T.astype(np.int32),
            "rDau": self.rDau.T.astype(np.int32),
            "nodestatus": self.nodestatus.T.astype(np.int32),
            "nrnodes": np.array([[self.nrnodes]], dtype=np.float64),
            "upper": self.upper.T.astype(np.float64),
            "avnode": self.avnode.T.astype(np.float64),
            "mbest": self.mbest.T.astype(np.int32),
            "ndtree": (self.ndtree if self.ndtree is not None else self._tree_sizes()).astype(np.int32)[:, None],
            "ntree": np.array([[self.ntree]], dtype=np.float64),
        }
        if self.coef is not None:
            out["coef"] = self.coef.astype(np.float64)[:, None]
        return out

    def _tree_sizes(self) -> np.ndarray:
        return (self.nodestatus != 0).sum(axis=1)

    def bias_correction(self) -> tuple[float, float] | None:
        """``(a, b)`` of ``y = a + b * y`` when ``coef`` has a nonzero entry, else ``None``."""
        if self.coef is None or not np.any(self.coef != 0):
            return None
        if self.coef.size < 2:
            raise ValueError(f"regression forest: coef must hold 2 values, got {self.coef.size}")
        return float(self.coef[0]), float(self.coef[1])

    def predict(self, x, device=None) -> torch.Tensor:
        """Mean prediction over the trees for ``x`` (N, D) -> (N,), float64."""
        return CompiledForests([self], device=device)([x])[:, 0]


def struct_field(s, name: str):
    """Field ``name`` of a loaded MATLAB struct (record array, ``mat_struct``, dict); ``None`` if absent."""
    s = _unwrap(s)
    if isinstance(s, dict):
        value = s.get(name)
    elif isinstance(s, np.ndarray) and s.dtype.names is not None:
        value = s[name] if name in s.dtype.names else None
    elif isinstance(s, np.void) and s.dtype.names is not None:
        value = s[name] if name in s.dtype.names else None
    else:
        value = getattr(s, name, None) if hasattr(s, "_fieldnames") or hasattr(s, "__dict__") else None
    return None if value is None else _unwrap(value)


def _unwrap(value):
    """Peel the 1x1 object/struct wrappers scipy puts around MATLAB structs and cells."""
    while isinstance(value, np.ndarray) and value.size == 1 and (
        value.dtype == object or value.dtype.names is not None
    ):
        value = value.reshape(-1)[0]
    return value


def cells(value) -> list:
    """Elements of a MATLAB cell array (column-major order), unwrapped."""
    value = _unwrap(value) if not (isinstance(value, np.ndarray) and value.dtype == object) else value
    if isinstance(value, np.ndarray) and value.dtype == object:
        return [_unwrap(v) for v in value.reshape(-1, order="F")]
    if isinstance(value, (list, tuple)):
        return [_unwrap(v) for v in value]
    return [value]


def load_mat_struct(path: str | os.PathLike, variable: str):
    """Load ``variable`` from a MATLAB .mat file (v5/v7 via scipy; v7.3 needs h5py)."""
    path = Path(path)
    with open(path, "rb") as fh:
        head = fh.read(128)
    if b"MATLAB 7.3" in head[:116] or head[:8] == b"\x89HDF\r\n\x1a\n":
        raise AssetError(
            f"{path} is a MATLAB v7.3 (HDF5) file, which scipy cannot read. Re-save it in MATLAB/Octave "
            f"with: load('{path.name}'); save('{path.name}', '{variable}', '-v7')"
        )
    from scipy.io import loadmat

    try:
        data = loadmat(str(path), struct_as_record=True, squeeze_me=False)
    except Exception as exc:  # scipy raises several types for corrupt files
        raise AssetError(f"cannot read {path} as a MATLAB .mat file: {exc}") from exc
    if variable not in data:
        found = ", ".join(k for k in data if not k.startswith("__")) or "nothing"
        raise AssetError(f"{path} holds no variable {variable!r} (found: {found})")
    return data[variable]


class CompiledForests(torch.nn.Module):
    """Several regression forests flattened into one node table, evaluated level by level.

    ``forward(features)`` takes one ``(N, D_f)`` array per forest and returns ``(N, F)`` float64: the
    mean over each forest's trees (plus its bias correction). All trees of all forests advance
    together: ``depth`` rounds of gathers over the ``(N, total_trees)`` node indices.
    """

    def __init__(self, forests: Sequence[RegressionForest], device=None) -> None:
        super().__init__()
        if not forests:
            raise ValueError("CompiledForests needs at least one forest")
        feat, thr, child, value, roots, owner = [], [], [], [], [], []
        offset = 0
        self.depth = 0
        self.ntrees = []
        self.bias = []
        for f_idx, forest in enumerate(forests):
            t, m = forest.lDau.shape
            interior = (forest.nodestatus != NODE_TERMINAL) & (forest.lDau > 0) & (forest.rDau > 0)
            local = np.arange(t * m, dtype=np.int64).reshape(t, m)
            tree_base = (np.arange(t, dtype=np.int64) * m)[:, None]
            left = np.where(interior, tree_base + forest.lDau - 1, local) + offset
            right = np.where(interior, tree_base + forest.rDau - 1, local) + offset
            feat.append(np.where(interior, forest.mbest - 1, 0).reshape(-1))
            thr.append(np.where(interior, forest.upper, 0.0).reshape(-1))
            child.append(np.stack([left.reshape(-1), right.reshape(-1)], axis=1))
            value.append(forest.avnode.reshape(-1))
            roots.append(tree_base[:, 0] + offset)
            owner.append(np.full(t, f_idx, dtype=np.int64))
            self.depth = max(self.depth, _max_depth(forest.lDau, forest.rDau, interior))
            self.ntrees.append(t)
            self.bias.append(forest.bias_correction())
            offset += t * m
        self.nforests = len(forests)
        self.nodes_per_forest = [f.lDau.size for f in forests]
        kw = {"device": device}
        self.register_buffer("feat", torch.as_tensor(np.concatenate(feat), **kw), persistent=False)
        self.register_buffer("thr", torch.as_tensor(np.concatenate(thr), dtype=torch.float64, **kw), persistent=False)
        self.register_buffer("child", torch.as_tensor(np.concatenate(child).reshape(-1), **kw), persistent=False)
        self.register_buffer("value", torch.as_tensor(np.concatenate(value), dtype=torch.float64, **kw),
                             persistent=False)
        self.register_buffer("roots", torch.as_tensor(np.concatenate(roots), **kw), persistent=False)
        self.register_buffer("owner", torch.as_tensor(np.concatenate(owner), **kw), persistent=False)
        self.register_buffer("ntree_t", torch.tensor(self.ntrees, dtype=torch.float64, **kw), persistent=False)
        self.feature_sizes = [  # minimum D per forest: the largest split variable used
            int(np.where((f.nodestatus != NODE_TERMINAL) & (f.lDau > 0), f.mbest, 0).max(initial=0))
            for f in forests
        ]

    def _apply(self, fn, recurse=True):
        """Follow device moves only: ``.float()``/``.half()`` must not touch the float64 thresholds."""
        probe = fn(torch.empty(0, dtype=torch.float64, device=self.thr.device))
        for name, buf in self._buffers.items():
            if buf is not None:
                self._buffers[name] = buf.to(probe.device)
        return self

    def _global_feat(self, sizes: tuple[int, ...]) -> torch.Tensor:
        """Per-node column in the concatenated feature table (cached per feature layout)."""
        cache = self.__dict__.setdefault("_gfeat_cache", {})
        key = (sizes, self.feat.device)
        if key not in cache:
            starts = torch.as_tensor(np.cumsum((0,) + sizes[:-1]), device=self.feat.device)
            nodes = torch.as_tensor(self.nodes_per_forest, device=self.feat.device)
            cache.clear()
            cache[key] = self.feat + torch.repeat_interleave(starts, nodes)
        return cache[key]

    def forward(self, features: Sequence) -> torch.Tensor:
        if len(features) != self.nforests:
            raise ValueError(f"expected {self.nforests} feature arrays (one per forest), got {len(features)}")
        dev = self.thr.device
        xs = [torch.as_tensor(f, dtype=torch.float64).to(dev) for f in features]
        xs = [x[None] if x.ndim == 1 else x for x in xs]
        n = xs[0].shape[0]
        for i, (x, need) in enumerate(zip(xs, self.feature_sizes)):
            if x.ndim != 2 or x.shape[0] != n:
                raise ValueError(f"forest {i + 1}: features must be (N, D) with the same N, got {tuple(x.shape)}")
            if x.shape[1] < need:
                raise ValueError(f"forest {i + 1}: the trees split on variable {need}, features have {x.shape[1]}")
        # one feature table; each forest's variables are shifted to its block. NaN -> +inf, so
        # that it goes right as in the C code (NaN <= t is false) with a plain ">" below.
        x_all = torch.nan_to_num(torch.cat(xs, dim=1), nan=float("inf"))
        gfeat = self._global_feat(tuple(x.shape[1] for x in xs))

        def take(table, idx):  # index_select: plain indexing of a huge 1-D table is slow on CPU
            return table.index_select(0, idx.reshape(-1)).view(idx.shape)

        def descend(x_part):
            node = self.roots.expand(x_part.shape[0], -1)  # (n, T)
            for _ in range(self.depth):
                xv = torch.gather(x_part, 1, take(gfeat, node))
                node = take(self.child, (node * 2).add_(xv > take(self.thr, node)))
            return take(self.value, node)

        # On CPU, keep each op below torch's parallel grain (32768 elements): the work is memory
        # latency bound, and intra-op threads only add OpenMP stalls when cores are shared.
        chunk = n if dev.type != "cpu" else max(1, 32000 // self.roots.numel())
        leaf = torch.cat([descend(part) for part in x_all.split(chunk)])  # (N, T)
        sums = torch.zeros(n, self.nforests, dtype=torch.float64, device=dev)
        sums.index_add_(1, self.owner, leaf)
        out = sums / self.ntree_t
        for i, bias in enumerate(self.bias):
            if bias is not None:
                out[:, i] = bias[0] + bias[1] * out[:, i]
        return out


def _max_depth(lDau: np.ndarray, rDau: np.ndarray, interior: np.ndarray) -> int:
    """Largest number of splits on a root-to-leaf path over all trees (vectorised BFS)."""
    t, m = lDau.shape
    trees = np.arange(t)
    nodes = np.zeros(t, dtype=np.int64)
    depth = 0
    while trees.size:
        keep = interior[trees, nodes]
        trees, nodes = trees[keep], nodes[keep]
        if not trees.size:
            break
        depth += 1
        kids = np.concatenate([lDau[trees, nodes], rDau[trees, nodes]]) - 1
        if depth > m or kids.min() < 0 or kids.max() >= m:
            raise ValueError("regression forest: invalid daughter indices (out of range or cyclic)")
        trees, nodes = np.concatenate([trees, trees]), kids
    return depth


def synthetic_forest(
    ntree: int, nsplits: int, nfeatures: int, *, seed: int = 0, nrnodes: int | None = None
) -> RegressionForest:
    """A random forest in the regRF layout (for tests and benchmarks).

    Each tree grows by splitting a uniformly chosen leaf ``nsplits`` times; daughters get the next
    two node numbers, as in ``regTree``, so their numbers exceed the parent's. Random-leaf growth
    gives the depth of a random binary search tree (about 20-25 for 300 splits).
    """
    rng = np.random.default_rng(seed)
    m = nrnodes if nrnodes is not None else 2 * nsplits + 1
    if m < 2 * nsplits + 1:
        raise ValueError("nrnodes must be at least 2 * nsplits + 1")
    lDau = np.zeros((ntree, m), dtype=np.int64)
    rDau = np.zeros((ntree, m), dtype=np.int64)
    status = np.zeros((ntree, m), dtype=np.int64)
    status[:, 0] = NODE_TERMINAL
    leaves = np.zeros((ntree, nsplits + 1), dtype=np.int64)  # 0-based node numbers
    rows = np.arange(ntree)
    for s in range(nsplits):
        pick = rng.integers(0, s + 1, size=ntree)
        node = leaves[rows, pick]
        left, right = 2 * s + 1, 2 * s + 2
        lDau[rows, node] = left + 1
        rDau[rows, node] = right + 1
        status[rows, node] = -3
        status[:, left] = NODE_TERMINAL
        status[:, right] = NODE_TERMINAL
        leaves[rows, pick] = left
        leaves[:, s + 1] = right
    interior = status == -3
    mbest = np.where(interior, rng.integers(1, nfeatures + 1, size=(ntree, m)), 0)
    upper = np.where(interior, rng.standard_normal((ntree, m)), 0.0)
    avnode = rng.standard_normal((ntree, m))
    avnode[status == 0] = 0.0
    return RegressionForest(
        lDau=lDau, rDau=rDau, nodestatus=status, upper=upper, avnode=avnode, mbest=mbest,
        ndtree=np.full(ntree, 2 * nsplits + 1, dtype=np.int64), coef=np.zeros(2),
    )
