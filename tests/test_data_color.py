"""MATLAB colour conversions, modcrop and uint8 quantisation, on NumPy and torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from perceptsr.data import modcrop, quantize, rgb2gray, rgb2ycbcr, to_uint8, ycbcr2rgb


def _rgb(shape=(5, 7, 3), seed=0):
    return np.random.default_rng(seed).random(shape)


def test_ycbcr_extremes_float():
    black, white = np.zeros((1, 1, 3)), np.ones((1, 1, 3))
    np.testing.assert_allclose(rgb2ycbcr(black)[0, 0], [16 / 255, 128 / 255, 128 / 255], atol=1e-12)
    np.testing.assert_allclose(rgb2ycbcr(white)[0, 0], [235 / 255, 128 / 255, 128 / 255], atol=1e-12)
    red = np.array([[[1.0, 0, 0]]])
    np.testing.assert_allclose(rgb2ycbcr(red)[0, 0] * 255, [16 + 65.481, 128 - 37.797, 128 + 112], atol=1e-9)


def test_y_only_formula_and_shape():
    img = _rgb().astype(np.float32)
    y = rgb2ycbcr(img, y_only=True)
    assert y.shape == (5, 7) and y.dtype == np.float32
    ref = 16 / 255 + (65.481 * img[..., 0] + 128.553 * img[..., 1] + 24.966 * img[..., 2]) / 255
    np.testing.assert_allclose(y, ref, rtol=1e-6)
    np.testing.assert_allclose(y, rgb2ycbcr(img)[..., 0], rtol=1e-6)


def test_uint8_rounding_matches_matlab():
    img = (np.random.default_rng(1).integers(0, 256, size=(6, 6, 3))).astype(np.uint8)
    got = rgb2ycbcr(img)
    assert got.dtype == np.uint8
    f = img.astype(np.float64)
    y = 16 + (65.481 * f[..., 0] + 128.553 * f[..., 1] + 24.966 * f[..., 2]) / 255
    np.testing.assert_array_equal(got[..., 0], np.floor(y + 0.5))
    assert rgb2ycbcr(img, y_only=True).dtype == np.uint8
    white = np.array([[[255, 255, 255]]], np.uint8)
    np.testing.assert_array_equal(rgb2ycbcr(white)[0, 0], [235, 128, 128])


def test_round_trip():
    img = _rgb(seed=2)
    np.testing.assert_allclose(ycbcr2rgb(rgb2ycbcr(img)), img, atol=1e-12)
    u8 = (img * 255).round().astype(np.uint8)
    back = ycbcr2rgb(rgb2ycbcr(u8))
    assert back.dtype == np.uint8
    assert np.abs(back.astype(int) - u8).max() <= 2


def test_rgb2gray_coefficients():
    img = _rgb(seed=3)
    ref = img @ np.array([0.298936021293775, 0.587043074451121, 0.114020904255103])
    np.testing.assert_allclose(rgb2gray(img), ref, atol=1e-15)
    u8 = (img * 255).astype(np.uint8)
    np.testing.assert_array_equal(rgb2gray(u8), np.floor(u8.astype(np.float64) @ np.array(
        [0.298936021293775, 0.587043074451121, 0.114020904255103]) + 0.5))


@pytest.mark.parametrize("fn", [rgb2ycbcr, ycbcr2rgb, rgb2gray, lambda x: rgb2ycbcr(x, y_only=True)])
def test_torch_matches_numpy(fn):
    img = _rgb((2, 4, 5, 3), seed=4)
    t = torch.from_numpy(img).permute(0, 3, 1, 2).float()
    out = fn(t)
    assert out.dtype == torch.float32 and out.shape[0] == 2 and out.shape[-2:] == (4, 5)
    for i in range(2):
        ref = fn(img[i])
        ref = ref[..., None] if ref.ndim == 2 else ref
        np.testing.assert_allclose(out[i].permute(1, 2, 0).numpy(), ref, atol=1e-6)
    np.testing.assert_allclose(fn(t[0]).numpy(), out[0].numpy(), atol=1e-7)  # (C, H, W) too


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        rgb2ycbcr(np.zeros((4, 4)))
    with pytest.raises(ValueError, match=r"3, H, W"):
        rgb2gray(torch.zeros(1, 1, 4, 4))
    with pytest.raises(TypeError):
        rgb2ycbcr(np.zeros((2, 2, 3), np.int32))


def test_modcrop():
    img = np.zeros((10, 13, 3))
    assert modcrop(img, 4).shape == (8, 12, 3)
    assert modcrop(img[..., 0], 3).shape == (9, 12)
    t = torch.arange(2 * 3 * 10 * 13).reshape(2, 3, 10, 13)
    cropped = modcrop(t, 4)
    assert cropped.shape == (2, 3, 8, 12)
    assert torch.equal(cropped, t[..., :8, :12])  # keeps the top-left corner
    with pytest.raises(ValueError):
        modcrop(img, 0)


def test_quantize_and_to_uint8():
    # 0.5 and 2.5 grey levels round half away from zero (MATLAB), not to even as numpy.round does
    x = np.array([0.0, 0.5 / 255, 2.5 / 255, 0.2, 1.0, 1.3, -0.1], dtype=np.float64)
    assert (x[1:3] * 255).tolist() == [0.5, 2.5]
    expect = np.array([0, 1, 3, 51, 255, 255, 0])
    np.testing.assert_array_equal(to_uint8(x), expect)
    q = quantize(x.astype(np.float32))
    assert q.dtype == np.float32
    np.testing.assert_allclose(q, expect / 255, atol=1e-7)
    qt = quantize(torch.tensor([0.2, 0.7, 1.2]))
    torch.testing.assert_close(qt, torch.tensor([51 / 255, 179 / 255, 1.0]))
    with pytest.raises(TypeError):
        quantize(np.zeros(3, np.uint8))
