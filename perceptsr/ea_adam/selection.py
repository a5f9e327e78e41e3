"""EA-Adam's environmental selection, minimising every objective.

- :func:`tchebycheff`: the normalised Tchebycheff scalarisation;
- :class:`MOEADSelector`: steady-state MOEA/D neighbourhood replacement (the released EA);
- :class:`NSGA2Selector`: generational NSGA-II (:func:`non_dominated_sort`, :func:`crowding_distance`),
  shipped but unused by the released code;
- :func:`hypervolume`: the area a 2-objective population dominates up to a reference point (the
  population-level score that picks a run's best checkpoint).

Both selectors implement :class:`Selector`, which :func:`~perceptsr.ea_adam.phase.run_ea_phase` drives.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import torch

from perceptsr.ea_adam import population

__all__ = [
    "tchebycheff",
    "non_dominated_sort",
    "crowding_distance",
    "hypervolume",
    "Selector",
    "MOEADSelector",
    "NSGA2Selector",
]


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


def hypervolume(fitness: torch.Tensor | Sequence, reference: torch.Tensor | Sequence) -> float:
    """Area of the 2-objective region (minimisation) dominated by the points ``(K, 2)`` and bounded by
    ``reference``; points not strictly better than the reference in both objectives add nothing.

    Sweep in increasing first objective: each point adds ``(r_0 - f_0) * (best f_1 so far - f_1)``.
    """
    f, r = _f64(fitness), _f64(reference).reshape(-1)
    if f.ndim != 2 or f.shape[1] != 2 or r.numel() != 2:
        raise ValueError(f"hypervolume: expected (K, 2) points and 2 reference values, got {tuple(f.shape)} "
                         f"and {r.numel()}")
    f = f[(f < r).all(dim=1)]
    area, best = 0.0, float(r[1])
    for f0, f1 in sorted(f.tolist()):
        if f1 < best:
            area += (float(r[0]) - f0) * (best - f1)
            best = f1
    return area


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
        nb = neighbourhoods if neighbourhoods is not None else population.neighbourhoods(n, min(3, n))
        self.neighbourhoods = [sorted({int(k) for k in ks}) for ks in nb]
        if len(self.neighbourhoods) != n or any(not 0 <= k < n for ks in self.neighbourhoods for k in ks):
            raise ValueError(f"MOEADSelector: need {n} neighbourhoods with indices in [0, {n})")
        self.eps = float(eps)

    @classmethod
    def uniform(cls, n: int, neighbourhood_size: int = 3, *, protected: Iterable[int] = (), eps: float = 1e-5):
        """The EA-Adam setting: :func:`~perceptsr.ea_adam.population.preference_vectors` and sliding
        :func:`~perceptsr.ea_adam.population.neighbourhoods`."""
        return cls(population.preference_vectors(n), population.neighbourhoods(n, neighbourhood_size),
                   protected=protected, eps=eps)

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
