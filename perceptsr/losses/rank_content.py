"""RankSRGAN's rank-content loss: a frozen Ranker scores the SR output, lower is better.

The Ranker is trained so that its score goes *up* for worse images (higher NIQE / Ma-as-10-minus /
PI), so minimising ``sigmoid(R(SR))`` pushes the generator towards better-ranked outputs
(RankSRGAN spec §3.3, §4.4). As in the original:

* the loss is ``weight * sum over the batch of sigmoid(R(SR_b) - bias)``: a *sum*, so its
  effective weight grows with the batch size (0.03 per image in the paper, batch 8, bias 0);
* the Ranker sees the SR output as it is: RGB in [0, 1], no mean/std normalisation;
* its parameters are frozen (``requires_grad=False``, never handed to an optimizer) while gradients
  flow through it into the generator;
* its BatchNorm runs in train mode by default (batch statistics; the original never calls
  ``eval()`` on it), or in eval mode (running statistics) with ``bn_mode="eval"``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from perceptsr.errors import ConfigError

__all__ = ["RankContentLoss", "BN_MODES"]

BN_MODES = ("train", "eval")


class RankContentLoss(nn.Module):
    """``weight * sum_b sigmoid(R(x_b) - bias)`` for a frozen Ranker ``R``.

    Args:
        ranker: a Ranker module, or a checkpoint file read with :func:`perceptsr.checkpoint.load_model`
            (native, mmsr or old ``features.N`` layouts).
        weight: loss weight (RankSRGAN: 0.03).
        bias: subtracted from the score before the sigmoid (RankSRGAN's ``R_bias``, 0).
        bn_mode: ``"train"`` (batch statistics, the original's behaviour) or ``"eval"``.
        arch, arch_kwargs: override the architecture stored in / detected from the file.
    """

    def __init__(
        self,
        ranker: nn.Module | str | os.PathLike,
        weight: float = 0.03,
        bias: float = 0.0,
        bn_mode: str = "train",
        arch: str | None = None,
        arch_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if bn_mode not in BN_MODES:
            raise ConfigError(f"rank-content loss: bn_mode must be one of {BN_MODES}, got {bn_mode!r}")
        if not isinstance(ranker, nn.Module):
            from perceptsr.archs import get_arch
            from perceptsr.checkpoint import load_model

            ranker = load_model(ranker, arch=arch, arch_kwargs=arch_kwargs)
            kind = get_arch(ranker.perceptsr_meta["arch"]).kind
            if kind != "ranker":
                raise ConfigError(
                    f"rank-content loss: {ranker.perceptsr_meta['path']} holds a {kind} "
                    f"({ranker.perceptsr_meta['arch']}), not a Ranker"
                )
        for p in ranker.parameters():
            p.requires_grad_(False)
        self.ranker = ranker
        self.weight = float(weight)
        self.bias = float(bias)
        self.bn_mode = bn_mode
        self.train()

    def train(self, mode: bool = True) -> RankContentLoss:
        """The Ranker's mode is fixed by ``bn_mode``, whatever mode the loss is put in."""
        super().train(mode)
        self.ranker.train(self.bn_mode == "train")
        return self

    def forward(self, sr: torch.Tensor) -> torch.Tensor:
        """Scalar loss for a batch of SR images ``(N, 3, H, W)``, RGB in [0, 1]."""
        scores = self.ranker(sr).float().reshape(sr.shape[0], -1)
        return self.weight * torch.sigmoid(scores - self.bias).sum()
