"""ESRGAN's RRDBNet with BasicSR key and argument names (``basicsr.archs.rrdbnet_arch.RRDBNet``).

Old ESRGAN (``model.N``) and mmsr (``RRDB_trunk``) checkpoints are converted to these names by
:mod:`perceptsr.archs.rrdbnet_support`. Scale 4 upsamples twice by nearest neighbour + conv; scales 2 and 1
use BasicSR's trick of pixel-unshuffling the input first (so ``conv_first`` sees 4x or 16x the
channels) and then running the same x4 body.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from perceptsr.errors import ConfigError

__all__ = ["ResidualDenseBlock", "RRDB", "RRDBNet"]


class ResidualDenseBlock(nn.Module):
    """Five densely connected 3x3 convs (growth ``num_grow_ch``), LeakyReLU 0.2, residual scaled by 0.2."""

    def __init__(self, num_feat: int = 64, num_grow_ch: int = 32) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_grow_ch, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat + num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv3 = nn.Conv2d(num_feat + 2 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv4 = nn.Conv2d(num_feat + 3 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv5 = nn.Conv2d(num_feat + 4 * num_grow_ch, num_feat, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            feats.append(F.leaky_relu(conv(torch.cat(feats, 1)), 0.2))
        return self.conv5(torch.cat(feats, 1)) * 0.2 + x


class RRDB(nn.Module):
    """Residual-in-residual dense block: three dense blocks, outer residual scaled by 0.2."""

    def __init__(self, num_feat: int = 64, num_grow_ch: int = 32) -> None:
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    """ESRGAN generator: conv_first -> ``num_block`` RRDBs -> conv_body (+ skip) -> 2x (nearest x2,
    conv, LReLU 0.2) -> LReLU(conv_hr) -> conv_last. Defaults (x4) have 16,697,987 parameters.

    ``num_in_ch`` is the image channel count; for ``scale`` 2 or 1 ``conv_first`` takes
    ``num_in_ch * 4`` or ``num_in_ch * 16`` channels (pixel-unshuffled input), as in BasicSR.
    """

    arch_kind = "generator"

    def __init__(
        self, num_in_ch: int = 3, num_out_ch: int = 3, scale: int = 4, num_feat: int = 64, num_block: int = 23,
        num_grow_ch: int = 32,
    ) -> None:
        super().__init__()
        if scale not in (1, 2, 4):
            raise ConfigError(f"rrdbnet: scale must be 1, 2 or 4, got {scale!r}")
        self.scale = self.upscale = int(scale)
        first_in = num_in_ch * {4: 1, 2: 4, 1: 16}[scale]
        self.conv_first = nn.Conv2d(first_in, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*(RRDB(num_feat, num_grow_ch) for _ in range(num_block)))
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale != 4:
            factor = 4 // self.scale
            h, w = x.shape[-2:]
            if h % factor or w % factor:
                raise ValueError(
                    f"rrdbnet x{self.scale} pixel-unshuffles its input by {factor}: height and width must be "
                    f"multiples of {factor}, got {h}x{w}"
                )
            x = F.pixel_unshuffle(x, factor)
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        feat = F.leaky_relu(self.conv_up1(F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2)
        feat = F.leaky_relu(self.conv_up2(F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2)
        return self.conv_last(F.leaky_relu(self.conv_hr(feat), 0.2))
