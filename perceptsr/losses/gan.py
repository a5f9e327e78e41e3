"""Adversarial losses on discriminator logits (one place for every GAN objective).

* ``vanilla``: SRGAN / RankSRGAN / EA-Adam (MSRResNet): binary cross-entropy on logits.
* ``ragan``: ESRGAN's relativistic average GAN: each side is judged relative to the *mean* logit of
  the other side, ``D_Ra(a, b) = sigmoid(C(a) - mean C(b))``, and the generator loss is symmetric.
* ``lsgan``: least squares (targets 1 / 0), for completeness.

``generator_loss`` needs ``real_logits`` only for ``ragan`` (pass them detached: the generator step
must not move the discriminator). Both functions return un-weighted means; objectives apply their
own weights (e.g. 5e-3).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch.nn import functional as F

__all__ = ["GAN_KINDS", "GANKind", "generator_loss", "discriminator_loss"]

GANKind = Literal["vanilla", "ragan", "lsgan"]
GAN_KINDS: tuple[str, ...] = ("vanilla", "ragan", "lsgan")


def _target_loss(kind: str, logits: torch.Tensor, target: float) -> torch.Tensor:
    if kind == "lsgan":
        return F.mse_loss(logits, torch.full_like(logits, target))
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def _check(kind: str, real_logits: torch.Tensor | None) -> None:
    if kind not in GAN_KINDS:
        raise ValueError(f"unknown GAN loss {kind!r}; choose from {', '.join(GAN_KINDS)}")
    if kind == "ragan" and real_logits is None:
        raise ValueError("the 'ragan' generator loss needs the discriminator's logits on real images")


def generator_loss(kind: str, fake_logits: torch.Tensor, real_logits: torch.Tensor | None = None) -> torch.Tensor:
    """Loss the generator minimises so that its outputs look real to the discriminator."""
    _check(kind, real_logits)
    fake_logits = fake_logits.float()
    if kind == "ragan":
        real_logits = real_logits.float()
        return 0.5 * (
            _target_loss(kind, real_logits - fake_logits.mean(), 0.0)
            + _target_loss(kind, fake_logits - real_logits.mean(), 1.0)
        )
    return _target_loss(kind, fake_logits, 1.0)


def discriminator_loss(kind: str, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Loss the discriminator minimises (``fake_logits`` from detached generator outputs).

    As in the original code (mmsr / RankSRGAN / ESRGAN): ``vanilla`` and ``lsgan`` sum the real and
    fake terms; ``ragan`` averages its two relativistic terms, and in each term the other side's mean
    is detached (ESRGAN / BasicSR / the EA-Adam RRDB release: ``D(hr) - mean D(sr)ᵈ`` and
    ``D(sr) - mean D(hr)ᵈ``), so each term moves D only through its own side's logits.
    """
    _check(kind, real_logits)
    real_logits, fake_logits = real_logits.float(), fake_logits.float()
    if kind == "ragan":
        return 0.5 * (
            _target_loss(kind, real_logits - fake_logits.mean().detach(), 1.0)
            + _target_loss(kind, fake_logits - real_logits.mean().detach(), 0.0)
        )
    return _target_loss(kind, real_logits, 1.0) + _target_loss(kind, fake_logits, 0.0)
