"""LPIPS v0.1 (Zhang et al., CVPR 2018): learned perceptual distance on AlexNet or VGG16 features.

**Input range.** Like every perceptsr metric, :class:`LPIPS` takes RGB in **[0, 1]** and maps it to
[-1, 1] itself (``2x - 1``, what ``lpips.LPIPS(...)(x, y, normalize=True)`` does). Do not pass
[-1, 1] images (the base class rejects them) and do not rescale beforehand: feeding [0, 1] data to the
original package without ``normalize=True`` is a common source of wrong LPIPS numbers.

Per layer k: unit-normalise the features over channels, take squared differences, weight the channels
with the learned 1x1 ``lin{k}`` layer, average over space; the score is the sum over layers.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from perceptsr.archs.vgg_arch import FeatureExtractor, resolve_weights_path
from perceptsr.state_dicts import key_report
from perceptsr.errors import CheckpointError, ConfigError
from perceptsr.metrics.base import Metric

__all__ = ["LPIPS"]

# net -> (backbone arch, layers, channels). Layer outputs after ReLU, as in the LPIPS slices.
_NETS = {
    "alex": ("alexnet", ("relu1", "relu2", "relu3", "relu4", "relu5"), (64, 192, 384, 256, 256)),
    "vgg": ("vgg16", ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3"), (64, 128, 256, 512, 512)),
}
_EPS = 1e-10  # as in LPIPS normalize_tensor


def _unit_normalize(f: torch.Tensor) -> torch.Tensor:
    # vector_norm has a zero (not NaN) gradient where all channels are zero.
    return f / (torch.linalg.vector_norm(f, dim=1, keepdim=True) + _EPS)


class LPIPS(Metric):
    """LPIPS v0.1; lower is better; inputs RGB in [0, 1] (scaled to [-1, 1] internally).

    Args:
        net: ``"alex"`` (default, the published LPIPS) or ``"vgg"``. ``"squeeze"`` is not available:
            it needs SqueezeNet 1.1 features, which perceptsr does not implement.
        pretrained: load the ImageNet backbone and the LPIPS linear layers; ``False`` gives a random
            backbone with uniform channel weights (tests only: values are meaningless).
        backbone_weights, lin_weights: asset names or file paths overriding the defaults
            (``alexnet``/``vgg16`` and ``lpips_alex``/``lpips_vgg``).
        **kw: :class:`~perceptsr.metrics.base.Metric` options (``crop_border``, ``as_loss``, ...).
    """

    name = "lpips"
    lower_better = True
    full_reference = True
    differentiable = True
    min_size = 32
    allowed_colors = ("rgb",)
    score_range = (0.0, float("inf"))

    def __init__(
        self,
        net: str = "alex",
        *,
        pretrained: bool = True,
        backbone_weights: str | Path | None = None,
        lin_weights: str | Path | None = None,
        **kw,
    ) -> None:
        super().__init__(**kw)
        if net == "squeeze":
            raise ConfigError(
                "lpips: net='squeeze' is not supported (perceptsr has no SqueezeNet 1.1 backbone); "
                "use net='alex' (the published default) or net='vgg'"
            )
        if net not in _NETS:
            raise ConfigError(f"lpips: unknown net {net!r}; use 'alex' or 'vgg'")
        arch, layers, channels = _NETS[net]
        self.net_name = net
        self.layers = layers
        self.min_size = 32 if net == "alex" else 16
        source = backbone_weights if backbone_weights is not None else ("default" if pretrained else None)
        self.net = FeatureExtractor(layers, arch=arch, weights=source, convention="lpips")
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in channels)
        if pretrained or lin_weights is not None:
            self._load_lins(lin_weights if lin_weights is not None else f"lpips_{net}")
        else:
            for lin in self.lins:
                nn.init.ones_(lin.weight)
        self.lins.requires_grad_(False)
        self.eval()

    def _load_lins(self, weights: str | Path) -> None:
        path = resolve_weights_path(weights)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CheckpointError(f"{path}: cannot read LPIPS linear layers ({exc})") from exc
        if not isinstance(state, dict):
            raise CheckpointError(f"{path}: expected a state dict of LPIPS linear layers")
        expected = {f"lin{k}.model.1.weight": lin.weight for k, lin in enumerate(self.lins)}
        report = key_report(expected, state, what=f"{path} does not match LPIPS-{self.net_name} linear layers",
                            labels=("model", "file"))
        if report:
            raise CheckpointError(report)
        with torch.no_grad():
            for k, v in expected.items():
                v.copy_(state[k].float())

    def train(self, mode: bool = True) -> LPIPS:
        super().train(mode)
        self.net.eval()
        return self

    def protocol_details(self) -> str:
        return (f"LPIPS v0.1 net={self.net_name}; inputs in [0,1] are mapped to [-1,1] internally "
                "(same as lpips normalize=True); 1-channel inputs are repeated to RGB")

    def compute(self, x: torch.Tensor, ref: torch.Tensor | None) -> torch.Tensor:
        assert ref is not None
        dtype = next(self.net.parameters()).dtype  # float64 (or half) input runs in the network's precision
        x, ref = x.to(dtype), ref.to(dtype)
        if x.shape[1] == 1:
            x, ref = x.expand(-1, 3, -1, -1), ref.expand(-1, 3, -1, -1)
        n = x.shape[0]
        feats = self.net(torch.cat([x, ref]) * 2 - 1)  # one pass for both images
        total = x.new_zeros(n)
        for name, lin in zip(self.layers, self.lins):
            f = _unit_normalize(feats[name])
            diff = (f[:n] - f[n:]).pow(2)
            total = total + lin(diff).mean(dim=(1, 2, 3))
        return total
