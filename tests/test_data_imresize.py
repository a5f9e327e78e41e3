"""imresize: exactness against a literal loop of MATLAB's formula, shapes, torch parity, MATLAB LR sanity."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from perceptsr.data import imresize
from perceptsr.data.imresize import contributions


def _cubic(t: float) -> float:
    a = abs(t)
    if a <= 1:
        return 1.5 * a**3 - 2.5 * a**2 + 1
    if a <= 2:
        return -0.5 * a**3 + 2.5 * a**2 - 4 * a + 2
    return 0.0


def _mirror(i: int, n: int) -> int:
    """Symmetric padding with the edge repeated: -1 -> 0, n -> n-1 (0-based)."""
    while not 0 <= i < n:
        i = -i - 1 if i < 0 else 2 * n - 1 - i
    return i


def _loop_axis(img: np.ndarray, axis: int, scale: float, out_len: int) -> np.ndarray:
    """Reference: one output sample at a time, straight from MATLAB's description."""
    src = np.moveaxis(img, axis, 0)
    n = src.shape[0]
    width = 4 / scale if scale < 1 else 4.0
    out = np.zeros((out_len,) + src.shape[1:])
    for x in range(1, out_len + 1):
        u = x / scale + 0.5 * (1 - 1 / scale)
        left = math.floor(u - width / 2)
        taps = [left + k for k in range(math.ceil(width) + 2)]
        if scale < 1:
            w = [scale * _cubic(scale * (u - j)) for j in taps]
        else:
            w = [_cubic(u - j) for j in taps]
        total = sum(w)
        for j, wj in zip(taps, w):
            out[x - 1] += wj / total * src[_mirror(j - 1, n)]
    return np.moveaxis(out, 0, axis)


def _loop_imresize(img: np.ndarray, scales: tuple[float, float], outs: tuple[int, int]) -> np.ndarray:
    out = img.astype(np.float64)
    for axis in sorted(range(2), key=lambda a: scales[a]):
        out = _loop_axis(out, axis, scales[axis], outs[axis])
    return out


@pytest.mark.parametrize(
    "shape, scale",
    [
        ((7, 9), 0.37),
        ((5, 6, 3), 1.7),
        ((12, 10, 2), 0.25),
        ((4, 3), 4),
        ((9, 8, 3), (0.5, 1.3)),
        ((3, 11), (2.5, 0.2)),
        ((1, 6), 0.5),
    ],
)
def test_matches_loop_reference(shape, scale):
    rng = np.random.default_rng(0)
    img = rng.random(shape) * 255
    scales = (scale, scale) if np.isscalar(scale) else scale
    outs = tuple(math.ceil(s * n) for s, n in zip(scales, shape[:2]))
    got = imresize(img, scale)
    assert got.shape == outs + shape[2:]
    np.testing.assert_allclose(got, _loop_imresize(img, scales, outs), rtol=0, atol=1e-10)


def test_output_shape_uses_ratio_scales():
    img = np.random.default_rng(1).random((10, 13, 3))
    got = imresize(img, output_shape=(4, 20))
    assert got.shape == (4, 20, 3)
    np.testing.assert_allclose(got, _loop_imresize(img, (4 / 10, 20 / 13), (4, 20)), atol=1e-12)


def test_identity_at_scale_one_and_single_tap():
    img = np.random.default_rng(2).random((6, 5, 3)).astype(np.float32)
    out = imresize(img, 1)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, img)
    weights, indices = contributions(5, 5, 1.0)
    assert weights.shape == (5, 1)  # the five all-zero tap columns are dropped
    np.testing.assert_array_equal(indices[:, 0], np.arange(5))


@pytest.mark.parametrize("in_len, scale", [(10, 0.25), (7, 0.37), (5, 1.7), (2, 0.3), (480, 0.5)])
def test_contribution_tables(in_len, scale):
    out_len = math.ceil(in_len * scale)
    weights, indices = contributions(in_len, out_len, scale)
    np.testing.assert_allclose(weights.sum(axis=1), 1, atol=1e-12)
    assert indices.min() >= 0 and indices.max() < in_len
    assert np.all(np.any(weights != 0, axis=0))
    assert not weights.flags.writeable
    assert contributions(in_len, out_len, scale)[0] is weights  # cached


def test_constant_image_stays_constant_and_no_clamping():
    img = np.full((9, 7), 0.3)
    np.testing.assert_allclose(imresize(img, 0.37), 0.3, atol=1e-12)
    step = np.zeros((8, 8))
    step[:, 4:] = 1
    up = imresize(step, 3)
    assert up.min() < 0 and up.max() > 1  # bicubic overshoot is kept, never clipped


@pytest.mark.parametrize("scale", [0.25, 0.37, 1.7, (0.5, 2)])
def test_torch_matches_numpy(scale):
    rng = np.random.default_rng(3)
    img = rng.random((2, 3, 13, 11)).astype(np.float32)
    out = imresize(torch.from_numpy(img), scale)
    assert out.dtype == torch.float32
    ref = imresize(img[0].transpose(1, 2, 0).astype(np.float64), scale)
    np.testing.assert_allclose(out[0].permute(1, 2, 0).numpy(), ref, atol=2e-6)
    chw = imresize(torch.from_numpy(img[1]), scale)
    torch.testing.assert_close(chw, out[1])


def test_torch_half_and_gradient():
    x = torch.rand(1, 1, 6, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: imresize(t, 0.6), (x,))
    half = imresize(torch.rand(1, 3, 8, 8).half(), 0.5)
    assert half.dtype == torch.float16 and half.shape == (1, 3, 4, 4)


def test_bad_arguments():
    img = np.zeros((4, 4))
    with pytest.raises(ValueError, match="exactly one"):
        imresize(img)
    with pytest.raises(ValueError, match="exactly one"):
        imresize(img, 0.5, output_shape=(2, 2))
    with pytest.raises(ValueError, match="scale"):
        imresize(img, -1)
    with pytest.raises(TypeError, match="int32"):
        imresize(img.astype(np.int32), 0.5)
    with pytest.raises(TypeError, match="float tensor"):
        imresize(torch.zeros(1, 1, 4, 4, dtype=torch.uint8), 0.5)
    with pytest.raises(ValueError, match="shape"):
        imresize(np.zeros((2, 2, 2, 2)), 0.5)


def test_uint8_rounds_each_pass_like_matlab():
    img = np.random.default_rng(5).integers(0, 256, size=(9, 11, 3)).astype(np.uint8)
    got = imresize(img, (0.37, 0.5))
    assert got.dtype == np.uint8 and got.shape == (4, 6, 3)
    first = np.clip(np.floor(_loop_axis(img.astype(np.float64), 0, 0.37, 4) + 0.5), 0, 255)
    both = np.clip(np.floor(_loop_axis(first, 1, 0.5, 6) + 0.5), 0, 255)
    np.testing.assert_array_equal(got, both)


def _lr_agreement(benchmark_dir, as_uint8: bool) -> tuple[float, float]:
    equal = total = 0
    abs_sum = 0.0
    for hr_path in sorted((benchmark_dir / "Set5" / "HR").glob("*.png")):
        hr = np.asarray(Image.open(hr_path))
        lr = np.asarray(Image.open(benchmark_dir / "Set5" / "LR_bicubic" / "X4" / hr_path.name), dtype=np.float64)
        ours = imresize(hr if as_uint8 else hr.astype(np.float64), 0.25)
        ours = np.clip(np.floor(ours + 0.5), 0, 255)
        assert ours.shape == lr.shape, hr_path.name
        diff = np.abs(ours - lr)
        equal += int((diff == 0).sum())
        abs_sum += float(diff.sum())
        total += diff.size
    return equal / total, abs_sum / total


def test_matlab_lr_sanity_set5(benchmark_dir):
    """MATLAB-made Set5 X4 LR: float path ~88% equal after rounding, mean |diff| ~0.12 grey levels;
    the uint8 path (rounding after each pass, as MATLAB does for uint8 input) agrees far better."""
    equal, mad = _lr_agreement(benchmark_dir, as_uint8=False)
    assert equal > 0.86 and mad < 0.14
    equal, mad = _lr_agreement(benchmark_dir, as_uint8=True)
    assert equal > 0.97 and mad < 0.03
