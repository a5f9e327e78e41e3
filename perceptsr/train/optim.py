"""Optimizers and learning-rate schedules built from config sections.

Schedules are pure functions of the 1-based iteration ``t``: before iteration ``t`` runs, the loop
calls ``scheduler.set_iteration(t)`` and every param group gets ``initial_lr * factor(t)``. This is
BasicSR's convention (the scheduler steps before the optimizer, so milestone ``m`` already uses
the decayed rate at iteration ``m``). Resuming needs no scheduler state beyond the iteration, and an
objective that recreates its optimizers (EA-Adam after each EA phase) just calls ``set_iteration``.
"""

from __future__ import annotations

import bisect
import math
from typing import Callable, Iterable

import torch

from perceptsr.config import (
    ConstantScheduleConfig,
    CosineRestartScheduleConfig,
    MultiStepScheduleConfig,
    OptimConfig,
    ScheduleConfig,
)


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer:
    """Adam or AdamW from an :class:`OptimConfig` (only parameters that require grad)."""
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("optimizer has no trainable parameters")
    kwargs = dict(lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)
    if cfg.type == "adam":
        return torch.optim.Adam(params, **kwargs)
    if cfg.type == "adamw":
        return torch.optim.AdamW(params, **kwargs)
    raise ValueError(f"unknown optimizer type {cfg.type!r}")


def multistep_lr(milestones, gamma: float) -> Callable[[int, float], float]:
    """``base * gamma ** (number of milestones <= t)`` (torch MultiStepLR stepped before the step)."""
    milestones = sorted(int(m) for m in milestones)
    return lambda t, base: base * gamma ** bisect.bisect_right(milestones, t)


def cosine_restart_lr(periods, restart_weights, eta_min: float) -> Callable[[int, float], float]:
    """BasicSR ``CosineAnnealingRestartLR``.

    Period ``i`` covers iterations ``(c[i-1], c[i]]`` of the cumulative lengths ``c``; inside it the
    rate runs from ``eta_min + w_i (base - eta_min)`` down to ``eta_min``. Past the last period the
    rate stays at ``eta_min``.
    """
    periods = [int(p) for p in periods]
    cumulative = [sum(periods[: i + 1]) for i in range(len(periods))]

    def lr(t: int, base: float) -> float:
        idx = bisect.bisect_left(cumulative, t)
        if idx >= len(periods):
            return eta_min
        start = cumulative[idx - 1] if idx > 0 else 0
        w = restart_weights[idx]
        return eta_min + w * 0.5 * (base - eta_min) * (1.0 + math.cos(math.pi * (t - start) / periods[idx]))

    return lr


class IterationLR:
    """Sets each param group's lr to ``lr_fn(t, initial_lr)`` for the current iteration ``t``."""

    def __init__(self, optimizer: torch.optim.Optimizer, lr_fn: Callable[[int, float], float]):
        self.optimizer = optimizer
        self.lr_fn = lr_fn
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.iteration = 0

    def set_iteration(self, iteration: int) -> None:
        self.iteration = int(iteration)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_fn(self.iteration, group["initial_lr"])

    def get_last_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"iteration": self.iteration}

    def load_state_dict(self, state: dict) -> None:
        self.set_iteration(state["iteration"])


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: ScheduleConfig) -> IterationLR:
    """The :class:`IterationLR` for a schedule section (multistep, cosine or constant)."""
    if isinstance(cfg, MultiStepScheduleConfig):
        return IterationLR(optimizer, multistep_lr(cfg.milestones, cfg.gamma))
    if isinstance(cfg, CosineRestartScheduleConfig):
        return IterationLR(optimizer, cosine_restart_lr(cfg.periods, cfg.restart_weights, cfg.eta_min))
    if isinstance(cfg, ConstantScheduleConfig):
        return IterationLR(optimizer, lambda t, base: base)
    raise ValueError(f"no scheduler for schedule type {cfg.type!r}")
