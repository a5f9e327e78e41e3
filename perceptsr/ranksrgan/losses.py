"""RankSRGAN's losses: the Ranker's margin-ranking and regression losses (stage 2) and the
rank-content loss that a frozen Ranker gives the generator (stage 3).

The Ranker is trained so that its score goes *up* for worse images (higher NIQE / Ma-as-10-minus /
PI), so minimising ``sigmoid(R(SR))`` pushes the generator towards better-ranked outputs
(RankSRGAN spec §3.3, §4.4). As in the original:

* the rank-content loss is ``weight * sum over the batch of sigmoid(R(SR_b) - bias)``: a *sum*, so
  its effective weight grows with the batch size (0.03 per image in the paper, batch 8, bias 0);
* the Ranker sees the SR output as it is: RGB in [0, 1], no mean/std normalisation;
* its parameters are frozen (``requires_grad=False``, never handed to an optimizer) while gradients
  flow through it into the generator;
* its BatchNorm runs in train mode by default, as the original, which never calls ``eval()`` on it
  (``bn_mode="train"``: statistics of the SR batch itself); ``bn_mode="eval"`` uses the running
  statistics of the Ranker's training. The two fail differently (issue 10):

  - train mode removes whatever the batch's patches have in common, so a batch that is better as a
    whole scores about the same as a worse one (a toy Ranker: 0.1029 / 0.1033 / 0.1025 for
    all-sharp / all-soft / all-blurry batches of 8, against 0.073 / 0.147 / 0.200 in eval mode),
    and the value depends on the per-process batch size;
  - eval mode lets the generator add one pattern to every output that the Ranker reads as "better
    than any real image": at the cpu profile (a Ranker from 338 triplets) the rank term fell from
    0.085 to 0.010 in 160 iterations, the Ranker's score of the SR batch went from 0.28 to about -3
    while HR patches score -0.09, the discriminator then won outright, and the outputs carried a
    fine diagonal grid (BSD100 NIQE 66 against SRGAN's 6.3; rank weight 0.01: NIQE 223). In train
    mode such a shared pattern is normalised away: the same run stayed balanced (NIQE 6.60).

  Train mode is the default because eval mode broke the only scale measured; ``floor="hr"`` bounds
  the eval-mode exploit (no reward past the HR score) but did not remove it (NIQE 7.7).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from perceptsr.errors import ConfigError

__all__ = ["BN_MODES", "FLOORS", "RankContentLoss", "ranking_loss", "regression_loss"]

BN_MODES = ("train", "eval")
FLOORS = ("none", "hr")


def ranking_loss(s1: torch.Tensor, s2: torch.Tensor, label1: torch.Tensor, label2: torch.Tensor, *,
                 margin: float = 0.5, clamp: float | None = 5.0) -> torch.Tensor:
    """``MarginRankingLoss(margin)`` of scores clamped to ``[-clamp, clamp]``; target +1 where
    ``label1 >= label2`` (image 1 is worse, ties included), so R learns higher score = worse."""
    s1, s2 = s1.reshape(-1), s2.reshape(-1)
    if clamp:
        s1, s2 = s1.clamp(-clamp, clamp), s2.clamp(-clamp, clamp)
    target = torch.where(label1.reshape(-1) >= label2.reshape(-1), 1.0, -1.0).to(s1)
    return F.margin_ranking_loss(s1, s2, target, margin=margin)


def regression_loss(pred: torch.Tensor, label: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    """The regression variant: L1 or L2 between predicted scores and the metric labels."""
    pred, label = pred.reshape(-1), label.reshape(-1).to(pred)
    if kind == "l1":
        return F.l1_loss(pred, label)
    if kind == "l2":
        return F.mse_loss(pred, label)
    raise ValueError(f"unknown regression loss {kind!r}")


class RankContentLoss(nn.Module):
    """``weight * sum_b sigmoid(R(x_b) - bias)`` for a frozen Ranker ``R``.

    Args:
        ranker: a Ranker module, or a checkpoint file read with :func:`perceptsr.checkpoint.load_model`
            (native, mmsr or old ``features.N`` layouts; a Ranker run saves
            ``checkpoints/iter_N/ranker.safetensors``).
        weight: loss weight (RankSRGAN: 0.03).
        bias: subtracted from the score before the sigmoid (RankSRGAN's ``R_bias``, 0).
        bn_mode: ``"train"`` (batch statistics, the original's behaviour and the default) or
            ``"eval"`` (running statistics); see the module docstring for what each costs.
        floor: ``"none"`` (the original) or ``"hr"``, a perceptsr extension: each SR image's score is
            floored at its HR image's score, ``sigmoid(max(R(SR_b), R(HR_b)) - bias)``, so the term
            stops rewarding an output once the Ranker ranks it as its ground truth. A Ranker trained
            on few patches can be driven far past every real image's score by patterns it never saw
            (issue 10: at the cpu profile the generator took R(SR) from 0.28 to about -3 in 160
            iterations while HR patches score -0.09, and the discriminator then won outright).
            Needs ``bn_mode="eval"`` (in train mode the two batches' scores are not comparable).
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
        floor: str = "none",
    ) -> None:
        super().__init__()
        if bn_mode not in BN_MODES:
            raise ConfigError(f"rank-content loss: bn_mode must be one of {BN_MODES}, got {bn_mode!r}")
        if floor not in FLOORS:
            raise ConfigError(f"rank-content loss: floor must be one of {FLOORS}, got {floor!r}")
        if floor == "hr" and bn_mode != "eval":
            raise ConfigError("rank-content loss: floor 'hr' needs bn_mode 'eval' (train-mode BatchNorm scores the SR "
                              "and HR batches by their own statistics, so the two scores are not comparable)")
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
        self.floor = floor
        self.train()

    def train(self, mode: bool = True) -> RankContentLoss:
        """The Ranker's mode is fixed by ``bn_mode``, whatever mode the loss is put in."""
        super().train(mode)
        self.ranker.train(self.bn_mode == "train")
        return self

    def forward(self, sr: torch.Tensor, hr: torch.Tensor | None = None) -> torch.Tensor:
        """Scalar loss for a batch of SR images ``(N, 3, H, W)``, RGB in [0, 1] (``hr``, the same
        shape, is needed with ``floor="hr"``)."""
        scores = self.ranker(sr).float().reshape(sr.shape[0], -1)
        if self.floor == "hr":
            if hr is None:
                raise ValueError("rank-content loss with floor 'hr' needs the HR batch")
            with torch.no_grad():
                reference = self.ranker(hr).float().reshape(hr.shape[0], -1)
            scores = torch.maximum(scores, reference)
        return self.weight * torch.sigmoid(scores - self.bias).sum()
