"""Real-ESRGAN's compact VGG-style generator (``SRVGGNetCompact``), BasicSR key and argument names.

A plain chain of 3x3 convs at low resolution, no residual blocks: ``body`` is conv_first
(``body.0``), its activation (``body.1``), ``num_conv`` x (conv, activation), and a last conv to
``num_out_ch * upscale**2`` channels; a pixel shuffle brings that to full size and the
nearest-neighbour upsampled input is added, so the body learns the residual. Released as
``realesr-animevideov3`` (16 body convs, PReLU) and ``realesr-general-x4v3`` (32 convs).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from perceptsr.errors import ConfigError

__all__ = ["ACT_TYPES", "SRVGGNetCompact"]

ACT_TYPES = ("prelu", "relu", "leakyrelu")


def _activation(act_type: str, num_feat: int) -> nn.Module:
    if act_type == "prelu":
        return nn.PReLU(num_parameters=num_feat)
    if act_type == "relu":
        return nn.ReLU(inplace=True)
    return nn.LeakyReLU(negative_slope=0.1, inplace=True)


class SRVGGNetCompact(nn.Module):
    """conv_first -> act -> ``num_conv`` x (conv, act) -> conv -> PixelShuffle(upscale), plus the
    nearest-upsampled input. ``act_type`` is ``prelu`` (one slope per channel), ``relu`` or
    ``leakyrelu`` (slope 0.1), as in Real-ESRGAN. The defaults (animevideov3) have 621,424 parameters.

    The skip adds the input to the output, so ``num_out_ch`` must equal ``num_in_ch``.
    """

    arch_kind = "generator"

    def __init__(
        self, num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 64, num_conv: int = 16, upscale: int = 4,
        act_type: str = "prelu",
    ) -> None:
        super().__init__()
        if act_type not in ACT_TYPES:
            raise ConfigError(f"srvggnet_compact: act_type must be one of {list(ACT_TYPES)}, got {act_type!r}")
        if not isinstance(upscale, int) or upscale < 1:
            raise ConfigError(f"srvggnet_compact: upscale must be a positive integer, got {upscale!r}")
        if num_out_ch != num_in_ch:
            raise ConfigError(
                f"srvggnet_compact: num_out_ch ({num_out_ch}) must equal num_in_ch ({num_in_ch}): "
                "the upsampled input is added to the output"
            )
        self.scale = self.upscale = upscale
        self.act_type = act_type
        layers: list[nn.Module] = [nn.Conv2d(num_in_ch, num_feat, 3, 1, 1), _activation(act_type, num_feat)]
        for _ in range(num_conv):
            layers += [nn.Conv2d(num_feat, num_feat, 3, 1, 1), _activation(act_type, num_feat)]
        layers.append(nn.Conv2d(num_feat, num_out_ch * upscale * upscale, 3, 1, 1))
        self.body = nn.Sequential(*layers)
        self.upsampler = nn.PixelShuffle(upscale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.upsampler(self.body(x))
        return out + F.interpolate(x, scale_factor=self.upscale, mode="nearest")
