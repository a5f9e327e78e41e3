"""SRResNet generators: RankSRGAN's ``SRResNet`` and BasicSR's ``MSRResNet``.

The two are *not* weight-compatible (RankSRGAN spec §4.1): ``SRResNet`` has an LR conv and a
global skip around the trunk and plain ReLUs; ``MSRResNet`` has no LR conv, LeakyReLU 0.1 (also
after ``conv_first``) and adds a bilinear upsampling of the input to its output. Parameter names
match the original code so released checkpoints load strictly.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from perceptsr.errors import ConfigError

__all__ = ["ResidualBlockNoBN", "SRResNet", "MSRResNet"]


def _check_scale(name: str, upscale: int) -> int:
    if upscale not in (2, 3, 4):
        raise ConfigError(f"{name}: upscale must be 2, 3 or 4, got {upscale!r}")
    return int(upscale)


class ResidualBlockNoBN(nn.Module):
    """``x + conv2(relu(conv1(x)))``: the residual block of SRResNet/EDSR, without batch norm."""

    def __init__(self, nf: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv2 = nn.Conv2d(nf, nf, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))


class SRResNet(nn.Module):
    """RankSRGAN's generator (``RankSRGAN_arch.SRResNet``, mmsr key names).

    conv_first -> ``nb`` residual blocks (``recon_trunk.{i}``) -> LRconv, plus the conv_first
    output (global skip) -> pixel-shuffle upsampling with ReLU (``upconv1``/``upconv2`` for x4,
    ``upconv1`` alone for x2/x3) -> ReLU(HRconv) -> conv_last. No output clamp, no bilinear skip.
    x4 with the defaults has 1,554,499 parameters.
    """

    arch_kind = "generator"

    def __init__(self, in_nc: int = 3, out_nc: int = 3, nf: int = 64, nb: int = 16, upscale: int = 4) -> None:
        super().__init__()
        self.upscale = self.scale = _check_scale("srresnet", upscale)
        self.conv_first = nn.Conv2d(in_nc, nf, 3, 1, 1)
        self.recon_trunk = nn.Sequential(*(ResidualBlockNoBN(nf) for _ in range(nb)))
        self.LRconv = nn.Conv2d(nf, nf, 3, 1, 1)
        if upscale == 4:
            self.upconv1 = nn.Conv2d(nf, nf * 4, 3, 1, 1)
            self.upconv2 = nn.Conv2d(nf, nf * 4, 3, 1, 1)
            self.pixel_shuffle = nn.PixelShuffle(2)
        else:
            self.upconv1 = nn.Conv2d(nf, nf * upscale * upscale, 3, 1, 1)
            self.pixel_shuffle = nn.PixelShuffle(upscale)
        self.HRconv = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_last = nn.Conv2d(nf, out_nc, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fea = self.conv_first(x)
        out = self.LRconv(self.recon_trunk(fea)) + fea
        out = F.relu(self.pixel_shuffle(self.upconv1(out)))
        if self.upscale == 4:
            out = F.relu(self.pixel_shuffle(self.upconv2(out)))
        return self.conv_last(F.relu(self.HRconv(out)))


class MSRResNet(nn.Module):
    """BasicSR's modified SRResNet (``MSRResNet``), BasicSR key and argument names.

    LeakyReLU(0.1) after conv_first, the upsampling convs and conv_hr; residual blocks use ReLU
    inside (BasicSR ``ResidualBlockNoBN``); the bilinearly upsampled input is added to the output.
    x4 with the defaults has 1,517,571 parameters.
    """

    arch_kind = "generator"

    def __init__(
        self, num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 64, num_block: int = 16, upscale: int = 4
    ) -> None:
        super().__init__()
        self.upscale = self.scale = _check_scale("msrresnet", upscale)
        self.conv_first = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*(ResidualBlockNoBN(num_feat) for _ in range(num_block)))
        if upscale == 4:
            self.upconv1 = nn.Conv2d(num_feat, num_feat * 4, 3, 1, 1)
            self.upconv2 = nn.Conv2d(num_feat, num_feat * 4, 3, 1, 1)
            self.pixel_shuffle = nn.PixelShuffle(2)
        else:
            self.upconv1 = nn.Conv2d(num_feat, num_feat * upscale * upscale, 3, 1, 1)
            self.pixel_shuffle = nn.PixelShuffle(upscale)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(F.leaky_relu(self.conv_first(x), 0.1))
        out = F.leaky_relu(self.pixel_shuffle(self.upconv1(out)), 0.1)
        if self.upscale == 4:
            out = F.leaky_relu(self.pixel_shuffle(self.upconv2(out)), 0.1)
        out = self.conv_last(F.leaky_relu(self.conv_hr(out), 0.1))
        base = F.interpolate(x, scale_factor=self.upscale, mode="bilinear", align_corners=False)
        return out + base
