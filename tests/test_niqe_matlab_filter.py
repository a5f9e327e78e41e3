"""MATLAB's imfilter arithmetic for NIQE's Gaussian window (specs/niqe_matlab_filter.md).

The C library's ``fma`` (through ctypes) is the ground truth for the fused multiply-add; the spec's
test vectors pin the filter; a direct per-pixel loop over the spec's recipe, calling that ``fma``,
is the independent reference for whole images.
"""

from __future__ import annotations

import ctypes
import ctypes.util

import numpy as np
import pytest
import torch

from perceptsr.metrics.matlab_filter import HCOL, HROW, fma, imfilter_gauss7, native_fma_is_exact


def _libm_fma():
    for name in (None, ctypes.util.find_library("m")):
        try:
            fn = ctypes.CDLL(name).fma
        except (OSError, AttributeError):
            continue
        fn.restype = ctypes.c_double
        fn.argtypes = [ctypes.c_double] * 3
        return fn
    pytest.skip("the C library's fma is not reachable through ctypes here")


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float64).view(np.uint64)


# Spec table: F(c) - c at the centre of a constant 9x9 image, float64, MATLAB's filter.
SPEC_VECTORS = {
    16: 0.0, 103: 0.0, 128: 0.0,
    50: 7.105427357601002e-15,
    74: 1.4210854715202004e-14, 100: 1.4210854715202004e-14,
    85: 0.0, 153: -2.842170943040401e-14, 200: 2.842170943040401e-14,
    235: 0.0, 255: 5.684341886080802e-14,
}
WITHOUT_FMA = {85: 2.842170943040401e-14, 235: 2.842170943040401e-14}

# The spec's taps, typed in again (not imported) so that a changed constant fails here.
SPEC_HCOL = [0.01256020046847462, 0.07882796468173003, 0.23729607711717063, 0.3426315154652495,
             0.23729607711717063, 0.07882796468173003, 0.012560200468474616]
SPEC_HROW = [0.012560200468474614, 0.07882796468173, 0.23729607711717063, 0.3426315154652495,
             0.23729607711717063, 0.07882796468173003, 0.012560200468474616]

MODES = ["emulated", "auto"]


def test_taps_are_the_spec_constants():
    assert list(HCOL) == SPEC_HCOL and list(HROW) == SPEC_HROW
    assert HCOL[0] != HCOL[6] and HROW[0] != HCOL[0]  # the SVD's rounding: not symmetric


@pytest.mark.parametrize("fma_mode", MODES)
@pytest.mark.parametrize("c", sorted(SPEC_VECTORS))
def test_spec_vectors_constant_image(c, fma_mode):
    x = torch.full((1, 9, 9), float(c), dtype=torch.float64)
    got = float(imfilter_gauss7(x, fma_mode=fma_mode)[0, 4, 4]) - c
    assert got == SPEC_VECTORS[c], (c, got)


@pytest.mark.parametrize("fma_mode", MODES)
def test_spec_vector_linear_ramp(fma_mode):
    r, c = np.mgrid[0:9, 0:9]
    x = torch.from_numpy((40.0 + r + 2 * c)[None])
    assert float(imfilter_gauss7(x, fma_mode=fma_mode)[0, 4, 4] - x[0, 4, 4]) == 0.0


def _chain_unfused(values: np.ndarray, taps) -> float:
    """conv2's tap order with a separate multiply and add (what a port without FMA does)."""
    acc = taps[0] * values[6]
    for k in range(1, 7):
        acc = acc + taps[k] * values[6 - k]
    return acc


@pytest.mark.parametrize("c", sorted(WITHOUT_FMA))
def test_vectors_tell_fused_from_unfused(c):
    """The spec's 85 and 235 rows: without FMA the same order gives 2.84e-14, not 0."""
    col = _chain_unfused(np.full(7, float(c)), SPEC_HCOL)
    out = _chain_unfused(np.full(7, col), SPEC_HROW)
    assert out - c == WITHOUT_FMA[c]


def _fma_cases(rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = 20000
    a = rng.standard_normal(n) * np.exp2(rng.integers(-40, 40, n))
    b = rng.standard_normal(n) * np.exp2(rng.integers(-40, 40, n))
    c = rng.standard_normal(n) * np.exp2(rng.integers(-80, 80, n))
    # flat-region cases: c = -(a * b) rounded (the result is the product's rounding error),
    # taps times integer pixels plus an accumulated value, exact zeros and exact products
    k = n // 4
    c[:k] = -(a[:k] * b[:k])
    taps = np.array(SPEC_HCOL + SPEC_HROW)
    a[k:2 * k] = taps[rng.integers(0, 14, k)]
    b[k:2 * k] = rng.integers(0, 256, k).astype(np.float64)
    c[k:2 * k] = rng.integers(0, 256, k) * taps[rng.integers(0, 14, k)] * 3.7
    c[2 * k:2 * k + 50] = 0.0
    b[2 * k + 50:2 * k + 100] = 0.0
    a[2 * k + 100:2 * k + 150] = 0.5
    return a, b, c


def test_fma_emulation_matches_libm_bit_for_bit():
    libm_fma = _libm_fma()
    a, b, c = _fma_cases(np.random.default_rng(7))
    want = np.array([libm_fma(float(x), float(y), float(z)) for x, y, z in zip(a, b, c)])
    got = fma(torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(c)).numpy()
    assert np.array_equal(_bits(got), _bits(want)), int((_bits(got) != _bits(want)).sum())
    unfused = a * b + c  # NumPy: two roundings
    assert (unfused != want).sum() > 1000  # the cases do tell an FMA from a multiply-add


def test_native_fma_probe_agrees_with_libm():
    """Where torch's add(alpha=) is taken as an FMA it must be one, on the filter's own inputs."""
    libm_fma = _libm_fma()
    if not native_fma_is_exact("cpu"):
        pytest.skip("torch's add(alpha=) is not an exact FMA on this CPU build; the emulation is used")
    rng = np.random.default_rng(11)
    x = rng.integers(0, 256, 4001).astype(np.float64)
    acc = rng.random(4001) * 200
    for t in SPEC_HCOL:
        want = np.array([libm_fma(t, float(u), float(v)) for u, v in zip(x, acc)])
        got = torch.from_numpy(acc).clone().add_(torch.from_numpy(x), alpha=t).numpy()
        assert np.array_equal(_bits(got), _bits(want))


def reference_imfilter(img: np.ndarray) -> np.ndarray:
    """The spec's recipe, pixel by pixel, with the C library's fma: replicate-pad 3, column pass
    (conv2 order: acc = t0*x[i+6], then fma(t_k, x[i+6-k], acc)), then the row pass."""
    libm_fma = _libm_fma()
    f = np.frompyfunc(libm_fma, 3, 1)
    h, w = img.shape
    xp = np.pad(img.astype(np.float64), 3, mode="edge")
    col = SPEC_HCOL[0] * xp[6:6 + h, :]
    for k in range(1, 7):
        col = f(SPEC_HCOL[k], xp[6 - k:6 - k + h, :], col).astype(np.float64)
    out = SPEC_HROW[0] * col[:, 6:6 + w]
    for k in range(1, 7):
        out = f(SPEC_HROW[k], col[:, 6 - k:6 - k + w], out).astype(np.float64)
    return out


def _test_image(rng, h=40, w=53) -> np.ndarray:
    img = rng.integers(0, 256, (h, w)).astype(np.float64)
    img[5:20, 10:30] = 200.0  # flat
    img[22:35, 3:25] = 153.0
    r, c = np.mgrid[0:12, 0:14]
    img[25:37, 35:49] = 40 + r + 2 * c  # linear ramp
    return img


@pytest.mark.parametrize("fma_mode", MODES)
def test_filter_equals_pixelwise_reference(fma_mode):
    rng = np.random.default_rng(5)
    imgs = [_test_image(rng), rng.random((31, 44)) * 255, _test_image(rng) * 0.5 + 0.25]
    for img in imgs:
        want = reference_imfilter(img)
        got = imfilter_gauss7(torch.from_numpy(img)[None], fma_mode=fma_mode)[0].numpy()
        assert np.array_equal(_bits(got), _bits(want)), int((got != want).sum())


def test_native_and_emulated_paths_agree_on_a_batch():
    rng = np.random.default_rng(2)
    x = torch.from_numpy(np.stack([_test_image(rng, 96, 144) for _ in range(3)]))
    x2 = x * x
    for t in (x, x2, x / 7):
        a = imfilter_gauss7(t, fma_mode="emulated")
        b = imfilter_gauss7(t, fma_mode="auto")
        assert torch.equal(a, b)
    assert imfilter_gauss7(x[0]).shape == x[0].shape  # (H, W) works too


def test_flat_pixels_keep_matlab_signs():
    """In a flat 200 region, mu - I is +2.8e-14 (the spec's table), not 0: the MSCN sign flips."""
    from perceptsr.metrics.niqe import mscn

    x = torch.full((1, 30, 30), 200.0, dtype=torch.float64)
    m = mscn(x)
    assert bool((m < 0).all())  # I - mu = -2.8e-14 everywhere (replicate padding keeps it flat)
    y = torch.full((1, 30, 30), 235.0, dtype=torch.float64)
    assert bool((mscn(y) == 0).all())  # 235: exactly 0 with the FMA (2.8e-14 without)
