"""VGG perceptual (feature) loss as in SRGAN / ESRGAN / RankSRGAN / BasicSR.

``convX_Y`` layer names compare features *before* the ReLU ("VGG19-54" = ``conv5_4``), ``reluX_Y``
names after it. The VGG is frozen and in eval mode; the target's features are computed without
gradients, so only the prediction receives gradients.

Which VGG weights (``weights=``):

* ``"torchvision"``: torchvision ImageNet VGG (asset ``vgg19``/``vgg16``), RGB [0, 1] with ImageNet
  mean/std: what RankSRGAN, ESRGAN and BasicSR use.
* ``"caffe"``: the original Oxford/Caffe VGG19 (asset ``vgg19_caffe``): BGR, [0, 255], mean
  subtraction, no std.
* an asset name or file path (its convention is ``caffe`` when the name contains "caffe", else
  ``torchvision``; ``convention=`` overrides), or ``None`` for random weights (tests).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from perceptsr.archs.vgg_arch import FeatureExtractor

__all__ = ["PerceptualLoss"]

_CRITERIA = ("l1", "l2", "fro")


class PerceptualLoss(nn.Module):
    """``loss_weight * sum_k layer_weights[k] * criterion(phi_k(x), phi_k(gt))``.

    Args:
        layer_weights: ``{layer_name: weight}``, e.g. ``{"conv5_4": 1.0}`` (VGG19-54 before ReLU).
        vgg_type: ``"vgg19"`` or ``"vgg16"``.
        weights: ``"torchvision"``, ``"caffe"``, an asset name / file path, or ``None`` (random init).
        use_input_norm: apply the weights' input convention to the [0, 1] RGB input.
        convention: override the convention (``torchvision``, ``caffe``, ``none``); by default
            ``caffe`` for Caffe weights and ``torchvision`` otherwise.
        criterion: ``"l1"`` (mean absolute), ``"l2"`` (mean squared) or ``"fro"`` (Frobenius norm
            of the whole feature difference, BasicSR's ``fro``).
        range_norm: inputs are in [-1, 1] and are mapped to [0, 1] first.
        loss_weight: global multiplier.
        generator: seeds the random initialisation when ``weights is None``.
    """

    def __init__(
        self,
        layer_weights: Mapping[str, float] | None = None,
        vgg_type: str = "vgg19",
        weights: str | Path | None = "torchvision",
        use_input_norm: bool = True,
        convention: str | None = None,
        criterion: str = "l1",
        range_norm: bool = False,
        loss_weight: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if layer_weights is None:
            layer_weights = {"conv5_4": 1.0}
        if not layer_weights:
            raise ValueError("PerceptualLoss needs at least one layer in layer_weights")
        if vgg_type not in ("vgg16", "vgg19"):
            raise ValueError(f"vgg_type must be 'vgg16' or 'vgg19', got {vgg_type!r}")
        if criterion not in _CRITERIA:
            raise ValueError(f"unknown criterion {criterion!r}; expected one of {', '.join(_CRITERIA)}")
        if weights == "torchvision":
            source: str | Path | None = vgg_type
            default_convention = "torchvision"
        elif weights == "caffe":
            if vgg_type != "vgg19":
                raise ValueError("Caffe weights are only available for vgg19 (asset 'vgg19_caffe')")
            source, default_convention = "vgg19_caffe", "caffe"
        else:
            source = weights
            # A name or path mentioning "caffe" is taken as Caffe weights; pass convention= to override.
            is_caffe = weights is not None and "caffe" in str(weights).lower()
            default_convention = "caffe" if is_caffe else "torchvision"
        convention = convention or default_convention
        if not use_input_norm:
            convention = "none"
        self.layer_weights = {str(k): float(v) for k, v in layer_weights.items()}
        self.criterion = criterion
        self.range_norm = range_norm
        self.loss_weight = float(loss_weight)
        self.vgg = FeatureExtractor(
            list(self.layer_weights), arch=vgg_type, weights=source, convention=convention,
            truncate=True, requires_grad=False, generator=generator,
        )

    @property
    def convention(self) -> str:
        return self.vgg.convention

    def train(self, mode: bool = True) -> PerceptualLoss:
        super().train(mode)
        self.vgg.eval()  # frozen: always eval
        return self

    def _distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.criterion == "l1":
            return (a - b).abs().mean()
        if self.criterion == "l2":
            return (a - b).pow(2).mean()
        return torch.linalg.vector_norm(a - b)  # Frobenius norm over every element

    def forward(self, x: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        """Scalar loss between prediction ``x`` and target ``gt`` (``(N, 3, H, W)``, RGB [0, 1])."""
        if x.shape != gt.shape:
            raise ValueError(f"PerceptualLoss: x {tuple(x.shape)} and gt {tuple(gt.shape)} differ in shape")
        if self.range_norm:
            x, gt = (x + 1) / 2, (gt + 1) / 2
        feats = self.vgg(x)
        with torch.no_grad():
            gt_feats = self.vgg(gt.detach())
        loss = x.new_zeros(())
        for name, weight in self.layer_weights.items():
            loss = loss + weight * self._distance(feats[name], gt_feats[name])
        return loss * self.loss_weight
