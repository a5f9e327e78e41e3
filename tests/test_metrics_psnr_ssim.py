"""PSNR and SSIM against float64 references written here with MATLAB conventions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from perceptsr.metrics import create_metric


def ref_psnr(a: np.ndarray, b: np.ndarray) -> float:
    """MATLAB psnr on [0, 1] doubles: 10 log10(1 / mean((a - b)^2)) over all samples."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def _window() -> np.ndarray:
    r = np.arange(11) - 5.0
    w = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * 1.5**2))
    return w / w.sum()  # fspecial('gaussian', 11, 1.5)


def _filter2_valid(img: np.ndarray, w: np.ndarray) -> np.ndarray:
    """MATLAB filter2(w, img, 'valid') by explicit summation (float64)."""
    k = w.shape[0]
    h, wd = img.shape[0] - k + 1, img.shape[1] - k + 1
    out = np.zeros((h, wd))
    for i in range(k):
        for j in range(k):
            out += w[i, j] * img[i : i + h, j : j + wd]
    return out


def ref_ssim_channel(a: np.ndarray, b: np.ndarray) -> float:
    """ssim_index.m / BasicSR _ssim: values on [0, 255], K = (0.01, 0.03), 'valid'."""
    a = a.astype(np.float64) * 255
    b = b.astype(np.float64) * 255
    w = _window()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu1, mu2 = _filter2_valid(a, w), _filter2_valid(b, w)
    s11 = _filter2_valid(a * a, w) - mu1**2
    s22 = _filter2_valid(b * b, w) - mu2**2
    s12 = _filter2_valid(a * b, w) - mu1 * mu2
    smap = ((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1**2 + mu2**2 + c1) * (s11 + s22 + c2))
    return float(smap.mean())


def ref_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """(C, H, W) arrays: mean of per-channel SSIM."""
    return float(np.mean([ref_ssim_channel(a[c], b[c]) for c in range(a.shape[0])]))


def _images(n=3, c=3, h=40, w=52, seed=0):
    """Smooth structured images plus noise, quantised to uint8 like files."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    base = 0.5 + 0.4 * torch.sin(6 * xx + 3 * yy)[None, None]
    hr = (base + 0.1 * torch.rand(n, c, h, w, generator=g)).clamp(0, 1)
    sr = (hr + 0.08 * torch.randn(n, c, h, w, generator=g)).clamp(0, 1)
    q = lambda t: torch.floor(t * 255 + 0.5) / 255
    return q(sr), q(hr)


@pytest.mark.parametrize("color", ["rgb", "y", "gray"])
def test_ssim_matches_float64_reference(color):
    from perceptsr.data.color import rgb2gray, rgb2ycbcr

    sr, hr = _images()
    got = create_metric("ssim", color=color)(sr, hr)
    conv = {"rgb": lambda t: t, "y": lambda t: rgb2ycbcr(t.double(), y_only=True),
            "gray": lambda t: rgb2gray(t.double())}[color]
    a, b = conv(sr).double().numpy(), conv(hr).double().numpy()
    want = [ref_ssim(a[i], b[i]) for i in range(a.shape[0])]
    np.testing.assert_allclose(got.double().numpy(), want, rtol=0, atol=1e-6)


def test_ssim_float64_input_is_tighter():
    sr, hr = _images(n=2, c=1)
    got = create_metric("ssim")(sr.double(), hr.double())
    want = [ref_ssim(sr[i].double().numpy(), hr[i].double().numpy()) for i in range(2)]
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-12)


def test_ssim_matches_skimage_gaussian():
    skm = pytest.importorskip("skimage.metrics")
    sr, hr = _images(n=1, c=1, h=64, w=48)
    a, b = sr[0, 0].double().numpy() * 255, hr[0, 0].double().numpy() * 255
    want = skm.structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=False, data_range=255)
    got = float(create_metric("ssim")(sr, hr))
    assert abs(got - want) < 1e-6


def test_ssim_real_image_and_crop(benchmark_dir):
    from PIL import Image

    arr = np.asarray(Image.open(benchmark_dir / "Set5" / "HR" / "butterfly.png").convert("RGB"))
    hr = torch.from_numpy(arr.copy()).permute(2, 0, 1)[None].float() / 255
    g = torch.Generator().manual_seed(1)
    sr = (torch.floor((hr + 0.03 * torch.randn(hr.shape, generator=g)).clamp(0, 1) * 255 + 0.5)) / 255
    m = create_metric("ssim", preset="sr-y", scale=4)
    from perceptsr.data.color import rgb2ycbcr

    a = rgb2ycbcr(sr.double(), y_only=True)[0, 0, 4:-4, 4:-4].numpy()
    b = rgb2ycbcr(hr.double(), y_only=True)[0, 0, 4:-4, 4:-4].numpy()
    assert abs(float(m(sr, hr)) - ref_ssim_channel(a, b)) < 1e-6
    p = create_metric("psnr", preset="sr-y", scale=4)
    assert abs(float(p(sr, hr)) - ref_psnr(a, b)) < 1e-4


def test_psnr_matches_reference():
    sr, hr = _images()
    got = create_metric("psnr")(sr, hr).double().numpy()
    want = [ref_psnr(sr[i].numpy(), hr[i].numpy()) for i in range(sr.shape[0])]
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_identical_images():
    _, hr = _images(n=2)
    assert torch.isinf(create_metric("psnr")(hr, hr)).all()
    assert torch.equal(create_metric("psnr", cap=100)(hr, hr), torch.full((2,), 100.0))
    torch.testing.assert_close(create_metric("ssim")(hr, hr), torch.ones(2), atol=1e-6, rtol=0)


def test_batch_equals_single():
    sr, hr = _images(n=4)
    for name in ("psnr", "ssim"):
        m = create_metric(name, color="y")
        batch = m(sr, hr)
        single = torch.cat([m(sr[i : i + 1], hr[i : i + 1]) for i in range(4)])
        torch.testing.assert_close(batch, single, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ["psnr", "ssim"])
def test_gradients(name):
    sr, hr = _images(n=1, c=3, h=16, w=16)
    x = sr.double().clamp(0.05, 0.95).requires_grad_(True)
    m = create_metric(name, as_loss=True)
    torch.autograd.gradcheck(lambda t: m(t, hr.double()), (x,), eps=1e-6, atol=1e-5)
