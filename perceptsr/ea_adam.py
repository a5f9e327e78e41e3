"""EA-Adam stage A building blocks: normalised-gradient Adam mixing and the MOEA/D evolutionary phase.

EA-Adam (Sun et al., TIP 2024; spec ``shared/specs/eaadam.md``) trains a population of ``n`` SR
generators, individual ``i`` owning the preference vector ``λ_i = (1 - i/(n-1), i/(n-1))`` over
(distortion, perception). Two phases alternate:

* **Adam phase**: each generator follows ``Σ_m λ_m ĝ_m`` where ``ĝ_m`` is the gradient of objective
  ``m`` normalised per parameter tensor (:func:`normalised_gradient_mix`), then a plain Adam step.
* **EA phase** (:func:`run_ea_phase`): steady-state MOEA/D. For each individual in turn a child is
  made (whole-tensor SBX with a mate, sparse Gaussian mutation; :func:`make_child`), scored on a fixed
  patch set without gradients (:class:`FitnessEvaluator`), and it replaces every neighbour whose
  normalised Tchebycheff value it strictly lowers (:class:`MOEADSelector`). An NSGA-II environmental
  selection (:class:`NSGA2Selector`, shipped but unused by the released code) is available for
  generational runs behind the same :class:`Selector` interface.

:class:`EAAdamObjective` (config ``objective.type: ea_adam``) runs both phases inside the training
loop: the population, discriminators and optimizers are checkpointed by the loop, so a run resumes
bit-exactly; phase logs, population exports and perception-distortion plots go to the run folder.

Differences from the released code, all deliberate (see the spec §1.3, §1.5, §9):

* Fitness is computed under ``torch.inference_mode`` with the HR-side features cached once, patches
  batched across images, and children kept as state dicts loaded into one scratch model (the release
  evaluates with autograd on, recomputes HR VGG features for every child and deep-copies up to five
  whole models per child). The values are the same up to float32 summation order.
* Evaluation files are the first ``K`` in *sorted* order (the release uses ``os.listdir`` order).
* When mutation follows crossover, the release rebuilds the child from parent ``i`` and overwrites only
  ``weight`` tensors, so the child's biases silently revert to parent ``i``'s. ``make_child`` keeps the
  crossed biases by default; ``faithful_bias_revert=True`` reproduces the release.
* A child whose fitness is not finite never replaces anyone and does not move the ideal/nadir points
  (the release would let NaN/inf into its running min/max).
* Randomness comes from one explicit ``torch.Generator`` (the release mixes ``numpy.random`` and the
  global torch RNG), so a phase is reproducible.
* Fitness objectives may be any perceptsr metric (NIQE, PI, LPIPS, ...) besides L1 and the VGG
  loss, since the EA step needs no gradients.
* In the loop, the EA phase runs after ``t_adam`` whole epochs of Adam steps each time (the
  release's first phase comes after 9 epochs, its later ones after 10), and takes no iterations.
* Under ``torchrun`` the per-objective gradients are averaged over ranks before normalisation and
  the fitness evaluation is split over ranks (the release is single-GPU).

State dicts produced here never share storage with their inputs, so population slots can be updated
in place without aliasing surprises.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Union

import torch
from torch import nn
from torch.nn import functional as F

from perceptsr.errors import ConfigError
from perceptsr.losses.gan import discriminator_loss, generator_loss

__all__ = [
    "StateDict",
    "preference_vectors",
    "neighbourhoods",
    "normalised_gradient_mix",
    "sbx_beta",
    "sbx_crossover",
    "gaussian_mutation",
    "ChildInfo",
    "VariationConfig",
    "make_child",
    "tchebycheff",
    "non_dominated_sort",
    "crowding_distance",
    "Selector",
    "MOEADSelector",
    "NSGA2Selector",
    "EvalSet",
    "grid_patches",
    "build_eval_set",
    "Objective",
    "L1Objective",
    "PerceptualObjective",
    "MetricObjective",
    "FunctionObjective",
    "as_objective",
    "FitnessEvaluator",
    "Replacement",
    "GenerationRecord",
    "EAPhaseReport",
    "run_ea_phase",
    "EAAdamObjective",
    "member_file",
    "POPULATION_DIR",
    "PHASES_LOG",
    "CHILDREN_LOG",
]

StateDict = dict[str, torch.Tensor]
KeySelector = Union[Callable[[str], bool], Iterable[str], None]


# ============================================================================ population layout


def preference_vectors(n: int) -> torch.Tensor:
    """``(n, 2)`` float64 preference vectors ``λ_i = (1 - i/(n-1), i/(n-1))``: row 0 is pure
    distortion, row ``n-1`` pure perception (EA-Adam ``uniform_point`` with 2 objectives)."""
    if int(n) != n or n < 2:
        raise ValueError(f"preference_vectors: n must be an integer >= 2, got {n!r}")
    t = torch.arange(int(n), dtype=torch.float64) / (n - 1)
    return torch.stack([1 - t, t], dim=1)


def neighbourhoods(n: int, size: int = 3) -> list[list[int]]:
    """Index windows of ``size`` consecutive individuals around each ``i``, shifted inward at the
    ends: for ``size=3`` a middle ``i`` gets ``[i-1, i, i+1]``, ``0 -> [0, 1, 2]`` and
    ``n-1 -> [n-3, n-2, n-1]`` (the release's ``neighborsize: 1``). Each window contains ``i``."""
    if int(n) != n or n < 1:
        raise ValueError(f"neighbourhoods: n must be a positive integer, got {n!r}")
    if int(size) != size or not 1 <= size <= n:
        raise ValueError(f"neighbourhoods: size must be an integer in [1, n={n}], got {size!r}")
    n, size = int(n), int(size)
    out = []
    for i in range(n):
        start = min(max(i - (size - 1) // 2, 0), n - size)
        out.append(list(range(start, start + size)))
    return out


_neighbourhoods = neighbourhoods  # alias: some functions below take a parameter of that name


# ============================================================================ Adam phase


def _trainable(model: nn.Module | Iterable[torch.Tensor]) -> list[torch.Tensor]:
    params = model.parameters() if isinstance(model, nn.Module) else model
    return [p for p in params if p.requires_grad]


def normalised_gradient_mix(
    model: nn.Module | Iterable[torch.Tensor],
    losses: Sequence[torch.Tensor],
    weights: Sequence[float],
    eps: float = 1e-7,
    reduce: Callable[[list[torch.Tensor | None]], list[torch.Tensor | None]] | None = None,
) -> torch.Tensor:
    """Write ``Σ_m λ_m · g_m / (‖g_m‖₂ + eps)`` into each parameter's ``.grad`` (norm per tensor).

    ``reduce``, if given, maps each objective's raw gradient list before normalisation (e.g. the
    average over DDP ranks: ``autograd.grad`` bypasses DDP's own gradient hooks).

    Each objective is back-propagated on its own with ``torch.autograd.grad`` (the shared graph is
    retained only until the last objective that needs it); the caller then takes an ordinary optimiser
    step. Existing ``.grad`` values are overwritten, not accumulated. A parameter that receives no
    gradient from one objective counts as zero there; one that receives none at all gets
    ``.grad = None`` (so Adam skips it). Objectives with weight 0 are not back-propagated: their term is
    exactly zero anyway (this saves a backward pass for the two end individuals).

    Returns the per-tensor gradient norms, shape ``(len(losses), n_params)`` on the parameters' device
    (NaN where an objective was skipped or gave no gradient), handy for logging.
    """
    params = _trainable(model)
    if len(losses) != len(weights):
        raise ValueError(f"normalised_gradient_mix: {len(losses)} losses but {len(weights)} weights")
    if not params:
        raise ValueError("normalised_gradient_mix: the model has no parameter with requires_grad=True")
    for m, loss in enumerate(losses):
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise ValueError(f"normalised_gradient_mix: loss {m} must be a scalar tensor")
    device = params[0].device
    norms = torch.full((len(losses), len(params)), float("nan"), device=device)
    active = [m for m, w in enumerate(weights) if float(w) != 0.0]
    mixed: list[torch.Tensor | None] = [None] * len(params)
    for pos, m in enumerate(active):
        retain = pos < len(active) - 1
        grads = torch.autograd.grad(losses[m].reshape(()), params, retain_graph=retain, allow_unused=True)
        if reduce is not None:
            grads = reduce(list(grads))
        w = float(weights[m])
        for j, g in enumerate(grads):
            if g is None:
                continue
            norm = torch.linalg.vector_norm(g)
            norms[m, j] = norm
            term = g / (norm + eps) * w  # out of place: autograd may hand back expanded views
            mixed[j] = term if mixed[j] is None else mixed[j].add_(term)
    for p, g in zip(params, mixed):
        p.grad = None if g is None else g.to(p.dtype)
    return norms


# ============================================================================ variation operators


def _key_predicate(keys: KeySelector, default: Callable[[str], bool]) -> Callable[[str], bool]:
    if keys is None:
        return default
    if callable(keys):
        return keys
    wanted = frozenset(keys)
    return lambda k: k in wanted


def _is_weight_or_bias(key: str) -> bool:
    return key.endswith("weight") or key.endswith("bias")


def _is_weight(key: str) -> bool:
    return key.endswith("weight")


def _rand(shape: Sequence[int] | torch.Size, generator: torch.Generator, like: torch.Tensor, normal: bool = False):
    """Uniform (or normal) numbers drawn on the generator's device, then moved to ``like``'s device
    and dtype: the same generator gives the same numbers whatever device the model lives on."""
    draw = torch.randn if normal else torch.rand
    dtype = like.dtype if like.is_floating_point() else torch.float32
    values = draw(tuple(shape), generator=generator, device=generator.device, dtype=dtype)
    return values.to(like.device)


def _uniform(generator: torch.Generator) -> float:
    return float(torch.rand((), generator=generator, device=generator.device, dtype=torch.float64))


def _randint(high: int, generator: torch.Generator) -> int:
    return int(torch.randint(high, (), generator=generator, device=generator.device))


def sbx_beta(u: float | torch.Tensor, eta: float = 20.0) -> float | torch.Tensor:
    """SBX spread factor: ``(2u)^(1/(η+1))`` if ``u < 0.5`` else ``(2 - 2u)^(-1/(η+1))``."""
    e = 1.0 / (eta + 1.0)
    if isinstance(u, torch.Tensor):
        return torch.where(u < 0.5, (2 * u).pow(e), (2 - 2 * u).pow(-e))
    return (2 * u) ** e if u < 0.5 else (2 - 2 * u) ** (-e)


def sbx_crossover(
    parent: Mapping[str, torch.Tensor],
    mate: Mapping[str, torch.Tensor],
    *,
    eta: float = 20.0,
    generator: torch.Generator | None = None,
    u: Sequence[float] | torch.Tensor | None = None,
    keys: KeySelector = None,
) -> StateDict:
    """Whole-tensor simulated binary crossover; returns the first child as a new state dict.

    For every floating tensor whose key ends in ``weight`` or ``bias`` (or matches ``keys``), one
    ``u ~ U(0, 1)`` (drawn for all such tensors at once from ``generator``, in key order, unless given
    explicitly as ``u``) gives a scalar ``β = sbx_beta(u, eta)`` and
    ``child = ½[(1 + β)·θ_parent + (1 - β)·θ_mate]``. Every other entry is a copy of the parent's.
    """
    if set(parent) != set(mate):
        diff = sorted(set(parent) ^ set(mate))
        raise ValueError(f"sbx_crossover: parent and mate differ in keys: {', '.join(diff[:8])}")
    select = _key_predicate(keys, _is_weight_or_bias)
    crossed = [k for k, v in parent.items() if select(k) and v.is_floating_point()]
    if u is None:
        if generator is None:
            raise ValueError("sbx_crossover: pass generator= (or explicit u=)")
        us = torch.rand(len(crossed), generator=generator, device=generator.device, dtype=torch.float64).tolist()
    else:
        us = [float(x) for x in (u.tolist() if isinstance(u, torch.Tensor) else u)]
        if len(us) != len(crossed):
            raise ValueError(f"sbx_crossover: {len(us)} u values for {len(crossed)} crossed tensors")
    betas = {k: float(sbx_beta(x, eta)) for k, x in zip(crossed, us)}
    child: StateDict = {}
    for k, p in parent.items():
        if k in betas:
            b = betas[k]
            m = mate[k].to(p.device, p.dtype)
            child[k] = 0.5 * ((1 + b) * p + (1 - b) * m)
        else:
            child[k] = p.detach().clone()
    return child


def gaussian_mutation(
    state: Mapping[str, torch.Tensor],
    *,
    p_element: float = 0.02,
    sigma: float = 0.03,
    keys: KeySelector = None,
    generator: torch.Generator,
    inplace: bool = False,
) -> StateDict:
    """Add ``N(0, σ²)`` to each element of the selected tensors independently with probability
    ``p_element``. By default only keys ending in ``weight`` are touched (the release's
    ``only_conv=True``). Returns a new state dict unless ``inplace`` (then ``state`` itself, mutated)."""
    select = _key_predicate(keys, _is_weight)
    out: StateDict = state if inplace else {}  # type: ignore[assignment]
    for k, v in state.items():
        if select(k) and v.is_floating_point():
            mask = _rand(v.shape, generator, v) < p_element
            noise = _rand(v.shape, generator, v, normal=True).mul_(sigma)
            mutated = v + noise * mask
            if inplace:
                v.copy_(mutated)
            else:
                out[k] = mutated
        elif not inplace:
            out[k] = v.detach().clone()
    return out


@dataclasses.dataclass(frozen=True)
class ChildInfo:
    """How a child was made: ``mate`` is ``None`` when no crossover happened."""

    parent: int
    mate: int | None
    crossover: bool
    mutation: bool


@dataclasses.dataclass(frozen=True)
class VariationConfig:
    """:func:`make_child` settings; defaults are the released ``mulsrresnet_gan.yml`` values."""

    p_crossover: float = 0.9
    p_neighbour: float = 0.7
    p_mutation: float = 0.2
    eta: float = 20.0
    p_element: float = 0.02
    sigma: float = 0.03
    faithful_bias_revert: bool = False

    def kwargs(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def make_child(
    population: Sequence[Mapping[str, torch.Tensor]],
    i: int,
    neighbourhood: Sequence[int] | None = None,
    *,
    generator: torch.Generator,
    p_crossover: float = 0.9,
    p_neighbour: float = 0.7,
    p_mutation: float = 0.2,
    eta: float = 20.0,
    p_element: float = 0.02,
    sigma: float = 0.03,
    faithful_bias_revert: bool = False,
) -> tuple[StateDict, ChildInfo]:
    """One EA-Adam child of individual ``i`` (a new state dict sharing no storage with the population).

    1. With probability ``p_crossover``: pick a mate uniformly from ``neighbourhood \\ {i}`` with
       probability ``p_neighbour``, else from the whole population ``\\ {i}``; the child is
       :func:`sbx_crossover` (parent ``i``, mate). Otherwise the child is a copy of parent ``i``.
    2. With probability ``p_mutation``: :func:`gaussian_mutation` of the ``weight`` tensors.
       ``faithful_bias_revert=False`` (default) mutates the crossover child as is.
       ``faithful_bias_revert=True`` reproduces the release: the mutated child is rebuilt from parent
       ``i`` with only its ``weight`` tensors taken over, so every other entry (the biases, which SBX
       had crossed) reverts to parent ``i``'s values.

    Random draws, in order: crossover coin, [pool coin, mate index, SBX u's], mutation coin,
    [per weight tensor: element mask, noise].
    """
    n = len(population)
    if not 0 <= i < n:
        raise IndexError(f"make_child: individual {i} out of range for a population of {n}")
    parent = population[i]
    mate_idx: int | None = None
    crossover = _uniform(generator) < p_crossover and n > 1
    if crossover:
        local = [k for k in (neighbourhood if neighbourhood is not None else range(n)) if k != i]
        pool = local if (local and _uniform(generator) < p_neighbour) else [k for k in range(n) if k != i]
        mate_idx = pool[_randint(len(pool), generator)]
        child = sbx_crossover(parent, population[mate_idx], eta=eta, generator=generator)
    else:
        child = {k: v.detach().clone() for k, v in parent.items()}
    mutation = _uniform(generator) < p_mutation
    if mutation:
        gaussian_mutation(child, p_element=p_element, sigma=sigma, generator=generator, inplace=True)
        if faithful_bias_revert:
            for k, v in parent.items():
                if not _is_weight(k):
                    child[k] = v.detach().clone()
    return child, ChildInfo(parent=i, mate=mate_idx, crossover=crossover, mutation=mutation)


# ============================================================================ scalarisation & sorting


def _f64(x: Any) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.float64, device="cpu") if not isinstance(x, torch.Tensor) \
        else x.detach().to("cpu", torch.float64)


def tchebycheff(
    f: torch.Tensor | Sequence, weights: torch.Tensor | Sequence, ideal: torch.Tensor | Sequence,
    nadir: torch.Tensor | Sequence, eps: float = 1e-5,
) -> torch.Tensor:
    """Normalised Tchebycheff ``max_m λ_m |f_m - z_m| / (nadir_m - ideal_m + eps)`` (float64).

    ``f`` and ``weights`` broadcast against each other over leading dimensions (last dim = objectives);
    ``ideal``/``nadir`` are ``(m,)``. Returns the broadcast leading shape.
    """
    f, w, z, zn = _f64(f), _f64(weights), _f64(ideal), _f64(nadir)
    return (w * (f - z).abs() / (zn - z + eps)).amax(dim=-1)


def non_dominated_sort(fitness: torch.Tensor | Sequence) -> list[list[int]]:
    """Fast non-dominated sort (minimisation): fronts as lists of row indices, best front first.

    ``a`` dominates ``b`` when ``a <= b`` everywhere and ``a < b`` somewhere; equal rows share a front.
    """
    f = _f64(fitness)
    if f.ndim != 2:
        raise ValueError(f"non_dominated_sort: expected (N, M) values, got shape {tuple(f.shape)}")
    le = (f[:, None, :] <= f[None, :, :]).all(-1)
    lt = (f[:, None, :] < f[None, :, :]).any(-1)
    dom = le & lt  # dom[a, b]: a dominates b
    count = dom.sum(0)  # how many dominate each b
    remaining = torch.ones(len(f), dtype=torch.bool)
    fronts: list[list[int]] = []
    while bool(remaining.any()):
        front = torch.nonzero(remaining & (count == 0)).flatten()
        fronts.append(front.tolist())
        remaining[front] = False
        count = count - dom[front].sum(0)
    return fronts


def crowding_distance(fitness: torch.Tensor | Sequence) -> torch.Tensor:
    """NSGA-II crowding distance of one front ``(K, M)`` -> ``(K,)`` float64; boundary points get inf.

    Per objective: sort (stable), the extremes get ``inf``, interior points add
    ``(f[next] - f[prev]) / (f_max - f_min)``; an objective with ``f_max == f_min`` adds nothing.
    """
    f = _f64(fitness)
    k, m = f.shape
    dist = torch.zeros(k, dtype=torch.float64)
    if k <= 2:
        return torch.full((k,), math.inf, dtype=torch.float64)
    for j in range(m):
        order = torch.sort(f[:, j], stable=True).indices
        col = f[order, j]
        dist[order[0]] = math.inf
        dist[order[-1]] = math.inf
        span = float(col[-1] - col[0])
        if span > 0:
            dist[order[1:-1]] += (col[2:] - col[:-2]) / span
    return dist


# ============================================================================ selectors


class Selector(ABC):
    """Environmental selection over ``n`` population slots holding fitness ``F`` (n, m), minimised.

    ``steady_state`` selectors are offered one child at a time (:meth:`MOEADSelector.offer`);
    generational ones take a whole batch. Both answer :meth:`select` with ``(child, slot)`` pairs:
    child ``child`` (an index into ``children_fitness``) is to be copied into slot ``slot``. Slots in
    ``protected`` are never replaced (e.g. the frozen L1 individual 0).
    """

    steady_state: ClassVar[bool]

    def __init__(self, protected: Iterable[int] = ()) -> None:
        self.protected = frozenset(int(p) for p in protected)
        self._fitness: torch.Tensor | None = None
        self.ideal: torch.Tensor | None = None
        self.nadir: torch.Tensor | None = None

    @property
    def fitness(self) -> torch.Tensor:
        """Current ``(n, m)`` float64 fitness of the slots (a copy)."""
        if self._fitness is None:
            raise RuntimeError(f"{type(self).__name__}: call initialise(fitness) first")
        return self._fitness.clone()

    @property
    def n(self) -> int:
        return 0 if self._fitness is None else len(self._fitness)

    def initialise(self, fitness: torch.Tensor | Sequence) -> None:
        """Set the population fitness; ideal/nadir become its per-objective min/max."""
        f = _f64(fitness).clone()
        if f.ndim != 2 or len(f) == 0:
            raise ValueError(f"{type(self).__name__}: fitness must be (n, m), got shape {tuple(f.shape)}")
        if not bool(torch.isfinite(f).all()):
            raise ValueError(f"{type(self).__name__}: initial fitness has non-finite values:\n{f}")
        bad = [p for p in self.protected if not 0 <= p < len(f)]
        if bad:
            raise ValueError(f"{type(self).__name__}: protected slots {bad} out of range for n={len(f)}")
        self._check_size(len(f))
        self._fitness = f
        self.ideal = f.amin(0)
        self.nadir = f.amax(0)

    def _check_size(self, n: int) -> None:  # noqa: B027 - optional hook
        pass

    def _update_bounds(self, f: torch.Tensor) -> None:
        finite = torch.isfinite(f).all(-1)
        if bool(finite.any()):
            good = f[finite]
            self.ideal = torch.minimum(self.ideal, good.amin(0))
            self.nadir = torch.maximum(self.nadir, good.amax(0))

    @abstractmethod
    def select(self, parents: Sequence[int], children_fitness: torch.Tensor | Sequence) -> list[tuple[int, int]]:
        """Replacements ``(child index, slot)`` for children of ``parents`` with the given fitness."""


class MOEADSelector(Selector):
    """MOEA/D neighbourhood replacement with the normalised Tchebycheff function (the released EA).

    When child fitness ``f`` of parent ``i`` is offered: ideal/nadir are updated element-wise with
    ``f``; then every neighbour ``k`` of ``i`` (``i`` itself included, protected slots skipped) with
    ``g(f | λ_k) < g(F[k] | λ_k)`` (strictly) is replaced and ``F[k] = f``. No cap on replacements.
    """

    steady_state = True

    def __init__(
        self,
        weights: torch.Tensor | Sequence,
        neighbourhoods: Sequence[Sequence[int]] | None = None,
        *,
        protected: Iterable[int] = (),
        eps: float = 1e-5,
    ) -> None:
        super().__init__(protected)
        self.weights = _f64(weights)
        if self.weights.ndim != 2:
            raise ValueError(f"MOEADSelector: weights must be (n, m), got shape {tuple(self.weights.shape)}")
        n = len(self.weights)
        nb = neighbourhoods if neighbourhoods is not None else _neighbourhoods(n, min(3, n))
        self.neighbourhoods = [sorted({int(k) for k in ks}) for ks in nb]
        if len(self.neighbourhoods) != n or any(not 0 <= k < n for ks in self.neighbourhoods for k in ks):
            raise ValueError(f"MOEADSelector: need {n} neighbourhoods with indices in [0, {n})")
        self.eps = float(eps)

    @classmethod
    def uniform(cls, n: int, neighbourhood_size: int = 3, *, protected: Iterable[int] = (), eps: float = 1e-5):
        """The EA-Adam setting: :func:`preference_vectors` and sliding :func:`neighbourhoods`."""
        return cls(preference_vectors(n), neighbourhoods(n, neighbourhood_size), protected=protected, eps=eps)

    def _check_size(self, n: int) -> None:
        if n != len(self.weights):
            raise ValueError(f"MOEADSelector: {n} individuals but {len(self.weights)} weight vectors")

    def scalarised(self, fitness: torch.Tensor | Sequence | None = None) -> torch.Tensor:
        """``g(F[k] | λ_k)`` for every slot ``k`` (or for given ``(n, m)`` values) at the current bounds."""
        f = self._fitness if fitness is None else _f64(fitness)
        return tchebycheff(f, self.weights, self.ideal, self.nadir, self.eps)

    def offer(self, parent: int, child_fitness: torch.Tensor | Sequence) -> list[int]:
        """Offer one child of ``parent``; returns the slots it replaces (ascending) and updates ``F``."""
        if self._fitness is None:
            raise RuntimeError("MOEADSelector: call initialise(fitness) first")
        f = _f64(child_fitness).reshape(-1)
        if f.numel() != self._fitness.shape[1]:
            raise ValueError(f"MOEADSelector: child fitness has {f.numel()} values, expected {self._fitness.shape[1]}")
        if not bool(torch.isfinite(f).all()):
            return []
        self._update_bounds(f[None])
        ks = [k for k in self.neighbourhoods[parent] if k not in self.protected]
        if not ks:
            return []
        idx = torch.tensor(ks)
        lam = self.weights[idx]
        g_child = tchebycheff(f[None], lam, self.ideal, self.nadir, self.eps)
        g_now = tchebycheff(self._fitness[idx], lam, self.ideal, self.nadir, self.eps)
        replaced = [k for k, better in zip(ks, (g_child < g_now).tolist()) if better]
        for k in replaced:
            self._fitness[k] = f
        return replaced

    def select(self, parents: Sequence[int], children_fitness: torch.Tensor | Sequence) -> list[tuple[int, int]]:
        """Sequential :meth:`offer` of each child (steady state)."""
        cf = _f64(children_fitness)
        return [(c, k) for c, p in enumerate(parents) for k in self.offer(int(p), cf[c])]


class NSGA2Selector(Selector):
    """NSGA-II environmental selection (non-dominated sort, then crowding distance) for generational use.

    From the population ∪ children, the protected slots survive as they are and ``n - |protected|``
    more are chosen: whole fronts in order, the last front cut by descending crowding distance (ties
    by index). Surviving old individuals keep their slots; surviving children fill the freed slots,
    the child with the lowest first objective going to the lowest freed slot (so slot order keeps
    following λ, distortion-oriented first). Non-finite children are never chosen.
    """

    steady_state = False

    def select(self, parents: Sequence[int], children_fitness: torch.Tensor | Sequence) -> list[tuple[int, int]]:
        if self._fitness is None:
            raise RuntimeError("NSGA2Selector: call initialise(fitness) first")
        cf = _f64(children_fitness)
        if cf.ndim != 2 or cf.shape[1] != self._fitness.shape[1]:
            raise ValueError(f"NSGA2Selector: children fitness must be (c, {self._fitness.shape[1]})")
        n = len(self._fitness)
        self._update_bounds(cf)
        union = torch.cat([self._fitness, cf])
        candidates = [j for j in range(len(union)) if j not in self.protected
                      and bool(torch.isfinite(union[j]).all())]
        need = n - len(self.protected)
        chosen: list[int] = []
        for front in non_dominated_sort(union[candidates]):
            members = [candidates[j] for j in front]
            if len(chosen) + len(members) <= need:
                chosen += members
            else:
                dist = crowding_distance(union[members])
                order = sorted(range(len(members)), key=lambda a: (-float(dist[a]), members[a]))
                chosen += [members[a] for a in order[: need - len(chosen)]]
            if len(chosen) >= need:
                break
        survivors = set(chosen)
        freed = [s for s in range(n) if s not in self.protected and s not in survivors]
        kids = sorted((j - n for j in chosen if j >= n), key=lambda c: (float(cf[c, 0]), c))
        pairs = list(zip(kids, freed))
        for c, slot in pairs:
            self._fitness[slot] = cf[c]
        return pairs


# ============================================================================ evaluation set


@dataclasses.dataclass
class EvalSet:
    """A fixed EA evaluation set: LR/HR patch stacks and the source image of every patch."""

    lr: torch.Tensor  # (P, C, h, w)
    hr: torch.Tensor  # (P, C, H, W)
    image_index: torch.Tensor  # (P,) int64, 0..num_images-1
    names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.lr.ndim != 4 or self.hr.ndim != 4 or len(self.lr) != len(self.hr) or len(self.lr) == 0:
            raise ValueError(
                f"EvalSet: lr and hr must be non-empty (P, C, H, W) stacks of equal length, got "
                f"{tuple(self.lr.shape)} and {tuple(self.hr.shape)}"
            )
        self.image_index = torch.as_tensor(self.image_index, dtype=torch.int64).reshape(-1)
        if len(self.image_index) != len(self.lr):
            raise ValueError(f"EvalSet: {len(self.image_index)} image indices for {len(self.lr)} patches")
        if not self.names:
            self.names = tuple(str(j) for j in range(int(self.image_index.max()) + 1))
        counts = torch.bincount(self.image_index, minlength=len(self.names))
        if len(counts) != len(self.names) or bool((counts == 0).any()) or int(self.image_index.min()) < 0:
            raise ValueError(
                f"EvalSet: image_index must cover images 0..{len(self.names) - 1}, each with at least one patch"
            )

    @property
    def num_patches(self) -> int:
        return len(self.lr)

    @property
    def num_images(self) -> int:
        return len(self.names)

    def to(self, device: torch.device | str) -> EvalSet:
        return EvalSet(self.lr.to(device), self.hr.to(device), self.image_index, self.names)


def grid_patches(img: torch.Tensor, size: int) -> torch.Tensor:
    """Non-overlapping ``size``² patches of a ``(C, H, W)`` image in raster order (row by row),
    ``(rows * cols, C, size, size)``; the right/bottom remainder is dropped."""
    c = img.shape[0]
    tiles = img.unfold(1, size, size).unfold(2, size, size)  # (C, rows, cols, s, s)
    return tiles.permute(1, 2, 0, 3, 4).reshape(-1, c, size, size)


def _chw(img) -> torch.Tensor:
    return torch.from_numpy(img.transpose(2, 0, 1).copy()).float()


def build_eval_set(
    hr_dir: str | Path,
    lr_dir: str | Path | None = None,
    *,
    scale: int = 4,
    patch_size: int = 128,
    num_images: int = 16,
    max_patches: int = 100,
    keep: tuple[int, int] = (25, 75),
    quantize_lr: bool = True,
) -> EvalSet:
    """The EA fitness set of the release, made deterministic.

    The first ``num_images`` files of ``hr_dir`` in sorted order (the release took ``os.listdir``
    order); each is cut into non-overlapping ``patch_size``² HR patches in raster order and, when an
    image gives more than ``max_patches``, only patches ``keep[0]..keep[1]-1`` are kept (#25–#74).
    LR patches come from the matching file of ``lr_dir`` (paired by stem, ``x4`` suffix allowed) cut on
    the ``patch_size / scale`` grid, or else from MATLAB bicubic downscaling of the (modcropped) HR
    image, rounded to uint8 like a saved LR file unless ``quantize_lr=False``. Images smaller than one
    patch are skipped.
    """
    from perceptsr.data import imresize, list_images, modcrop, pair_files, read_image, to_uint8

    if patch_size % scale:
        raise ConfigError(f"build_eval_set: patch_size {patch_size} is not a multiple of scale {scale}")
    if lr_dir is not None:
        pairs: list[tuple[Path, Path | None]] = list(pair_files(hr_dir, lr_dir, scale))
    else:
        pairs = [(p, None) for p in list_images(hr_dir)]
    if not pairs:
        raise ConfigError(f"build_eval_set: no images in {hr_dir}")
    lp = patch_size // scale
    lrs, hrs, idx, names = [], [], [], []
    for hr_path, lr_path in pairs[:num_images]:
        hr_img = read_image(hr_path)
        if lr_path is not None:
            lr_img = read_image(lr_path)
        else:
            hr_u8 = to_uint8(modcrop(hr_img, scale))
            if quantize_lr:
                lr_img = imresize(hr_u8, 1 / scale).astype("float32") / 255
            else:
                lr_img = imresize(hr_u8.astype("float64") / 255, 1 / scale).astype("float32")
        hp = grid_patches(_chw(hr_img), patch_size)
        lq = grid_patches(_chw(lr_img), lp)
        if len(hp) != len(lq):
            raise ConfigError(
                f"build_eval_set: {hr_path.name} gives {len(hp)} HR patches but its LR "
                f"{lr_path.name if lr_path else ''} gives {len(lq)} (is the LR x{scale} of this HR?)"
            )
        if len(hp) == 0:
            continue
        if len(hp) > max_patches:
            hp, lq = hp[keep[0]:keep[1]], lq[keep[0]:keep[1]]
        idx.append(torch.full((len(hp),), len(names), dtype=torch.int64))
        names.append(hr_path.stem)
        hrs.append(hp)
        lrs.append(lq)
    if not names:
        raise ConfigError(f"build_eval_set: no image in {hr_dir} is at least {patch_size}x{patch_size}")
    return EvalSet(torch.cat(lrs), torch.cat(hrs), torch.cat(idx), tuple(names))


# ============================================================================ objectives


class Objective(nn.Module):
    """A fitness objective, minimised: ``forward(sr, hr, cache) -> (N,)`` per-patch values.

    :meth:`prepare_hr` computes whatever depends on the HR patches only (e.g. VGG features); the
    evaluator calls it once per batch of the fixed set and passes the result back as ``cache``.
    """

    name: str = "objective"

    def prepare_hr(self, hr: torch.Tensor) -> Any:
        return None

    def forward(self, sr: torch.Tensor, hr: torch.Tensor, cache: Any) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class L1Objective(Objective):
    """Mean absolute error per patch (the release's ``nn.L1Loss`` on [0, 1] images)."""

    name = "l1"

    def forward(self, sr: torch.Tensor, hr: torch.Tensor, cache: Any) -> torch.Tensor:
        return (sr - hr).abs().flatten(1).mean(1)


class PerceptualObjective(Objective):
    """VGG feature distance per patch with the target's features cached: the same number as
    :class:`~perceptsr.losses.PerceptualLoss` (criterion ``l1`` or ``l2``) applied patch by patch.

    Pass a ``PerceptualLoss`` instance or the keyword arguments to build one (default: VGG19
    ``conv5_4`` before ReLU, L1, torchvision weights, as the released SRResNet run).
    """

    name = "perceptual"

    def __init__(self, loss: nn.Module | None = None, **kwargs: Any) -> None:
        super().__init__()
        if loss is None:
            from perceptsr.losses import PerceptualLoss

            loss = PerceptualLoss(**kwargs)
        elif kwargs:
            raise ConfigError("PerceptualObjective: pass either a loss module or its keyword arguments")
        if loss.criterion not in ("l1", "l2"):
            raise ConfigError(
                f"PerceptualObjective: criterion {loss.criterion!r} has no per-patch form; use 'l1' or 'l2'"
            )
        self.loss = loss

    def _features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.loss.range_norm:
            x = (x + 1) / 2
        return self.loss.vgg(x)

    def prepare_hr(self, hr: torch.Tensor) -> dict[str, torch.Tensor]:
        return self._features(hr)

    def forward(self, sr: torch.Tensor, hr: torch.Tensor, cache: Any) -> torch.Tensor:
        hr_feats = cache if cache is not None else self.prepare_hr(hr)
        feats = self._features(sr)
        total = sr.new_zeros(len(sr))
        for layer, weight in self.loss.layer_weights.items():
            d = feats[layer] - hr_feats[layer].to(feats[layer].device)
            d = d.abs() if self.loss.criterion == "l1" else d.pow(2)
            total = total + weight * d.flatten(1).mean(1)
        return total * self.loss.loss_weight


class MetricObjective(Objective):
    """A perceptsr metric (``create_metric(name)``: ``.full_reference``, ``.lower_better``,
    ``forward(x, ref=None) -> (N,)``) as an objective. Higher-is-better metrics are negated so that
    everything is minimised; SR outputs are clamped to [0, 1] first, as metrics require."""

    def __init__(self, metric: nn.Module, name: str | None = None) -> None:
        super().__init__()
        for attr in ("full_reference", "lower_better"):
            if not hasattr(metric, attr):
                raise ConfigError(f"MetricObjective: {type(metric).__name__} has no {attr!r} attribute")
        self.metric = metric
        self.name = name or str(getattr(metric, "name", type(metric).__name__.lower()))
        self.sign = 1.0 if metric.lower_better else -1.0

    def forward(self, sr: torch.Tensor, hr: torch.Tensor, cache: Any) -> torch.Tensor:
        x = sr.clamp(0, 1)
        out = self.metric(x, ref=hr) if self.metric.full_reference else self.metric(x)
        return self.sign * out.reshape(-1)


class FunctionObjective(Objective):
    """Wrap a plain callable ``fn(sr, hr, cache) -> (N,)``."""

    def __init__(self, fn: Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor], name: str | None = None) -> None:
        super().__init__()
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "objective")

    def forward(self, sr: torch.Tensor, hr: torch.Tensor, cache: Any) -> torch.Tensor:
        return self.fn(sr, hr, cache)


ObjectiveLike = Union[Objective, nn.Module, str, Callable[..., torch.Tensor]]


def as_objective(obj: ObjectiveLike) -> Objective:
    """``"l1"``, ``"perceptual"``, another name (a perceptsr metric), a metric module, an
    :class:`Objective` or a callable -> :class:`Objective`."""
    if isinstance(obj, Objective):
        return obj
    if isinstance(obj, str):
        if obj == "l1":
            return L1Objective()
        if obj == "perceptual":
            return PerceptualObjective()
        from perceptsr.metrics import create_metric

        return MetricObjective(create_metric(obj), name=obj)
    if isinstance(obj, nn.Module) and hasattr(obj, "lower_better"):
        return MetricObjective(obj)
    if callable(obj):
        return FunctionObjective(obj)
    raise ConfigError(f"not a fitness objective: {obj!r}")


# ============================================================================ evaluator


def _rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class FitnessEvaluator:
    """Scores generators on a fixed :class:`EvalSet` without autograd (``torch.inference_mode``).

    Fitness = per objective, the mean over images of the mean over each image's patches (the release's
    one-image-per-batch averaging), as a float64 ``(m,)`` CPU tensor. Patches are run in batches of
    ``batch_size`` regardless of image boundaries, and each objective's HR-side data (VGG features) is
    computed once per batch and kept on ``cache_device`` (default: ``device``; use ``"cpu"`` if many
    layers' features do not fit). Models are run in eval mode and put back in their previous mode.

    Distributed (``distributed=True`` while ``torch.distributed`` is initialised with more than one
    process): :meth:`evaluate` splits the patch batches over the ranks (batch ``b`` on rank
    ``b % world``, all-reduced, so each patch is computed exactly as in one process) and
    :meth:`evaluate_states` splits the state dicts (``all_gather_object``). Every rank must call with
    the same arguments. With world size 1 or no process group both run locally.
    """

    def __init__(
        self,
        eval_set: EvalSet,
        objectives: Sequence[ObjectiveLike] = ("l1", "perceptual"),
        *,
        batch_size: int = 50,
        device: torch.device | str | None = None,
        cache_device: torch.device | str | None = None,
    ) -> None:
        if not objectives:
            raise ConfigError("FitnessEvaluator: give at least one objective")
        if batch_size < 1:
            raise ConfigError(f"FitnessEvaluator: batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device) if device is not None else eval_set.lr.device
        self.cache_device = torch.device(cache_device) if cache_device is not None else self.device
        self.eval_set = eval_set.to(self.device)
        self.objectives = [as_objective(o).to(self.device).eval() for o in objectives]
        self.names = [o.name for o in self.objectives]
        self.batch_size = int(batch_size)
        p = eval_set.num_patches
        self.batches = [(s, min(s + self.batch_size, p)) for s in range(0, p, self.batch_size)]
        counts = torch.bincount(self.eval_set.image_index, minlength=eval_set.num_images)
        self._image_count = counts.to(torch.float64)
        self._cache: list[list[Any]] | None = None

    @property
    def num_objectives(self) -> int:
        return len(self.objectives)

    def _to(self, obj: Any, device: torch.device) -> Any:
        if isinstance(obj, torch.Tensor):
            return obj.to(device)
        if isinstance(obj, dict):
            return {k: self._to(v, device) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return type(obj)(self._to(v, device) for v in obj)
        return obj

    @torch.inference_mode()
    def hr_cache(self) -> list[list[Any]]:
        """Per batch, per objective: the cached HR-side data (computed on first use)."""
        if self._cache is None:
            cache = []
            for s, e in self.batches:
                hr = self.eval_set.hr[s:e]
                cache.append([self._to(o.prepare_hr(hr), self.cache_device) for o in self.objectives])
            self._cache = cache
        return self._cache

    @torch.inference_mode()
    def patch_values(self, model: nn.Module, batches: Iterable[int] | None = None) -> torch.Tensor:
        """``(P, m)`` float64 per-patch objective values (rows of batches not run stay 0)."""
        cache = self.hr_cache()
        values = torch.zeros(self.eval_set.num_patches, self.num_objectives, dtype=torch.float64, device=self.device)
        was_training = model.training
        model.eval()
        try:
            for b in (range(len(self.batches)) if batches is None else batches):
                s, e = self.batches[b]
                sr = model(self.eval_set.lr[s:e])
                hr = self.eval_set.hr[s:e]
                for j, obj in enumerate(self.objectives):
                    v = obj(sr, hr, self._to(cache[b][j], self.device))
                    if v.shape != (e - s,):
                        raise ValueError(
                            f"objective {obj.name!r} returned shape {tuple(v.shape)}; expected ({e - s},), "
                            "one value per patch"
                        )
                    values[s:e, j] = v.to(torch.float64)
        finally:
            model.train(was_training)
        return values

    def aggregate(self, values: torch.Tensor) -> torch.Tensor:
        """Per-patch ``(P, m)`` -> ``(m,)``: mean over each image's patches, then over images."""
        values = values.detach().to("cpu", torch.float64)
        sums = torch.zeros(self.eval_set.num_images, values.shape[1], dtype=torch.float64)
        sums.index_add_(0, self.eval_set.image_index, values)
        return (sums / self._image_count[:, None]).mean(0)

    def evaluate(self, model: nn.Module, *, distributed: bool = False) -> torch.Tensor:
        """Fitness ``(m,)`` of ``model`` (float64, CPU)."""
        rank, world = _rank_world() if distributed else (0, 1)
        if world == 1:
            return self.aggregate(self.patch_values(model))
        values = self.patch_values(model, range(rank, len(self.batches), world)).clone()
        torch.distributed.all_reduce(values)  # others' rows are 0 here: the sum is exact
        return self.aggregate(values)

    def evaluate_state(self, model: nn.Module, state: Mapping[str, torch.Tensor], *, distributed: bool = False):
        """Load ``state`` into the scratch ``model`` (strictly) and evaluate it."""
        with torch.no_grad():
            model.load_state_dict(state, strict=True)
        return self.evaluate(model, distributed=distributed)

    def evaluate_states(
        self, model: nn.Module, states: Sequence[Mapping[str, torch.Tensor]], *, distributed: bool = False
    ) -> torch.Tensor:
        """Fitness ``(len(states), m)`` of several state dicts, one scratch ``model`` for all."""
        rank, world = _rank_world() if distributed else (0, 1)
        out = torch.zeros(len(states), self.num_objectives, dtype=torch.float64)
        mine = range(rank, len(states), world)
        local = [(c, self.evaluate_state(model, states[c]).tolist()) for c in mine]
        if world > 1:
            gathered: list[Any] = [None] * world
            torch.distributed.all_gather_object(gathered, local)
            local = [item for part in gathered for item in part]
        for c, vals in local:
            out[c] = torch.tensor(vals, dtype=torch.float64)
        return out


# ============================================================================ EA phase


@dataclasses.dataclass(frozen=True)
class Replacement:
    """Slot ``slot`` took the child that parent ``parent`` produced in generation ``generation``."""

    generation: int
    parent: int
    slot: int


@dataclasses.dataclass
class GenerationRecord:
    """One generation: per child (in creation order) its parent, mate, operators and fitness."""

    generation: int
    parents: list[int]
    mates: list[int | None]
    crossover: list[bool]
    mutation: list[bool]
    children_fitness: torch.Tensor  # (c, m) float64
    replacements: list[Replacement]


@dataclasses.dataclass
class EAPhaseReport:
    """Outcome of :func:`run_ea_phase`. ``population`` holds the final state dicts (slot order)."""

    population: list[StateDict]
    initial_fitness: torch.Tensor
    fitness: torch.Tensor
    ideal: torch.Tensor
    nadir: torch.Tensor
    generations: list[GenerationRecord]
    replacements: list[Replacement]
    evaluations: int
    seconds: float
    objective_names: list[str] = dataclasses.field(default_factory=list)


def _own(state: Mapping[str, torch.Tensor] | nn.Module, device: torch.device) -> StateDict:
    sd = state.state_dict() if isinstance(state, nn.Module) else state
    return {k: v.detach().to(device, copy=True) for k, v in sd.items()}


@torch.no_grad()
def _copy_into(slot: StateDict, child: Mapping[str, torch.Tensor]) -> None:
    for k, v in slot.items():
        v.copy_(child[k])


def run_ea_phase(
    population_states: Sequence[Mapping[str, torch.Tensor] | nn.Module],
    selector: Selector,
    evaluator: FitnessEvaluator,
    make_model: Callable[[], nn.Module] | nn.Module,
    generations: int,
    generator: torch.Generator,
    *,
    variation: VariationConfig = VariationConfig(),
    neighbourhoods: Sequence[Sequence[int]] | None = None,
    initial_fitness: torch.Tensor | None = None,
    distributed: bool = False,
    on_generation: Callable[[GenerationRecord], None] | None = None,
    progress: bool = False,
) -> EAPhaseReport:
    """One EA phase (spec §1.3/§1.6); deterministic given ``generator`` and the inputs.

    The population is copied once onto ``evaluator.device``; children live as state dicts and are
    loaded into ONE scratch model (``make_model()``, or the module given) for scoring; a child is
    copied into slot ``k`` only when it replaces it. At the start every individual is scored (unless
    ``initial_fitness`` is given) and ``selector.initialise`` sets ``F``, ideal and nadir.

    * Steady-state selector (MOEA/D, the release): per generation, for ``i = 0..n-1`` in order, make a
      child of ``i``, score it, offer it; replacements take effect before the next child is made.
    * Generational selector (NSGA-II): per generation, ``n`` children from the current population,
      scored together (split over ranks when ``distributed``), then one selection.

    Mating neighbourhoods: ``neighbourhoods``, else the selector's, else :func:`neighbourhoods`.
    With ``distributed=True`` every rank must run the same call with an identically seeded generator.
    """
    if generations < 0:
        raise ValueError(f"run_ea_phase: generations must be >= 0, got {generations}")
    start = time.perf_counter()
    device = evaluator.device
    pop = [_own(s, device) for s in population_states]
    n = len(pop)
    if n < 2:
        raise ValueError(f"run_ea_phase: need at least 2 individuals, got {n}")
    scratch = make_model if isinstance(make_model, nn.Module) else make_model()
    scratch.to(device)
    nb = neighbourhoods if neighbourhoods is not None else getattr(selector, "neighbourhoods", None)
    if nb is None:
        nb = _neighbourhoods(n, min(3, n))
    if len(nb) != n:
        raise ValueError(f"run_ea_phase: {len(nb)} neighbourhoods for {n} individuals")
    evaluations = 0
    if initial_fitness is None:
        f0 = evaluator.evaluate_states(scratch, pop, distributed=distributed)
        evaluations += n
    else:
        f0 = _f64(initial_fitness)
    selector.initialise(f0)
    kw = variation.kwargs()
    records: list[GenerationRecord] = []
    all_repl: list[Replacement] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=generations * n, desc="EA phase", unit="child", leave=False)
    for g in range(generations):
        infos: list[ChildInfo] = []
        fits: list[torch.Tensor] = []
        repl: list[Replacement] = []
        if selector.steady_state:
            for i in range(n):
                child, info = make_child(pop, i, nb[i], generator=generator, **kw)
                f = evaluator.evaluate_state(scratch, child, distributed=distributed)
                evaluations += 1
                for _, k in selector.select([i], f[None]):
                    _copy_into(pop[k], child)
                    repl.append(Replacement(g, i, k))
                infos.append(info)
                fits.append(f)
                if bar is not None:
                    bar.update(1)
        else:
            made = [make_child(pop, i, nb[i], generator=generator, **kw) for i in range(n)]
            children = [c for c, _ in made]
            infos = [info for _, info in made]
            cf = evaluator.evaluate_states(scratch, children, distributed=distributed)
            evaluations += n
            fits = list(cf)
            for c, k in selector.select([info.parent for info in infos], cf):
                _copy_into(pop[k], children[c])
                repl.append(Replacement(g, infos[c].parent, k))
            if bar is not None:
                bar.update(n)
        rec = GenerationRecord(
            generation=g,
            parents=[x.parent for x in infos],
            mates=[x.mate for x in infos],
            crossover=[x.crossover for x in infos],
            mutation=[x.mutation for x in infos],
            children_fitness=torch.stack(fits) if fits else torch.zeros(0, evaluator.num_objectives),
            replacements=repl,
        )
        records.append(rec)
        all_repl += repl
        if on_generation is not None:
            on_generation(rec)
    if bar is not None:
        bar.close()
    return EAPhaseReport(
        population=pop,
        initial_fitness=f0.clone(),
        fitness=selector.fitness,
        ideal=selector.ideal.clone(),
        nadir=selector.nadir.clone(),
        generations=records,
        replacements=all_repl,
        evaluations=evaluations,
        seconds=time.perf_counter() - start,
        objective_names=list(evaluator.names),
    )


# ============================================================================ training objective (stage A)

from perceptsr.train.objectives import (  # noqa: E402 - the algorithm above does not need the loop
    NonFiniteLossError,
    Objective as TrainObjective,
    Runtime,
    build_discriminator,
    register_objective,
)

POPULATION_DIR = "population"
PHASES_LOG = "ea_phases.jsonl"
CHILDREN_LOG = "ea_children.jsonl"


def member_file(folder: str | Path, i: int) -> Path:
    """Where individual ``i`` of an exported population lives (``member_<i>.safetensors``)."""
    return Path(folder) / f"member_{i}.safetensors"


def _set_requires_grad(module: nn.Module, flag: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(flag)


def _build_perceptual(p: Any) -> nn.Module:
    """A :class:`~perceptsr.losses.PerceptualLoss` from a ``PerceptualLossConfig``."""
    from perceptsr.losses import PerceptualLoss

    try:
        return PerceptualLoss(layer_weights=p.layer_weights, vgg_type=p.vgg_type, weights=p.weights,
                              use_input_norm=p.use_input_norm, criterion=p.criterion, range_norm=p.range_norm,
                              loss_weight=p.weight)
    except (ValueError, KeyError) as exc:
        raise ConfigError(f"config key 'objective.perceptual': {exc}") from None


def _rewrite_jsonl(path: Path, keep: Callable[[dict], bool], new_lines: Iterable[dict]) -> None:
    """Keep the records of ``path`` that pass ``keep`` (drops a phase re-run after a resume), append
    ``new_lines``, and write atomically."""
    import json

    from perceptsr.checkpoint import atomic_write

    kept = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip() and keep(json.loads(line)):
                kept.append(line)
    kept += [json.dumps(rec) for rec in new_lines]
    text = "".join(line + "\n" for line in kept)
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


@register_objective("ea_adam")
class EAAdamObjective(TrainObjective):
    """EA-Adam stage A in the training loop (config ``objective.type: ea_adam``).

    The loop's generator is individual 0 (``net_g``); individuals 1..n-1 are ``net_g_<i>`` and the
    discriminators ``net_d_<i>`` (none for a frozen individual 0), all checkpointed by the loop.
    Each iteration: for every trainable individual, L1 and perceptual + ``gan_weight`` x adversarial
    are back-propagated separately, mixed by :func:`normalised_gradient_mix` with its preference
    vector and applied by its own Adam; then its discriminator takes an ordinary step. If one
    individual's losses are not finite, NonFiniteLossError is raised for it (the individuals
    before it have stepped already). At the start of iteration t with t - 1 a positive multiple of
    ``t_adam`` epochs, :func:`run_ea_phase` runs ``t_ea`` generations on the fixed sorted patch
    set (discriminators unused), the population is copied back and the generators' Adam moments are
    reset. Per phase, on rank 0: ``ea_phases.jsonl`` and ``ea_children.jsonl`` in the run folder,
    TensorBoard scalars under ``tb/ea_adam``, the population exported to
    ``population/phase_<k>/member_<i>.safetensors``, and a PSNR-vs-``plane_metric`` plot of the
    population on ``data.val`` (``ea_adam/plane_phase_<k>.png``). The last iteration exports
    ``population/final``. With several processes, gradients are averaged over ranks before
    normalisation and fitness evaluation is split over ranks.
    """

    def __init__(self, generator: nn.Module, cfg: Any, runtime: Runtime):
        super().__init__(generator, cfg, runtime)
        from perceptsr.train.engine import build_generator
        from perceptsr.train.optim import build_optimizer, build_scheduler

        opts = cfg.objective
        if cfg.train.ema_decay > 0:
            raise ConfigError("config key 'train.ema_decay': EA-Adam needs 0 (the EA phase replaces individuals "
                              "wholesale, so an EMA of individual 0 would mix unrelated models)")
        n = opts.population
        self.n = n
        self.weights = preference_vectors(n)
        self.trainable = list(range(1 if opts.freeze_first else 0, n))
        protect = opts.freeze_first if opts.protect_first is None else opts.protect_first
        self.protected = (0,) if protect else ()
        other, self.arch_kwargs = build_generator(cfg)  # same init as net_g (model.pretrained)
        other.load_state_dict(generator.state_dict())
        self.individuals: list[nn.Module] = [generator] + [copy.deepcopy(other) for _ in range(n - 2)] + [other]
        for g in self.individuals[1:]:
            runtime.prepare_module(g)
        self.perceptual = runtime.prepare_module(_build_perceptual(opts.perceptual))
        self.perceptual_objective = PerceptualObjective(self.perceptual)
        self.discriminators: dict[int, nn.Module] = {}
        self.net_d: dict[int, nn.Module] = {}
        for i in self.trainable:
            d, self.d_arch, self.d_kwargs = build_discriminator(opts.discriminator, cfg.data.train.patch_size)
            self.discriminators[i] = runtime.prepare_module(d)
            self.net_d[i] = runtime.wrap(d)
        self._optimizers: dict[str, torch.optim.Optimizer] = {}
        self._schedulers = {}
        for i in self.trainable:
            for name, params in ((self._g_name(i), self.individuals[i].parameters()),
                                 (f"net_d_{i}", self.discriminators[i].parameters())):
                self._optimizers[name] = build_optimizer(params, cfg.optim)
                self._schedulers[name] = build_scheduler(self._optimizers[name], cfg.schedule)
        self.period = opts.t_adam * (opts.epoch_iterations or self._epoch_iterations(cfg))
        self.run_dir = Path(cfg.output_root) / cfg.name
        self.phases_done = 0
        self.fitness: torch.Tensor | None = None
        self.ideal: torch.Tensor | None = None
        self.nadir: torch.Tensor | None = None
        self.objective_names: list[str] = []
        self._evaluator: FitnessEvaluator | None = None
        self._scratch: nn.Module | None = None
        self._val_set: list[dict] | None = None
        self._writer = None

    # ---- bookkeeping for the loop

    @staticmethod
    def _g_name(i: int) -> str:
        return "net_g" if i == 0 else f"net_g_{i}"

    @staticmethod
    def _epoch_iterations(cfg: Any) -> int:
        from perceptsr.data import list_images

        d = cfg.data.train
        return max(1, len(list_images(d.hr_dir)) * d.repeat // d.batch_size)

    def networks(self):
        out = {f"net_g_{i}": (self.individuals[i], self.cfg.model.arch, self.arch_kwargs) for i in range(1, self.n)}
        out.update({f"net_d_{i}": (d, self.d_arch, self.d_kwargs) for i, d in self.discriminators.items()})
        return out

    def optimizers(self):
        return self._optimizers

    def schedulers(self):
        return self._schedulers

    def validation_models(self, default: nn.Module) -> dict[str, nn.Module]:
        return {f"ind{i}": g for i, g in enumerate(self.individuals)}

    def extra_state(self) -> dict:
        return {"phases_done": self.phases_done, "fitness": self.fitness, "ideal": self.ideal, "nadir": self.nadir,
                "objective_names": list(self.objective_names)}

    def load_extra_state(self, state: dict) -> None:
        self.phases_done = int(state.get("phases_done", 0))
        self.fitness, self.ideal, self.nadir = state.get("fitness"), state.get("ideal"), state.get("nadir")
        self.objective_names = list(state.get("objective_names", []))

    # ---- Adam phase

    def _reduce(self, grads: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
        world = self.runtime.dist.world_size
        out = []
        for g in grads:
            if g is not None:
                g = g.contiguous().clone()
                torch.distributed.all_reduce(g)
                g /= world
            out.append(g)
        return out

    def step(self, batch: dict, iteration: int) -> dict[str, float]:
        logs: dict[str, float] = {}
        if iteration > 1 and (iteration - 1) % self.period == 0:
            logs.update(self.run_phase(iteration))
        opts = self.options
        lr = self.runtime.to_device(batch["lr"])
        hr = self.runtime.to_device(batch["hr"])
        with torch.no_grad():
            hr_feats = self.perceptual_objective.prepare_hr(hr)
        reduce = self._reduce if self.runtime.dist.enabled else None
        for i in self.trainable:
            g, d = self.individuals[i], self.discriminators[i]
            g.train()
            d.train()
            with self.runtime.autocast():
                sr = g(lr)
            l_dst = F.l1_loss(sr.float(), hr)
            _set_requires_grad(d, False)
            try:
                with self.runtime.autocast():
                    perc = self.perceptual_objective(sr, hr, hr_feats).float().mean()
                    adv = sr.new_zeros((), dtype=torch.float32)
                    if opts.gan_weight > 0:
                        real = None
                        if opts.gan_type == "ragan":
                            with torch.no_grad():
                                real = d(hr)
                        adv = generator_loss(opts.gan_type, d(sr), real)
                l_perp = perc + opts.gan_weight * adv
                both = torch.stack([l_dst.detach(), l_perp.detach()])
                if not self.runtime.all_finite(both):
                    raise NonFiniteLossError(f"individual {i} losses (l1, perception)", float(both.sum()))
                normalised_gradient_mix(g, [l_dst, l_perp], self.weights[i].tolist(), reduce=reduce)
                self._optimizers[self._g_name(i)].step()
            finally:
                _set_requires_grad(d, True)
            with self.runtime.autocast():
                real_logits = self.net_d[i](hr)
                fake_logits = self.net_d[i](sr.detach())
            loss_d = discriminator_loss(opts.gan_type, real_logits, fake_logits)
            self.optimize(loss_d, self._optimizers[f"net_d_{i}"], d, name=f"individual {i} discriminator loss")
            logs.update({f"ind{i}/l1": l_dst.item(), f"ind{i}/perceptual": perc.item(), f"ind{i}/gan": adv.item(),
                         f"ind{i}/d": loss_d.item()})
        if iteration == self.cfg.train.iterations and self.runtime.dist.is_main:
            self._export(self.run_dir / POPULATION_DIR / "final", iteration)
        return logs

    # ---- EA phase

    def _fitness_objective(self, name: str) -> Objective:
        if name == "l1":
            return L1Objective()
        if name == "perceptual":
            return self.perceptual_objective
        return as_objective(name)

    def evaluator(self) -> FitnessEvaluator:
        """The fitness evaluator on the fixed, sorted patch set (built on first use)."""
        if self._evaluator is None:
            o, train = self.options, self.cfg.data.train
            hr_dir = o.eval_hr_dir or train.hr_dir
            lr_dir = o.eval_lr_dir if o.eval_hr_dir else (o.eval_lr_dir or train.lr_dir)
            eval_set = build_eval_set(hr_dir, lr_dir, scale=self.cfg.scale, patch_size=o.eval_patch_size,
                                      num_images=o.eval_images, max_patches=o.eval_max_patches)
            self._evaluator = FitnessEvaluator(eval_set, [self._fitness_objective(f) for f in o.fitness],
                                               batch_size=o.eval_batch_size, device=self.runtime.device)
        return self._evaluator

    def run_phase(self, iteration: int) -> dict[str, float]:
        """One EA phase on the current population (every rank); returns scalars to log."""
        o = self.options
        phase = self.phases_done
        evaluator = self.evaluator()
        if o.selection == "moead":
            selector: Selector = MOEADSelector(self.weights, neighbourhoods(self.n, o.neighbourhood),
                                               protected=self.protected)
        else:
            selector = NSGA2Selector(protected=self.protected)
        if self._scratch is None:  # a copy, not a fresh build: the global RNG stays untouched
            self._scratch = copy.deepcopy(self.individuals[0])
        generator = torch.Generator().manual_seed(int(self.cfg.seed) * 1_000_003 + phase)
        children: list[dict] = []

        def record(rec: GenerationRecord) -> None:
            for c, parent in enumerate(rec.parents):
                children.append({
                    "phase": phase, "iteration": iteration, "generation": rec.generation, "parent": parent,
                    "mate": rec.mates[c], "crossover": rec.crossover[c], "mutation": rec.mutation[c],
                    "fitness": rec.children_fitness[c].tolist(),
                    "replaced": [r.slot for r in rec.replacements if r.parent == parent],
                })

        report = run_ea_phase(
            [g.state_dict() for g in self.individuals], selector, evaluator, self._scratch, o.t_ea, generator,
            variation=VariationConfig(**{f.name: getattr(o, f.name) for f in dataclasses.fields(VariationConfig)}),
            neighbourhoods=neighbourhoods(self.n, o.neighbourhood), distributed=self.runtime.dist.enabled,
            on_generation=record, progress=self.runtime.dist.is_main and sys.stderr.isatty(),
        )
        with torch.no_grad():
            for g, sd in zip(self.individuals, report.population):
                g.load_state_dict(sd, strict=True)
        for i in self.trainable:  # fresh Adam moments for every generator (the release re-creates them)
            self._optimizers[self._g_name(i)].state.clear()
        self.phases_done = phase + 1
        self.fitness, self.ideal, self.nadir = report.fitness, report.ideal, report.nadir
        self.objective_names = list(report.objective_names)
        if self.runtime.dist.is_main:
            self._log_phase(phase, iteration, report, children)
        logs = {"ea/replacements": float(len(report.replacements)), "ea/seconds": report.seconds}
        for i in range(self.n):
            for j, name in enumerate(self.objective_names):
                logs[f"ea/ind{i}/{name}"] = float(report.fitness[i, j])
        return logs

    def _export(self, folder: Path, iteration: int) -> None:
        from perceptsr.checkpoint import save_model

        folder.mkdir(parents=True, exist_ok=True)
        for i, g in enumerate(self.individuals):
            save_model(member_file(folder, i), g, arch=self.cfg.model.arch, arch_kwargs=self.arch_kwargs,
                       iteration=iteration, extra={"ea_adam": {"individual": i, "phases_done": self.phases_done,
                                                               "preference": self.weights[i].tolist()}})

    def _log_phase(self, phase: int, iteration: int, report: EAPhaseReport, children: list[dict]) -> None:
        out = self.run_dir / "ea_adam"
        out.mkdir(parents=True, exist_ok=True)
        pop_dir = self.run_dir / POPULATION_DIR / f"phase_{phase + 1:03d}"
        self._export(pop_dir, iteration)
        plane = self._plane() if self.options.plane_metric and self.cfg.data.val is not None else None
        summary = {
            "phase": phase, "iteration": iteration, "generations": len(report.generations),
            "evaluations": report.evaluations, "seconds": report.seconds, "objectives": report.objective_names,
            "selection": self.options.selection, "protected": list(self.protected),
            "preferences": self.weights.tolist(), "neighbourhoods": neighbourhoods(self.n, self.options.neighbourhood),
            "initial_fitness": report.initial_fitness.tolist(), "fitness": report.fitness.tolist(),
            "ideal": report.ideal.tolist(), "nadir": report.nadir.tolist(),
            "replacements": len(report.replacements),
            "replaced_slots": [sum(r.slot == k for r in report.replacements) for k in range(self.n)],
            "population": str(pop_dir.relative_to(self.run_dir)), "plane": plane,
        }
        _rewrite_jsonl(self.run_dir / PHASES_LOG, lambda r: r["phase"] < phase, [summary])
        _rewrite_jsonl(self.run_dir / CHILDREN_LOG, lambda r: r["phase"] < phase, children)
        writer = self._tensorboard()
        writer.add_scalar("ea/replacements", len(report.replacements), iteration)
        for i in range(self.n):
            for j, name in enumerate(report.objective_names):
                writer.add_scalar(f"ea/ind{i}/{name}", float(report.fitness[i, j]), iteration)
        if plane is not None:
            fig = _plane_figure(plane, f"EA-Adam phase {phase + 1} (iteration {iteration})")
            fig.savefig(out / f"plane_phase_{phase + 1:03d}.png", dpi=100)
            writer.add_figure("ea/plane", fig, iteration)
        writer.flush()

    def _tensorboard(self):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.run_dir / "tb" / "ea_adam"))
        return self._writer

    @torch.no_grad()
    def _plane(self) -> dict[str, Any]:
        """PSNR (Y, crop = scale) and ``plane_metric`` of every individual on ``data.val``."""
        from perceptsr.inference import upscale_tensor
        from perceptsr.metrics import create_metric
        from perceptsr.train.engine import load_val_set

        if self._val_set is None:
            self._val_set = load_val_set(self.cfg)
        device, name = self.runtime.device, self.options.plane_metric
        psnr = create_metric("psnr", preset="sr-y", scale=self.cfg.scale, device=device)
        other = create_metric(name, crop_border=self.cfg.scale, device=device)
        values: dict[str, list[float]] = {"psnr": [], name: []}
        for g in self.individuals:
            totals = [0.0, 0.0]
            for item in self._val_set:
                hr = item["hr"].unsqueeze(0).to(device)
                sr = upscale_tensor(g, item["lr"].unsqueeze(0).to(device), scale=self.cfg.scale, device=device)
                sr = torch.floor(sr.clamp(0, 1) * 255.0 + 0.5) / 255.0
                totals[0] += float(psnr(sr, hr).mean())
                totals[1] += float((other(sr, hr) if other.full_reference else other(sr)).mean())
            count = max(1, len(self._val_set))
            values["psnr"].append(totals[0] / count)
            values[name].append(totals[1] / count)
        return {"metric": name, "lower_better": bool(other.lower_better), "images": len(self._val_set), **values}


def _plane_figure(plane: Mapping[str, Any], title: str):
    """Population in the perception-distortion plane (x: the perceptual metric, y: PSNR)."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    name = plane["metric"]
    fig = Figure(figsize=(5, 4))
    ax = fig.add_subplot()
    ax.plot(plane[name], plane["psnr"], "o-", color="tab:blue")
    for i, (x, y) in enumerate(zip(plane[name], plane["psnr"])):
        ax.annotate(str(i), (x, y), textcoords="offset points", xytext=(4, 4))
    ax.set_xlabel(f"{name} ({'lower' if plane['lower_better'] else 'higher'} is better)")
    ax.set_ylabel("PSNR (Y) [dB]")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return fig
