"""Training losses (explicit re-exports; no import-time scanning)."""

from __future__ import annotations

from perceptsr.losses.perceptual import PerceptualLoss

__all__ = ["PerceptualLoss"]
