"""NIQE exactly as the LIVE release (``computequality.m``), batched and vectorised in torch.

This is the NIQE of RankSRGAN, PIRM 2018 and BasicSR's MATLAB reference, **not** MATLAB's built-in
``niqe()`` (other pristine parameters, other values). Per image (values on [0, 255], float64):

1. crop to a multiple of 96 from the top-left;
2. at two scales (the second is MATLAB-exact bicubic ``imresize(im, 0.5)``, with antialiasing):
   ``mu = G*I``, ``sigma = sqrt(|G*I^2 - mu^2|)`` with G the normalised 7x7 Gaussian (sigma 7/6)
   and replicate padding; MSCN = ``(I - mu) / (sigma + 1)``;
3. per 96x96 block (48x48 at scale 2), 18 features: the AGGD fit of the MSCN (alpha, mean of
   beta_l and beta_r), then for the circular shifts (0,1), (1,0), (1,1), (-1,1) of the block the
   AGGD fit of MSCN x shifted MSCN (alpha, (beta_r - beta_l) G(2/a)/G(1/a), beta_l, beta_r); alpha
   is the argmin over the grid 0.2:0.001:10 (found with a sorted lookup giving the same index);
4. NIQE = sqrt((mu_p - mu_d) pinv((S_p + S_d)/2) (mu_p - mu_d)^T) with mu_d = nanmean and
   S_d = nancov (rows with a NaN dropped) of the 36-d block features.

Default protocol: ``color="y"`` (MATLAB ``rgb2ycbcr`` Y), ``round_uint8=True`` (the uint8 image
MATLAB code reads), no crop; preset ``pirm`` adds the 4-px shave of the PIRM/RankSRGAN scripts.
``color="gray"`` reproduces ``computequality`` called directly on an RGB uint8 image.

The Gaussian filter is MATLAB's own arithmetic by default (``flat_mode="matlab"``, see
:mod:`perceptsr.metrics.matlab_filter`): ``imfilter`` on this window takes MATLAB's separable path
(SVD-factored taps with their rounding, column pass first, conv2's tap order, one fused
multiply-add per tap), so ``mu`` is MATLAB's bit for bit. That matters in perfectly flat 7x7
neighbourhoods (sky, saturated areas, flat GAN output) and in neighbourhoods whose weighted mean
equals the centre exactly (linear ramps): there ``I - mu`` is 0 or +-1e-14 depending on those
last bits, and the sign decides the AGGD's left/right counts, moving NIQE by up to a few percent.
It reproduces MATLAB R2021a's published baboon value to 1e-7. The earlier filters stay available
as ``flat_mode="2d"`` (gain of the 2-D window; close to the Octave run of the LIVE code, whose
``imfilter`` is not MATLAB's) and ``"exact"`` (exactly normalised taps). On images without such
neighbourhoods all three agree to about 1e-12.
"""

from __future__ import annotations

import functools
import math
import os

import numpy as np
import torch
import torch.nn.functional as F

from perceptsr.errors import AssetError, ConfigError, MetricInputError
from perceptsr.metrics.base import Metric
from perceptsr.metrics.matlab_filter import imfilter_gauss7

__all__ = ["NIQE", "niqe", "fit_niqe_params", "load_niqe_params", "mscn", "aggd_features"]

BLOCK = 96
FLAT_MODES = ("matlab", "2d", "exact")
_SHIFTS = ((0, 1), (1, 0), (1, 1), (-1, 1))
_GAUSS7 = None


def _gauss7() -> tuple[list[float], float]:
    """1-D taps of ``fspecial('gaussian', 7, 7/6)`` and the gain of the MATLAB 2-D window.

    The LIVE code filters with the 2-D window normalised twice (``fspecial`` and then
    ``window/sum(sum(window))``); in double precision its entries sum to just below 1
    (1 - 2.2e-16 summed left to right), not exactly 1.
    That gain decides the sign of ``I - mu`` in perfectly flat regions (tiny but nonzero, so
    those pixels count in the AGGD's left/right statistics); our exact separable taps would give
    exact zeros there, which moves NIQE by up to ~1% on images with saturated areas. So the
    separable result is multiplied by the 2-D window's floating-point sum.
    """
    global _GAUSS7
    if _GAUSS7 is None:
        r = np.arange(7, dtype=np.float64) - 3
        g = np.exp(-(r * r) / (2 * (7 / 6) ** 2))
        h = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * (7 / 6) ** 2))
        h = h / _seqsum(h.flatten(order="F"))  # fspecial
        h = h / _seqsum(h.sum(axis=0))  # window/sum(sum(window))
        _GAUSS7 = ((g / g.sum()).tolist(), _seqsum(h.flatten(order="F")))
    return _GAUSS7


def _seqsum(values) -> float:
    """Left-to-right double sum (MATLAB ``sum`` order for short vectors)."""
    total = 0.0
    for v in values:
        total += float(v)
    return total


@functools.lru_cache(maxsize=8)
def _aggd_tables(device: str) -> dict[str, torch.Tensor]:
    """The alpha grid and per-alpha Gamma ratios, float64, on ``device``."""
    from scipy.special import gamma

    grid = 0.2 + 0.001 * np.arange(9801, dtype=np.float64)  # MATLAB 0.2:0.001:10
    r = gamma(2 / grid) ** 2 / (gamma(1 / grid) * gamma(3 / grid))
    if not np.all(np.diff(r) > 0):  # the sorted lookup needs a strictly increasing table
        raise RuntimeError("NIQE: r(alpha) table is not strictly increasing")
    tables = {
        "alpha": grid,
        "r": r,
        "beta_scale": np.sqrt(gamma(1 / grid) / gamma(3 / grid)),
        "mean_scale": gamma(2 / grid) / gamma(1 / grid),
    }
    return {k: torch.from_numpy(v).to(device) for k, v in tables.items()}


def _filter_same(x: torch.Tensor, taps: list[float], gain: float = 1.0) -> torch.Tensor:
    """``imfilter(x, gain * outer(taps, taps), 'replicate')`` for ``(N, H, W)``, separable."""
    k = len(taps)
    p = k // 2
    xp = F.pad(x[:, None], (p, p, p, p), mode="replicate")[:, 0]
    w = x.shape[-1]
    h = x.shape[-2]
    row = xp[..., 0:w] * taps[0]
    for i in range(1, k):
        row.add_(xp[..., i : i + w], alpha=taps[i])
    out = row[..., 0:h, :] * taps[0]
    for i in range(1, k):
        out.add_(row[..., i : i + h, :], alpha=taps[i])
    if gain != 1.0:
        out.mul_(gain)
    return out


def _mscn_and_sigma(im: torch.Tensor, flat_mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    if flat_mode == "matlab":
        mu = imfilter_gauss7(im)
        sigma = (imfilter_gauss7(im * im) - mu * mu).abs_().sqrt_()
    elif flat_mode in ("2d", "exact"):
        taps, gain = _gauss7()
        if flat_mode == "exact":
            gain = 1.0
        mu = _filter_same(im, taps, gain)
        sigma = (_filter_same(im * im, taps, gain) - mu * mu).abs_().sqrt_()
    else:
        raise ConfigError(f"niqe: flat_mode must be one of {FLAT_MODES}, got {flat_mode!r}")
    return (im - mu).div_(sigma + 1), sigma


def mscn(im: torch.Tensor, flat_mode: str = "matlab") -> torch.Tensor:
    """Mean-subtracted contrast-normalised coefficients of ``(N, H, W)`` [0, 255] images.

    ``flat_mode="matlab"`` filters as MATLAB's ``imfilter`` does (bit for bit);
    ``"2d"`` applies the 2-D window's floating-point gain (see :func:`_gauss7`);
    ``"exact"`` uses exactly normalised taps (exact zeros in flat regions).
    """
    return _mscn_and_sigma(im, flat_mode)[0]


def _half(im: torch.Tensor) -> torch.Tensor:
    """MATLAB ``imresize(im, 0.5)`` of ``(N, H, W)`` float64 images, bit for bit as
    :func:`perceptsr.data.imresize.imresize` (same products and additions in the same order).

    For even sizes every output row uses the same 8 dyadic taps (-3, -9, 29, 111, 111, 29, -9,
    -3)/256 on a mirrored, stride-2 window, so one gather of the mirrored rows and eight strided
    slices replace imresize's eight gathers per axis.
    """
    from perceptsr.data.imresize import contributions, imresize

    out = im
    for dim in (-2, -1):  # MATLAB's order for equal scales: rows first
        n = out.shape[dim]
        m = (n + 1) // 2
        weights, indices = contributions(n, m, 0.5)
        taps = weights.shape[1]
        padded = np.full(2 * (m - 1) + taps, -1, dtype=np.int64)
        pos = 2 * np.arange(m)[:, None] + np.arange(taps)[None, :]
        padded[pos] = indices
        regular = (padded >= 0).all() and np.array_equal(padded[pos], indices)
        if not (regular and (weights == weights[0]).all()):
            return imresize(im, 0.5)  # not the regular layout: the general implementation
        src = out.index_select(dim, torch.from_numpy(padded).to(out.device))
        every2 = (slice(None),) * (src.ndim + dim) + (slice(None, None, 2),)
        w = weights[0].tolist()
        res = src.narrow(dim, 0, 2 * m - 1)[every2] * w[0]
        tmp = torch.empty_like(res)
        for p in range(1, taps):
            res.add_(torch.mul(src.narrow(dim, p, 2 * m - 1)[every2], w[p], out=tmp))  # no FMA, as imresize
        out = res
    return out


def _aggd(v: torch.Tensor, tables: dict[str, torch.Tensor]):
    """AGGD fit of each row of ``v`` (..., L) as ``estimateaggdparam.m``: (alpha, beta_l, beta_r, idx)."""
    n = v.shape[-1]
    parts = v.new_empty((2,) + v.shape)  # [max(v, 0), min(v, 0)]: one call per statistic
    torch.clamp(v, min=0, out=parts[0])
    torch.sub(v, parts[0], out=parts[1])  # min(v, 0), exactly
    s_pos2, s_neg2 = torch.linalg.vector_norm(parts, dim=-1).square_()  # one pass, no temporary
    s_pos, s_neg = parts.sum(-1)
    s_abs = s_pos - s_neg
    n_pos, n_neg = parts.sign_().sum(-1)  # exact counts (+-1 or 0); faster than count_nonzero
    n_neg = -n_neg
    leftstd = (s_neg2 / n_neg).sqrt()  # 0/0 = NaN, as mean([]) in MATLAB
    rightstd = (s_pos2 / n_pos).sqrt()
    g = leftstd / rightstd
    rhat = (s_abs / n) ** 2 / ((s_pos2 + s_neg2) / n)
    rnorm = rhat * (g**3 + 1) * (g + 1) / (g**2 + 1) ** 2
    r = tables["r"]
    idx = torch.searchsorted(r, rnorm.contiguous())
    hi = idx.clamp(max=r.numel() - 1)
    lo = (idx - 1).clamp(min=0)
    pick_lo = (r[lo] - rnorm) ** 2 <= (r[hi] - rnorm) ** 2  # MATLAB min: first index on ties
    idx = torch.where(pick_lo, lo, hi)
    # MATLAB's min over an all-NaN (or all-Inf) vector returns the first index: alpha = 0.2.
    idx = torch.where(torch.isfinite(rnorm), idx, torch.zeros_like(idx))
    scale = tables["beta_scale"][idx]
    return tables["alpha"][idx], leftstd * scale, rightstd * scale, idx


def _circshift_slices(shift: int, b: int):
    """(destination, source) index pairs giving MATLAB ``circshift`` by ``shift`` along one axis."""
    if shift == 0:
        return [(slice(None), slice(None))]
    if shift == 1:  # out[i] = in[i - 1]
        return [(slice(1, None), slice(0, b - 1)), (slice(0, 1), slice(b - 1, b))]
    if shift == -1:  # out[i] = in[i + 1]
        return [(slice(0, b - 1), slice(1, None)), (slice(b - 1, b), slice(0, 1))]
    raise ValueError(shift)


def aggd_features(blocks: torch.Tensor, tables: dict[str, torch.Tensor]) -> torch.Tensor:
    """18 NIQE features of each MSCN block: ``(..., b, b)`` -> ``(..., 18)`` (``computefeature.m``).

    The products with the circularly shifted block are written straight into one buffer
    (``torch.roll`` plus ``stack`` would copy every block twice more).
    """
    b = blocks.shape[-1]
    v = blocks.new_empty(*blocks.shape[:-2], 5, b, b)
    v[..., 0, :, :] = blocks
    for k, (dr, dc) in enumerate(_SHIFTS, start=1):
        out = v[..., k, :, :]
        for rows_out, rows_in in _circshift_slices(dr, b):
            for cols_out, cols_in in _circshift_slices(dc, b):
                torch.mul(blocks[..., rows_out, cols_out], blocks[..., rows_in, cols_in],
                          out=out[..., rows_out, cols_out])
    alpha, bl, br, idx = _aggd(v.flatten(-2), tables)
    mean_scale = tables["mean_scale"][idx]
    feats = [alpha[..., 0], (bl[..., 0] + br[..., 0]) / 2]
    for k in range(1, 5):
        feats += [alpha[..., k], (br[..., k] - bl[..., k]) * mean_scale[..., k], bl[..., k], br[..., k]]
    return torch.stack(feats, dim=-1)


def _blocks(x: torch.Tensor, b: int) -> torch.Tensor:
    n, h, w = x.shape
    return x.reshape(n, h // b, b, w // b, b).permute(0, 1, 3, 2, 4).reshape(n, -1, b, b)


def _block_rows(x: torch.Tensor, b: int) -> torch.Tensor:
    """(N, H, W) -> (N * H/b, W/b, b, b) view (no copy): rows of blocks, row-major block order."""
    n, h, w = x.shape
    return x.view(n, h // b, b, w // b, b).transpose(2, 3).flatten(0, 1)


def _features(
    im: torch.Tensor, block: int = BLOCK, flat_mode: str = "matlab", group: int = 150_000
) -> torch.Tensor:
    """(N, H, W) float64 [0, 255], H and W multiples of ``block`` -> (N, blocks, 36).

    Blocks are processed in groups of about ``group`` pixels (whole rows of blocks) so that the
    five AGGD inputs of a group stay in the CPU cache (several times faster than one pass over a
    whole batch); the blocks are read straight from the MSCN image.
    """
    tables = _aggd_tables(str(im.device))
    n = im.shape[0]
    feats = []
    for scale in (1, 2):
        b = block // scale
        rows = _block_rows(mscn(im, flat_mode).contiguous(), b)
        per_row = rows.shape[1] * b * b
        step = rows.shape[0] if im.is_cuda else max(1, group // per_row)
        parts = [aggd_features(rows[i : i + step], tables) for i in range(0, rows.shape[0], step)]
        feats.append(torch.cat(parts).reshape(n, -1, 18))
        if scale == 1:
            im = _half(im)
    return torch.cat(feats, dim=-1)


def _nan_stats(feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """MATLAB ``nanmean`` (per column) and ``nancov`` (complete rows, n-1) over dim 1."""
    nan = torch.isnan(feat)
    col_count = (~nan).sum(1)
    mean = torch.where(nan, 0.0, feat).sum(1) / col_count
    row_ok = ~nan.any(-1, keepdim=True)
    n = row_ok.sum(1).double()  # (N, 1)
    fz = torch.where(row_ok, feat, 0.0)
    mu_rows = fz.sum(1) / n
    centred = torch.where(row_ok, fz - mu_rows[:, None], 0.0)
    cov = centred.transpose(1, 2) @ centred / (n - 1)[..., None]
    return mean, cov


def niqe(
    im: torch.Tensor,
    mu_pris: torch.Tensor,
    cov_pris: torch.Tensor,
    block: int = BLOCK,
    flat_mode: str = "matlab",
) -> torch.Tensor:
    """NIQE of ``(N, H, W)`` images on [0, 255] (any float dtype; computed in float64)."""
    im = im.double()
    h = im.shape[-2] // block * block
    w = im.shape[-1] // block * block
    if (h // block) * (w // block) < 2:
        raise MetricInputError(
            f"niqe: a {im.shape[-2]}x{im.shape[-1]} image has fewer than two {block}x{block} "
            "blocks; NIQE's covariance needs at least two"
        )
    feat = _features(im[..., :h, :w].contiguous(), block, flat_mode)
    mu_d, cov_d = _nan_stats(feat)
    mu_p = mu_pris.to(feat).reshape(1, -1)
    cov_p = cov_pris.to(feat)
    inv = torch.linalg.pinv((cov_p + cov_d) / 2)
    diff = (mu_p - mu_d)[:, None, :]
    q = (diff @ inv @ diff.transpose(1, 2))[:, 0, 0]
    return q.sqrt()


def fit_niqe_params(
    images, *, block: int = BLOCK, sharpness_threshold: float = 0.75, flat_mode: str = "matlab"
) -> tuple[np.ndarray, np.ndarray]:
    """A pristine model (mu 36, cov 36x36) from your own images, as LIVE's ``estimatemodelparam.m``.

    ``images``: 2-D grey images on [0, 255] (arrays or tensors), e.g. ``rgb2gray`` of uint8 photos.
    Each is cropped to a multiple of ``block``; a block enters the model only when its mean local
    sigma (the MSCN denominator, scale 1) exceeds ``sharpness_threshold`` times the image's sharpest
    block; rows with non-finite features are dropped. ``flat_mode`` filters as in :class:`NIQE`
    (default: MATLAB's ``imfilter`` arithmetic, as ``estimatemodelparam.m`` run in MATLAB). Save with ``np.savez(path,
    mu_pris_param=mu, cov_pris_param=cov)`` and pass ``params_path`` to :class:`NIQE`.
    """
    tables = _aggd_tables("cpu")
    rows = []
    for index, image in enumerate(images):
        im = torch.as_tensor(np.asarray(image), dtype=torch.float64)
        if im.dim() != 2:
            raise MetricInputError(f"fit_niqe_params: image {index} must be 2-D (grey), got shape {tuple(im.shape)}")
        h, w = im.shape[0] // block * block, im.shape[1] // block * block
        if h == 0 or w == 0:
            raise MetricInputError(
                f"fit_niqe_params: image {index} ({im.shape[0]}x{im.shape[1]}) is smaller than one {block}x{block} block"
            )
        x = im[None, :h, :w].contiguous()
        coeffs, sigma = _mscn_and_sigma(x, flat_mode)
        sharpness = _blocks(sigma, block)[0].mean(dim=(-2, -1))
        fine = aggd_features(_blocks(coeffs, block)[0], tables)
        coarse = aggd_features(_blocks(mscn(_half(x), flat_mode), block // 2)[0], tables)
        feat = torch.cat([fine, coarse], dim=-1)
        rows.append(feat[sharpness > sharpness_threshold * sharpness.max()])
    feat = torch.cat(rows) if rows else torch.empty(0, 36, dtype=torch.float64)
    feat = feat[torch.isfinite(feat).all(dim=1)]
    if feat.shape[0] < 2:
        raise MetricInputError(
            f"fit_niqe_params: only {feat.shape[0]} usable block(s); a covariance needs at least two "
            "(give more or larger images)"
        )
    return feat.mean(0).numpy(), np.cov(feat.numpy(), rowvar=False)


def load_niqe_params(path: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(mu 36, cov 36x36) of the LIVE pristine model, from ``.mat`` (``niqe_params``) or ``.npz``.

    Without ``path``: the ``.mat`` asset if present locally, else the ``.npz`` asset, else the
    ``.mat`` is downloaded (or a clear :class:`AssetError` is raised offline).
    """
    from perceptsr.assets import asset_path, find_local

    if path is None:
        path = find_local("niqe_params") or find_local("niqe_params_npz")
    if path is None:
        try:
            path = asset_path("niqe_params")
        except AssetError as exc:
            raise AssetError(
                f"NIQE needs its pristine parameters: {exc} (the npz variant, asset "
                "'niqe_params_npz', works too)"
            ) from None
    else:
        path = asset_path("niqe_params", path)
    path = str(path)
    if path.endswith(".npz"):
        with np.load(path) as data:
            mu, cov = data["mu_pris_param"], data["cov_pris_param"]
    else:
        from scipy.io import loadmat

        data = loadmat(path)
        mu, cov = data["mu_prisparam"], data["cov_prisparam"]
    mu = np.asarray(mu, dtype=np.float64).reshape(-1)
    cov = np.asarray(cov, dtype=np.float64)
    if mu.shape != (36,) or cov.shape != (36, 36):
        raise AssetError(f"{path}: expected a 1x36 mean and a 36x36 covariance, got {mu.shape}, {cov.shape}")
    return mu, cov


class NIQE(Metric):
    """Natural Image Quality Evaluator (LIVE release; lower is better). No reference.

    ``params_path`` overrides the pristine-parameter asset (``.mat`` or ``.npz``).
    ``max_pixels`` bounds the pixels processed at once (default 1M on CPU, where small chunks stay
    in cache, and 64M on GPUs); larger batches are chunked.
    ``flat_mode``: the 7x7 Gaussian filter, which decides the value on images with perfectly flat
    7x7 neighbourhoods (saturated areas, sky, flat GAN output) and nowhere else (the modes agree
    to ~1e-12 on other images). ``"matlab"`` (default): MATLAB's ``imfilter`` arithmetic bit for
    bit (separable SVD taps, column pass first, one FMA per tap; see
    :mod:`perceptsr.metrics.matlab_filter`); reproduces MATLAB R2021a's baboon value to 1e-7.
    ``"2d"``: exact separable taps times the floating-point gain of the LIVE 2-D window (the
    previous default; closest to the Octave run of the LIVE code, within 4e-4, but Octave's
    ``imfilter`` is not MATLAB's). ``"exact"``: exactly normalised taps, flat pixels give exact
    zeros.
    """

    name = "niqe"
    lower_better = True
    full_reference = False
    differentiable = False
    min_size = BLOCK
    default_color = "y"
    default_round_uint8 = True
    allowed_colors = ("y", "gray")
    score_range = (0.0, math.inf)

    def __init__(
        self, *, params_path=None, max_pixels: int | None = None, flat_mode: str = "matlab", **kw
    ) -> None:
        super().__init__(**kw)
        if flat_mode not in FLAT_MODES:
            raise ConfigError(f"niqe: flat_mode must be one of {', '.join(map(repr, FLAT_MODES))}, got {flat_mode!r}")
        self.flat_mode = flat_mode
        mu, cov = load_niqe_params(params_path)
        self.register_buffer("mu_pris", torch.from_numpy(mu), persistent=False)
        self.register_buffer("cov_pris", torch.from_numpy(cov), persistent=False)
        self.max_pixels = None if max_pixels is None else int(max_pixels)

    def protocol_details(self) -> str:
        return ("LIVE NIQE release (not MATLAB niqe()): [0,255] float64, top-left crop to a multiple "
                "of 96, 96x96 blocks at scale 1 and 48x48 after MATLAB-bicubic imresize 0.5, "
                "7x7 Gaussian sigma 7/6 replicate, MSCN (I-mu)/(sigma+1), AGGD grid 0.2:0.001:10, "
                f"nanmean/nancov, pinv, flat_mode={self.flat_mode}")

    def compute(self, x: torch.Tensor, ref=None) -> torch.Tensor:
        im = x[:, 0].double() * 255
        if self.round_uint8:
            im = torch.round(im)
        budget = self.max_pixels or (64_000_000 if im.is_cuda else 1_000_000)
        per = max(1, budget // (im.shape[-2] * im.shape[-1]))
        out = [niqe(c, self.mu_pris, self.cov_pris, flat_mode=self.flat_mode) for c in im.split(per)]
        return torch.cat(out).to(torch.float32 if x.dtype != torch.float64 else x.dtype)
