"""Pluggable training objectives: what one training iteration does.

The loop in :mod:`perceptsr.train.engine` owns data, schedules, EMA, logging, validation,
checkpoints and resume. An :class:`Objective` owns everything that differs between methods:

- it receives the generator (unwrapped) and a :class:`~perceptsr.train.context.RunContext`
  (device and numerics, log, artifact writer, the loop's validation, distributed info) and builds
  what else it needs (discriminators, frozen feature networks or rankers, extra optimizers);
- it exposes its trainable networks, optimizers and schedulers by name, so the loop can
  checkpoint and restore them without knowing what they are;
- ``step(batch, iteration)`` does the forward passes, losses, backward passes and optimizer steps
  of one iteration and returns scalars to log.

Built in: :class:`PSNRObjective` (L1 / L2 / Charbonnier pixel loss) and :class:`GANObjective`
(SRGAN / ESRGAN), which builds ``net_d`` from the arch registry and a frozen VGG feature loss, and
alternates a generator step (pixel + perceptual + adversarial + :meth:`GANObjective.extra_terms`,
D frozen) with a discriminator step. The methods' objectives live in their packages
(:data:`perceptsr.methods.METHOD_PACKAGES`: ``ranksrgan``, ``ranker``, ``ea_adam``, ``fusion``),
which register them in :data:`OBJECTIVES` with :func:`register_objective` when first used.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from perceptsr.config import GANObjectiveConfig, PSNRObjectiveConfig, TrainConfig
from perceptsr.losses.gan import discriminator_loss, generator_loss
from perceptsr.methods import METHOD_PACKAGES
from perceptsr.registry import Registry
from perceptsr.train.context import RunContext
from perceptsr.train.networks import build_discriminator, build_perceptual_loss, set_requires_grad
from perceptsr.train.optim import IterationLR, build_optimizer, build_scheduler

__all__ = [
    "OBJECTIVES",
    "NonFiniteLossError",
    "Objective",
    "PSNRObjective",
    "GANObjective",
    "register_objective",
    "build_objective",
    "objective_class",
    "pixel_loss",
]


class NonFiniteLossError(FloatingPointError):
    """A loss (or the gradient norm) is NaN/Inf on at least one rank; nothing was stepped for it."""

    def __init__(self, name: str, value: float):
        super().__init__(f"non-finite {name}: {value}")
        self.name = name
        self.value = value


class Objective:
    """Base class; see the module docstring. Subclasses set ``self.net_g`` etc. and implement ``step``."""

    #: the name the loop saves the trained module under (``net_g.safetensors``); a Ranker is ``ranker``
    trained_network: str = "net_g"

    def __init__(self, generator: nn.Module, cfg: TrainConfig, ctx: RunContext):
        self.generator = generator
        self.cfg = cfg
        self.options = cfg.objective
        self.ctx = ctx
        self.runtime = ctx.runtime

    @classmethod
    def build_generator(cls, cfg: TrainConfig) -> tuple[nn.Module, str, dict] | None:
        """The module the loop trains and saves as :attr:`trained_network`, with its (arch, arch kwargs) for the
        checkpoint; None (the default) = the generator of ``cfg.model``. Overridden by objectives
        whose trained module is not a registered architecture (EA-Adam fusion)."""
        return None

    # --- what the loop checkpoints -------------------------------------------------------
    def networks(self) -> dict[str, tuple[nn.Module, str, dict]]:
        """Trainable networks *besides* the trained module (saved as :attr:`trained_network`), as
        ``name -> (unwrapped module, registry arch name, arch kwargs)``; e.g. ``{"net_d": ...}``.
        Frozen helpers (VGG, Ranker) are not listed: they are rebuilt from their own weights."""
        return {}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        raise NotImplementedError

    def schedulers(self) -> dict[str, IterationLR]:
        return {}

    def validation_models(self, default: nn.Module) -> dict[str, nn.Module]:
        """Models the loop validates, by name; ``default`` is the EMA of the trained module (or the raw
        one without EMA). The first entry's first metric picks the "best" checkpoint. Names other than
        ``""`` prefix the logged metrics (``val/<name>/psnr``)."""
        return {"": default}

    #: (name, higher is better) of the first validated metric, which picks the "best" checkpoint
    best_metric: tuple[str, bool] = ("psnr", True)
    #: True: the loop validates through :meth:`validate` instead of ``data.val`` images
    own_validation: bool = False

    def validate(self, model: nn.Module, iteration: int) -> dict[str, float]:
        """With ``own_validation``: metrics of ``model`` (keys without ``val/``, ``best_metric`` first)."""
        raise NotImplementedError

    def summarize_validation(self, metrics: dict[str, float]) -> dict[str, float]:
        """The gathered validation metrics (``val/...`` keys); may prepend a summary value that picks the
        best checkpoint (name it in :attr:`best_metric`), e.g. a population's hypervolume."""
        return metrics

    def train_dataset(self):
        """The training set (items looked up by ``(epoch, index)`` keys), or None for ``data.train``'s
        paired images."""
        return None

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


#: objective type name -> class; method packages register theirs when imported
OBJECTIVES: Registry[type[Objective]] = Registry("objective type")
for _name, _package in METHOD_PACKAGES.items():
    OBJECTIVES.provided_by(_name, _package)


def register_objective(name: str):
    """Class decorator: :func:`build_objective` uses it for configs whose ``objective.type == name``."""
    return OBJECTIVES.register(name)


def objective_class(name: str) -> type[Objective]:
    """The objective class registered for config ``objective.type == name``."""
    return OBJECTIVES.get(name)


def build_objective(generator: nn.Module, cfg: TrainConfig, ctx: RunContext) -> Objective:
    return objective_class(cfg.objective.type)(generator, cfg, ctx)


@register_objective("psnr")
class PSNRObjective(Objective):
    """Distortion training: one generator, one pixel loss, one optimizer."""

    def __init__(self, generator: nn.Module, cfg: TrainConfig, ctx: RunContext):
        super().__init__(generator, cfg, ctx)
        runtime = ctx.runtime
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


@register_objective("gan")
class GANObjective(Objective):
    """SRGAN / ESRGAN / RankSRGAN training: a generator step, then a discriminator step.

    Generator step (every ``net_d_iters``-th iteration after ``net_d_init_iters``): pixel, VGG feature,
    adversarial and :meth:`extra_terms` losses (RankSRGAN's rank-content loss), summed, with the
    discriminator's parameters frozen. The discriminator still runs in train mode there (its BN uses the fake batch), as in
    mmsr/BasicSR, but unwrapped: nothing of it is optimised, so DDP must not wait for its gradients.
    Discriminator step (every iteration): ``D(HR)`` and ``D(SR.detach())`` as two forward passes
    (separate BN statistics, as the original) and one backward.
    """

    def __init__(self, generator: nn.Module, cfg: TrainConfig, ctx: RunContext):
        super().__init__(generator, cfg, ctx)
        runtime = ctx.runtime
        opts: GANObjectiveConfig = cfg.objective
        self.pixel_criterion = pixel_loss(opts.pixel_loss, opts.charbonnier_eps) if opts.pixel_weight > 0 else None
        self.perceptual = None
        if opts.perceptual.weight > 0:
            self.perceptual = runtime.prepare_module(build_perceptual_loss(opts.perceptual))
        self.setup_extra_terms()
        self.discriminator, self.d_arch, self.d_kwargs = build_discriminator(
            opts.discriminator, cfg.data.train.patch_size)
        runtime.prepare_module(self.discriminator)
        self.net_g = runtime.wrap(generator)
        self.net_d = runtime.wrap(self.discriminator)
        self.optimizer_g = build_optimizer(generator.parameters(), cfg.optim)
        self.optimizer_d = build_optimizer(self.discriminator.parameters(), opts.optim_d or cfg.optim)
        self.scheduler_g = build_scheduler(self.optimizer_g, cfg.schedule)
        self.scheduler_d = build_scheduler(self.optimizer_d, opts.schedule_d or cfg.schedule)

    def networks(self):
        return {"net_d": (self.discriminator, self.d_arch, self.d_kwargs)}

    def optimizers(self):
        return {"net_g": self.optimizer_g, "net_d": self.optimizer_d}

    def schedulers(self):
        return {"net_g": self.scheduler_g, "net_d": self.scheduler_d}

    def step(self, batch, iteration):
        opts: GANObjectiveConfig = self.options
        lr = self.runtime.to_device(batch["lr"])
        hr = self.runtime.to_device(batch["hr"])
        self.net_g.train()
        self.net_d.train()
        g_step = iteration % opts.net_d_iters == 0 and iteration > opts.net_d_init_iters
        with self.runtime.autocast(), torch.set_grad_enabled(g_step):
            sr = self.net_g(lr)
        logs = self._generator_step(sr, hr) if g_step else {}
        logs.update(self._discriminator_step(sr.detach(), hr))
        return logs

    def setup_extra_terms(self) -> None:
        """Build the modules of :meth:`extra_terms` (after the VGG loss, before the discriminator)."""

    def extra_terms(self, sr: torch.Tensor, hr: torch.Tensor) -> dict[str, torch.Tensor]:
        """Further generator loss terms (already weighted), added after the adversarial one under
        autocast with D frozen; e.g. RankSRGAN's rank-content loss. None here."""
        return {}

    def _generator_step(self, sr: torch.Tensor, hr: torch.Tensor) -> dict[str, float]:
        opts: GANObjectiveConfig = self.options
        terms: dict[str, torch.Tensor] = {}
        if self.pixel_criterion is not None:
            terms["g_pix"] = opts.pixel_weight * self.pixel_criterion(sr.float(), hr)
        set_requires_grad(self.discriminator, False)
        try:
            with self.runtime.autocast():
                if self.perceptual is not None:
                    terms["g_percep"] = self.perceptual(sr, hr).float()
                if opts.gan_weight > 0:
                    real_logits = None
                    if opts.gan_type == "ragan":
                        with torch.no_grad():
                            real_logits = self.discriminator(hr)
                    fake_logits = self.discriminator(sr)
                    terms["g_gan"] = opts.gan_weight * generator_loss(opts.gan_type, fake_logits, real_logits)
                terms.update(self.extra_terms(sr, hr))
            total = sum(terms.values(), sr.new_zeros((), dtype=torch.float32))
            self.optimize(total, self.optimizer_g, self.generator, name="generator loss")
        finally:
            set_requires_grad(self.discriminator, True)
        logs = {f"loss/{k}": v.item() for k, v in terms.items()}
        logs["loss/g_total"] = total.item()
        return logs

    def _discriminator_step(self, fake: torch.Tensor, hr: torch.Tensor) -> dict[str, float]:
        kind = self.options.gan_type
        with self.runtime.autocast():
            real_logits = self.net_d(hr)
            fake_logits = self.net_d(fake)
        loss = discriminator_loss(kind, real_logits, fake_logits)
        self.optimize(loss, self.optimizer_d, self.discriminator, name="discriminator loss")
        return {"loss/d": loss.item(), "d/real_logit": real_logits.detach().float().mean().item(),
                "d/fake_logit": fake_logits.detach().float().mean().item()}
