"""MATLAB-exact bicubic ``imresize`` for NumPy arrays and torch tensors.

SR benchmarks make their LR inputs (and NIQE/Ma their pyramids) with MATLAB's ``imresize``; any
other resampler (PIL, OpenCV, ``F.interpolate``) shifts metric values. This port follows MATLAB's
algorithm step by step (see :func:`contributions`) in float64 on NumPy and in the input's float
dtype on torch, where it is differentiable and runs on any device.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Sequence, Union

import numpy as np
import torch

__all__ = ["imresize", "contributions", "cubic"]

Scale = Union[float, Sequence[float]]


def cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB's ``cubic``)."""
    absx = np.abs(x)
    absx2 = absx * absx
    absx3 = absx2 * absx
    near = (1.5 * absx3 - 2.5 * absx2 + 1) * (absx <= 1)
    far = (-0.5 * absx3 + 2.5 * absx2 - 4 * absx + 2) * ((absx > 1) & (absx <= 2))
    return near + far


@lru_cache(maxsize=256)
def contributions(in_len: int, out_len: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Weights and 0-based input indices, each ``(out_len, taps)``, for resizing one axis.

    MATLAB's ``contributions``: antialiased (stretched) kernel when downscaling, ``ceil(width)+2``
    taps from ``floor(u - width/2)``, rows normalised to sum 1, symmetric mirroring at the borders,
    all-zero tap columns dropped. Cached and returned read-only because NIQE reuses them per image.
    """
    width = 4.0
    if scale < 1:
        width = width / scale
    x = np.arange(1, out_len + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - width / 2)
    taps = math.ceil(width) + 2
    indices = left[:, None] + np.arange(taps, dtype=np.float64)[None, :]
    dist = u[:, None] - indices
    weights = scale * cubic(scale * dist) if scale < 1 else cubic(dist)
    weights = weights / weights.sum(axis=1, keepdims=True)
    mirror = np.concatenate([np.arange(in_len), np.arange(in_len - 1, -1, -1)])
    indices = mirror[np.mod(indices.astype(np.int64) - 1, 2 * in_len)]
    keep = np.any(weights != 0, axis=0)
    weights = np.ascontiguousarray(weights[:, keep])
    indices = np.ascontiguousarray(indices[:, keep])
    weights.flags.writeable = False
    indices.flags.writeable = False
    return weights, indices


def _plan(in_shape: tuple[int, int], scale: Scale | None, output_shape: Sequence[int] | None):
    """Per-axis (scale, out_len) and MATLAB's axis order (smaller scale first, stable)."""
    if (scale is None) == (output_shape is None):
        raise ValueError("imresize: give exactly one of scale or output_shape")
    if scale is not None:
        scales = (float(scale),) * 2 if np.isscalar(scale) else tuple(float(s) for s in scale)
        if len(scales) != 2 or not all(s > 0 and math.isfinite(s) for s in scales):
            raise ValueError(f"imresize: scale must be a positive number or a pair, got {scale!r}")
        outs = tuple(math.ceil(s * n) for s, n in zip(scales, in_shape))
    else:
        outs = tuple(int(o) for o in output_shape)
        if len(outs) != 2 or min(outs) < 1:
            raise ValueError(f"imresize: output_shape must be two positive sizes, got {output_shape!r}")
        scales = tuple(o / n for o, n in zip(outs, in_shape))
    order = sorted(range(2), key=lambda axis: scales[axis])
    return [(axis, scales[axis], outs[axis]) for axis in order]


def _resize_axis_numpy(img: np.ndarray, axis: int, scale: float, out_len: int) -> np.ndarray:
    weights, indices = contributions(img.shape[axis], out_len, scale)
    bshape = [1] * img.ndim
    bshape[axis] = out_len
    out = np.take(img, indices[:, 0], axis=axis) * weights[:, 0].reshape(bshape)
    for p in range(1, weights.shape[1]):
        out += np.take(img, indices[:, p], axis=axis) * weights[:, p].reshape(bshape)
    return out


def _resize_axis_torch(img: torch.Tensor, dim: int, scale: float, out_len: int) -> torch.Tensor:
    weights, indices = contributions(img.shape[dim], out_len, scale)
    weights = torch.from_numpy(weights.T.copy()).to(device=img.device, dtype=img.dtype)
    indices = torch.from_numpy(indices.T.copy()).to(img.device)
    bshape = [1] * img.ndim
    bshape[dim] = out_len
    out = img.index_select(dim, indices[0]) * weights[0].view(bshape)
    for p in range(1, weights.shape[0]):
        out = out + img.index_select(dim, indices[p]) * weights[p].view(bshape)
    return out


def imresize(img, scale: Scale | None = None, output_shape: Sequence[int] | None = None):
    """Resize like MATLAB ``imresize(img, scale)`` / ``imresize(img, [h w])`` (bicubic, antialiased).

    ``img`` is a NumPy array ``(H, W)`` / ``(H, W, C)`` or a float tensor ``(..., H, W)`` (e.g.
    ``(N, C, H, W)``); the result has the same type and dtype. The output size is
    ``ceil(scale * size)`` per axis. Float values are never clamped or rounded. uint8/uint16 arrays
    behave as in MATLAB: each axis pass is rounded (half away from zero) and saturated to the
    integer type, which is how MATLAB-made LR images were computed from 8-bit HR images.
    """
    if isinstance(img, torch.Tensor):
        if not img.is_floating_point():
            raise TypeError(f"imresize: expected a float tensor, got {img.dtype}")
        if img.ndim < 2:
            raise ValueError(f"imresize: expected a tensor (..., H, W), got shape {tuple(img.shape)}")
        work = img.float() if img.dtype in (torch.float16, torch.bfloat16) else img
        for axis, s, n in _plan(tuple(img.shape[-2:]), scale, output_shape):
            work = _resize_axis_torch(work, img.ndim - 2 + axis, s, n)
        return work.to(img.dtype)
    if not isinstance(img, np.ndarray):
        raise TypeError(f"imresize: expected a numpy array or torch tensor, got {type(img).__name__}")
    integer = img.dtype in (np.uint8, np.uint16)
    if not (integer or np.issubdtype(img.dtype, np.floating)):
        raise TypeError(f"imresize: expected a float, uint8 or uint16 array, got {img.dtype}")
    if img.ndim not in (2, 3):
        raise ValueError(f"imresize: expected an array (H, W) or (H, W, C), got shape {img.shape}")
    work = img.astype(np.float64, copy=False)
    for axis, s, n in _plan(img.shape[:2], scale, output_shape):
        work = _resize_axis_numpy(work, axis, s, n)
        if integer:
            work = np.clip(np.floor(work + 0.5), 0, np.iinfo(img.dtype).max)
    return work.astype(img.dtype, copy=False)
