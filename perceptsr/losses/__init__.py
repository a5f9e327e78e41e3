"""Generic training losses (explicit re-exports; no import-time scanning). Method-specific losses
live in their method's package (RankSRGAN's in :mod:`perceptsr.ranksrgan.losses`)."""

from __future__ import annotations

from perceptsr.losses.gan import GAN_KINDS, discriminator_loss, generator_loss
from perceptsr.losses.perceptual import PerceptualLoss

__all__ = ["GAN_KINDS", "PerceptualLoss", "discriminator_loss", "generator_loss"]
