"""EA-Adam's Adam phase: each objective's gradient normalised per parameter tensor, then mixed
with the individual's preference vector (``Σ_m λ_m ĝ_m``) before an ordinary optimizer step."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

__all__ = ["normalised_gradient_mix", "weighted_sum_gradient"]


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


def weighted_sum_gradient(
    model: nn.Module | Iterable[torch.Tensor],
    losses: Sequence[torch.Tensor],
    weights: Sequence[float],
    reduce: Callable[[list[torch.Tensor | None]], list[torch.Tensor | None]] | None = None,
) -> None:
    """Write the gradient of ``Σ_m λ_m L_m`` into each parameter's ``.grad``, with no normalisation:
    the weighted-sum Adam baseline that EA-Adam is compared with (``adam_mode: weighted_sum``).
    ``reduce`` and the ``.grad`` rules are those of :func:`normalised_gradient_mix`."""
    params = _trainable(model)
    total = sum(float(w) * loss.reshape(()) for w, loss in zip(weights, losses) if float(w) != 0.0)
    grads = list(torch.autograd.grad(total, params, allow_unused=True))
    if reduce is not None:
        grads = reduce(grads)
    for p, g in zip(params, grads):
        p.grad = None if g is None else g.to(p.dtype)
