"""VGG-style GAN discriminator (BasicSR ``VGGStyleDiscriminator`` / mmsr ``Discriminator_VGG_*`` names).

Stages ``i = 0..S-1`` each hold ``conv{i}_0`` (3x3, stride 1) and ``conv{i}_1`` (4x4, stride 2),
followed by BN (``bn{i}_0``/``bn{i}_1``; none after ``conv0_0``) and LeakyReLU 0.2. Channels go
``nf, 2nf, 4nf, 8nf, 8nf(, 8nf)``. The last map is flattened into ``linear1`` (-> 100) -> LReLU ->
``linear2`` (-> 1 logit), so the input size is fixed by ``input_size``:

* 128: 5 stages, 512x4x4 -> linear1 8192->100 (BasicSR, EA-Adam, SRGAN baselines);
* 256: 6 stages (BasicSR adds ``conv5_*``), 512x4x4;
* 296: 5 stages, 512x9x9 -> linear1 41472->100 (RankSRGAN ``Discriminator_VGG_296``; 17,827,401
  parameters with the default ``conv_bias=False``).

``conv_bias=False`` is the current (BasicSR/mmsr HEAD) variant: only ``conv0_0`` has a bias.
``conv_bias=True`` gives the old BasicSR variant used by the paper-era RankSRGAN code.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from perceptsr.errors import ConfigError

__all__ = ["VGGDiscriminator"]


class VGGDiscriminator(nn.Module):
    """VGG-style discriminator for square ``input_size`` inputs; see the module docstring."""

    arch_kind = "discriminator"

    def __init__(
        self, num_in_ch: int = 3, num_feat: int = 64, input_size: int = 128, conv_bias: bool = False,
        num_stages: int | None = None,
    ) -> None:
        super().__init__()
        if num_stages is None:
            num_stages = 6 if input_size == 256 else 5
        final = int(input_size)
        for _ in range(num_stages):
            final //= 2  # a 4x4 stride-2 pad-1 conv maps s -> floor(s / 2)
        if num_stages < 1 or final < 1:
            raise ConfigError(
                f"vgg_discriminator: input_size {input_size} is too small for {num_stages} stride-2 stages"
            )
        self.input_size, self.num_stages, self.final_size = int(input_size), int(num_stages), final
        channels = [num_feat * min(2**i, 8) for i in range(num_stages)]
        self._layers: list[tuple[str, str | None]] = []  # (conv name, bn name or None) in execution order
        prev = num_in_ch
        for i, ch in enumerate(channels):
            for j, (k, s) in enumerate(((3, 1), (4, 2))):
                conv_name, bn_name = f"conv{i}_{j}", f"bn{i}_{j}"
                first = i == 0 and j == 0
                setattr(self, conv_name, nn.Conv2d(prev, ch, k, s, 1, bias=first or conv_bias))
                if not first:
                    setattr(self, bn_name, nn.BatchNorm2d(ch, affine=True))
                self._layers.append((conv_name, None if first else bn_name))
                prev = ch
        self.linear1 = nn.Linear(prev * final * final, 100)
        self.linear2 = nn.Linear(100, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        for _ in range(self.num_stages):
            h, w = h // 2, w // 2
        if (h, w) != (self.final_size, self.final_size):
            raise ValueError(
                f"vgg_discriminator(input_size={self.input_size}) needs {self.input_size}x{self.input_size} "
                f"inputs (its linear layer expects a {self.final_size}x{self.final_size} final map), "
                f"got {x.shape[-2]}x{x.shape[-1]}"
            )
        for conv_name, bn_name in self._layers:
            x = getattr(self, conv_name)(x)
            if bn_name is not None:
                x = getattr(self, bn_name)(x)
            x = F.leaky_relu(x, 0.2)
        x = F.leaky_relu(self.linear1(x.flatten(1)), 0.2)
        return self.linear2(x)
