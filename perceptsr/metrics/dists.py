"""DISTS (Ding et al., TPAMI 2020): deep image structure and texture similarity.

VGG16 (ImageNet weights) with every max pooling replaced by L2 pooling, features taken at the input
image itself (stage 0, not mean/std normalised) and at relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
(3 + 64 + 128 + 256 + 512 + 512 = 1475 channels). Per channel, with global means/variances:

    S1 = (2 mx my + c1) / (mx^2 + my^2 + c1)          texture (mean) similarity
    S2 = (2 cov_xy + c2) / (var_x + var_y + c2)        structure (correlation) similarity

and ``DISTS = 1 - sum(alpha * S1 + beta * S2)`` with the learned alpha, beta divided by their joint
sum, c1 = c2 = 1e-6. Inputs are RGB in [0, 1]; the ImageNet mean/std normalisation is done here.
No resizing: the official command-line demo shrinks images whose short side exceeds 256 px before
scoring; the model itself (and this class) does not.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from perceptsr.archs.vgg_arch import FeatureExtractor, resolve_weights_path
from perceptsr.errors import CheckpointError
from perceptsr.metrics.base import Metric

__all__ = ["DISTS", "L2Pool2d"]

_LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")
_CHANNELS = (3, 64, 128, 256, 512, 512)
_POOLS = {4: 64, 9: 128, 16: 256, 23: 512}  # vgg16 features index of each max pooling -> channels
_C1 = _C2 = 1e-6


class L2Pool2d(nn.Module):
    """DISTS L2 pooling: ``sqrt(hann3x3 * x^2 + 1e-12)``, depthwise, stride 2, padding 1.

    The 3x3 window is the outer product of ``hanning(5)[1:-1] = (0.5, 1, 0.5)``, normalised to sum 1.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        a = torch.hann_window(5, periodic=False, dtype=torch.float64)[1:-1]
        g = a[:, None] * a[None, :]
        g = (g / g.sum()).float()
        self.channels = channels
        self.register_buffer("filter", g.expand(channels, 1, 3, 3).contiguous(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.conv2d(x.pow(2), self.filter.to(x.dtype), stride=2, padding=1, groups=x.shape[1])
        return (out + 1e-12).sqrt()


class DISTS(Metric):
    """DISTS; lower is better (0 for identical images); inputs RGB in [0, 1].

    Args:
        pretrained: load the ImageNet VGG16 (asset ``vgg16``) and alpha/beta (asset ``dists``);
            ``False`` gives a random VGG16 and uniform alpha = beta (tests only).
        backbone_weights, weights: asset names or file paths overriding ``vgg16`` / ``dists``.
        **kw: :class:`~perceptsr.metrics.base.Metric` options (``crop_border``, ``as_loss``, ...).
    """

    name = "dists"
    lower_better = True
    full_reference = True
    differentiable = True
    allowed_colors = ("rgb",)
    score_range = (0.0, 1.0)

    def __init__(
        self,
        *,
        pretrained: bool = True,
        backbone_weights: str | Path | None = None,
        weights: str | Path | None = None,
        **kw,
    ) -> None:
        super().__init__(**kw)
        source = backbone_weights if backbone_weights is not None else ("default" if pretrained else None)
        self.net = FeatureExtractor(_LAYERS, arch="vgg16", weights=source, convention="torchvision")
        for idx, ch in _POOLS.items():
            assert isinstance(self.net.features[idx], nn.MaxPool2d)
            self.net.features[idx] = L2Pool2d(ch)
        total = sum(_CHANNELS)
        self.register_buffer("alpha", torch.ones(total))
        self.register_buffer("beta", torch.ones(total))
        if pretrained or weights is not None:
            self._load_alpha_beta(weights if weights is not None else "dists")
        self.eval()

    def _load_alpha_beta(self, weights: str | Path) -> None:
        path = resolve_weights_path(weights)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CheckpointError(f"{path}: cannot read DISTS alpha/beta ({exc})") from exc
        if not isinstance(state, dict) or not {"alpha", "beta"} <= set(state):
            keys = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise CheckpointError(f"{path}: expected keys 'alpha' and 'beta', found {keys}")
        extra = sorted(set(state) - {"alpha", "beta"})
        if extra:
            raise CheckpointError(f"{path}: unexpected keys {extra} besides 'alpha' and 'beta'")
        for key in ("alpha", "beta"):
            value = state[key]
            if not isinstance(value, torch.Tensor) or value.numel() != self.alpha.numel():
                shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise CheckpointError(
                    f"{path}: {key!r} must hold {self.alpha.numel()} values (1x1475[x1x1]), got {shape}"
                )
            getattr(self, key).copy_(value.detach().float().reshape(-1))

    def train(self, mode: bool = True) -> DISTS:
        super().train(mode)
        self.net.eval()
        return self

    def protocol_details(self) -> str:
        return ("DISTS (VGG16 + L2 pooling, ImageNet mean/std applied internally to [0,1] RGB); "
                "no resizing; 1-channel inputs are repeated to RGB")

    def compute(self, x: torch.Tensor, ref: torch.Tensor | None) -> torch.Tensor:
        assert ref is not None
        dtype = next(self.net.parameters()).dtype  # float64 (or half) input runs in the network's precision
        x, ref = x.to(dtype), ref.to(dtype)
        if x.shape[1] == 1:
            x, ref = x.expand(-1, 3, -1, -1), ref.expand(-1, 3, -1, -1)
        n = x.shape[0]
        both = torch.cat([x, ref])
        feats = self.net(both)
        stages = [both] + [feats[name] for name in _LAYERS]
        w_sum = self.alpha.sum() + self.beta.sum()
        alphas = torch.split(self.alpha.to(x.dtype) / w_sum, _CHANNELS)
        betas = torch.split(self.beta.to(x.dtype) / w_sum, _CHANNELS)
        score = x.new_zeros(n)
        for f, a, b in zip(stages, alphas, betas):
            fx, fy = f[:n], f[n:]
            mx, my = fx.mean(dim=(2, 3)), fy.mean(dim=(2, 3))
            vx = (fx - mx[..., None, None]).pow(2).mean(dim=(2, 3))
            vy = (fy - my[..., None, None]).pow(2).mean(dim=(2, 3))
            cov = (fx * fy).mean(dim=(2, 3)) - mx * my
            s1 = (2 * mx * my + _C1) / (mx.pow(2) + my.pow(2) + _C1)
            s2 = (2 * cov + _C2) / (vx + vy + _C2)
            score = score + (s1 * a).sum(1) + (s2 * b).sum(1)
        return 1 - score
