"""The dynamic layers of EA-Adam stage B: an attention regressor per layer predicts per-image mixing
weights for K frozen expert parameter sets (spec ``shared/specs/eaadam.md`` §3).

Each dynamic layer holds the experts stacked as ``weight [K, ...]`` / ``bias [K, out]`` and the
regressor as ``fusion`` (release key names ``<layer>.fusion.ConvNet.{0,2,4}.*``,
``<layer>.fusion.MappingNet.{0,2}.*``). Each image uses ``Σ_j w_j θ^{(j)}``; for convs this is one
grouped conv over the batch. With fixed weights (:meth:`DynamicLayer.set_fixed_weights`) a layer
runs one mixed kernel for the whole batch.

Linear/LayerNorm layers cannot see a spatial layout from inside the module tree, so their regressor
runs on the tokens with 1x1 kernels (the released SwinIR reshapes tokens to the image and uses 5x5
kernels). Tokens of one image are grouped by the batch size of the network input (windows are
batch-major in SwinIR), so weights stay per image.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from perceptsr.errors import ConfigError

__all__ = [
    "AttentionConfig", "default_attention_config", "AttentionRegressor", "BatchContext", "DynamicLayer",
    "DynamicConv2d", "DynamicLinear", "DynamicLayerNorm", "DYNAMIC_CLASSES", "LAYER_TYPES", "as_vector",
]

LAYER_TYPES = ("conv2d", "linear", "layernorm")


# --------------------------------------------------------------------------------------------
# attention regressor


@dataclasses.dataclass(frozen=True)
class AttentionConfig:
    """Shape of one layer's weight regressor (release names: ``num_feat_fusion``, ``num_params``).

    ``normalization`` is ``"softmax"`` (SRResNet/RRDB) or ``"sigmoid_sum"`` (released SwinIR:
    sigmoid, then divided by the sum + 1e-4). ``kernel_size`` must be odd (same padding).
    """

    kernel_size: int = 5
    num_feat: int = 64
    num_params: int = 100
    hidden: int = 15
    use_bias: bool = True
    normalization: str = "softmax"
    negative_slope: float = 0.2

    def __post_init__(self) -> None:
        if not isinstance(self.kernel_size, int) or self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ConfigError(f"AttentionConfig.kernel_size must be a positive odd int, got {self.kernel_size!r}")
        for name in ("num_feat", "num_params", "hidden"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"AttentionConfig.{name} must be a positive int, got {value!r}")
        if self.normalization not in ("softmax", "sigmoid_sum"):
            raise ConfigError(
                f"AttentionConfig.normalization must be 'softmax' or 'sigmoid_sum', got {self.normalization!r}"
            )


def default_attention_config(template: nn.Module) -> AttentionConfig:
    """The released regressor for a backbone: its architecture's ``fusion_defaults`` (3x3 kernels
    for RRDBNet, sigmoid-sum for SwinIR), otherwise (SRResNet, MSRResNet, anything else) 5x5 with
    softmax."""
    from perceptsr.archs import spec_of

    spec = spec_of(template)
    return AttentionConfig(**spec.fusion_defaults) if spec is not None else AttentionConfig()


class AttentionRegressor(nn.Module):
    """Per-image mixing weights from a feature map: ``(N, C, H, W) -> (N, K)``.

    Conv(C→64,k) → LReLU → Conv(64→64,k) → LReLU → Conv(64→100,k) → LReLU → global average pool →
    Linear(100→15) → LReLU → Linear(15→K) → softmax (release ``Fusion``; same parameter names).
    """

    def __init__(self, in_channels: int, num_experts: int, config: AttentionConfig | None = None) -> None:
        super().__init__()
        cfg = config or AttentionConfig()
        k, p, slope = cfg.kernel_size, cfg.kernel_size // 2, cfg.negative_slope
        self.config = cfg
        self.num_experts = int(num_experts)
        self.ConvNet = nn.Sequential(
            nn.Conv2d(in_channels, cfg.num_feat, k, 1, p),
            nn.LeakyReLU(slope),
            nn.Conv2d(cfg.num_feat, cfg.num_feat, k, 1, p, bias=cfg.use_bias),
            nn.LeakyReLU(slope),
            nn.Conv2d(cfg.num_feat, cfg.num_params, k, 1, p, bias=cfg.use_bias),
            nn.LeakyReLU(slope),
        )
        self.MappingNet = nn.Sequential(
            nn.Linear(cfg.num_params, cfg.hidden), nn.LeakyReLU(slope), nn.Linear(cfg.hidden, num_experts),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.MappingNet(self.ConvNet(x).mean(dim=(2, 3)))
        if self.config.normalization == "softmax":
            return logits.softmax(dim=1)
        s = logits.sigmoid()
        return s / (s.sum(dim=1, keepdim=True) + 1e-4)


# --------------------------------------------------------------------------------------------
# dynamic layers


class BatchContext:
    """Shared by the layers of one DynamicNetwork: the batch size of the current network input,
    so token layers can group the rows of one image (e.g. its attention windows)."""

    __slots__ = ("batch",)

    def __init__(self) -> None:
        self.batch: int | None = None


def as_vector(value: Any, k: int, what: str) -> torch.Tensor:
    """``value`` as K finite float64 numbers on the CPU (one weight per expert); ``what`` names it in errors."""
    try:
        vec = torch.as_tensor(value, dtype=torch.float64).detach().cpu().reshape(-1)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"{what}: expected {k} numbers, got {type(value).__name__}: {exc}") from None
    if vec.numel() != k:
        raise ConfigError(f"{what}: expected {k} weights (one per expert), got {vec.numel()}")
    if not torch.isfinite(vec).all():
        raise ConfigError(f"{what}: weights must be finite, got {vec.tolist()}")
    return vec


class DynamicLayer(nn.Module):
    """Common part: frozen stacked experts, the regressor ``fusion``, fixed-weight mode, last weights."""

    weight: nn.Parameter
    bias: nn.Parameter | None

    @classmethod
    def from_stacked(
        cls, layer: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None = None,
        attention: nn.Module | None = None, *, config: AttentionConfig | None = None,
    ) -> DynamicLayer:
        """Build from already stacked ``weight [K, *layer.weight.shape]`` / ``bias [K, ...]``; ``layer``
        (one expert or a template) gives the geometry only."""
        obj = cls.__new__(cls)
        obj._setup(layer, weight, bias, attention, config)
        return obj

    def _setup(self, layer, weight, bias, attention, config) -> None:
        raise NotImplementedError

    def _init_experts(self, weight: torch.Tensor, bias: torch.Tensor | None, attention: nn.Module) -> None:
        self.num_experts = int(weight.shape[0])
        self.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
        if bias is not None:
            self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
        else:
            self.register_parameter("bias", None)
        self.fusion = attention
        self._fixed: torch.Tensor | None = None
        self.last_weights: torch.Tensor | None = None
        self._context: BatchContext | None = None

    @property
    def fixed_weights(self) -> torch.Tensor | None:
        """The forced K-vector (float64, CPU), or None when the regressor is used."""
        return self._fixed

    def set_fixed_weights(self, weights: Any | None) -> None:
        """Force ``weights`` (K numbers) for every image instead of the regressor; None undoes it."""
        self._fixed = None if weights is None else as_vector(weights, self.num_experts, type(self).__name__)

    def _samples(self, rows: int) -> int:
        batch = self._context.batch if self._context is not None else None
        return batch if batch and rows % batch == 0 else rows

    def _weights(self, n: int, attention_input: Callable[[], torch.Tensor], ref: torch.Tensor) -> torch.Tensor:
        if self._fixed is not None:
            w = self._fixed.to(device=ref.device, dtype=self.weight.dtype).expand(n, -1)
        else:
            w = self.fusion(attention_input())
            if w.shape != (n, self.num_experts):
                raise RuntimeError(
                    f"{type(self).__name__}: the attention module returned shape {tuple(w.shape)}, "
                    f"expected ({n}, {self.num_experts})"
                )
        self.last_weights = w
        return w

    def _mix(self, w: torch.Tensor, tensor: torch.Tensor) -> torch.Tensor:
        """``(n, K) x [K, *shape] -> (n, *shape)``."""
        k = tensor.shape[0]
        return (w.to(tensor.dtype) @ tensor.reshape(k, -1)).reshape(w.shape[0], *tensor.shape[1:])

    def _mix_one(self, tensor: torch.Tensor | None) -> torch.Tensor | None:
        if tensor is None:
            return None
        assert self._fixed is not None
        return self._mix(self._fixed.to(device=tensor.device, dtype=tensor.dtype)[None], tensor)[0]

    def expert_tensors(self) -> dict[str, torch.Tensor]:
        """The stacked experts by parameter name (``weight``, ``bias`` when present)."""
        out = {"weight": self.weight}
        if self.bias is not None:
            out["bias"] = self.bias
        return out


def _check_same(experts: Sequence[nn.Module], kind: type, attrs: Sequence[str]) -> list[nn.Module]:
    experts = list(experts)
    if not experts:
        raise ConfigError(f"Dynamic{kind.__name__}: needs at least one expert layer")
    for i, e in enumerate(experts):
        if not isinstance(e, kind):
            raise ConfigError(f"Dynamic{kind.__name__}: expert {i} is a {type(e).__name__}, not nn.{kind.__name__}")
        for a in attrs:
            if getattr(e, a) != getattr(experts[0], a):
                raise ConfigError(
                    f"Dynamic{kind.__name__}: expert {i} has {a}={getattr(e, a)!r}, expert 0 has {getattr(experts[0], a)!r}"
                )
        if (e.bias is None) != (experts[0].bias is None):
            raise ConfigError(f"Dynamic{kind.__name__}: expert {i} and expert 0 disagree on having a bias")
    return experts


def _stack(experts: Sequence[nn.Module]) -> tuple[torch.Tensor, torch.Tensor | None]:
    weight = torch.stack([e.weight.detach() for e in experts])
    bias = None if experts[0].bias is None else torch.stack([e.bias.detach() for e in experts])
    return weight, bias


class DynamicConv2d(DynamicLayer):
    """A conv mixing K frozen expert kernels per image with weights from its attention regressor.

    ``DynamicConv2d(experts, attention=None, *, config=None)``: ``experts`` are K ``nn.Conv2d`` of
    identical geometry (stride, padding, dilation, groups and padding mode are kept);
    ``attention`` maps the layer input ``(N, C, H, W)`` to ``(N, K)`` weights (default: an
    :class:`AttentionRegressor` built from ``config``). Each forward stores the weights used in
    ``last_weights``; :meth:`set_fixed_weights` forces one K-vector for every image.
    """

    def __init__(
        self, experts: Sequence[nn.Conv2d], attention: nn.Module | None = None, *, config: AttentionConfig | None = None
    ) -> None:
        attrs = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "padding_mode")
        experts = _check_same(experts, nn.Conv2d, attrs)
        weight, bias = _stack(experts)
        self._setup(experts[0], weight, bias, attention, config)

    def _setup(self, conv, weight, bias, attention, config) -> None:
        nn.Module.__init__(self)
        if tuple(weight.shape[1:]) != tuple(conv.weight.shape) or weight.ndim != 5:
            raise ConfigError(f"DynamicConv2d: stacked weight {tuple(weight.shape)} does not fit {conv}")
        bias_shape = None if bias is None else tuple(bias.shape)
        if (bias is None) != (conv.bias is None) or (bias is not None and bias_shape != (weight.shape[0], conv.out_channels)):
            raise ConfigError(f"DynamicConv2d: stacked bias {bias_shape} does not fit {conv}")
        for a in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "padding_mode",
                  "_reversed_padding_repeated_twice"):
            setattr(self, a, copy.copy(getattr(conv, a)))
        if attention is None:
            attention = AttentionRegressor(conv.in_channels, weight.shape[0], config)
        self._init_experts(weight, bias, attention)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w_ = x.shape
        weights = self._weights(n, lambda: x, x)
        padding = self.padding
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = 0
        if self._fixed is not None:
            return F.conv2d(x, self._mix_one(self.weight), self._mix_one(self.bias), self.stride, padding, self.dilation,
                            self.groups)
        kernel = self._mix(weights, self.weight).reshape(n * self.out_channels, *self.weight.shape[2:])
        bias = None if self.bias is None else self._mix(weights, self.bias).reshape(-1)
        out = F.conv2d(x.reshape(1, n * c, *x.shape[-2:]), kernel, bias, self.stride, padding, self.dilation,
                       self.groups * n)
        return out.reshape(n, self.out_channels, *out.shape[-2:])

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, experts={self.num_experts}")


class DynamicLinear(DynamicLayer):
    """A linear layer mixing K frozen experts per sample; ``x`` is ``(M, ..., in)``.

    Rows of one image are grouped by the network's batch size (inside a :class:`DynamicNetwork`),
    else each leading index is a sample. The default regressor sees the tokens as a
    ``(N, in, L, 1)`` map with 1x1 kernels; the mixed weights are applied with one ``bmm``.
    """

    def __init__(
        self, experts: Sequence[nn.Linear], attention: nn.Module | None = None, *, config: AttentionConfig | None = None
    ) -> None:
        experts = _check_same(experts, nn.Linear, ("in_features", "out_features"))
        weight, bias = _stack(experts)
        self._setup(experts[0], weight, bias, attention, config)

    def _setup(self, linear, weight, bias, attention, config) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        if tuple(weight.shape[1:]) != (self.out_features, self.in_features):
            raise ConfigError(f"DynamicLinear: stacked weight {tuple(weight.shape)} does not fit {linear}")
        if attention is None:
            cfg = dataclasses.replace(config or AttentionConfig(), kernel_size=1)
            attention = AttentionRegressor(self.in_features, weight.shape[0], cfg)
        self._init_experts(weight, bias, attention)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim < 2:
            raise ValueError(f"DynamicLinear expects (M, ..., {self.in_features}) input, got shape {tuple(x.shape)}")
        n = self._samples(x.shape[0])
        tokens = x.reshape(n, -1, self.in_features)
        weights = self._weights(n, lambda: tokens.transpose(1, 2).unsqueeze(-1), x)
        if self._fixed is not None:
            return F.linear(x, self._mix_one(self.weight), self._mix_one(self.bias))
        w = self._mix(weights, self.weight)  # (n, out, in)
        out = torch.bmm(tokens, w.transpose(1, 2))
        if self.bias is not None:
            out = out + self._mix(weights, self.bias).unsqueeze(1)
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, experts={self.num_experts}"


class DynamicLayerNorm(DynamicLayer):
    """LayerNorm over the last dimension with per-sample mixed affine parameters (see DynamicLinear)."""

    def __init__(
        self, experts: Sequence[nn.LayerNorm], attention: nn.Module | None = None, *, config: AttentionConfig | None = None
    ) -> None:
        experts = _check_same(experts, nn.LayerNorm, ("normalized_shape", "eps", "elementwise_affine"))
        weight, bias = _stack(experts)
        self._setup(experts[0], weight, bias, attention, config)

    def _setup(self, norm, weight, bias, attention, config) -> None:
        nn.Module.__init__(self)
        if len(norm.normalized_shape) != 1 or not norm.elementwise_affine:
            raise ConfigError(f"DynamicLayerNorm: only affine LayerNorm over the last dimension is supported, got {norm}")
        self.normalized_shape, self.eps = tuple(norm.normalized_shape), norm.eps
        if tuple(weight.shape[1:]) != self.normalized_shape:
            raise ConfigError(f"DynamicLayerNorm: stacked weight {tuple(weight.shape)} does not fit {norm}")
        if attention is None:
            cfg = dataclasses.replace(config or AttentionConfig(), kernel_size=1)
            attention = AttentionRegressor(self.normalized_shape[0], weight.shape[0], cfg)
        self._init_experts(weight, bias, attention)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.normalized_shape[0]
        if x.ndim < 2:
            raise ValueError(f"DynamicLayerNorm expects (M, ..., {c}) input, got shape {tuple(x.shape)}")
        n = self._samples(x.shape[0])
        tokens = x.reshape(n, -1, c)
        weights = self._weights(n, lambda: tokens.transpose(1, 2).unsqueeze(-1), x)
        if self._fixed is not None:
            return F.layer_norm(x, self.normalized_shape, self._mix_one(self.weight), self._mix_one(self.bias), self.eps)
        out = F.layer_norm(tokens, self.normalized_shape, None, None, self.eps)
        out = out * self._mix(weights, self.weight).unsqueeze(1)
        if self.bias is not None:
            out = out + self._mix(weights, self.bias).unsqueeze(1)
        return out.reshape(x.shape)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, experts={self.num_experts}"


DYNAMIC_CLASSES: dict[str, tuple[type, type]] = {
    "conv2d": (nn.Conv2d, DynamicConv2d),
    "linear": (nn.Linear, DynamicLinear),
    "layernorm": (nn.LayerNorm, DynamicLayerNorm),
}
