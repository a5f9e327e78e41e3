"""Feature extraction of Ma et al. 2017 ("NRQM"), step for step as the official MATLAB code.

Three groups, in the official column order (``feature_all.m`` of chaoma99/sr-metric):

* ``f1`` (18): local frequency statistics. A 3-level pyramid (``im2double``; 3x3 Gaussian,
  sigma 0.5, zero padding, keep every second pixel from the second), and on each level
  ``block_dct``: 7x7 DCTs on 3x3 blocks with a 2-pixel border (``blkproc(im,[3 3],[2 2])``,
  zero outside the image), per block the generalised-Gaussian shape (``gama_dct``), the
  coefficient of variation (``coeff_var_dct``) and the variance of three oriented coefficients
  of variation; pooled as (first 10 %, mean) of the shapes and (last 10 %, mean) of the others.
* ``f2`` (45): global frequency statistics (``global_gsm.m``) on the 0..255 image: matlabPyrTools
  ``buildSFpyr(im, 2, 5)`` (2 scales x 6 orientations), divisive normalisation
  (``norm_sender_normalized``: 3x3 neighbours, parent, the other orientations), then 12 GGD shapes,
  6 cross-scale GGD shapes, 12 SSIM structure terms band vs high-pass residual and 15 between
  the first-scale orientations. The GGD shapes come from a 0.001-step table, hence the
  three-decimal values.
* ``f3`` (75): singular values of the 5x5 distinct patches (``svd(im2col(im,[5 5],'distinct'))``)
  on the three pyramid levels.

Everything runs in float64 torch, batched over images of one size, on any device.

MATLAB's separable filter path (see :mod:`perceptsr.metrics.matlab_filter`, which makes NIQE exact
in flat regions) and Ma's filters:

* the pyramid's ``imfilter(im, fspecial('gaussian', 3))`` does **not** take it: ``imfilter``
  tests separability only for kernels of at least 49 elements (this one has 9), so MATLAB filters
  it in 2-D, in an order that no spec here describes; ``F.conv2d`` in float64 agrees with it to
  rounding;
* ``ssim_index_new``'s ``filter2(fspecial('gaussian', 11, 1.5), x, 'valid')`` (``f2``'s SSIM terms)
  does: ``filter2`` factors any rank-1 stencil by SVD and calls ``conv2(hcol, hrow, x, 'valid')``,
  column pass first. :func:`_filter2_valid_separable` uses exact normalised taps, row pass first,
  so its last bits can differ; the SSIM terms are smooth in those values (``C2 = (0.03*255)^2``
  stabilises every ratio, nothing counts signs), so this moves ``f2`` by ~1e-15 relative and no
  change is needed;
* the steerable pyramid filters in the Fourier domain, and the block DCTs and patch SVDs involve
  no filtering.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from perceptsr.errors import MetricInputError

__all__ = ["ma_features", "local_dct_features", "global_gsm_features", "spatial_svd_features", "MIN_SIZE"]

#: Smallest image side the official pipeline supports (SSIM windows on the guard-banded subbands).
MIN_SIZE = 48

_DTYPE = torch.float64


# ----------------------------------------------------------------------------------------------
# input handling
# ----------------------------------------------------------------------------------------------
def _to_batch(images) -> tuple[torch.Tensor, bool]:
    """(N, H, W) float64 tensor from (H, W), (N, H, W) or (N, 1, H, W) numpy/torch in [0, 1]."""
    is_numpy = isinstance(images, np.ndarray)
    if is_numpy:
        if images.dtype == np.uint8:
            images = images.astype(np.float64) / 255.0
        x = torch.from_numpy(np.asarray(images, dtype=np.float64))
    elif isinstance(images, torch.Tensor):
        if not images.is_floating_point():
            raise MetricInputError(f"ma_features: expected a float tensor in [0, 1], got {images.dtype}")
        x = images.to(_DTYPE)
    else:
        raise MetricInputError(f"ma_features: expected a numpy array or torch tensor, got {type(images).__name__}")
    if x.ndim == 2:
        x = x[None]
    elif x.ndim == 4:
        if x.shape[1] != 1:
            raise MetricInputError(
                f"ma_features: expected one channel (gray or Y), got shape {tuple(x.shape)}; convert to Y first"
            )
        x = x[:, 0]
    elif x.ndim != 3:
        raise MetricInputError(f"ma_features: expected (H, W), (N, H, W) or (N, 1, H, W), got {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if min(h, w) < MIN_SIZE:
        raise MetricInputError(f"ma_features: image is {h}x{w}; Ma needs at least {MIN_SIZE}x{MIN_SIZE} pixels")
    return x, is_numpy


# ----------------------------------------------------------------------------------------------
# generalised Gaussian shape table (gama_gen_gauss)
# ----------------------------------------------------------------------------------------------
def _matlab_colon(start: float, step: float, stop: float) -> np.ndarray:
    """``start:step:stop`` with MATLAB's rounding (first half from start, second half from stop)."""
    n = int(math.floor((stop - start) / step + 1e-10))
    k = np.arange(n + 1, dtype=np.float64)
    last = start + n * step
    return np.where(k < n / 2, start + k * step, last - (n - k) * step)


@lru_cache(maxsize=1)
def _ggd_table_np() -> tuple[np.ndarray, np.ndarray]:
    from scipy.special import gamma as gamma_fn

    g = _matlab_colon(0.03, 0.001, 10.0)
    r = gamma_fn(1.0 / g) * gamma_fn(3.0 / g) / gamma_fn(2.0 / g) ** 2
    if not np.all(np.diff(r) < 0):  # the search below relies on it
        raise RuntimeError("GGD ratio table is not strictly decreasing")
    return g, r


def _ggd_table(device) -> tuple[torch.Tensor, torch.Tensor]:
    g, r = _ggd_table_np()
    return torch.from_numpy(g).to(device), torch.from_numpy(-r).to(device)


def _ggd_shape(x: torch.Tensor) -> torch.Tensor:
    """``gama_gen_gauss`` along the last dim: the table shape whose ratio is nearest to rho.

    ``[~, k] = min(abs(rho - r)); gamma = g(k)``: ties go to the lower index (MATLAB ``min``),
    values beyond the table ends clamp to 0.03 / 10, a NaN ratio gives g(1).
    """
    mean = x.mean(dim=-1, keepdim=True)
    var = x.var(dim=-1)  # unbiased, as MATLAB
    mean_abs = (x - mean).abs().mean(dim=-1) ** 2
    rho = var / (mean_abs + 0.0000001)
    g, neg_r = _ggd_table(x.device)  # g ascending, -r ascending (r decreasing)
    n = g.numel()
    lo = torch.searchsorted(neg_r, (-rho).contiguous())  # first k with r[k] <= rho
    here = lo.clamp(max=n - 1)
    prev = (lo - 1).clamp(min=0)
    d_here = (-neg_r[here] - rho).abs()
    d_prev = (-neg_r[prev] - rho).abs()
    k = torch.where(d_here < d_prev, here, prev)
    k = torch.where(lo == 0, torch.zeros_like(k), k)
    k = torch.where(lo >= n, torch.full_like(k, n - 1), k)
    k = torch.where(torch.isnan(rho), torch.zeros_like(k), k)
    return g[k]


# ----------------------------------------------------------------------------------------------
# f1: block-DCT statistics on a 3-level pyramid
# ----------------------------------------------------------------------------------------------
def _fspecial_gaussian(size: int, sigma: float) -> np.ndarray:
    half = (size - 1) / 2
    y, x = np.meshgrid(np.arange(-half, half + 1), np.arange(-half, half + 1), indexing="ij")
    h = np.exp(-(x * x + y * y) / (2 * sigma * sigma))
    h[h < np.finfo(np.float64).eps * h.max()] = 0
    return h / h.sum()


def _spatial_pyramid(x: torch.Tensor) -> list[torch.Tensor]:
    """[im, im2, im3]: ``imfilter(im, fspecial('gaussian', 3))`` (zero padding) then ``(2:2:end, 2:2:end)``."""
    h = torch.from_numpy(_fspecial_gaussian(3, 0.5)).to(x)[None, None]
    levels = [x]
    for _ in range(2):
        y = F.conv2d(levels[-1][:, None], h, padding=1)[:, 0]
        levels.append(y[:, 1::2, 1::2])
    return levels


@lru_cache(maxsize=4)
def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    m = np.arange(n)[None, :]
    d = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * m + 1) * k / (2 * n))
    d[0] /= np.sqrt(2.0)
    return d


@lru_cache(maxsize=4)
def _dct2_operator(device) -> torch.Tensor:
    """(49, 49) M with ``blocks_rowmajor @ M`` = ``dct2(block)(:)`` (MATLAB column-major order)."""
    d = _dct_matrix(7)
    # coef[u, v] = sum_rc d[u, r] d[v, c] x[r, c]; input index 7 r + c, output index u + 7 v
    m = np.einsum("ur,vc->rcvu", d, d).reshape(49, 49)
    return torch.from_numpy(np.ascontiguousarray(m)).to(device)


@lru_cache(maxsize=4)
def _oriented_index(device) -> tuple[torch.Tensor, ...]:
    return tuple(torch.tensor([r + 7 * c for r, c in idx], device=device) for idx in _ORIENTED)


# oriented1/2/3_dct_rho_config3 for 7x7 blocks, 0-based (row, col) of the DCT coefficients
_ORIENTED = (
    [(0, c) for c in range(1, 7)] + [(1, c) for c in range(2, 7)] + [(2, c) for c in range(4, 7)]
    + [(3, c) for c in range(5, 7)],
    [(1, 1)] + [(2, c) for c in (2, 3)] + [(3, c) for c in (2, 3, 4)] + [(4, c) for c in range(3, 7)]
    + [(5, c) for c in range(4, 7)] + [(6, c) for c in range(4, 7)],
    [(r, 0) for r in range(1, 7)] + [(r, 1) for r in range(2, 7)] + [(r, 2) for r in range(4, 7)]
    + [(r, 3) for r in range(5, 7)],
)


def _cv(a: torch.Tensor, eps: float) -> torch.Tensor:
    return a.std(dim=-1) / (a.mean(dim=-1) + eps)


def _block_dct(img: torch.Tensor) -> torch.Tensor:
    """``block_dct.m`` on (N, H, W): the 6 pooled statistics, (N, 6)."""
    n, h, w = img.shape
    nbr, nbc = -(-h // 3), -(-w // 3)
    padded = F.pad(img, (2, 3 * nbc - w + 2, 2, 3 * nbr - h + 2))
    blocks = padded.unfold(1, 7, 3).unfold(2, 7, 3).reshape(n * nbr * nbc, 49)  # row-major pixels
    coef = (blocks @ _dct2_operator(img.device)).view(n, nbr * nbc, 49)  # dct2, column-major (u + 7 v)
    ac = coef[..., 1:]  # DC dropped
    gama = _ggd_shape(ac)
    mag = coef.abs()
    cv = _cv(mag[..., 1:], 0.0000001)
    oriented = torch.stack(
        [_cv(mag.index_select(-1, idx), 0.00000001) for idx in _oriented_index(img.device)], dim=-1
    )
    ori = oriented.var(dim=-1)

    count = nbr * nbc
    first10 = math.ceil(count * 0.1)
    last10 = int(count * 0.9) - 1  # MATLAB fix(count*0.9), 1-based start
    gama = gama.sort(dim=-1).values
    cv = cv.sort(dim=-1).values
    ori = ori.sort(dim=-1).values
    return torch.stack(
        [
            gama[:, :first10].mean(-1),
            gama.mean(-1),
            cv[:, last10:].mean(-1),
            cv.mean(-1),
            ori[:, last10:].mean(-1),
            ori.mean(-1),
        ],
        dim=-1,
    )


def local_dct_features(levels: list[torch.Tensor]) -> torch.Tensor:
    """f1 (N, 18) from the spatial pyramid."""
    return torch.cat([_block_dct(im) for im in levels], dim=-1)


# ----------------------------------------------------------------------------------------------
# f3: singular values of distinct 5x5 patches
# ----------------------------------------------------------------------------------------------
def _patch_svd(img: torch.Tensor) -> torch.Tensor:
    n, h, w = img.shape
    rows, cols = -(-h // 5), -(-w // 5)
    if rows * cols < 25:
        raise MetricInputError(
            f"ma_features: the quarter-resolution level ({h}x{w}) has fewer than 25 5x5 patches, "
            "so the 25 singular values of f3 are undefined; use a larger image (e.g. 84x84 or more)"
        )
    padded = F.pad(img, (0, 5 * cols - w, 0, 5 * rows - h))
    patches = padded.unfold(1, 5, 5).unfold(2, 5, 5).reshape(n, rows * cols, 25)
    return torch.linalg.svdvals(patches.transpose(1, 2))


def spatial_svd_features(levels: list[torch.Tensor]) -> torch.Tensor:
    """f3 (N, 75) from the spatial pyramid."""
    return torch.cat([_patch_svd(im) for im in levels], dim=-1)


# ----------------------------------------------------------------------------------------------
# f2: steerable pyramid (matlabPyrTools buildSFpyr, height 2, order 5) and GSM statistics
# ----------------------------------------------------------------------------------------------
def _point_op(values: np.ndarray, lut: np.ndarray, origin: float, increment: float) -> np.ndarray:
    """matlabPyrTools ``pointOp`` MEX: linear interpolation in a table, linear extrapolation."""
    pos = (values - origin) / increment
    index = np.clip(np.trunc(pos), 0, lut.size - 2).astype(np.int64)
    return lut[index] + (lut[index + 1] - lut[index]) * (pos - index)


def _rcos_fn(width: float = 1.0, position: float = -0.5) -> tuple[np.ndarray, np.ndarray]:
    sz = 256
    x = np.pi * np.arange(-sz - 1, 2) / (2 * sz)
    y = np.cos(x) ** 2
    y[0] = y[1]
    y[sz + 2] = y[sz + 1]
    x = position + (2 * width / np.pi) * (x + np.pi / 4)
    return x, y


@lru_cache(maxsize=8)
def _sf_masks(rows: int, cols: int) -> dict:
    """Frequency masks of buildSFpyr(im, 2, 5) for one image size (numpy, float64)."""
    nbands, order = 6, 5
    ctr = (math.ceil((rows + 0.5) / 2), math.ceil((cols + 0.5) / 2))  # 1-based
    xr = (np.arange(1, cols + 1) - ctr[1]) / (cols / 2)
    yr = (np.arange(1, rows + 1) - ctr[0]) / (rows / 2)
    xramp, yramp = np.meshgrid(xr, yr)
    angle = np.arctan2(yramp, xramp)
    log_rad = np.sqrt(xramp**2 + yramp**2)
    log_rad[ctr[0] - 1, ctr[1] - 1] = log_rad[ctr[0] - 1, ctr[1] - 2]
    log_rad = np.log2(log_rad)

    xrcos, yrcos = _rcos_fn()
    yrcos = np.sqrt(yrcos)
    yircos = np.sqrt(1.0 - yrcos**2)
    inc = xrcos[1] - xrcos[0]
    masks = {
        "lo0": _point_op(log_rad, yircos, xrcos[0], inc),
        "hi0": _point_op(log_rad, yrcos, xrcos[0], inc),
        "levels": [],
    }

    lutsize = 1024
    xcosn = np.pi * np.arange(-(2 * lutsize + 1), lutsize + 2) / lutsize
    const = (2 ** (2 * order)) * (math.factorial(order) ** 2) / (nbands * math.factorial(2 * order))
    ycosn = np.sqrt(const) * np.cos(xcosn) ** order
    dims = (rows, cols)
    for _ in range(2):
        xrcos = xrcos - 1.0  # log2(2)
        inc = xrcos[1] - xrcos[0]
        himask = _point_op(log_rad, yrcos, xrcos[0], inc)
        bands = [
            _point_op(angle, ycosn, xcosn[0] + np.pi * b / nbands, xcosn[1] - xcosn[0]) * himask
            for b in range(nbands)
        ]
        ctr = [math.ceil((d + 0.5) / 2) for d in dims]
        lodims = [math.ceil((d - 0.5) / 2) for d in dims]
        loctr = [math.ceil((d + 0.5) / 2) for d in lodims]
        start = [c - lc for c, lc in zip(ctr, loctr)]  # 0-based lostart
        sl = (slice(start[0], start[0] + lodims[0]), slice(start[1], start[1] + lodims[1]))
        log_rad = log_rad[sl]
        angle = angle[sl]
        lomask = _point_op(log_rad, np.abs(np.sqrt(1.0 - yrcos**2)), xrcos[0], inc)
        masks["levels"].append({"bands": np.stack(bands), "crop": sl, "lo": lomask})
        dims = tuple(lodims)
    return masks


def _steerable_pyramid(im: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(hi0 (N, R, C), [scale-1 bands (N, 6, R, C), scale-2 bands (N, 6, R2, C2)]) of buildSFpyr(im, 2, 5)."""
    rows, cols = im.shape[-2:]
    masks = _sf_masks(rows, cols)

    def tens(a):
        return torch.from_numpy(np.ascontiguousarray(a)).to(device=im.device, dtype=_DTYPE)

    imdft = torch.fft.fftshift(torch.fft.fft2(im), dim=(-2, -1))
    hi0 = torch.fft.ifft2(torch.fft.ifftshift(imdft * tens(masks["hi0"]), dim=(-2, -1))).real
    lodft = imdft * tens(masks["lo0"])
    bands = []
    for level in masks["levels"]:
        banddft = (-1j) * lodft[:, None] * tens(level["bands"])[None]  # (-i)^order, order 5
        bands.append(torch.fft.ifft2(torch.fft.ifftshift(banddft, dim=(-2, -1))).real)
        lodft = lodft[(slice(None),) + level["crop"]] * tens(level["lo"])
    return hi0, bands


def _imresize(x: torch.Tensor, **kw) -> torch.Tensor:
    from perceptsr.data.imresize import imresize

    return imresize(x, **kw)


def _divisive_normalization(bands: list[torch.Tensor]) -> list[torch.Tensor]:
    """``norm_sender_normalized(pyr, pind, 2, 6, 1, 1, 3, 3, 50)``: 12 normalised subbands (N, h, w)."""
    nor, guardband = 6, 16
    out = []
    for scale in range(2):
        level = bands[scale]
        n, _, nsy, nsx = level.shape
        nblv, nblh = nsy - 2, nsx - 2
        nexp = nblv * nblh
        # neighbours from the other orientations, shared by all bands of this scale
        inner = level[:, :, 1 : 1 + nblv, 1 : 1 + nblh].reshape(n, nor, nexp)
        for orien in range(nor):
            aux = level[:, orien]
            # parent: only where nband < Nband - Nor, i.e. scale 1 orientations 1..5 (1-based)
            prnt = scale == 0 and orien < nor - 1
            cols = [aux[:, 1 - ny : 1 - ny + nblv, 1 - nx : 1 - nx + nblh].reshape(n, nexp)
                    for ny in (-1, 0, 1) for nx in (-1, 0, 1)]
            if prnt:
                auxp = _imresize(bands[scale + 1][:, orien], scale=2)[:, :nsy, :nsx]
                cols.append(auxp[:, 1 : 1 + nblv, 1 : 1 + nblh].reshape(n, nexp))
            cols.extend(inner[:, k] for k in range(nor) if k != orien)
            y = torch.stack(cols, dim=-1)  # (N, nexp, k)
            divisor = 9 + int(prnt)  # N of the original: block size plus parent, not the neighbours

            c_x = y.transpose(1, 2) @ y / nexp
            lam, q = torch.linalg.eigh(c_x)
            pos = lam * (lam > 0)
            pos_sum = pos.sum(-1, keepdim=True)
            lam = pos * lam.sum(-1, keepdim=True) / (pos_sum + (pos_sum == 0).to(lam))
            c_x = q @ torch.diag_embed(lam) @ q.transpose(1, 2)
            p_inv = torch.linalg.pinv(c_x)

            o_c = aux[:, 1 : 1 + nblv, 1 : 1 + nblh].reshape(n, nexp)
            o_c = o_c - o_c.mean(-1, keepdim=True)
            z = (((y @ p_inv) * y) / divisor).sum(-1).sqrt()
            g_c = (o_c / z).reshape(n, nblv, nblh)
            gb = guardband // (2**scale)
            g_c = g_c[:, gb:-gb, gb:-gb]
            out.append(g_c - g_c.mean(dim=(-2, -1), keepdim=True))
    return out


@lru_cache(maxsize=2)
def _gauss1d(size: int, sigma: float) -> tuple[float, ...]:
    """1-D factor of ``fspecial('gaussian', size, sigma)`` (the 2-D window is its outer product)."""
    half = (size - 1) / 2
    x = np.arange(-half, half + 1)
    g = np.exp(-(x * x) / (2 * sigma * sigma))
    return tuple((g / g.sum()).tolist())


def _filter2_valid_separable(x: torch.Tensor, w: tuple[float, ...]) -> torch.Tensor:
    """``filter2(w' * w, x, 'valid')`` on (..., H, W) as two 1-D passes (fast in float64 on CPU)."""
    k = len(w)
    h, wd = x.shape[-2:]
    y = x[..., : wd - k + 1] * w[0]
    for i in range(1, k):
        y.add_(x[..., i : i + wd - k + 1], alpha=w[i])
    z = y[..., : h - k + 1, :] * w[0]
    for i in range(1, k):
        z.add_(y[..., i : i + h - k + 1, :], alpha=w[i])
    return z


class _SsimStats:
    """Local mean and variance of one image for ``ssim_index_new`` (11x11 Gaussian, sigma 1.5, valid)."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x
        self.mu = _filter2_valid_separable(x, _gauss1d(11, 1.5))
        self.var = _filter2_valid_separable(x * x, _gauss1d(11, 1.5)) - self.mu * self.mu


def _ssim_cs(a: _SsimStats, b: _SsimStats) -> torch.Tensor:
    """Third output of ``ssim_index_new``: mean of (2 sigma12 + C2) / (sigma1^2 + sigma2^2 + C2), K2 = 0.03, L = 255."""
    c2 = (0.03 * 255) ** 2
    s12 = _filter2_valid_separable(a.x * b.x, _gauss1d(11, 1.5)) - a.mu * b.mu
    return ((2 * s12 + c2) / (a.var + b.var + c2)).mean(dim=(-2, -1))


def global_gsm_features(im255: torch.Tensor) -> torch.Tensor:
    """f2 (N, 45) of ``global_gsm.m`` on (N, H, W) images in 0..255."""
    hi0, bands = _steerable_pyramid(im255)
    subbands = _divisive_normalization(bands)
    n = im255.shape[0]
    feats = [_ggd_shape(sb.reshape(n, -1)) for sb in subbands]
    feats += [
        _ggd_shape(torch.cat([subbands[i].reshape(n, -1), subbands[i + 6].reshape(n, -1)], dim=-1))
        for i in range(6)
    ]
    rows, cols = hi0.shape[-2:]
    hp = _SsimStats(hi0)
    for scale in range(2):
        band = bands[scale]
        if band.shape[-2:] != (rows, cols):  # same-size imresize is the identity
            band = _imresize(band, output_shape=(rows, cols))
        for orien in range(6):
            feats.append(_ssim_cs(_SsimStats(band[:, orien]), hp))
    first = [_SsimStats(sb) for sb in subbands[:6]]
    for i in range(6):
        for j in range(i + 1, 6):
            feats.append(_ssim_cs(first[i], first[j]))
    return torch.stack(feats, dim=-1)


# ----------------------------------------------------------------------------------------------
# public entry point
# ----------------------------------------------------------------------------------------------
def ma_features(images):
    """Ma et al. features ``(f1, f2, f3)`` of shapes (N, 18), (N, 45), (N, 75), float64.

    ``images``: gray / Y images in [0, 1] as (H, W), (N, H, W) or (N, 1, H, W), numpy (uint8 is
    divided by 255) or torch (any device). The official protocol uses the uint8-rounded Y channel
    (MATLAB ``rgb2ycbcr``) with 4 pixels shaved; this function takes the image as given. Images of
    a batch share one size. NumPy input gives NumPy output.
    """
    x, is_numpy = _to_batch(images)
    levels = _spatial_pyramid(x)
    f1 = local_dct_features(levels)
    f3 = spatial_svd_features(levels)
    f2 = global_gsm_features(x * 255.0)
    bad = ~torch.isfinite(f2).all(dim=-1)
    if bool(bad.any()):
        idx = bad.nonzero().flatten().tolist()
        raise MetricInputError(
            f"ma_features: image(s) {idx} have no texture for the steerable-pyramid statistics (flat image?)"
        )
    if is_numpy:
        return f1.cpu().numpy(), f2.cpu().numpy(), f3.cpu().numpy()
    return f1, f2, f3
