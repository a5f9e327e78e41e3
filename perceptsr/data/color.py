"""MATLAB colour conversions (``rgb2ycbcr``, ``ycbcr2rgb``, ``rgb2gray``), ``modcrop`` and uint8 quantisation.

SR papers report PSNR/SSIM on MATLAB's BT.601 "studio swing" Y channel and NIQE/Ma on MATLAB's
grey; these reproduce MATLAB's numbers, including its uint8 rounding (half away from zero, then
saturation). NumPy images are ``(H, W, 3)``; tensors are ``(..., 3, H, W)``. Float inputs are
taken in [0, 1] and give float outputs in MATLAB's double ranges, never clamped.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["rgb2ycbcr", "ycbcr2rgb", "rgb2gray", "modcrop", "quantize", "to_uint8"]

# MATLAB's rgb2ycbcr: ycbcr = T * rgb + offset for rgb in [0, 1] and ycbcr in [0, 255].
_T = np.array(
    [[65.481, 128.553, 24.966], [-37.797, -74.203, 112.0], [112.0, -93.786, -18.214]], dtype=np.float64
)
_OFFSET = np.array([16.0, 128.0, 128.0], dtype=np.float64)
_T_INV = np.linalg.inv(_T)
_GRAY = np.array([0.298936021293775, 0.587043074451121, 0.114020904255103], dtype=np.float64)


def _round_uint8(x: np.ndarray) -> np.ndarray:
    """MATLAB's conversion of doubles to uint8: round half away from zero, saturate to 0..255."""
    return np.clip(np.floor(x + 0.5), 0, 255).astype(np.uint8)


def _check_rgb(img, fn: str) -> None:
    if isinstance(img, torch.Tensor):
        if img.ndim < 3 or img.shape[-3] != 3:
            raise ValueError(f"{fn}: expected a tensor (..., 3, H, W), got shape {tuple(img.shape)}")
        if not img.is_floating_point():
            raise TypeError(f"{fn}: expected a float tensor in [0, 1], got {img.dtype}")
    elif isinstance(img, np.ndarray):
        if img.ndim != 3 or img.shape[-1] != 3:
            raise ValueError(f"{fn}: expected an array (H, W, 3), got shape {img.shape}")
        if img.dtype != np.uint8 and not np.issubdtype(img.dtype, np.floating):
            raise TypeError(f"{fn}: expected uint8 or float in [0, 1], got {img.dtype}")
    else:
        raise TypeError(f"{fn}: expected a numpy array or torch tensor, got {type(img).__name__}")


def _linear(img, matrix: np.ndarray, offset: np.ndarray):
    """Per-pixel ``matrix @ pixel + offset`` (rows of ``matrix`` are output channels).

    uint8 NumPy input is computed in float64 and rounded the MATLAB way; float input keeps its dtype.
    A single output channel is returned as ``(H, W)`` for NumPy and ``(..., 1, H, W)`` for tensors.
    """
    if isinstance(img, torch.Tensor):
        m = torch.as_tensor(matrix, dtype=img.dtype, device=img.device)
        b = torch.as_tensor(offset, dtype=img.dtype, device=img.device)
        return torch.einsum("oc,...chw->...ohw", m, img) + b[:, None, None]
    out = np.tensordot(img.astype(np.float64), matrix.T, axes=([-1], [0])) + offset
    if matrix.shape[0] == 1:
        out = out[..., 0]
    return _round_uint8(out) if img.dtype == np.uint8 else out.astype(img.dtype)


def rgb2ycbcr(img, y_only: bool = False):
    """MATLAB ``rgb2ycbcr``: float [0, 1] RGB -> Y in [16/255, 235/255]; uint8 -> rounded uint8.

    ``y_only=True`` returns just Y: ``(H, W)`` for NumPy, ``(..., 1, H, W)`` for tensors.
    """
    _check_rgb(img, "rgb2ycbcr")
    uint8 = isinstance(img, np.ndarray) and img.dtype == np.uint8
    rows = slice(0, 1) if y_only else slice(0, 3)
    matrix = _T[rows] / 255
    offset = _OFFSET[rows] if uint8 else _OFFSET[rows] / 255
    return _linear(img, matrix, offset)


def ycbcr2rgb(img):
    """MATLAB ``ycbcr2rgb``: inverse of :func:`rgb2ycbcr` (float results are not clamped to [0, 1])."""
    _check_rgb(img, "ycbcr2rgb")
    uint8 = isinstance(img, np.ndarray) and img.dtype == np.uint8
    offset = _T_INV @ _OFFSET
    if uint8:
        return _linear(img, _T_INV * 255, -offset * 255)
    return _linear(img, _T_INV * 255, -offset)


def rgb2gray(img):
    """MATLAB ``rgb2gray`` (its exact coefficients); uint8 in gives rounded uint8 out.

    Returns ``(H, W)`` for NumPy and ``(..., 1, H, W)`` for tensors.
    """
    _check_rgb(img, "rgb2gray")
    return _linear(img, _GRAY[None, :], np.zeros(1))


def modcrop(img, scale: int):
    """Crop height and width down to multiples of ``scale``, keeping the top-left corner (as MATLAB SR code)."""
    if int(scale) != scale or scale < 1:
        raise ValueError(f"modcrop: scale must be a positive integer, got {scale!r}")
    scale = int(scale)
    if isinstance(img, torch.Tensor):
        h, w = img.shape[-2:]
        return img[..., : h - h % scale, : w - w % scale]
    if isinstance(img, np.ndarray) and img.ndim in (2, 3):
        h, w = img.shape[:2]
        return img[: h - h % scale, : w - w % scale, ...]
    raise TypeError(f"modcrop: expected an array (H, W[, C]) or a tensor (..., H, W), got {type(img).__name__}")


def to_uint8(img: np.ndarray) -> np.ndarray:
    """Float [0, 1] image to uint8 as MATLAB ``im2uint8`` does (saturate, round half away from zero)."""
    return _round_uint8(np.asarray(img, dtype=np.float64) * 255)


def quantize(img):
    """Snap a float [0, 1] image to the uint8 grid, ``round(clip(x) * 255) / 255``, keeping its type and dtype.

    This is what MATLAB evaluation code sees after ``im2uint8``/``im2double``; metrics use it so that
    a network's float output is scored like the saved 8-bit image.
    """
    if isinstance(img, torch.Tensor):
        if not img.is_floating_point():
            raise TypeError(f"quantize: expected a float tensor in [0, 1], got {img.dtype}")
        return torch.floor(img.clamp(0, 1) * 255 + 0.5) / 255
    if not np.issubdtype(np.asarray(img).dtype, np.floating):
        raise TypeError(f"quantize: expected a float array in [0, 1], got {np.asarray(img).dtype}")
    return (to_uint8(img) / 255).astype(img.dtype)
