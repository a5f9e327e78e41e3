"""Training losses (explicit re-exports; no import-time scanning)."""

from __future__ import annotations

from perceptsr.losses.gan import GAN_KINDS, discriminator_loss, generator_loss
from perceptsr.losses.perceptual import PerceptualLoss
from perceptsr.losses.rank_content import RankContentLoss

__all__ = ["GAN_KINDS", "PerceptualLoss", "RankContentLoss", "discriminator_loss", "generator_loss"]
