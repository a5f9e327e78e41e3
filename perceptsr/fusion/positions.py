"""Expert positions of fusion weights: where a mixture of K experts sits between the most faithful
expert (0) and the most perceptual one (K-1). The trade-off (``--tradeoff``) and the fused-model
files both speak in these positions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Union

import torch

from perceptsr.errors import ConfigError
from perceptsr.fusion.layers import as_vector

__all__ = ["WeightsLike", "count_experts", "expert_position", "fused_tradeoff", "weight_vectors"]

#: per-layer weights ``{layer: K-vector}``, or one K-vector for every layer
WeightsLike = Union[Mapping[str, Any], torch.Tensor, Sequence[float]]


def _vector(vec: Any, k: int | None, what: str) -> torch.Tensor:
    v = torch.as_tensor(vec, dtype=torch.float64).reshape(-1)
    return as_vector(v, k or v.numel(), what)


def weight_vectors(weights: WeightsLike, k: int | None) -> dict[str, torch.Tensor] | torch.Tensor:
    """The weights as finite float64 K-vectors, per layer (a mapping) or one for every layer."""
    if isinstance(weights, Mapping):
        if not weights:
            raise ConfigError("fusion weights: no layers given")
        return {n: _vector(v, k, f"fusion weights of layer {n!r}") for n, v in weights.items()}
    return _vector(weights, k, "fusion weights")


def count_experts(vecs: dict[str, torch.Tensor] | torch.Tensor) -> int:
    """K, the number of experts the vectors mix."""
    return next(iter(vecs.values())).numel() if isinstance(vecs, dict) else vecs.numel()


def expert_position(weights: WeightsLike) -> float:
    """The mean expert index ``Σ_j j w_j`` of a K-vector, or its mean over layers for
    ``{layer: K-vector}``: 0 is expert 0, K-1 the most perceptual expert (member i of a population
    is at i)."""
    vecs = weight_vectors(weights, None)
    stack = torch.stack(list(vecs.values())) if isinstance(vecs, dict) else vecs[None]
    index = torch.arange(stack.shape[1], dtype=torch.float64)
    return float((stack @ index).mean())


def fused_tradeoff(weights: WeightsLike) -> float:
    """The ``t`` at which :func:`~perceptsr.fusion.tradeoff.interpolate_fusion_weights` returns ``weights`` themselves:
    their expert position / (K - 1)."""
    vecs = weight_vectors(weights, None)
    k = count_experts(vecs)
    return expert_position(vecs) / (k - 1) if k > 1 else 0.0
