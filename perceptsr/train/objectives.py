"""Pluggable training objectives: what one training iteration does.

The loop in :mod:`perceptsr.train.engine` owns data, schedules, EMA, logging, validation,
checkpoints and resume. An :class:`Objective` owns everything that differs between methods:

- it receives the generator (unwrapped) and a :class:`Runtime` (device, autocast, DDP wrapping,
  gradient clipping, non-finite checks) and builds what else it needs (discriminators, frozen
  feature networks or rankers, extra optimizers);
- it exposes its trainable networks, optimizers and schedulers by name, so the loop can
  checkpoint and restore them without knowing what they are;
- ``step(batch, iteration)`` does the forward passes, losses, backward passes and optimizer steps
  of one iteration and returns scalars to log.

Shipped: :class:`PSNRObjective` (L1 / L2 / Charbonnier pixel loss). Planned, without touching the
loop: a ``GANObjective`` (config type ``gan``/``ranksrgan``) that builds ``net_d`` (VGG-style
discriminator), a frozen VGG feature extractor and optionally a frozen Ranker, and alternates a
generator step (pixel + perceptual + adversarial + rank-content losses, D frozen) with a
discriminator step, each through :meth:`Objective.optimize`; and an ``EAAdamObjective`` that keeps
a population of generators with preference vectors, normalises per-loss gradients before its Adam
steps and runs an EA phase inside ``step`` at cycle boundaries (its extra state - population,
fitness, ideal/nadir points - goes through :meth:`Objective.extra_state`; the other individuals are
saved through :meth:`Objective.networks` and validated through :meth:`Objective.validation_models`;
its two-loss normalised-gradient update calls :meth:`Runtime.all_finite` and raises
:class:`NonFiniteLossError` itself instead of using :meth:`Objective.optimize`). A new objective
registers its option dataclass with ``@ObjectiveConfig.register(name)`` in :mod:`perceptsr.config`
and its class with :func:`register_objective`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from perceptsr.config import ObjectiveConfig, PSNRObjectiveConfig, TrainConfig
from perceptsr.train.distributed import DistInfo, all_true
from perceptsr.train.optim import IterationLR, build_optimizer, build_scheduler

__all__ = [
    "NonFiniteLossError",
    "Runtime",
    "Objective",
    "PSNRObjective",
    "register_objective",
    "build_objective",
    "pixel_loss",
]


class NonFiniteLossError(FloatingPointError):
    """A loss (or the gradient norm) is NaN/Inf on at least one rank; nothing was stepped for it."""

    def __init__(self, name: str, value: float):
        super().__init__(f"non-finite {name}: {value}")
        self.name = name
        self.value = value


@dataclass
class Runtime:
    """What the loop gives an objective: device, numerics and distributed wrapping."""

    device: torch.device
    dist: DistInfo = field(default_factory=DistInfo)
    bf16: bool = False
    channels_last: bool = False
    compile: bool = False
    grad_clip: float | None = None

    def autocast(self):
        """bf16 autocast for forward passes when enabled (CPU or CUDA), else a no-op."""
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def prepare_module(self, module: nn.Module) -> nn.Module:
        """Move to the device (and channels_last) in place; returns ``module``."""
        module.to(self.device)
        if self.channels_last:
            module.to(memory_format=torch.channels_last)
        return module

    def wrap(self, module: nn.Module) -> nn.Module:
        """The module to run forward passes through: DDP-wrapped when distributed, then compiled.

        Keep the unwrapped module for state dicts; only trainable modules should be wrapped.
        """
        wrapped = module
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            wrapped = nn.parallel.DistributedDataParallel(module, device_ids=ids)
        if self.compile:
            wrapped = torch.compile(wrapped)
        return wrapped

    def all_finite(self, value: torch.Tensor) -> bool:
        """True when ``value`` is finite on every rank (the same answer everywhere)."""
        return all_true(bool(torch.isfinite(value).all()), self.dist, self.device)


class Objective:
    """Base class; see the module docstring. Subclasses set ``self.net_g`` etc. and implement ``step``."""

    def __init__(self, generator: nn.Module, cfg: TrainConfig, runtime: Runtime):
        self.generator = generator
        self.cfg = cfg
        self.options = cfg.objective
        self.runtime = runtime

    # --- what the loop checkpoints -------------------------------------------------------
    def networks(self) -> dict[str, tuple[nn.Module, str, dict]]:
        """Trainable networks *besides* the generator (the loop saves that one as ``net_g``), as
        ``name -> (unwrapped module, registry arch name, arch kwargs)``; e.g. ``{"net_d": ...}``.
        Frozen helpers (VGG, Ranker) are not listed: they are rebuilt from their own weights."""
        return {}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        raise NotImplementedError

    def schedulers(self) -> dict[str, IterationLR]:
        return {}

    def validation_models(self, default: nn.Module) -> dict[str, nn.Module]:
        """Models the loop validates, by name; ``default`` is the EMA generator (or the raw one
        without EMA). The first entry's PSNR picks the "best" checkpoint. Names other than ``""``
        prefix the logged metrics (``val/<name>/psnr``)."""
        return {"": default}

    def extra_state(self) -> dict:
        """Anything else to restore on resume (counters, populations); must be torch.save-able."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    # --- one iteration -------------------------------------------------------------------
    def step(self, batch: dict, iteration: int) -> dict[str, float]:
        """Forward, losses, backward and optimizer steps for one batch; returns scalars to log."""
        raise NotImplementedError

    # --- helpers -------------------------------------------------------------------------
    def set_iteration(self, iteration: int) -> None:
        """Set every scheduler's learning rate for (1-based) ``iteration``; called before ``step``."""
        for scheduler in self.schedulers().values():
            scheduler.set_iteration(iteration)

    def learning_rates(self) -> dict[str, float]:
        return {f"lr/{name}": s.get_last_lr()[0] for name, s in self.schedulers().items()}

    def zero_grad(self) -> None:
        for opt in self.optimizers().values():
            opt.zero_grad(set_to_none=True)

    def optimize(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, module: nn.Module,
                 name: str = "loss") -> None:
        """Backward ``loss`` and step ``optimizer`` for ``module``, or raise NonFiniteLossError.

        The finiteness check is agreed across ranks *before* the backward pass, so under DDP
        either every rank steps or none does. With ``grad_clip`` the global gradient norm is
        clipped, and a non-finite norm also skips the step.
        """
        if not self.runtime.all_finite(loss.detach()):
            optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLossError(name, float(loss.detach()))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip = self.runtime.grad_clip
        if clip:
            norm = torch.nn.utils.clip_grad_norm_(module.parameters(), clip)
            if not torch.isfinite(norm):  # grads are all-reduced: every rank sees the same norm
                optimizer.zero_grad(set_to_none=True)
                raise NonFiniteLossError(f"{name} gradient norm", float(norm))
        optimizer.step()


def pixel_loss(kind: str, eps: float = 1e-12) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Mean pixel loss: ``l1``, ``l2`` (MSE) or ``charbonnier`` (``mean(sqrt(d^2 + eps))``)."""
    if kind == "l1":
        return F.l1_loss
    if kind == "l2":
        return F.mse_loss
    if kind == "charbonnier":
        return lambda pred, target: torch.sqrt((pred - target) ** 2 + eps).mean()
    raise ValueError(f"unknown pixel loss {kind!r}")


_OBJECTIVES: dict[str, type[Objective]] = {}


def register_objective(name: str):
    """Class decorator: ``build_objective`` uses it for configs whose ``objective.type == name``."""

    def deco(cls):
        _OBJECTIVES[name] = cls
        return cls

    return deco


def build_objective(generator: nn.Module, cfg: TrainConfig, runtime: Runtime) -> Objective:
    options: ObjectiveConfig = cfg.objective
    if options.type not in _OBJECTIVES:
        from perceptsr.errors import ConfigError

        raise ConfigError(
            f"config key 'objective.type': no objective implements {options.type!r}; "
            f"available: {', '.join(sorted(_OBJECTIVES))}"
        )
    return _OBJECTIVES[options.type](generator, cfg, runtime)


@register_objective("psnr")
class PSNRObjective(Objective):
    """Distortion training: one generator, one pixel loss, one optimizer."""

    def __init__(self, generator: nn.Module, cfg: TrainConfig, runtime: Runtime):
        super().__init__(generator, cfg, runtime)
        opts: PSNRObjectiveConfig = cfg.objective
        self.criterion = pixel_loss(opts.loss, opts.charbonnier_eps)
        self.net_g = runtime.wrap(generator)
        self.optimizer_g = build_optimizer(generator.parameters(), cfg.optim)
        self.scheduler_g = build_scheduler(self.optimizer_g, cfg.schedule)

    def optimizers(self):
        return {"net_g": self.optimizer_g}

    def schedulers(self):
        return {"net_g": self.scheduler_g}

    def step(self, batch, iteration):
        lr = self.runtime.to_device(batch["lr"])
        hr = self.runtime.to_device(batch["hr"])
        self.net_g.train()
        with self.runtime.autocast():
            sr = self.net_g(lr)
        loss = self.criterion(sr.float(), hr)
        self.optimize(loss, self.optimizer_g, self.generator, name=f"{self.options.loss} loss")
        return {f"loss/{self.options.loss}": loss.item()}
