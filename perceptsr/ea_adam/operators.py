"""EA-Adam's variation operators on state dicts: whole-tensor SBX crossover, sparse Gaussian
mutation, and :func:`make_child`, which combines them the way the released EA does.

Every random draw comes from one explicit ``torch.Generator``, so a child is reproducible, and
every state dict returned shares no storage with its inputs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Union

import torch

from perceptsr.ea_adam.population import StateDict

__all__ = [
    "KeySelector",
    "sbx_beta",
    "sbx_crossover",
    "gaussian_mutation",
    "ChildInfo",
    "VariationConfig",
    "make_child",
]

KeySelector = Union[Callable[[str], bool], Iterable[str], None]


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
