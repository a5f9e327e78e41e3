"""MATLAB's ``imfilter(I, w, 'replicate')`` for NIQE's 7x7 Gaussian window, bit for bit.

The LIVE NIQE code filters with ``w = fspecial('gaussian', 7, 7/6)`` normalised to sum 1. For a
rank-1 kernel of at least 49 elements, MATLAB's ``imfilter`` (R2018b and later, double input) takes
its separable path, and this module does the same arithmetic:

1. the kernel is factored by MATLAB's (Intel MKL's) SVD into a column and a row vector, which carry
   the SVD's rounding: :data:`HCOL` and :data:`HROW` are the values MKL gives (absolute values;
   both come out negative and the signs cancel). They are constants, independent of the machine
   this runs on;
2. the image is padded by 3 replicated pixels on every side and filtered with
   ``conv2(hcol, hrow, padded, 'valid')``: the **column pass first** (along the row index), then
   the row pass;
3. ``conv2`` convolves (the kernel is flipped) and accumulates the taps in order with one fused
   multiply-add each: ``acc = t[0] * x[i + 6]``, then ``acc = fma(t[k], x[i + 6 - k], acc)`` for
   k = 1..6 (``i + 3`` is the centre in padded coordinates).

In a perfectly flat neighbourhood the exact result equals the centre pixel, and whether the
floating-point result is the centre, or one ulp above or below it, decides the sign of NIQE's MSCN
coefficient there, so every detail above changes NIQE on images with flat 7x7 areas.

The fused multiply-add comes from torch's ``add(x, alpha=t)`` where that is an FMA: its vectorised
CPU kernels (AVX2/AVX-512) and CUDA kernels compute ``fma(alpha, x, self)``. That is an
implementation detail, so it is used only after :func:`native_fma_is_exact` has checked it on the
device and dtype, bit for bit against :func:`fma`, on inputs where a separate multiply and add
give a different result (scalar and vector code paths, contiguous and strided views, several
sizes). Elsewhere (``ATEN_CPU_CAPABILITY=default``, other backends) the FMA is emulated exactly with
error-free transformations (:func:`fma`), which is exact too but tens of times slower.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

__all__ = ["HCOL", "HROW", "fma", "native_fma_is_exact", "imfilter_gauss7", "imfilter_separable"]

#: MATLAB's (MKL's) SVD factors of ``fspecial('gaussian', 7, 7/6)`` normalised to sum 1.
HCOL = (0.01256020046847462, 0.07882796468173003, 0.23729607711717063, 0.3426315154652495,
        0.23729607711717063, 0.07882796468173003, 0.012560200468474616)
HROW = (0.012560200468474614, 0.07882796468173, 0.23729607711717063, 0.3426315154652495,
        0.23729607711717063, 0.07882796468173003, 0.012560200468474616)

_SPLITTER = 134217729.0  # 2**27 + 1 (Veltkamp)


def _split_float(a: float) -> tuple[float, float]:
    """Veltkamp split of a Python float (IEEE double): ``a == hi + lo`` with 26-bit halves."""
    c = a * _SPLITTER
    hi = c - (c - a)
    return hi, a - hi


def _split(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    hi = a * _SPLITTER
    hi = hi.sub_(hi - a)
    return hi, a - hi


def _fma_split(t: float, th: float, tl: float, x, xh, xl, acc, out=None) -> torch.Tensor:
    """``fma(t, x, acc)`` from the splits of ``t`` (floats) and ``x`` (tensors), exactly.

    TwoProduct (Dekker): ``p + e == t * x`` exactly; TwoSum: ``s + r == p + acc`` exactly; the
    result ``s + (r + e)`` is the correctly rounded ``t * x + acc``. Every step is one plain
    IEEE operation (no ``alpha``, which torch may fuse).
    """
    p = x * t
    e = xh * th
    e.sub_(p)
    e.add_(xl * th)
    e.add_(xh * tl)
    e.add_(xl * tl)
    s = torch.add(p, acc, out=out) if out is not None else p + acc
    bb = s - p
    r = torch.sub(p, s - bb)
    r.add_(acc - bb)
    r.add_(e)
    return s.add_(r)


def fma(a, b, c) -> torch.Tensor:
    """``a * b + c`` with a single rounding (IEEE fused multiply-add), emulated exactly in float64.

    Any of the arguments may be a float; the others are broadcast. Exact for finite operands whose
    magnitudes stay below about 1e300 (the Veltkamp split overflows beyond); compare
    ``ctypes.CDLL(None).fma``.
    """
    tensors = [v for v in (a, b, c) if isinstance(v, torch.Tensor)]
    like = tensors[0] if tensors else torch.zeros((), dtype=torch.float64)
    a, b, c = (torch.as_tensor(v, dtype=torch.float64, device=like.device) for v in (a, b, c))
    ah, al = _split(a)
    bh, bl = _split(b)
    p = a * b
    e = ((ah * bh - p) + ah * bl + al * bh) + al * bl
    s = p + c
    bb = s - p
    r = (p - (s - bb)) + (c - bb)
    return s + (r + e)


def _probe_inputs(g: torch.Generator, tap: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, acc) where ``fma(tap, x, acc)`` mostly differs from ``acc + tap * x`` rounded twice."""
    x = torch.rand(40001, generator=g, dtype=torch.float64) * 300
    x[::3] = torch.floor(x[::3])  # integer pixels too
    acc = -(x * tap)  # fused: the product's rounding error; unfused: 0
    acc[1::2] += torch.rand(20000, generator=g, dtype=torch.float64) * 1e-12
    return x, acc


@functools.lru_cache(maxsize=16)
def _native_fma_cached(device: str, dtype: torch.dtype, capability: str) -> bool:
    dev = torch.device(device)
    g = torch.Generator().manual_seed(1234)
    discriminating = 0
    try:
        for tap in sorted(set(HCOL + HROW)):
            x64, acc64 = _probe_inputs(g, tap)
            want64 = fma(tap, x64, acc64)
            discriminating += int((want64 != acc64 + x64 * tap).sum())
            x, acc, want = (v.to(dev, dtype) for v in (x64, acc64, want64.to(dtype)))
            views = [(slice(0, n),) for n in range(1, 34)] + [(slice(5, 5 + 4099),), (slice(None),)]
            for view in views:  # scalar tails, vector loops, multi-threaded chunks
                if not torch.equal(acc[view].clone().add_(x[view], alpha=tap), want[view]):
                    return False
            m = 37 * 45
            grid = (x[:m].view(37, 45), acc[:m].view(37, 45), want[:m].view(37, 45))
            for xs, a, w in ((v[:, 2:41] for v in grid), (v.t() for v in grid)):  # strided, transposed
                if not torch.equal(a.clone().add_(xs, alpha=tap), w):
                    return False
    except RuntimeError:  # a backend without float64, etc.
        return False
    return discriminating > 1000  # the probe did tell fused from unfused


def native_fma_is_exact(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64) -> bool:
    """Whether ``acc.add_(x, alpha=t)`` is a correctly rounded fused multiply-add here (checked once)."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    capability = torch.backends.cpu.get_cpu_capability() if device.type == "cpu" else ""
    return _native_fma_cached(str(device), dtype, capability)


def _pass(xp: torch.Tensor, taps, dim: int, n: int, native: bool) -> torch.Tensor:
    """``out[i] = fma-chain of taps[k] * xp[i + K - 1 - k]`` along ``dim`` (conv2's order), n outputs."""
    k = len(taps)
    last = k - 1

    def sl(start):
        return xp.narrow(dim, start, n)

    if native:
        acc = sl(last) * taps[0]
        for j in range(1, k):
            acc.add_(sl(last - j), alpha=taps[j])
        return acc
    xh, xl = _split(xp)
    acc = sl(last) * taps[0]
    for j in range(1, k):
        th, tl = _split_float(taps[j])
        acc = _fma_split(taps[j], th, tl, sl(last - j), xh.narrow(dim, last - j, n),
                         xl.narrow(dim, last - j, n), acc)
    return acc


def imfilter_separable(x: torch.Tensor, hcol, hrow, *, fma_mode: str = "auto") -> torch.Tensor:
    """MATLAB ``imfilter(x, hcol(:) * hrow(:)', 'replicate')`` on its separable path, (..., H, W).

    ``hcol`` and ``hrow`` are the SVD factors MATLAB uses (odd lengths). ``fma_mode``: ``"auto"``
    (torch's fused add where :func:`native_fma_is_exact`, else the emulation), ``"native"`` or
    ``"emulated"``. Computed in float64.
    """
    if fma_mode not in ("auto", "native", "emulated"):
        raise ValueError(f"fma_mode must be 'auto', 'native' or 'emulated', got {fma_mode!r}")
    hcol, hrow = tuple(float(v) for v in hcol), tuple(float(v) for v in hrow)
    if len(hcol) % 2 == 0 or len(hrow) % 2 == 0:
        raise ValueError("imfilter_separable: odd-length factors only")
    x = x.double()
    native = fma_mode == "native" or (fma_mode == "auto" and native_fma_is_exact(x.device))
    shape = x.shape
    x3 = x.reshape(-1, 1, shape[-2], shape[-1])
    pr, pc = len(hcol) // 2, len(hrow) // 2
    xp = F.pad(x3, (pc, pc, pr, pr), mode="replicate")[:, 0]
    cols = _pass(xp, hcol, -2, shape[-2], native)  # (M, H, W + 2 pc): column pass first
    out = _pass(cols, hrow, -1, shape[-1], native)
    return out.reshape(shape)


def imfilter_gauss7(x: torch.Tensor, *, fma_mode: str = "auto") -> torch.Tensor:
    """NIQE's ``imfilter(x, window, 'replicate')`` exactly as MATLAB computes it, (..., H, W) float64."""
    return imfilter_separable(x, HCOL, HROW, fma_mode=fma_mode)
