"""NIQE on images with flat 7x7 neighbourhoods: the default (MATLAB filter) against an independent,
direct float64 implementation of the LIVE code with the spec's filter recipe, and against the
previous default on images without such neighbourhoods."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import gamma

from perceptsr.metrics.niqe import load_niqe_params, niqe

from test_niqe_matlab_filter import reference_imfilter

# ---------------------------------------------------------------------------- the reference
_GAM = np.arange(0.2, 10.0005, 0.001)  # 0.2:0.001:10
_R_GAM = gamma(2 / _GAM) ** 2 / (gamma(1 / _GAM) * gamma(3 / _GAM))


def _aggd(vec: np.ndarray):
    """estimateaggdparam.m, line by line."""
    with np.errstate(invalid="ignore", divide="ignore"):
        left = np.sqrt(np.mean(vec[vec < 0] ** 2)) if (vec < 0).any() else np.nan
        right = np.sqrt(np.mean(vec[vec > 0] ** 2)) if (vec > 0).any() else np.nan
        g = left / right
        rhat = np.mean(np.abs(vec)) ** 2 / np.mean(vec ** 2)
        rn = rhat * (g ** 3 + 1) * (g + 1) / (g ** 2 + 1) ** 2
        d = (_R_GAM - rn) ** 2
    pos = 0 if np.all(np.isnan(d)) else int(np.nanargmin(d))
    alpha = _GAM[pos]
    s = np.sqrt(gamma(1 / alpha) / gamma(3 / alpha))
    return alpha, left * s, right * s


def _computefeature(block: np.ndarray) -> list[float]:
    alpha, bl, br = _aggd(block.ravel(order="F"))
    feat = [alpha, (bl + br) / 2]
    for shift in ((0, 1), (1, 0), (1, 1), (-1, 1)):
        prod = block * np.roll(block, shift, axis=(0, 1))  # circshift
        alpha, bl, br = _aggd(prod.ravel(order="F"))
        feat += [alpha, (br - bl) * gamma(2 / alpha) / gamma(1 / alpha), bl, br]
    return feat


def _half(img: np.ndarray) -> np.ndarray:
    """imresize(img, 0.5) for even sizes: taps (-3 -9 29 111 111 29 -9 -3)/256, symmetric edges."""
    w = np.array([-3, -9, 29, 111, 111, 29, -9, -3]) / 256
    for axis in (0, 1):
        n = img.shape[axis]
        pad = [(0, 0), (0, 0)]
        pad[axis] = (3, 4)
        xp = np.pad(img, pad, mode="symmetric")
        take = lambda p: np.take(xp, np.arange(p, p + n, 2), axis=axis)  # noqa: E731
        img = sum(w[p] * take(p) for p in range(8))
    return img


def reference_niqe(img: np.ndarray, mu_p: np.ndarray, cov_p: np.ndarray, block: int = 96) -> float:
    """computequality.m with the spec's imfilter (libm fma) and NumPy everything else."""
    h, w = img.shape[0] // block * block, img.shape[1] // block * block
    im = img[:h, :w].astype(np.float64)
    feats = []
    for scale in (1, 2):
        mu = reference_imfilter(im)
        sigma = np.sqrt(np.abs(reference_imfilter(im * im) - mu * mu))
        structdis = (im - mu) / (sigma + 1)
        b = block // scale
        rows = []
        for j in range(w // block):  # blkproc: column-major block order
            for i in range(h // block):
                rows.append(_computefeature(structdis[i * b:(i + 1) * b, j * b:(j + 1) * b]))
        feats.append(np.array(rows))
        im = _half(im)
    feat = np.concatenate(feats, axis=1)
    mu_d = np.nanmean(feat, axis=0)
    cov_d = np.cov(feat[~np.isnan(feat).any(axis=1)], rowvar=False)
    diff = mu_p - mu_d
    return float(np.sqrt(diff @ np.linalg.pinv((cov_p + cov_d) / 2) @ diff))


# ---------------------------------------------------------------------------- tests
@pytest.fixture(scope="module")
def params(assets_dir):
    return load_niqe_params()


def _flat_image() -> np.ndarray:
    """192x288 uint8-valued: texture, flat areas at the spec's sensitive levels, a linear ramp."""
    rng = np.random.default_rng(2024)
    yy, xx = np.mgrid[0:192, 0:288]
    img = 120 + 60 * np.sin(xx / 9.0) * np.cos(yy / 13.0) + rng.normal(0, 12, (192, 288))
    img[10:70, 20:110] = 200
    img[100:180, 30:80] = 153
    img[120:190, 150:280] = 255
    img[20:60, 200:270] = 50
    img[75:95, 120:260] = 235
    r, c = np.mgrid[0:40, 0:60]
    img[140:180, 90:150] = 40 + r + 2 * c
    return np.clip(np.round(img), 0, 255)


def _niqe(img: np.ndarray, params, flat_mode: str = "matlab") -> float:
    mu, cov = (torch.from_numpy(a) for a in params)
    return float(niqe(torch.from_numpy(img)[None], mu, cov, flat_mode=flat_mode))


def test_flat_image_matches_independent_reference(params):
    img = _flat_image()
    want = reference_niqe(img, *params)
    got = _niqe(img, params)
    assert abs(got / want - 1) < 1e-10, (got, want)
    # the flat areas do matter: the previous filters give other values
    for mode in ("2d", "exact"):
        other = _niqe(img, params, mode)
        assert abs(other / want - 1) > 1e-4, (mode, other, want)


def _few_tiny_residuals(img: np.ndarray) -> bool:
    """No pixel at either scale with |I - mu| below 1e-9 (no flat or cancelling neighbourhood);
    any accurate filter will do for that, here SciPy's 2-D correlation."""
    from scipy.ndimage import correlate

    g = np.exp(-((np.arange(7) - 3) ** 2) / (2 * (7 / 6) ** 2))
    window = np.outer(g, g) / np.outer(g, g).sum()
    im = img[: img.shape[0] // 96 * 96, : img.shape[1] // 96 * 96]
    for _ in (1, 2):
        if (np.abs(im - correlate(im, window, mode="nearest")) < 1e-9).any():
            return False
        im = _half(im)
    return True


def test_textured_image_unchanged_from_previous_default(params):
    rng = np.random.default_rng(8)
    yy, xx = np.mgrid[0:192, 0:288]
    img = np.clip(np.round(128 + 50 * np.sin(xx / 7.0 + yy / 11.0) + rng.normal(0, 20, (192, 288))), 0, 255)
    assert _few_tiny_residuals(img)
    new, old = _niqe(img, params), _niqe(img, params, "2d")
    assert abs(new / old - 1) < 1e-9, (new, old)


BSD_FLAT_FREE = ["img_004.png", "img_010.png", "img_013.png"]  # no |I - mu| < 1e-9 anywhere


@pytest.mark.parametrize("name", BSD_FLAT_FREE)
def test_bsd100_without_flat_areas_unchanged(params, benchmark_dir, name):
    from perceptsr.data.io import read_image
    from perceptsr.metrics.base import apply_color

    x = torch.from_numpy(read_image(benchmark_dir / "BSD100" / "HR" / name)).permute(2, 0, 1)[None]
    y = (apply_color(x, "y", True)[0, 0].double() * 255).round().numpy()
    assert _few_tiny_residuals(y)
    new, old = _niqe(y, params), _niqe(y, params, "2d")
    assert abs(new / old - 1) < 1e-9, (new, old)


def test_bsd100_img088_flat_sky_matches_reference(params, benchmark_dir):
    """img_088 has ~4300 flat 7x7 neighbourhoods: the default follows the reference recipe, and the
    value moves by ~0.3% from the previous default (BasicSR's float32 port gives 2.8867, which is
    not a MATLAB value: its mu is a float32 2-D convolution)."""
    from perceptsr.data.io import read_image
    from perceptsr.metrics.base import apply_color

    x = torch.from_numpy(read_image(benchmark_dir / "BSD100" / "HR" / "img_088.png")).permute(2, 0, 1)[None]
    y = (apply_color(x, "y", True)[0, 0].double() * 255).round().numpy()
    want = reference_niqe(y, *params)
    got = _niqe(y, params)
    assert abs(got / want - 1) < 1e-10, (got, want)
    assert abs(_niqe(y, params, "2d") / want - 1) > 1e-3


def test_fit_niqe_params_uses_the_matlab_filter():
    from perceptsr.metrics.niqe import _features, fit_niqe_params

    images = [_flat_image(), _flat_image()[::-1, ::-1].copy()]
    fits = {m: fit_niqe_params(images, sharpness_threshold=-1.0, flat_mode=m) for m in ("matlab", "2d")}
    default = fit_niqe_params(images, sharpness_threshold=-1.0)
    np.testing.assert_array_equal(default[0], fits["matlab"][0])
    rows = torch.cat([_features(torch.from_numpy(im)[None], flat_mode="matlab")[0] for im in images])
    rows = rows[torch.isfinite(rows).all(dim=1)].numpy()
    np.testing.assert_allclose(default[0], rows.mean(0), rtol=1e-12)
    assert np.abs(fits["2d"][0] / default[0] - 1).max() > 1e-4  # the flat areas change the model


def test_half_resize_is_imresize_bit_for_bit():
    from perceptsr.data.imresize import imresize
    from perceptsr.metrics.niqe import _half

    rng = np.random.default_rng(4)
    for shape in [(2, 288, 480), (1, 48, 96), (1, 97, 51), (3, 10, 12)]:  # odd sizes: general path
        x = torch.from_numpy(rng.random(shape) * 255)
        for t in (x, x.round()):
            assert torch.equal(_half(t), imresize(t, 0.5)), shape


def test_emulated_fma_fallback_gives_the_same_niqe(params, monkeypatch):
    """Where torch's add(alpha=) is no FMA (e.g. ATEN_CPU_CAPABILITY=default) the emulation runs."""
    import perceptsr.metrics.matlab_filter as mf

    img = _flat_image()
    native = _niqe(img, params)
    monkeypatch.setattr(mf, "native_fma_is_exact", lambda *a, **k: False)
    assert _niqe(img, params) == native
