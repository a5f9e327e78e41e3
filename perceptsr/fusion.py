"""EA-Adam stages B and C: dynamic experts, averaged per-layer fusion weights, collapse to one plain
network, and perception-distortion trade-off models (spec ``shared/specs/eaadam.md`` §0, §3, §4.2, §9).

Stage B (:class:`DynamicNetwork`)
    The dynamic twin of *any* backbone: every ``nn.Conv2d`` (and, by default, ``nn.Linear`` and
    ``nn.LayerNorm``) of a template module is replaced by a dynamic layer holding the K frozen
    expert parameter sets stacked as ``weight [K, ...]`` / ``bias [K, out]`` plus an attention
    regressor (``fusion``) that predicts a per-image K-vector from *that layer's input*. Each image
    then uses ``Σ_j w_j θ^{(j)}``; for convs this is one grouped conv over the batch. Only the
    regressors are trainable (:meth:`DynamicNetwork.trainable_parameters`); the training loop itself
    lives in ``perceptsr.train``. Expert order is the order given: callers sort by individual index
    (:func:`sort_expert_files`), and stages B and C must use the same order.

Stage C
    :func:`average_fusion_weights` runs the dynamic net on LR images (centre half crop, as released)
    and averages the per-image weight vectors per layer; :func:`collapse` mixes each layer's
    weight and bias with its averaged vector, ``θ_l = Σ_j w̄_{l,j} θ_l^{(j)}``, into a plain backbone;
    :func:`save_fused_model` writes it as a native checkpoint plus ``fusion_weights.json``.

Trade-off at inference
    :func:`interpolate_population` (piecewise-linear walk through the population ordered from most
    faithful to most perceptual), :func:`interpolate_fusion_weights` (a per-layer path through the
    fused weights between members 0 and K-1) and :func:`build_tradeoff_model`.

State-dict keys follow the release (``<layer>.weight``, ``<layer>.bias``,
``<layer>.fusion.ConvNet.{0,2,4}.*``, ``<layer>.fusion.MappingNet.{0,2}.*``), so released stage-B
checkpoints load with :func:`load_attention` and their stacked experts are checked against ours.

Differences from the released code (deliberate):

* Layers are found by walking the module tree, so one implementation serves every backbone;
  fusion weights are keyed by layer name, not by call order (the release pairs them by position).
* Linear/LayerNorm layers cannot see a spatial layout from inside the module tree, so their
  regressor runs on the tokens with 1x1 kernels (the released SwinIR reshapes tokens to the image
  and uses 5x5 kernels). Tokens of one image are grouped by the batch size of the network input
  (windows are batch-major in SwinIR), so weights stay per image.
* Parameters outside dynamic layers must be equal across experts (checked; an error names the
  keys). The release silently keeps expert K-1's (e.g. SwinIR's relative-position tables).
* With fixed weights (:meth:`DynamicNetwork.set_fixed_weights`) a layer runs one mixed kernel for
  the whole batch; collapse mixes in float64.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import math
import os
import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import torch
from torch import nn
from torch.nn import functional as F

from perceptsr.errors import CheckpointError, ConfigError

__all__ = [
    "AttentionConfig", "ATTENTION_SRRESNET", "ATTENTION_RRDB", "ATTENTION_SWINIR", "default_attention_config",
    "AttentionRegressor", "DynamicConv2d", "DynamicLinear", "DynamicLayerNorm", "DynamicNetwork",
    "LAYER_TYPES", "center_crop_half", "average_fusion_weights", "collapse", "fuse_state_dicts",
    "save_fused_model", "load_fusion_weights", "FUSION_WEIGHTS_FILE",
    "interpolate_population", "interpolate_fusion_weights", "build_tradeoff_model",
    "sort_expert_files", "member_index", "save_attention", "load_attention",
    "FusionObjective", "FUSION_ARCH", "fuse_run", "load_tradeoff_model",
]

FUSION_WEIGHTS_FILE = "fusion_weights.json"
LAYER_TYPES = ("conv2d", "linear", "layernorm")
CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".ckpt")
_ATTENTION_FORMAT = "perceptsr-fusion-attention"
_WEIGHTS_FORMAT = "perceptsr-fusion-weights"
_MAX_LISTED = 8

StateDict = dict[str, torch.Tensor]
WeightsLike = Union[Mapping[str, Any], torch.Tensor, Sequence[float]]
ExpertLike = Union[Mapping[str, torch.Tensor], nn.Module, str, os.PathLike]


def _listing(items: Sequence[str], limit: int = _MAX_LISTED) -> str:
    items = list(items)
    shown = ", ".join(items[:limit])
    return shown + (f", ... and {len(items) - limit} more" if len(items) > limit else "")


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


ATTENTION_SRRESNET = AttentionConfig(kernel_size=5)
ATTENTION_RRDB = AttentionConfig(kernel_size=3)
ATTENTION_SWINIR = AttentionConfig(kernel_size=5, normalization="sigmoid_sum")


def default_attention_config(template: nn.Module) -> AttentionConfig:
    """The released regressor for a backbone: 3x3 kernels for RRDBNet, sigmoid-sum for SwinIR,
    otherwise (SRResNet, MSRResNet, anything else) 5x5 with softmax."""
    name = type(template).__name__
    if name == "RRDBNet":
        return ATTENTION_RRDB
    if name == "SwinIR":
        return ATTENTION_SWINIR
    return ATTENTION_SRRESNET


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


class _BatchContext:
    """Shared by the layers of one DynamicNetwork: the batch size of the current network input,
    so token layers can group the rows of one image (e.g. its attention windows)."""

    __slots__ = ("batch",)

    def __init__(self) -> None:
        self.batch: int | None = None


def _as_vector(value: Any, k: int, what: str) -> torch.Tensor:
    try:
        vec = torch.as_tensor(value, dtype=torch.float64).detach().cpu().reshape(-1)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"{what}: expected {k} numbers, got {type(value).__name__}: {exc}") from None
    if vec.numel() != k:
        raise ConfigError(f"{what}: expected {k} weights (one per expert), got {vec.numel()}")
    if not torch.isfinite(vec).all():
        raise ConfigError(f"{what}: weights must be finite, got {vec.tolist()}")
    return vec


class _DynamicLayer(nn.Module):
    """Common part: frozen stacked experts, the regressor ``fusion``, fixed-weight mode, last weights."""

    weight: nn.Parameter
    bias: nn.Parameter | None

    @classmethod
    def from_stacked(
        cls, layer: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None = None,
        attention: nn.Module | None = None, *, config: AttentionConfig | None = None,
    ) -> _DynamicLayer:
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
        self._context: _BatchContext | None = None

    @property
    def fixed_weights(self) -> torch.Tensor | None:
        """The forced K-vector (float64, CPU), or None when the regressor is used."""
        return self._fixed

    def set_fixed_weights(self, weights: Any | None) -> None:
        """Force ``weights`` (K numbers) for every image instead of the regressor; None undoes it."""
        self._fixed = None if weights is None else _as_vector(weights, self.num_experts, type(self).__name__)

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


class DynamicConv2d(_DynamicLayer):
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


class DynamicLinear(_DynamicLayer):
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


class DynamicLayerNorm(_DynamicLayer):
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


_DYNAMIC_CLASSES: dict[str, tuple[type, type]] = {
    "conv2d": (nn.Conv2d, DynamicConv2d),
    "linear": (nn.Linear, DynamicLinear),
    "layernorm": (nn.LayerNorm, DynamicLayerNorm),
}


# --------------------------------------------------------------------------------------------
# planning: which layers become dynamic, strict expert checks


def _resolve_types(layer_types: Iterable[str]) -> tuple[str, ...]:
    types = tuple(str(t).lower().replace("_", "").replace("nn.", "") for t in layer_types)
    bad = [t for t in types if t not in _DYNAMIC_CLASSES]
    if bad or not types:
        raise ConfigError(f"layer_types: unknown {bad or '(empty)'}; choose from {list(LAYER_TYPES)}")
    return types


def _kind_of(module: nn.Module, types: Sequence[str]) -> str | None:
    for kind in types:
        base = _DYNAMIC_CLASSES[kind][0]
        # subclasses with their own forward (e.g. weight-standardised convs) keep their own semantics
        if isinstance(module, base) and type(module).forward is base.forward:
            if kind == "layernorm" and (len(module.normalized_shape) != 1 or not module.elementwise_affine):
                return None
            if getattr(module, "weight", None) is None or not module.weight.is_floating_point():
                return None
            return kind
    return None


@dataclasses.dataclass
class _Plan:
    layers: dict[str, tuple[str, nn.Module]]  # primary name -> (kind, module)
    aliases: dict[str, list[str]]  # primary name -> every name of that module (shared modules)


def _make_template(template: nn.Module | Callable[[], nn.Module]) -> nn.Module:
    if isinstance(template, nn.Module):
        return copy.deepcopy(template)
    if callable(template):
        made = template()
        if not isinstance(made, nn.Module):
            raise ConfigError(f"the backbone factory returned {type(made).__name__}, not an nn.Module")
        return made
    raise ConfigError(f"template must be an nn.Module or a factory returning one, got {type(template).__name__}")


def _expert_state_dicts(experts: Sequence[ExpertLike]) -> tuple[list[StateDict], list[str | None]]:
    from perceptsr.checkpoint import read_state_dict, strip_prefixes

    if isinstance(experts, (Mapping, nn.Module, str, os.PathLike)) or not isinstance(experts, Iterable):
        raise ConfigError("expert_state_dicts must be a list (one entry per expert, in expert order)")
    sds, sources = [], []
    for i, e in enumerate(experts):
        if isinstance(e, (str, os.PathLike)):
            sds.append(read_state_dict(e))
            sources.append(str(e))
            continue
        if isinstance(e, nn.Module):
            e = e.state_dict()
        if not isinstance(e, Mapping):
            raise ConfigError(
                f"expert {i}: expected a state dict, an nn.Module or a checkpoint path, got {type(e).__name__}"
            )
        sds.append({k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in strip_prefixes(e).items()})
        sources.append(None)
    if not sds:
        raise ConfigError("fusion needs at least one expert")
    return sds, sources


def _check_expert_keys(expected: Mapping[str, torch.Tensor], sds: Sequence[StateDict], sources, template) -> None:
    for i, sd in enumerate(sds):
        missing = [k for k in expected if k not in sd]
        unexpected = [k for k in sd if k not in expected]
        shaped = [k for k in expected if k in sd and tuple(sd[k].shape) != tuple(expected[k].shape)]
        not_tensor = [k for k in sd if k in expected and not isinstance(sd[k], torch.Tensor)]
        if missing or unexpected or shaped or not_tensor:
            where = f" ({sources[i]})" if sources and sources[i] else ""
            lines = [f"expert {i}{where} does not match the template {type(template).__name__} strictly: "
                     f"{len(missing)} missing, {len(unexpected)} unexpected, {len(shaped)} with a different shape"]
            if missing:
                lines.append(f"  missing keys ({len(missing)}): {_listing(missing)}")
            if unexpected:
                lines.append(f"  unexpected keys ({len(unexpected)}): {_listing(unexpected)}")
            if shaped:
                lines.append("  shape mismatch: " + "; ".join(
                    f"{k}: template {list(expected[k].shape)}, expert {list(sd[k].shape)}" for k in shaped[:_MAX_LISTED]))
            if not_tensor:
                lines.append(f"  not tensors: {_listing(not_tensor)}")
            lines.append("  (all experts must be the template's architecture with the same arguments)")
            raise CheckpointError("\n".join(lines))


def _plan(template: nn.Module, sds: Sequence[StateDict], sources, layer_types: Iterable[str]) -> _Plan:
    types = _resolve_types(layer_types)
    expected = template.state_dict()
    _check_expert_keys(expected, sds, sources, template)
    names_of: dict[int, list[str]] = {}
    modules: dict[int, nn.Module] = {}
    # nn.MultiheadAttention reads its out_proj weight directly instead of calling it: leave it static
    skip = {id(c) for m in template.modules() if isinstance(m, nn.MultiheadAttention) for c in m.children()}
    for name, m in template.named_modules(remove_duplicate=False):
        if id(m) in skip:
            continue
        names_of.setdefault(id(m), []).append(name)
        modules[id(m)] = m
    layers: dict[str, tuple[str, nn.Module]] = {}
    aliases: dict[str, list[str]] = {}
    dynamic_keys: set[str] = set()
    for ident, names in names_of.items():
        m = modules[ident]
        kind = _kind_of(m, types)
        if kind is None:
            continue
        params = [p for p in ("weight", "bias") if getattr(m, p, None) is not None]
        keys = [f"{n}.{p}" if n else p for n in names for p in params]
        if not all(k in expected for k in keys):  # e.g. parametrized weights: leave the layer static
            continue
        layers[names[0]] = (kind, m)
        aliases[names[0]] = names
        dynamic_keys.update(keys)
    if not layers:
        raise ConfigError(f"{type(template).__name__} has no layer of the types {list(types)}: nothing to fuse")
    differ = [k for k in expected if k not in dynamic_keys
              and any(not torch.equal(sds[0][k].cpu(), sd[k].cpu()) for sd in sds[1:])]
    if differ:
        raise CheckpointError(
            f"the experts differ in {len(differ)} tensor(s) outside the dynamic layers ({'/'.join(types)}), which "
            f"fusion cannot mix: {_listing(differ)}. Only weights and biases of "
            f"{', '.join('nn.' + _DYNAMIC_CLASSES[t][0].__name__ for t in LAYER_TYPES)} layers are mixed "
            "(layer_types selects them); every other tensor must be identical across experts."
        )
    return _Plan(layers, aliases)


def _replace_modules(root: nn.Module, mapping: Mapping[int, nn.Module]) -> nn.Module:
    if id(root) in mapping:
        return mapping[id(root)]
    for parent in list(root.modules()):
        for cname, child in list(parent._modules.items()):
            if child is not None and id(child) in mapping:
                parent._modules[cname] = mapping[id(child)]
    return root


def _layer_key(name: str, param: str) -> str:
    return f"{name}.{param}" if name else param


# --------------------------------------------------------------------------------------------
# the dynamic network


class DynamicNetwork(nn.Module):
    """The dynamic twin of a backbone (EA-Adam stage B).

    ``DynamicNetwork(template, expert_state_dicts, *, attention=None, layer_types=LAYER_TYPES,
    seed=None)``:

    * ``template``: the backbone (an ``nn.Module``, deep-copied, or a zero-argument factory);
    * ``expert_state_dicts``: K state dicts (or modules, or checkpoint paths) that must load
      strictly into the template; **expert j is the j-th entry** (sort by individual index, e.g.
      with :func:`sort_expert_files`, and use the same order in stages B and C);
    * ``attention``: an :class:`AttentionConfig` (default :func:`default_attention_config`) or a
      factory ``(layer_name, layer) -> module`` returning ``(N, K)`` weights;
    * ``layer_types``: which of ``"conv2d"``, ``"linear"``, ``"layernorm"`` become dynamic. Every
      other tensor must be equal across experts (a CheckpointError names those that differ);
    * ``seed``: seeds the regressors' initialisation (global RNG untouched).

    ``forward`` runs the backbone. Expert stacks are frozen parameters (``requires_grad=False``;
    they are not DDP-broadcast every step as buffers would be); only the regressors train.
    """

    def __init__(
        self,
        template: nn.Module | Callable[[], nn.Module],
        expert_state_dicts: Sequence[ExpertLike],
        *,
        attention: AttentionConfig | Callable[[str, nn.Module], nn.Module] | None = None,
        layer_types: Iterable[str] = LAYER_TYPES,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        plain = _make_template(template)
        sds, sources = _expert_state_dicts(expert_state_dicts)
        plan = _plan(plain, sds, sources, layer_types)
        plain.load_state_dict(sds[0], strict=True)
        # a pristine plain copy (expert 0 everywhere) for collapse; kept out of the module tree
        self.__dict__["_template"] = copy.deepcopy(plain)
        if attention is None:
            attention = default_attention_config(plain)
        self.attention_config = attention if isinstance(attention, AttentionConfig) else None
        self.num_experts = len(sds)
        self.expert_sources: list[str | None] = sources
        self.arch: str | None = None
        self.arch_kwargs: dict[str, Any] | None = None
        self._context = _BatchContext()
        self._aliases = plan.aliases
        mapping: dict[int, nn.Module] = {}
        rng = torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext()
        with rng:
            if seed is not None:
                torch.manual_seed(seed)
            for name, (kind, layer) in plan.layers.items():
                weight = torch.stack([sd[_layer_key(name, "weight")] for sd in sds])
                bias = (torch.stack([sd[_layer_key(name, "bias")] for sd in sds])
                        if getattr(layer, "bias", None) is not None else None)
                cls = _DYNAMIC_CLASSES[kind][1]
                if isinstance(attention, AttentionConfig):
                    dyn = cls.from_stacked(layer, weight, bias, config=attention)
                else:
                    att = attention(name, layer)
                    if not isinstance(att, nn.Module):
                        raise ConfigError(f"the attention factory returned {type(att).__name__} for {name!r}, not a module")
                    dyn = cls.from_stacked(layer, weight, bias, att)
                dyn._context = self._context
                mapping[id(layer)] = dyn
        del sds
        self.net = _replace_modules(plain, mapping)
        for attr in ("scale", "upscale", "input_multiple"):
            if hasattr(plain, attr) and not isinstance(getattr(plain, attr), (nn.Module, torch.Tensor)):
                setattr(self, attr, getattr(plain, attr))
        self.layer_names: list[str] = list(plan.layers)
        self._layers = {name: mapping[id(layer)] for name, (_, layer) in plan.layers.items()}
        self.perceptsr_meta: dict[str, Any] = dict(getattr(plain, "perceptsr_meta", None) or {})
        self.train(plain.training)

    @classmethod
    def from_files(
        cls, files: Sequence[str | os.PathLike] | str | os.PathLike, *, sort: bool = True, arch: str | None = None,
        arch_kwargs: Mapping[str, Any] | None = None, **kwargs: Any,
    ) -> DynamicNetwork:
        """Build from expert checkpoint files (native or legacy, e.g. the release's
        ``model_x4_{epoch}_{i}.pt``) or a folder of them, sorted by individual index unless
        ``sort=False``; the architecture comes from the files (or ``arch``/``arch_kwargs``)."""
        from perceptsr.checkpoint import load_model

        paths = _member_files(files, sort=sort)
        models = [load_model(p, arch=arch, arch_kwargs=arch_kwargs) for p in paths]
        metas = [(m.perceptsr_meta["arch"], m.perceptsr_meta["arch_kwargs"]) for m in models]
        for p, meta in zip(paths[1:], metas[1:]):
            if meta != metas[0]:
                raise CheckpointError(f"{p}: architecture {meta} differs from {paths[0]}'s {metas[0]}")
        net = cls(models[0], [m.state_dict() for m in models], **kwargs)
        net.expert_sources = [str(p) for p in paths]
        net.arch, net.arch_kwargs = metas[0][0], dict(metas[0][1])
        net.perceptsr_meta = {"arch": net.arch, "arch_kwargs": net.arch_kwargs,
                              "scale": models[0].perceptsr_meta.get("scale")}
        return net

    # ---- running

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        first = next((a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), None)
        self._context.batch = int(first.shape[0]) if first is not None and first.ndim > 0 else None
        for layer in self._layers.values():
            layer.last_weights = None
        return self.net(*args, **kwargs)

    def dynamic_layers(self) -> dict[str, _DynamicLayer]:
        """Layer name (path in the template, e.g. ``body.0.conv1``) -> dynamic layer, in module order."""
        return dict(self._layers)

    def last_weights(self, *, detach: bool = True) -> dict[str, torch.Tensor]:
        """``{layer: (N, K)}`` weights of the last forward (layers that did not run are left out)."""
        out = {}
        for name, layer in self._layers.items():
            if layer.last_weights is not None:
                out[name] = layer.last_weights.detach() if detach else layer.last_weights
        return out

    def named_trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters to optimise: the attention regressors (experts are frozen)."""
        return [p for _, p in self.named_trainable_parameters()]

    def num_attention_parameters(self) -> int:
        return sum(p.numel() for layer in self._layers.values() for p in layer.fusion.parameters())

    # ---- fixed weights (collapse equivalence, trade-off previews)

    def _weights_per_layer(self, weights: WeightsLike) -> dict[str, torch.Tensor]:
        return _normalise_weights(weights, self.layer_names, self.num_experts)

    def set_fixed_weights(self, weights: WeightsLike | None) -> None:
        """Use ``weights`` (``{layer: K-vector}`` for every layer, or one K-vector for all) instead of
        the regressors; ``None`` switches the regressors back on."""
        if weights is None:
            for layer in self._layers.values():
                layer.set_fixed_weights(None)
            return
        for name, vec in self._weights_per_layer(weights).items():
            self._layers[name].set_fixed_weights(vec)

    def fixed_weights(self) -> dict[str, torch.Tensor] | None:
        """The forced weights per layer, or None when the regressors are active (in any layer)."""
        vals = {n: layer.fixed_weights for n, layer in self._layers.items()}
        return None if any(v is None for v in vals.values()) else vals

    @contextlib.contextmanager
    def using_weights(self, weights: WeightsLike | None) -> Iterator[DynamicNetwork]:
        """Temporarily force ``weights`` (None: temporarily use the regressors)."""
        saved = {n: layer.fixed_weights for n, layer in self._layers.items()}
        self.set_fixed_weights(weights)
        try:
            yield self
        finally:
            for n, layer in self._layers.items():
                layer.set_fixed_weights(saved[n])

    # ---- attention state (resume)

    def attention_state_dict(self) -> StateDict:
        """``{"<layer>.fusion.<param>": tensor}``: the trainable part only, release key names."""
        out = {}
        for name, layer in self._layers.items():
            for k, v in layer.fusion.state_dict().items():
                out[f"{name}.fusion.{k}" if name else f"fusion.{k}"] = v
        return out

    def expert_fingerprints(self) -> list[str]:
        """One sha256 per expert over its tensors in all dynamic layers (detects expert reordering)."""
        hashes = [hashlib.sha256() for _ in range(self.num_experts)]
        for name, layer in self._layers.items():
            for pname, stack in layer.expert_tensors().items():
                for j, h in enumerate(hashes):
                    h.update(f"{name}.{pname}:{stack.dtype}:{tuple(stack.shape[1:])}".encode())
                    h.update(stack[j].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return [h.hexdigest() for h in hashes]

    def load_attention_state_dict(
        self, state_dict: Mapping[str, torch.Tensor], *, strict: bool = True, check_experts: bool = True,
        source: str | None = None,
    ) -> None:
        """Load regressor weights from :meth:`attention_state_dict`, a full DynamicNetwork state dict
        or a released stage-B ``model_state_dict`` (``module.`` stripped). Stacked experts found in
        it are compared with ours (``check_experts``); a different expert order is reported."""
        from perceptsr.checkpoint import strip_prefixes

        where = f"{source}: " if source else ""
        sd = strip_prefixes(state_dict)
        if sd and all(k.startswith("net.") for k in sd):
            sd = {k[len("net."):]: v for k, v in sd.items()}
        expected = self.attention_state_dict()
        expert_keys = {_layer_key(n, p): (n, p) for n, layer in self._layers.items() for p in layer.expert_tensors()}
        static = set(self._template.state_dict())
        if check_experts:
            self._check_stacked_experts({k: sd[k] for k in expert_keys if k in sd}, expert_keys, where)
        att = {k: v for k, v in sd.items() if k in expected}
        unexpected = [k for k in sd if k not in expected and k not in expert_keys and k not in static]
        missing = [k for k in expected if k not in att]
        shaped = [k for k in att if tuple(att[k].shape) != tuple(expected[k].shape)]
        if shaped or (strict and (missing or unexpected)):
            lines = [f"{where}attention weights do not fit this DynamicNetwork ({len(self._layers)} layers, "
                     f"K={self.num_experts}): {len(missing)} missing, {len(unexpected)} unexpected, {len(shaped)} with a "
                     "different shape"]
            if missing:
                lines.append(f"  missing keys ({len(missing)}): {_listing(missing)}")
            if unexpected:
                lines.append(f"  unexpected keys ({len(unexpected)}): {_listing(unexpected)}")
            if shaped:
                lines.append("  shape mismatch: " + "; ".join(
                    f"{k}: expected {list(expected[k].shape)}, found {list(att[k].shape)}" for k in shaped[:_MAX_LISTED]))
            raise CheckpointError("\n".join(lines))
        with torch.no_grad():
            params = {}
            for name, layer in self._layers.items():
                prefix = f"{name}.fusion." if name else "fusion."
                for k, t in layer.fusion.state_dict(keep_vars=True).items():
                    params[prefix + k] = t
            for k, v in att.items():
                params[k].copy_(v)

    def _check_stacked_experts(self, found: Mapping[str, torch.Tensor], expert_keys, where: str) -> None:
        bad = []
        for key, value in found.items():
            name, p = expert_keys[key]
            ours = getattr(self._layers[name], p)
            if tuple(value.shape) != tuple(ours.shape) or not torch.allclose(value.to(ours), ours, rtol=0, atol=1e-6):
                bad.append(key)
        if not bad:
            return
        key = bad[0]
        name, p = expert_keys[key]
        ours, theirs = getattr(self._layers[name], p), found[key]
        hint = ""
        if tuple(theirs.shape) == tuple(ours.shape):
            order = []
            for j in range(theirs.shape[0]):
                hits = [i for i in range(ours.shape[0]) if torch.allclose(theirs[j].to(ours), ours[i], rtol=0, atol=1e-6)]
                order.append(str(hits[0]) if hits else "?")
            hint = (f" Stored expert j is our expert {', '.join(f'{j}->{o}' for j, o in enumerate(order))}"
                    + ("; rebuild with the experts in the stored order." if "?" not in order else
                       "; some stored experts are not among ours."))
        raise CheckpointError(
            f"{where}the stacked expert weights differ from this network's experts in {len(bad)} tensor(s), e.g. "
            f"{_listing(bad)}.{hint} (pass check_experts=False to load the attention anyway)"
        )


# --------------------------------------------------------------------------------------------
# fusion weights: validation, averaging (stage C)


def _unwrap(obj: Any) -> Any:
    """The module inside DataParallel/DDP wrappers."""
    while isinstance(obj, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        obj = obj.module
    return obj


def _normalise_weights(weights: WeightsLike, names: Sequence[str], k: int) -> dict[str, torch.Tensor]:
    if isinstance(weights, Mapping):
        missing = [n for n in names if n not in weights]
        unexpected = [n for n in weights if n not in names]
        if missing or unexpected:
            raise ConfigError(
                f"fusion weights do not match the dynamic layers: missing layers ({len(missing)}): "
                f"{_listing(missing) or 'none'}; unexpected layers ({len(unexpected)}): {_listing(unexpected) or 'none'}"
            )
        return {n: _as_vector(weights[n], k, f"fusion weights of layer {n!r}") for n in names}
    vec = _as_vector(weights, k, "fusion weights")
    return {n: vec for n in names}


def center_crop_half(x: torch.Tensor) -> torch.Tensor:
    """Rows H/4..3H/4 and columns W/4..3W/4 (integer parts), as ``train_cal_weight.py`` does."""
    h, w = x.shape[-2:]
    return x[..., h // 4 : (3 * h) // 4, w // 4 : (3 * w) // 4]


_crop_center_half = center_crop_half  # average_fusion_weights' keyword shadows the name

_LR_KEYS = ("lr", "lq", "LR", "LQ", "input", "img")


def _to_batch(item: Any) -> torch.Tensor:
    if isinstance(item, (str, os.PathLike)):
        from perceptsr.data.io import read_image

        item = read_image(item)
    if type(item).__module__ == "numpy":
        import numpy as np

        arr = np.asarray(item, dtype=np.float32)
        if arr.ndim == 2:
            arr = arr[..., None]
        if arr.ndim != 3:
            raise ConfigError(f"average_fusion_weights: NumPy images must be (H, W[, C]), got shape {arr.shape}")
        item = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
    if isinstance(item, torch.Tensor):
        if item.ndim == 3:
            item = item.unsqueeze(0)
        if item.ndim != 4 or not item.is_floating_point():
            raise ConfigError(f"average_fusion_weights: expected float (N, C, H, W) or (C, H, W) images, got "
                              f"{item.dtype} {tuple(item.shape)}")
        return item
    if isinstance(item, Mapping):
        for key in _LR_KEYS:
            if key in item:
                return _to_batch(item[key])
        raise ConfigError(f"average_fusion_weights: a batch dict needs one of the keys {list(_LR_KEYS)}, got {list(item)}")
    if isinstance(item, (tuple, list)) and item:
        return _to_batch(item[0])  # (lr, hr, ...) from a paired loader
    raise ConfigError(f"average_fusion_weights: cannot read LR images from {type(item).__name__}")


def _iter_lr_batches(source: Any) -> Iterator[torch.Tensor]:
    if isinstance(source, torch.Tensor):
        yield _to_batch(source)
        return
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            from perceptsr.data.io import list_images

            files = list_images(path)
            if not files:
                raise ConfigError(f"{path}: no images found")
            for f in files:
                yield _to_batch(f)
        else:
            yield _to_batch(path)
        return
    if isinstance(source, Mapping):
        yield _to_batch(source)
        return
    for item in source:
        yield _to_batch(item)


def average_fusion_weights(
    dynamic_net: DynamicNetwork,
    lr_images_or_loader: Any,
    *,
    center_crop_half: bool = True,
    max_images: int | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    """Stage C weights: for every layer the mean of the per-image weight vectors over the set.

    ``lr_images_or_loader``: a tensor ``(N, C, H, W)``/``(C, H, W)``, a folder or file path (images
    read in sorted order), or an iterable of tensors, NumPy HWC images, paths, ``(lr, hr)`` pairs
    or dicts with an ``"lr"`` key (a DataLoader over :class:`perceptsr.data.PairedValDataset`).
    Images are in [0, 1]. With ``center_crop_half`` each image is cropped to its middle half as in
    the release (which used the first ``max_images=100`` DIV2K-train LR images). The net runs in
    eval mode without gradients, with its regressors (any fixed weights are set aside meanwhile).
    Returns ``{layer: float64 tensor (K,)}`` on the CPU; batching changes it only by float rounding.
    """
    crop = center_crop_half
    dynamic_net = _unwrap(dynamic_net)
    if not isinstance(dynamic_net, DynamicNetwork):
        raise ConfigError(f"average_fusion_weights needs a DynamicNetwork, got {type(dynamic_net).__name__}")
    if max_images is not None and (not isinstance(max_images, int) or max_images < 1):
        raise ConfigError(f"max_images must be a positive int or None, got {max_images!r}")
    if device is None:
        device = next(dynamic_net.parameters()).device
    sums: dict[str, torch.Tensor] = {n: torch.zeros(dynamic_net.num_experts, dtype=torch.float64)
                                     for n in dynamic_net.layer_names}
    count = 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=max_images, unit="img", desc="fusion weights")
    was_training = dynamic_net.training
    dynamic_net.eval()
    try:
        with dynamic_net.using_weights(None), torch.no_grad():
            for batch in _iter_lr_batches(lr_images_or_loader):
                if max_images is not None:
                    if count >= max_images:
                        break
                    batch = batch[: max_images - count]
                if crop:
                    batch = _crop_center_half(batch)
                if batch.shape[-1] < 1 or batch.shape[-2] < 1:
                    raise ConfigError(f"average_fusion_weights: image of {tuple(batch.shape[-2:])} pixels is empty after "
                                      "cropping")
                dynamic_net(batch.to(device=device, dtype=torch.float32))
                got = dynamic_net.last_weights()
                silent = [n for n in dynamic_net.layer_names if n not in got]
                if silent:
                    raise ConfigError(f"average_fusion_weights: layers {_listing(silent)} did not run in the forward pass")
                for n in dynamic_net.layer_names:
                    sums[n] += got[n].double().sum(dim=0).cpu()
                count += batch.shape[0]
                if bar is not None:
                    bar.update(batch.shape[0])
    finally:
        dynamic_net.train(was_training)
        if bar is not None:
            bar.close()
    if count == 0:
        raise ConfigError("average_fusion_weights: no images were given")
    return {n: s / count for n, s in sums.items()}


# --------------------------------------------------------------------------------------------
# collapse


def _mix_tensor(stack: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    mixed = torch.tensordot(w.to(device=stack.device, dtype=torch.float64), stack.detach().double(), dims=1)
    return mixed.to(stack.dtype)


def fuse_state_dicts(
    template: nn.Module | Callable[[], nn.Module], expert_state_dicts: Sequence[ExpertLike], weights: WeightsLike,
    *, layer_types: Iterable[str] = LAYER_TYPES,
) -> StateDict:
    """The collapsed state dict: each dynamic layer's weight/bias mixed with its K-vector (float64),
    every other tensor from expert 0 (checked equal across experts)."""
    plain = _make_template(template)
    sds, sources = _expert_state_dicts(expert_state_dicts)
    plan = _plan(plain, sds, sources, layer_types)
    w = _normalise_weights(weights, list(plan.layers), len(sds))
    _warn_not_convex(w)
    out = dict(sds[0])
    for name, (_, layer) in plan.layers.items():
        for p in ("weight", "bias"):
            if getattr(layer, p, None) is None:
                continue
            mixed = _mix_tensor(torch.stack([sd[_layer_key(name, p)] for sd in sds]), w[name])
            for alias in plan.aliases[name]:
                out[_layer_key(alias, p)] = mixed
    return out


def _warn_not_convex(weights: Mapping[str, torch.Tensor]) -> None:
    off = [n for n, v in weights.items() if abs(float(v.sum()) - 1.0) > 1e-3 or bool((v < 0).any())]
    if off:
        warnings.warn(f"fusion weights of {len(off)} layer(s) are not a convex combination (e.g. {_listing(off, 3)}); "
                      "the fused layers are extrapolated", stacklevel=3)


def collapse(
    source: DynamicNetwork | tuple[nn.Module | Callable[[], nn.Module], Sequence[ExpertLike]],
    weights: WeightsLike,
    *,
    layer_types: Iterable[str] = LAYER_TYPES,
) -> nn.Module:
    """Stage C: one plain backbone with ``θ_l = Σ_j w_{l,j} θ_l^{(j)}`` per dynamic layer (weight and bias).

    ``source`` is a :class:`DynamicNetwork` or ``(template, expert_state_dicts)`` (no regressors are
    built then; ``layer_types`` applies to this form only). ``weights``: ``{layer: K-vector}`` for
    every dynamic layer, or one K-vector for all. The model comes back in eval mode on the device
    of the experts; ``perceptsr_meta`` carries arch/arch_kwargs/scale when known.
    """
    source = _unwrap(source)
    if isinstance(source, DynamicNetwork):
        plain = copy.deepcopy(source._template)
        w = source._weights_per_layer(weights)
        _warn_not_convex(w)
        sd = plain.state_dict()
        device = source._layers[source.layer_names[0]].weight.device
        for name, layer in source._layers.items():
            for p, stack in layer.expert_tensors().items():
                mixed = _mix_tensor(stack, w[name])
                for alias in source._aliases[name]:
                    sd[_layer_key(alias, p)] = mixed
        meta = dict(source.perceptsr_meta)
        meta.setdefault("fusion_experts", list(source.expert_sources))
    elif isinstance(source, tuple) and len(source) == 2:
        template, experts = source
        plain = _make_template(template)
        sd = fuse_state_dicts(plain, experts, weights, layer_types=layer_types)
        device = next(iter(sd.values())).device
        meta = dict(getattr(template, "perceptsr_meta", {}) or {})
    else:
        raise ConfigError(f"collapse: expected a DynamicNetwork or (template, experts), got {type(source).__name__}")
    plain.load_state_dict(sd, strict=True)
    plain.to(device).eval()
    scale = getattr(plain, "scale", None)
    if meta.get("scale") is None and isinstance(scale, int) and not isinstance(scale, bool):
        meta["scale"] = scale
    keep = {k: meta[k] for k in ("arch", "arch_kwargs", "scale", "fusion_experts") if meta.get(k) is not None}
    if keep:
        plain.perceptsr_meta = keep
    return plain


# --------------------------------------------------------------------------------------------
# saving the fused model and its weights


def _weights_to_lists(weights: Mapping[str, Any]) -> dict[str, list[float]]:
    out, k = {}, None
    for name, v in weights.items():
        vec = torch.as_tensor(v, dtype=torch.float64).reshape(-1)
        if k is None:
            k = vec.numel()
        if vec.numel() != k:
            raise ConfigError(f"fusion weights: layer {name!r} has {vec.numel()} weights, others have {k}")
        out[name] = [float(x) for x in vec.tolist()]
    return out


def save_fused_model(
    path: str | os.PathLike,
    model: nn.Module,
    weights: Mapping[str, Any],
    arch: str | None = None,
    arch_kwargs: Mapping[str, Any] | None = None,
    *,
    expert_files: Sequence[str | os.PathLike | None] | None = None,
    num_images: int | None = None,
    extra: Mapping[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Write the collapsed model as a native checkpoint and ``fusion_weights.json`` beside it.

    ``arch``/``arch_kwargs`` default to ``model.perceptsr_meta`` (set by :func:`collapse` when the
    dynamic net came from files). The JSON holds ``layers`` (layer -> K floats, expert order),
    ``experts`` (source files in expert order, when known), ``arch``, ``arch_kwargs`` and
    ``checkpoint`` (the file name); the checkpoint's ``extra["fusion"]`` holds the same record.
    Returns ``(checkpoint_path, json_path)``. Note: one JSON per folder (the fixed name).
    """
    from perceptsr.checkpoint import atomic_write, save_model

    path = Path(path)
    meta = dict(getattr(model, "perceptsr_meta", {}) or {})
    arch = arch or meta.get("arch")
    if not arch:
        raise ConfigError(f"{path}: arch is needed (the model carries no perceptsr_meta['arch'])")
    if arch_kwargs is None:
        arch_kwargs = meta.get("arch_kwargs") or {}
    layers = _weights_to_lists(weights)
    k = len(next(iter(layers.values()))) if layers else 0
    if expert_files is None:
        expert_files = meta.get("fusion_experts")
    experts = [None if f is None else str(f) for f in expert_files] if expert_files is not None else None
    if experts is not None and len(experts) != k:
        raise ConfigError(f"{path}: {len(experts)} expert files given for {k} weights per layer")
    record = {
        "format": _WEIGHTS_FORMAT,
        "format_version": 1,
        "method": "EA-Adam stage C: per-layer average of the dynamic network's weights",
        "checkpoint": path.name,
        "arch": arch,
        "arch_kwargs": dict(arch_kwargs),
        "num_experts": k,
        "expert_order": "expert j is the j-th expert given to the dynamic network (sorted by individual index)",
        "experts": experts,
        "num_images": num_images,
        "layers": layers,
    }
    ckpt = save_model(path, model, arch=arch, arch_kwargs=arch_kwargs,
                      extra={**dict(extra or {}), "fusion": {**record, "weights_file": FUSION_WEIGHTS_FILE}})
    text = json.dumps(record, indent=1)
    json_path = atomic_write(path.parent / FUSION_WEIGHTS_FILE, lambda f: f.write(text.encode("utf-8")))
    return ckpt, json_path


def load_fusion_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read ``fusion_weights.json`` (a file, or a folder holding one): ``({layer: float64 (K,)}, record)``."""
    path = Path(path)
    if path.is_dir():
        path = path / FUSION_WEIGHTS_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such fusion-weights file") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not a readable fusion-weights JSON file: {exc}") from None
    if (not isinstance(record, dict) or record.get("format") != _WEIGHTS_FORMAT
            or not isinstance(record.get("layers"), dict)):
        raise ConfigError(f"{path}: not a perceptsr fusion-weights file (format {_WEIGHTS_FORMAT!r} with 'layers')")
    return {n: torch.tensor(v, dtype=torch.float64) for n, v in record["layers"].items()}, record


# --------------------------------------------------------------------------------------------
# perception-distortion trade-off


def _check_t(t: float) -> float:
    try:
        t = float(t)
    except (TypeError, ValueError):
        raise ConfigError(f"tradeoff t must be a number in [0, 1], got {t!r}") from None
    if not 0.0 <= t <= 1.0 or math.isnan(t):
        raise ConfigError(f"tradeoff t must be in [0, 1] (0 = most faithful, 1 = most perceptual), got {t}")
    return t


def _lerp_state_dicts(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], alpha: float,
                      names: tuple[str, str] = ("member a", "member b")) -> StateDict:
    missing = [k for k in a if k not in b]
    extra = [k for k in b if k not in a]
    shaped = [k for k in a if k in b and tuple(a[k].shape) != tuple(b[k].shape)]
    if missing or extra or shaped:
        raise CheckpointError(
            f"{names[0]} and {names[1]} have different weights: only in the first: {_listing(missing) or 'none'}; "
            f"only in the second: {_listing(extra) or 'none'}; different shapes: {_listing(shaped) or 'none'}"
        )
    out = {}
    for k, x in a.items():
        y = b[k]
        if alpha == 0.0 or not x.is_floating_point():
            out[k] = x.detach().clone()
        elif alpha == 1.0:
            out[k] = y.detach().clone().to(x.dtype)
        else:
            out[k] = torch.lerp(x.detach(), y.detach().to(device=x.device, dtype=x.dtype), alpha)
    return out


def _position(t: float, k: int) -> tuple[int, float]:
    p = _check_t(t) * (k - 1)
    i = min(int(math.floor(p)), k - 2)
    return i, p - i


def interpolate_population(state_dicts: Sequence[Mapping[str, torch.Tensor]], t: float) -> StateDict:
    """Piecewise-linear walk through the population, members ordered from most faithful (0) to most
    perceptual (K-1): position ``t * (K - 1)``; between members i and i+1 every floating tensor is
    ``lerp(θ_i, θ_{i+1}, a)``. ``t = 0`` / ``1`` give members 0 / K-1 exactly; non-float tensors
    (counters) come from the lower neighbour."""
    sds = list(state_dicts)
    if not sds:
        raise ConfigError("interpolate_population: the population is empty")
    if len(sds) == 1:
        _check_t(t)
        return {k: v.detach().clone() for k, v in sds[0].items()}
    i, a = _position(t, len(sds))
    return _lerp_state_dicts(sds[i], sds[i + 1], a, (f"member {i}", f"member {i + 1}"))


def interpolate_fusion_weights(weights: WeightsLike, t: float, *, center: float = 0.5,
                               num_experts: int | None = None) -> dict[str, torch.Tensor] | torch.Tensor:
    """A per-layer path through the fused weights: ``t = 0`` is expert 0 (one-hot), ``t = center``
    the given (averaged) weights w̄, ``t = 1`` expert K-1; linear in between on each side.

    Why this path: the fused model is the method's chosen balance point, so the control should pass
    through it exactly and reach the two extreme members at the ends; blending toward one-hot
    vectors keeps every layer a convex combination of the experts, i.e. a model of the same family
    that :func:`collapse` turns into a plain network. ``weights`` is ``{layer: K-vector}`` or one
    K-vector (the result has the same form).
    """
    t = _check_t(t)
    center = float(center)
    if not 0.0 < center < 1.0:
        raise ConfigError(f"interpolate_fusion_weights: center must be in (0, 1), got {center}")

    def move(vec: Any, what: str) -> torch.Tensor:
        v = torch.as_tensor(vec, dtype=torch.float64).reshape(-1)
        k = num_experts or v.numel()
        v = _as_vector(v, k, what)
        if t <= center:
            target, a = torch.zeros(k, dtype=torch.float64), 1.0 - t / center
            target[0] = 1.0
        else:
            target, a = torch.zeros(k, dtype=torch.float64), (t - center) / (1.0 - center)
            target[-1] = 1.0
        return torch.lerp(v, target, a)

    if isinstance(weights, Mapping):
        return {n: move(v, f"fusion weights of layer {n!r}") for n, v in weights.items()}
    return move(weights, "fusion weights")


_INDEX_RE = re.compile(r"(?:^|[_\-.])(\d+)$")


def member_index(path: str | os.PathLike) -> int | None:
    """The individual index in a member file name: the digits after the last ``_``, ``-`` or ``.``
    ending the stem (``model_x4_250_3.pt`` -> 3, ``member-02.safetensors`` -> 2), or None."""
    m = _INDEX_RE.search(Path(path).stem)
    return int(m.group(1)) if m else None


def sort_expert_files(files: Iterable[str | os.PathLike]) -> list[Path]:
    """Files sorted by :func:`member_index` (what the release's ``os.listdir`` order should have been).
    A file without an index, or two files with the same index, raise ConfigError."""
    paths = [Path(f) for f in files]
    unindexed = [str(p) for p in paths if member_index(p) is None]
    if unindexed:
        raise ConfigError(f"cannot tell the individual index of {_listing(unindexed)}; name member files "
                          "'<anything>_<index>.<ext>' or pass them in order with sort=False")
    by_index: dict[int, Path] = {}
    for p in paths:
        i = member_index(p)
        if i in by_index:
            raise ConfigError(f"{by_index[i]} and {p} have the same individual index {i}")
        by_index[i] = p
    return [by_index[i] for i in sorted(by_index)]


def _member_files(source: Sequence[str | os.PathLike] | str | os.PathLike, *, sort: bool = True) -> list[Path]:
    if isinstance(source, (str, os.PathLike)):
        folder = Path(source)
        if not folder.is_dir():
            raise ConfigError(f"{folder}: expected a folder of member checkpoints or a list of files")
        candidates = sorted(p for p in folder.iterdir()
                            if p.is_file() and p.suffix.lower() in CHECKPOINT_SUFFIXES and not p.name.startswith("."))
        files = [p for p in candidates if member_index(p) is not None]
        skipped = [p.name for p in candidates if member_index(p) is None]
        if skipped:
            warnings.warn(f"{folder}: skipping checkpoints without an individual index in their name: {_listing(skipped)}",
                          stacklevel=3)
        if not files:
            raise ConfigError(f"{folder}: no member checkpoints named '<name>_<index>{{{','.join(CHECKPOINT_SUFFIXES)}}}'")
        return sort_expert_files(files)
    files = [Path(f) for f in source]
    if not files:
        raise ConfigError("no member checkpoint files given")
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise ConfigError(f"member checkpoint files not found: {_listing(missing)}")
    return sort_expert_files(files) if sort else files


def build_tradeoff_model(
    population_dir_or_files: Sequence[str | os.PathLike] | str | os.PathLike,
    t: float,
    *,
    fusion_weights: Mapping[str, Any] | str | os.PathLike | None = None,
    center: float = 0.5,
    sort: bool = True,
    arch: str | None = None,
    arch_kwargs: Mapping[str, Any] | None = None,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """A plain generator at trade-off ``t`` (0 = most faithful member, 1 = most perceptual).

    Members are native or legacy checkpoints (a folder, or files), sorted by individual index
    unless ``sort=False``. Without ``fusion_weights`` the result is :func:`interpolate_population`
    (only the two neighbouring members are read). With ``fusion_weights`` (a dict or a
    ``fusion_weights.json`` path/folder) all members are read and the result is
    ``collapse(members, interpolate_fusion_weights(w̄, t, center=center))``: at ``t = center`` it is
    the fused model. ``perceptsr_meta["tradeoff"]`` records how the model was made.
    """
    from perceptsr.checkpoint import load_model

    t = _check_t(t)
    files = _member_files(population_dir_or_files, sort=sort)
    k = len(files)

    def load(p: Path) -> nn.Module:
        return load_model(p, arch=arch, arch_kwargs=arch_kwargs)

    def arch_of(m: nn.Module) -> tuple[str, dict]:
        return m.perceptsr_meta["arch"], dict(m.perceptsr_meta["arch_kwargs"])

    if fusion_weights is not None:
        if isinstance(fusion_weights, (str, os.PathLike)):
            fusion_weights, record = load_fusion_weights(fusion_weights)
            listed = record.get("experts")
            if listed and all(listed) and [Path(x).name for x in listed] != [f.name for f in files]:
                warnings.warn(f"the fusion weights were computed with experts {[Path(x).name for x in listed]}, "
                              f"but the members are {[f.name for f in files]} (check the order)", stacklevel=2)
        models = [load(p) for p in files]
        for p, m in zip(files[1:], models[1:]):
            if arch_of(m) != arch_of(models[0]):
                raise CheckpointError(f"{p}: architecture {arch_of(m)} differs from {files[0]}'s {arch_of(models[0])}")
        w = interpolate_fusion_weights(fusion_weights, t, center=center, num_experts=k)
        model = models[0]
        sd = fuse_state_dicts(model, [m.state_dict() for m in models], w)
        info = {"t": t, "method": "fusion_weights", "center": center, "members": [str(f) for f in files]}
    else:
        if k == 1:
            i, a = 0, 0.0
        else:
            i, a = _position(t, k)
        model = load(files[i])
        if k > 1 and a > 0.0:
            other = load(files[i + 1])
            if arch_of(other) != arch_of(model):
                raise CheckpointError(f"{files[i + 1]}: architecture {arch_of(other)} differs from {files[i]}'s "
                                      f"{arch_of(model)}")
            sd = _lerp_state_dicts(model.state_dict(), other.state_dict(), a, (str(files[i]), str(files[i + 1])))
        else:
            sd = model.state_dict()
        info = {"t": t, "method": "population", "members": [str(f) for f in files], "between": [i, min(i + 1, k - 1)],
                "alpha": a}
    model.load_state_dict(sd, strict=True)
    model.to(device).eval()
    model.perceptsr_meta = {**model.perceptsr_meta, "tradeoff": info}
    return model


# --------------------------------------------------------------------------------------------
# attention checkpoints (resume)


def save_attention(
    path: str | os.PathLike, dynamic_net: DynamicNetwork, *, extra: Mapping[str, Any] | None = None
) -> Path:
    """Write the regressors only (safetensors, atomically) with the layer names, K, the expert
    sources and fingerprints, so :func:`load_attention` can refuse a differently ordered population."""
    from safetensors.torch import save as st_save

    from perceptsr.checkpoint import atomic_write

    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in dynamic_net.attention_state_dict().items()}
    meta = {
        "format": _ATTENTION_FORMAT,
        "format_version": 1,
        "num_experts": dynamic_net.num_experts,
        "layers": dynamic_net.layer_names,
        "experts": dynamic_net.expert_sources,
        "expert_fingerprints": dynamic_net.expert_fingerprints(),
        "attention_config": dataclasses.asdict(dynamic_net.attention_config) if dynamic_net.attention_config else None,
        "arch": dynamic_net.arch,
        "arch_kwargs": dynamic_net.arch_kwargs,
        "extra": dict(extra or {}),
    }
    try:
        meta_json = json.dumps(meta)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: metadata must be JSON-serialisable: {exc}") from exc
    blob = st_save(tensors, metadata={_ATTENTION_FORMAT: meta_json, "format": "pt"})
    return atomic_write(path, lambda f: f.write(blob))


def load_attention(
    path: str | os.PathLike, dynamic_net: DynamicNetwork, *, strict: bool = True, check_experts: bool = True,
) -> dict[str, Any]:
    """Load regressors saved by :func:`save_attention`, or from any checkpoint holding a
    DynamicNetwork/released stage-B state dict (e.g. ``model_x4_10.pt``). Experts are checked by
    fingerprint (our files) or against the stacked expert tensors (released files); a mismatch
    names the expert order found. Returns the file's metadata (``{}`` for foreign files)."""
    from safetensors import safe_open

    from perceptsr.checkpoint import read_checkpoint

    path = Path(path)
    meta: dict[str, Any] = {}
    header: dict[str, str] = {}
    if path.is_file():
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                header = dict(f.metadata() or {})
                tensors = {k: f.get_tensor(k) for k in f.keys()} if _ATTENTION_FORMAT in header else None
        except Exception:  # not safetensors: fall through to the generic reader
            tensors = None
    else:
        raise CheckpointError(f"{path}: no such attention checkpoint")
    if tensors is not None:
        meta = json.loads(header[_ATTENTION_FORMAT])
        if meta.get("num_experts") != dynamic_net.num_experts:
            raise CheckpointError(f"{path}: saved for K={meta.get('num_experts')} experts, this network has "
                                  f"K={dynamic_net.num_experts}")
        stored = meta.get("expert_fingerprints")
        if check_experts and stored:
            ours = dynamic_net.expert_fingerprints()
            if stored != ours:
                order = [str(ours.index(h)) if h in ours else "?" for h in stored]
                raise CheckpointError(
                    f"{path}: the experts differ from those the attention was trained with (stored expert j -> ours: "
                    f"{', '.join(f'{j}->{o}' for j, o in enumerate(order))}); stored sources: {meta.get('experts')}. "
                    "Build the DynamicNetwork with the same experts in the same order (check_experts=False overrides)."
                )
    else:
        ckpt = read_checkpoint(path)
        tensors = ckpt.state_dict
        meta = dict(ckpt.meta)
    dynamic_net.load_attention_state_dict(tensors, strict=strict, check_experts=check_experts, source=str(path))
    return meta


# --------------------------------------------------------------------------------------------
# stage B in the training loop, stage C from a run, trade-off models from files

from perceptsr.train.objectives import GANObjective, register_objective  # noqa: E402

FUSION_ARCH = "fusion_dynamic"  # the arch name stage-B checkpoints carry (read by fuse_run, not load_model)


def _attention_for(cfg: Any) -> AttentionConfig:
    """The released regressor for ``cfg.model.arch`` with ``objective.attention`` overrides."""
    from perceptsr.archs import get_arch

    released = {"rrdbnet": ATTENTION_RRDB, "swinir": ATTENTION_SWINIR}
    base = released.get(get_arch(cfg.model.arch).name, ATTENTION_SRRESNET)
    try:
        return dataclasses.replace(base, **cfg.objective.attention)
    except TypeError as exc:
        fields = ", ".join(f.name for f in dataclasses.fields(AttentionConfig))
        raise ConfigError(f"config key 'objective.attention': {exc} (valid keys: {fields})") from None


@register_objective("fusion")
class FusionObjective(GANObjective):
    """EA-Adam stage B (config ``objective.type: fusion``): :class:`GANObjective` whose generator is
    the :class:`DynamicNetwork` over the stage-A experts; only the attention regressors have
    ``requires_grad`` and so only they are optimised. Checkpoints hold the whole dynamic net
    (arch ``fusion_dynamic``); stage C is :func:`fuse_run` (``perceptsr fuse``)."""

    @classmethod
    def build_generator(cls, cfg: Any) -> tuple[nn.Module, str, dict]:
        from perceptsr.archs import get_arch

        o = cfg.objective
        if cfg.model.pretrained:
            raise ConfigError("config key 'model.pretrained': not used by the fusion objective (the experts come "
                              "from objective.experts); remove it")
        att = _attention_for(cfg)
        net = DynamicNetwork.from_files(o.experts, attention=att, seed=cfg.seed if o.attention_seed is None
                                        else o.attention_seed)
        want = get_arch(cfg.model.arch).name
        clash = {k: (v, net.arch_kwargs.get(k)) for k, v in cfg.model.kwargs.items() if net.arch_kwargs.get(k, v) != v}
        if net.arch != want or clash:
            raise ConfigError(f"config key 'model': the experts in {o.experts} are {net.arch} {net.arch_kwargs}, "
                              f"not {want} {dict(cfg.model.kwargs)}")
        scale = net.perceptsr_meta.get("scale")
        if scale is not None and scale != cfg.scale:
            raise ConfigError(f"config key 'scale' ({cfg.scale}) differs from the experts' scale {scale}")
        kwargs = {"backbone": net.arch, "backbone_kwargs": net.arch_kwargs, "experts": net.expert_sources,
                  "num_experts": net.num_experts, "attention": dataclasses.asdict(att)}
        return net, FUSION_ARCH, kwargs


def _stage_b_file(source: str | os.PathLike) -> Path:
    """``net_g.safetensors`` of a fusion run folder (latest checkpoint), checkpoint folder or the file."""
    from perceptsr.train.engine import find_resume_checkpoint

    path = Path(source)
    if path.is_file():
        return path
    if not path.exists():
        raise ConfigError(f"{path}: no such fusion run, checkpoint folder or file")
    folder = find_resume_checkpoint(path, path)
    file = folder / "net_g.safetensors"
    if not file.is_file():
        raise CheckpointError(f"{folder}: no net_g.safetensors (is this a fusion run?)")
    return file


def fuse_run(
    source: str | os.PathLike,
    lr_images: Any,
    output: str | os.PathLike,
    *,
    experts: Sequence[str | os.PathLike] | str | os.PathLike | None = None,
    max_images: int | None = 100,
    crop: bool = True,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> tuple[Path, Path, dict[str, torch.Tensor]]:
    """EA-Adam stage C from a stage-B run: rebuild its dynamic net (experts from the checkpoint's
    record unless ``experts`` is given; EMA attention weights when saved), average its per-layer
    weights over ``lr_images`` (:func:`average_fusion_weights`), :func:`collapse` and
    :func:`save_fused_model` to ``output``. Returns ``(checkpoint, fusion_weights.json, weights)``."""
    from perceptsr.checkpoint import read_checkpoint

    file = _stage_b_file(source)
    meta = read_checkpoint(file).meta
    if meta.get("arch") != FUSION_ARCH:
        raise CheckpointError(f"{file}: not a fusion (stage B) checkpoint (arch {meta.get('arch')!r}, "
                              f"expected {FUSION_ARCH!r})")
    info = meta.get("arch_kwargs") or {}
    if experts is None:
        experts = info.get("experts") or []
        missing = [e for e in experts if not e or not Path(e).is_file()]
        if missing or not experts:
            raise ConfigError(f"{file}: the recorded expert files are not found "
                              f"({_listing([str(m) for m in missing])}); "
                              "pass the population folder explicitly (perceptsr fuse --experts)")
        sort = False
    else:
        sort = True
    att = AttentionConfig(**info["attention"]) if info.get("attention") else None
    net = DynamicNetwork.from_files(experts, sort=sort, attention=att).to(device)
    load_attention(file, net)
    weights = average_fusion_weights(net, lr_images, center_crop_half=crop, max_images=max_images, device=device,
                                     progress=progress)
    num = None
    if isinstance(lr_images, (str, os.PathLike)) and Path(lr_images).is_dir():
        from perceptsr.data.io import list_images

        num = len(list_images(lr_images))
        num = num if max_images is None else min(num, max_images)
    fused = collapse(net, weights)
    ckpt, json_path = save_fused_model(output, fused, weights, num_images=num,
                                       expert_files=[str(Path(e).resolve()) for e in net.expert_sources],
                                       extra={"fusion_run": str(file), "center_crop_half": crop})
    return ckpt, json_path, weights


def load_tradeoff_model(path: str | os.PathLike, t: float, *, device: str | torch.device = "cpu") -> nn.Module:
    """A plain model at trade-off ``t`` (0 = most faithful, 1 = most perceptual) from a population
    folder (``member_<i>`` files: :func:`interpolate_population`) or a fused model (its checkpoint,
    or a folder, with ``fusion_weights.json`` naming the experts: the per-layer path of
    :func:`interpolate_fusion_weights`, which passes through the fused model at ``t = 0.5``)."""
    path = Path(path)
    weights_file = path / FUSION_WEIGHTS_FILE if path.is_dir() else path.parent / FUSION_WEIGHTS_FILE
    fused = weights_file.is_file() and (
        path.is_dir() or load_fusion_weights(weights_file)[1].get("checkpoint") == path.name)
    if fused:
        _, record = load_fusion_weights(weights_file)
        experts = record.get("experts") or []
        missing = [e for e in experts if not e or not Path(e).is_file()]
        if missing or not experts:
            raise ConfigError(f"{weights_file}: the expert files it names are not found "
                              f"({_listing([str(m) for m in missing]) or 'none recorded'}); a trade-off needs them")
        return build_tradeoff_model(experts, t, fusion_weights=weights_file, sort=False, device=device)
    if (path / "manifest.json").is_file():
        raise ConfigError(f"{path}: a training checkpoint folder, not a population; use the EA-Adam run's "
                          "population/final (or population/phase_<k>) folder")
    if path.is_dir():
        return build_tradeoff_model(path, t, device=device)
    raise ConfigError(f"{path}: --tradeoff needs a population folder (member_<i> checkpoints) or a fused model "
                      f"with {FUSION_WEIGHTS_FILE} beside it")
