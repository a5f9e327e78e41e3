"""PSNR and SSIM with the conventions of MATLAB SR evaluation code (and BasicSR).

* PSNR: ``10 log10(1 / MSE)`` on [0, 1] values (data range 1, i.e. 255 on the uint8 scale), the
  MSE taken over all channels and pixels of each image. Identical images give ``+inf`` (as MATLAB
  and BasicSR); pass ``cap=`` (e.g. 100) to clamp.
* SSIM: Wang et al. with an 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, statistics on
  values scaled to [0, 255], 'valid' region only (no padding), mean of the SSIM map; for RGB the
  mean of the three per-channel SSIMs. Computed batched with a separable float32 filter; values
  are centred per image before squaring so float32 keeps about 1e-7 agreement with float64.

Both are differentiable (``as_loss=True``) and return raw values: minimise ``-psnr`` or
``1 - ssim``.
"""

from __future__ import annotations

import math

import torch

from perceptsr.metrics.base import Metric

__all__ = ["PSNR", "SSIM", "psnr", "ssim", "gaussian_window"]


def psnr(x: torch.Tensor, ref: torch.Tensor, cap: float | None = None) -> torch.Tensor:
    """PSNR in dB of ``(N, C, H, W)`` tensors in [0, 1], one value per image.

    The squared error is summed in float64; on CPU images are processed a few at a time so
    the temporaries stay in cache.
    """
    n = x.shape[0]
    per = n if x.is_cuda else max(1, (1 << 20) // max(1, x[0].numel()))
    sse = []
    for i in range(0, n, per):
        diff = (x[i : i + per] - ref[i : i + per]).flatten(1)
        sse.append((diff * diff).sum(1, dtype=torch.float64))
    mse = torch.cat(sse) / x[0].numel()
    out = 10 * torch.log10(1.0 / mse)
    if cap is not None:
        out = out.clamp(max=cap)
    return out.to(x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32)


def gaussian_window(size: int = 11, sigma: float = 1.5, dtype=torch.float64) -> torch.Tensor:
    """Normalised 1-D Gaussian; its outer product is MATLAB ``fspecial('gaussian', size, sigma)``."""
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(r * r) / (2 * sigma * sigma))
    return (g / g.sum()).to(dtype)


def _filter_valid(x: torch.Tensor, taps: list[float]) -> torch.Tensor:
    """Separable 'valid' correlation of ``(..., H, W)`` with the outer product of ``taps``.

    Shifted multiply-adds beat ``conv2d`` with one channel on CPU by an order of magnitude.
    """
    k = len(taps)
    w = x.shape[-1] - k + 1
    out = x[..., 0:w] * taps[0]
    grad = out.requires_grad
    for i in range(1, k):
        if grad:
            out = out + x[..., i : i + w] * taps[i]
        else:
            out.add_(x[..., i : i + w], alpha=taps[i])
    h = x.shape[-2] - k + 1
    res = out[..., 0:h, :] * taps[0]
    for i in range(1, k):
        if grad:
            res = res + out[..., i : i + h, :] * taps[i]
        else:
            res.add_(out[..., i : i + h, :], alpha=taps[i])
    return res


_TAPS = gaussian_window(11, 1.5).tolist()


def _ssim_planes(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean SSIM of each plane of ``(P, H, W)`` tensors on [0, 255]."""
    c1 = (0.01 * 255) ** 2
    c2 = (0.03 * 255) ** 2
    # Centre each plane (a constant shift leaves the variances unchanged and is added back to
    # the means): keeps the squares small so float32 cancellation stays negligible.
    shift = ((a.mean((-2, -1), keepdim=True) + b.mean((-2, -1), keepdim=True)) / 2).detach()
    a = a - shift
    b = b - shift
    stack = torch.stack((a, b, a * a, b * b, a * b), dim=1)  # (P, 5, H, W)
    f = _filter_valid(stack, _TAPS)
    mu_a, mu_b, e_aa, e_bb, e_ab = f.unbind(1)
    var_a = e_aa - mu_a * mu_a
    var_b = e_bb - mu_b * mu_b
    cov = e_ab - mu_a * mu_b
    mu_a = mu_a + shift
    mu_b = mu_b + shift
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2)
    return (num / den).mean((-2, -1))


def ssim(x: torch.Tensor, ref: torch.Tensor, chunk_pixels: int = 1 << 19) -> torch.Tensor:
    """MATLAB-style SSIM of ``(N, C, H, W)`` tensors in [0, 1] ('valid' window), one value per image.

    Planes are processed in groups of about ``chunk_pixels`` pixels on CPU so that the five
    filtered maps stay in cache.
    """
    if x.dtype not in (torch.float32, torch.float64):
        x, ref = x.float(), ref.float()
    n, c, h, w = x.shape
    a = (x * 255).reshape(n * c, h, w)
    b = (ref * 255).reshape(n * c, h, w)
    step = a.shape[0] if x.is_cuda else max(1, chunk_pixels // (h * w))
    per_plane = torch.cat([_ssim_planes(a[i : i + step], b[i : i + step]) for i in range(0, n * c, step)])
    return per_plane.reshape(n, c).mean(1)


class PSNR(Metric):
    """Peak signal-to-noise ratio in dB (higher is better); ``cap`` clamps the +inf of identical images."""

    name = "psnr"
    lower_better = False
    full_reference = True
    differentiable = True
    min_size = 1
    default_color = "rgb"
    score_range = (0.0, math.inf)

    def __init__(self, *, cap: float | None = None, **kw) -> None:
        super().__init__(**kw)
        self.cap = cap

    def protocol_details(self) -> str:
        cap = f", capped at {self.cap} dB" if self.cap is not None else ", identical images give inf"
        return f"10*log10(1/MSE) on [0,1] (data range 1 = 255 on uint8), MSE over channels and pixels{cap}"

    def compute(self, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        return psnr(x, ref, self.cap)


class SSIM(Metric):
    """Structural similarity as MATLAB/BasicSR compute it (higher is better, at most 1)."""

    name = "ssim"
    lower_better = False
    full_reference = True
    differentiable = True
    min_size = 11
    default_color = "rgb"
    score_range = (-1.0, 1.0)

    def protocol_details(self) -> str:
        return ("Gaussian 11x11 sigma 1.5, K1=0.01, K2=0.03 on [0,255], 'valid' region (no padding), "
                "mean over the map, RGB = mean of per-channel SSIM")

    def compute(self, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        return ssim(x, ref)
