"""RankSRGAN's Ranker: a VGG-style scorer whose output goes UP for worse images (NIQE-like).

``depth=12`` is ``Ranker_VGG12_296`` exactly (RankSRGAN spec §3.1, mmsr key names): ten convs
(all with bias) ``conv0_0`` (no BN), then ``conv0_1 .. conv4_1`` each followed by BN
(``bn0_1 .. bn4_1``) and LeakyReLU 0.2; ``conv{i}_0`` is 3x3 stride 1, ``conv{i}_1`` 4x4 stride 2;
global average pooling; ``classifier.0`` Linear(512, 100), LeakyReLU 0.2, ``classifier.2``
Linear(100, 1). 13,734,281 parameters. No input normalisation (RGB in [0, 1]).

The depth variants count weight layers (convs + 2 linears), as "VGG-12" does. They are our own
definitions (the release has only VGG-12) and keep every VGG-12 layer name that they share:

* ``depth=8``: stages 0-2 only (6 convs, ``conv0_0 .. conv2_1``), 256 channels into the classifier.
* ``depth=16``: VGG-12 plus one extra 3x3 conv + BN + LReLU per stage 1-4, named ``conv{i}_2`` /
  ``bn{i}_2``, run right after ``conv{i}_0`` at the same resolution and width (so each of those
  stages has two 3x3 convs before its stride-2 conv, as VGG stacks 3x3 convs before pooling):
  14 convs + 2 linears.

Pooling is adaptive, so any input (also non-square) whose sides are at least ``2**stages``
(32 for depths 12/16, 8 for depth 8) works; the released model was trained on 296x296.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from perceptsr.errors import ConfigError

__all__ = ["Ranker", "RANKER_DEPTHS"]

RANKER_DEPTHS = (8, 12, 16)


class Ranker(nn.Module):
    """VGG-style Ranker (see module docstring): ``(N, C, H, W)`` image -> ``(N, 1)`` score."""

    arch_kind = "ranker"

    def __init__(self, in_nc: int = 3, nf: int = 64, depth: int = 12) -> None:
        super().__init__()
        if depth not in RANKER_DEPTHS:
            raise ConfigError(f"ranker: depth must be one of {list(RANKER_DEPTHS)}, got {depth!r}")
        self.depth = int(depth)
        num_stages = 3 if depth == 8 else 5
        self.min_size = 2**num_stages
        # (name, in, out, kernel, stride, with BN) in execution order
        plan: list[tuple[str, int, int, int, int, bool]] = []
        prev = in_nc
        for i in range(num_stages):
            ch = nf * min(2**i, 8)
            plan.append((f"{i}_0", prev, ch, 3, 1, i > 0))
            if depth == 16 and i > 0:
                plan.append((f"{i}_2", ch, ch, 3, 1, True))
            plan.append((f"{i}_1", ch, ch, 4, 2, True))
            prev = ch
        self._layers: list[tuple[str, str | None]] = []
        for suffix, cin, cout, k, s, bn in plan:
            setattr(self, f"conv{suffix}", nn.Conv2d(cin, cout, k, s, 1, bias=True))
            if bn:
                setattr(self, f"bn{suffix}", nn.BatchNorm2d(cout, affine=True))
            self._layers.append((f"conv{suffix}", f"bn{suffix}" if bn else None))
        self.classifier = nn.Sequential(nn.Linear(prev, 100), nn.LeakyReLU(0.2), nn.Linear(100, 1))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled ``(N, C)`` feature vector fed to the classifier."""
        h, w = x.shape[-2:]
        if min(h, w) < self.min_size:
            raise ValueError(f"ranker(depth={self.depth}) needs inputs of at least {self.min_size}x{self.min_size}, got {h}x{w}")
        for conv_name, bn_name in self._layers:
            x = getattr(self, conv_name)(x)
            if bn_name is not None:
                x = getattr(self, bn_name)(x)
            x = F.leaky_relu(x, 0.2)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
