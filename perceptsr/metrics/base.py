"""The :class:`Metric` base class: input checks, evaluation protocol (colour, rounding, crop), presets.

Every metric takes float ``(N, C, H, W)`` tensors in [0, 1] with C = 1 or 3 and returns one value
per image, shape ``(N,)``. The *protocol* (colour space, uint8 rounding, border crop) is applied
here, once, so that all metrics agree on it and report it in :attr:`Metric.protocol` (the steps are
pointwise, so the crop is actually taken first, which is cheaper and gives the same values):

1. validation (dtype, shape, finiteness, range [0, 1] with a tolerance of 1e-4, then clamped);
2. ``round_uint8``: snap RGB to the uint8 grid (what MATLAB sees for a saved 8-bit image);
3. colour: ``rgb`` (as is), ``y`` (MATLAB ``rgb2ycbcr`` Y, in [16, 235]/255) or ``gray`` (MATLAB
   ``rgb2gray``); a 1-channel input is used as is for ``y``/``gray`` (and for ``rgb``);
   with ``round_uint8`` the converted channel is rounded again (MATLAB's uint8 conversion output);
4. crop ``crop_border`` pixels from each side;
5. :meth:`Metric.compute`, under ``torch.no_grad()`` unless ``as_loss=True``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math

import torch

from perceptsr.errors import ConfigError, MetricInputError

__all__ = ["Metric", "Preset", "PRESETS", "COLORS", "apply_color", "resolve_preset"]

COLORS = ("rgb", "y", "gray")
RANGE_TOLERANCE = 1e-4

_COLOR_TEXT = {
    "rgb": "RGB",
    "y": "Y of MATLAB rgb2ycbcr (BT.601, [16,235]/255)",
    "gray": "MATLAB rgb2gray",
}


@dataclasses.dataclass(frozen=True)
class Preset:
    """A named evaluation protocol. ``crop_border="scale"`` means crop = the ``scale`` option."""

    name: str
    color: str | None
    crop_border: int | str
    round_uint8: bool | None
    description: str

    def options(self, scale: int | None = None) -> dict:
        """The option values this preset sets (``scale`` only for presets that crop by scale)."""
        crop = self.crop_border
        if crop == "scale":
            crop = 4 if scale is None else int(scale)
        elif scale is not None:
            raise ConfigError(
                f"preset {self.name!r} does not take a scale (its crop is fixed at {crop}); "
                "drop scale= or use preset 'sr-y' / 'sr-rgb'"
            )
        out = {"crop_border": crop}
        if self.color is not None:
            out["color"] = self.color
        if self.round_uint8 is not None:
            out["round_uint8"] = self.round_uint8
        return out


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("pirm", "y", 4, True,
               "PIRM 2018 / RankSRGAN: Y of MATLAB rgb2ycbcr on uint8 (rounded), shave 4 px"),
        Preset("sr-y", "y", "scale", False,
               "SR papers' PSNR/SSIM: Y of MATLAB rgb2ycbcr (double, not rounded), crop = scale"),
        Preset("sr-rgb", "rgb", "scale", False, "RGB, crop = scale"),
    )
}


def resolve_preset(name: str | None) -> Preset | None:
    """The preset called ``name`` (``None`` passes through); unknown names raise with a hint."""
    if name is None:
        return None
    try:
        return PRESETS[name]
    except KeyError:
        close = difflib.get_close_matches(str(name), list(PRESETS), n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ConfigError(
            f"unknown metric preset {name!r}.{hint} Known presets: {', '.join(PRESETS)}"
        ) from None


def _convert_uint8(q: torch.Tensor, color: str) -> torch.Tensor:
    """MATLAB ``rgb2ycbcr``/``rgb2gray`` of a uint8 image given as integer-valued floats.

    Returns the rounded channel (integer-valued, 0..255). The conversion runs in float32 with the
    colour module; the few pixels whose value lies within 1e-3 of a rounding tie (float32 error
    is below 1e-4 there) are recomputed in float64, so the result equals MATLAB's exactly.
    """
    from perceptsr.data.color import rgb2gray, rgb2ycbcr

    fn = (lambda t: rgb2ycbcr(t, y_only=True)) if color == "y" else rgb2gray
    v = fn(q / 255).mul_(255)
    out = torch.floor(v + 0.5)
    ambiguous = (v - out).abs_().sub_(0.5).abs_() < 1e-3
    if bool(ambiguous.any()):
        # MATLAB's own uint8 arithmetic (the colour module's NumPy uint8 path) for those pixels.
        n, _, h, w = ambiguous.nonzero(as_tuple=True)
        pixels = q[n, :, h, w].to("cpu", torch.uint8).numpy()[:, None, :]  # (M, 1, 3)
        exact = torch.from_numpy(fn(pixels).reshape(-1).astype("float32"))
        out[n, 0, h, w] = exact.to(out.device, out.dtype)
    return out


def apply_color(x: torch.Tensor, color: str, round_uint8: bool) -> torch.Tensor:
    """Protocol steps 2-3 on a float ``(N, C, H, W)`` tensor: uint8 rounding and colour conversion.

    A 1-channel input stays 1-channel (rounded when ``round_uint8``), so the function is idempotent;
    :func:`perceptsr.metrics.protocol.match_channels` uses it to bring a colour image to a grey one.
    """
    convert = x.shape[1] == 3 and color != "rgb"
    if not round_uint8:
        x = x.clamp(0, 1)
        if convert:
            from perceptsr.data.color import rgb2gray, rgb2ycbcr

            x = rgb2ycbcr(x, y_only=True) if color == "y" else rgb2gray(x)
        return x
    # MATLAB uint8 semantics: RGB on the uint8 grid (round half away from zero; inputs are
    # validated to [-1e-4, 1 + 1e-4], so no clamp is needed), then the converted channel
    # rounded again, as rgb2ycbcr/rgb2gray do for uint8 images.
    q = x.mul(255).add_(0.5).floor_()
    if not convert:
        return q.div_(255)
    return _convert_uint8(q, color).div_(255)


class Metric(torch.nn.Module):
    """Base class of all metrics.

    Subclasses set the class attributes and implement :meth:`compute`, which receives the
    prepared tensors (protocol applied, float, on the metric's device) and returns ``(N,)``.

    ``as_loss=True`` (only for ``differentiable`` metrics, and not with ``round_uint8``) keeps the
    autograd graph and returns the raw per-image metric value, shape ``(N,)``, exactly as in
    evaluation. As in pyiqa, no sign flip is applied: for higher-is-better metrics
    (``lower_better=False``: PSNR, SSIM) minimise ``-value`` or ``1 - value`` yourself, and reduce
    over the batch (``.mean()``) as you wish.
    """

    name: str = "metric"
    lower_better: bool = False
    full_reference: bool = True
    differentiable: bool = False
    min_size: int = 1
    default_color: str = "rgb"
    default_round_uint8: bool = False
    allowed_colors: tuple[str, ...] = COLORS
    score_range: tuple[float, float] = (-math.inf, math.inf)

    def __init__(
        self,
        *,
        color: str | None = None,
        crop_border: int | None = None,
        round_uint8: bool | None = None,
        as_loss: bool = False,
        preset: str | None = None,
        scale: int | None = None,
        **kw,
    ) -> None:
        super().__init__()
        if kw:
            raise ConfigError(
                f"{type(self).__name__}: unknown option(s) {', '.join(sorted(kw))}"
            )
        p = resolve_preset(preset)
        from_preset = p.options(scale) if p is not None else {}
        if p is None and scale is not None:
            raise ConfigError("scale= is only used by presets 'sr-y' and 'sr-rgb' (crop = scale)")
        color = color if color is not None else from_preset.get("color", self.default_color)
        crop_border = crop_border if crop_border is not None else from_preset.get("crop_border", 0)
        if round_uint8 is None:
            round_uint8 = from_preset.get("round_uint8", self.default_round_uint8)
        if color not in COLORS:
            raise ConfigError(f"{self.name}: color must be one of {COLORS}, got {color!r}")
        if color not in self.allowed_colors:
            raise ConfigError(
                f"{self.name}: color {color!r} is not supported; use one of {self.allowed_colors}"
            )
        if int(crop_border) != crop_border or crop_border < 0:
            raise ConfigError(f"{self.name}: crop_border must be an integer >= 0, got {crop_border!r}")
        if as_loss and not self.differentiable:
            raise ConfigError(f"{self.name} is not differentiable: as_loss=True is not available")
        if as_loss and round_uint8:
            raise ConfigError(
                f"{self.name}: as_loss=True cannot be combined with round_uint8=True "
                "(rounding has no gradient)"
            )
        self.color = color
        self.crop_border = int(crop_border)
        self.round_uint8 = bool(round_uint8)
        self.as_loss = bool(as_loss)
        self.preset = p.name if p is not None else None
        # Empty buffer that follows .to(device): tells forward where to put the inputs.
        self.register_buffer("_device_anchor", torch.empty(0), persistent=False)

    # ------------------------------------------------------------------ protocol
    @property
    def device(self) -> torch.device:
        return self._device_anchor.device

    def protocol_details(self) -> str:
        """Metric-specific conventions appended to :attr:`protocol` (override in subclasses)."""
        return ""

    @property
    def protocol(self) -> str:
        """A readable one-line account of how values are computed."""
        parts = [
            f"{self.name}",
            f"preset={self.preset or 'none'}",
            f"color={self.color} ({_COLOR_TEXT[self.color]}; 1-channel input used as is)",
            f"round_uint8={self.round_uint8}"
            + (" (inputs and converted channel snapped to the uint8 grid, MATLAB rounding)"
               if self.round_uint8 else ""),
            f"crop_border={self.crop_border}",
            f"{'lower' if self.lower_better else 'higher'} is better",
        ]
        details = self.protocol_details()
        if details:
            parts.append(details)
        return "; ".join(parts)

    def extra_repr(self) -> str:
        return (f"color={self.color!r}, crop_border={self.crop_border}, "
                f"round_uint8={self.round_uint8}, as_loss={self.as_loss}, preset={self.preset!r}")

    # ------------------------------------------------------------------ checks
    def _check(self, x, what: str) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise MetricInputError(
                f"{self.name}: {what} must be a torch.Tensor (N, C, H, W), got {type(x).__name__}"
            )
        if x.ndim != 4:
            hint = " (add a batch dimension: x[None])" if x.ndim == 3 else ""
            raise MetricInputError(
                f"{self.name}: {what} must be 4-D (N, C, H, W), got shape {tuple(x.shape)}{hint}"
            )
        if not x.is_floating_point():
            raise MetricInputError(
                f"{self.name}: {what} must be a float tensor in [0, 1], got {x.dtype} "
                "(for uint8 images use x.float() / 255)"
            )
        if x.shape[1] not in (1, 3):
            raise MetricInputError(
                f"{self.name}: {what} must have 1 or 3 channels, got {x.shape[1]} "
                f"(shape {tuple(x.shape)}; channels come second: (N, C, H, W))"
            )
        if x.numel() == 0:
            raise MetricInputError(f"{self.name}: {what} is empty (shape {tuple(x.shape)})")
        x = x.detach()
        lo, hi = (float(v) for v in torch.aminmax(x))  # one pass; NaN propagates
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise MetricInputError(f"{self.name}: {what} contains NaN or Inf values")
        if lo < -RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
            raise MetricInputError(
                f"{self.name}: {what} must be in [0, 1], got values in [{lo:.4g}, {hi:.4g}]"
                + (" (looks like 0..255: divide by 255)" if hi > 2 else "")
                + (" (looks like [-1, 1]: use (x + 1) / 2)" if lo < -0.01 and hi <= 1.01 else "")
            )
        return x

    def _validate(self, x, ref) -> None:
        self._check(x, "input")
        if self.full_reference:
            if ref is None:
                raise MetricInputError(f"{self.name} is a full-reference metric: pass ref=")
            self._check(ref, "reference")
            if ref.shape != x.shape:
                raise MetricInputError(
                    f"{self.name}: input and reference shapes differ: {tuple(x.shape)} vs "
                    f"{tuple(ref.shape)}"
                )
        elif ref is not None:
            raise MetricInputError(f"{self.name} is a no-reference metric: do not pass ref")
        h, w = x.shape[-2] - 2 * self.crop_border, x.shape[-1] - 2 * self.crop_border
        if min(h, w) < self.min_size:
            raise MetricInputError(
                f"{self.name}: image {x.shape[-2]}x{x.shape[-1]} is too small: after cropping "
                f"{self.crop_border} px per border it is {h}x{w}, needs at least "
                f"{self.min_size}x{self.min_size}"
            )

    # ------------------------------------------------------------------ protocol steps
    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Apply rounding, colour conversion and crop to one validated tensor."""
        x = x.to(self.device)
        if x.dtype not in (torch.float32, torch.float64):
            x = x.float()
        c = self.crop_border
        if c:
            x = x[..., c:-c, c:-c]
        return apply_color(x, self.color, self.round_uint8)

    def forward(self, x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        """Validate, apply the protocol and return one value per image, shape ``(N,)``."""
        self._validate(x, ref)
        with torch.set_grad_enabled(self.as_loss and torch.is_grad_enabled()):
            x = self.prepare(x)
            ref = self.prepare(ref) if ref is not None else None
            out = self.compute(x, ref)
        return out

    def compute(self, x: torch.Tensor, ref: torch.Tensor | None) -> torch.Tensor:
        """Prepared input(s) -> ``(N,)``; implemented by subclasses."""
        raise NotImplementedError
