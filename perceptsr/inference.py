"""Tiled, batched upscaling of tensors, images, files and folders.

Three layers, each built on the one before:

* :func:`upscale_tensor` runs a model on ``(N, C, H, W)`` tensors, whole or in tiles;
* :func:`upscale_image` handles one NumPy image: grayscale, alpha, uint8/uint16/float;
* :func:`upscale_path` upscales a file or a folder to PNGs and reports per-file failures.

Tiling. Each image is cut into a grid of *cores* of at most ``tile`` LR pixels a side (the
cores along an axis are balanced, so no sliver is left at the end). The model sees each core
with ``tile_pad`` pixels of real image context on every side; the context window is *shifted*
inside the image rather than padded, so at an image border the model sees exactly the same
border (its own zero padding) as an untiled forward would, and every window of an image has
the same size, which lets tiles be batched without padding. Only the core of each SR tile is
kept. When ``tile_pad`` covers the model's receptive field radius (in LR pixels) the tiled
result equals the untiled one up to float rounding; with a smaller pad the core edges see
a truncated context and faint seams can appear.

Input multiples. Models that pixel-unshuffle their input (RRDBNet x2 / x1) need sides that
are multiples of 2 / 4 (their architecture spec's ``input_multiple``). The image is padded at the bottom/right (reflect, or replicate when the
image is too small to reflect) to a multiple, and tiles, context and window positions are laid
out in whole blocks of that multiple, so tiles see the same pixel grouping as a whole-image
forward; the output is cropped back to ``scale`` times the original size.

Clamping. The output is clamped to [0, 1] once, at the end, on the assembled image; tiles are
stored unclamped. Clamping is pointwise, so clamping tiles instead would give the same numbers;
doing it once keeps tiled, untiled and auto paths on one code path for the value range, and the
model's raw (possibly out-of-range) values are never seen by callers.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable
from typing import Union

import numpy as np
import torch
from torch import nn

from perceptsr.archs import spec_of
from perceptsr.errors import ImageReadError, PerceptsrError

__all__ = [
    "AutoTile",
    "UpscaleSummary",
    "auto_tile_size",
    "input_multiple",
    "model_in_channels",
    "upscale_image",
    "upscale_path",
    "upscale_tensor",
]

logger = logging.getLogger(__name__)

#: Tile used by ``tile="auto"`` on CPU (no reliable free-memory figure there): with the default
#: pad the window is 224^2 LR pixels, about 0.2 GB per full-resolution activation of a
#: 64-feature x4 generator, i.e. a few GB for a batch of 4.
CPU_AUTO_TILE = 192
#: Smallest tile the OOM fallback goes down to before giving up.
MIN_AUTO_TILE = 16
#: Largest tile ``auto`` picks (beyond this the padding overhead is already negligible).
MAX_AUTO_TILE = 2048
#: Share of free GPU memory that ``auto`` plans to use for one batch of tiles.
AUTO_MEMORY_FRACTION = 0.5
#: Side of the probe input used to measure activation memory per pixel on CUDA.
_PROBE_SIDE = 96

TileArg = Union[int, str, "AutoTile", None]


# --------------------------------------------------------------------------- tensors


class AutoTile:
    """Tile size picked from free memory, halved (and kept smaller) after an out-of-memory error.

    ``tile="auto"`` creates a fresh one per call. Pass one instance to several calls (as
    :func:`upscale_path` does for a folder) so the size is measured once and any reduction
    after an OOM sticks for the following images.
    """

    def __init__(self, size: int | None = None, min_size: int = MIN_AUTO_TILE):
        self.size = size
        self.min_size = int(min_size)

    def __repr__(self) -> str:
        return f"AutoTile(size={self.size})"


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _model_device(model: nn.Module, fallback: torch.device) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return fallback


def _meta_scale(model: nn.Module) -> int:
    meta = getattr(model, "perceptsr_meta", None) or {}
    if meta.get("scale") is None:
        raise ValueError("scale was not given and the model has no perceptsr_meta['scale']")
    return int(meta["scale"])


def input_multiple(model: nn.Module) -> int:
    """Side multiple the model needs: ``perceptsr_meta['input_multiple']`` or attribute
    ``input_multiple`` if present, else its architecture spec's rule (e.g. RRDBNet x2/x1
    pixel-unshuffle their input), else 1."""
    meta = getattr(model, "perceptsr_meta", None) or {}
    value = meta.get("input_multiple", getattr(model, "input_multiple", None))
    if value is None:
        spec = spec_of(model)
        value = spec.input_multiple(model) if spec is not None and spec.input_multiple is not None else 1
    return max(1, int(value))


def _pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    ph, pw = (-x.shape[-2]) % multiple, (-x.shape[-1]) % multiple
    if not (ph or pw):
        return x
    mode = "reflect" if ph < x.shape[-2] and pw < x.shape[-1] else "replicate"
    return torch.nn.functional.pad(x, (0, pw, 0, ph), mode=mode)


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _forward(model, batch, device, dtype, scale) -> torch.Tensor:
    """One inference forward of an LR batch; returns float32 SR on the model's device."""
    batch = batch.to(device=device, dtype=torch.float32, non_blocking=True)
    with torch.inference_mode(), _autocast(device, dtype):
        out = model(batch)
    expected = (batch.shape[-2] * scale, batch.shape[-1] * scale)
    if out.ndim != 4 or tuple(out.shape[-2:]) != expected or out.shape[0] != batch.shape[0]:
        raise ValueError(
            f"model output has shape {tuple(out.shape)} for input {tuple(batch.shape)}; "
            f"expected (N, C, {expected[0]}, {expected[1]}) for scale {scale}"
        )
    return out.float()


def _axis_plan(length: int, tile: int, pad: int) -> tuple[int, list[tuple[int, int, int]]]:
    """Window length and ``(core_start, core_end, window_start)`` per tile along one axis.

    Cores are balanced (``ceil(length / n)`` each, the last one possibly shorter); every
    window has the same length ``min(core + 2 * pad, length)`` and is shifted inside the
    image, so each core has at least ``pad`` pixels of context or reaches the real border.
    """
    if tile + 2 * pad >= length:  # one window covers the axis anyway: do it in one piece
        return length, [(0, length, 0)]
    n = math.ceil(length / tile)
    core = math.ceil(length / n)
    window = min(core + 2 * pad, length)
    plan = []
    for start in range(0, length, core):
        end = min(start + core, length)
        plan.append((start, end, min(max(start - pad, 0), length - window)))
    return window, plan


def _progress(total: int, enabled: bool, unit: str, desc: str | None = None):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, unit=unit, desc=desc, leave=False, dynamic_ncols=True)


def _run_whole(model, x, scale, batch_size, device, dtype, progress) -> torch.Tensor:
    parts = []
    with _progress(x.shape[0], progress, "img", "upscale") as bar:
        for k in range(0, x.shape[0], batch_size):
            parts.append(_forward(model, x[k : k + batch_size], device, dtype, scale).to(x.device))
            bar.update(min(batch_size, x.shape[0] - k))
    return torch.cat(parts)


def _block_plan(length: int, tile: int, pad: int, multiple: int):
    """:func:`_axis_plan` in whole blocks of ``multiple`` pixels (``length`` is a multiple)."""
    window, plan = _axis_plan(length // multiple, max(1, tile // multiple), -(-pad // multiple))
    return window * multiple, [(a * multiple, b * multiple, c * multiple) for a, b, c in plan]


def _run_tiled(model, x, scale, tile, pad, batch_size, device, dtype, progress, multiple=1) -> torch.Tensor:
    n, _, h, w = x.shape
    win_h, rows = _block_plan(h, tile, pad, multiple)
    win_w, cols = _block_plan(w, tile, pad, multiple)
    jobs = [(i, r, c) for i in range(n) for r in rows for c in cols]
    out = None
    s = scale
    with _progress(len(jobs), progress, "tile", "tiles") as bar:
        for k in range(0, len(jobs), batch_size):
            chunk = jobs[k : k + batch_size]
            batch = torch.stack([x[i, :, wy : wy + win_h, wx : wx + win_w] for i, (_, _, wy), (_, _, wx) in chunk])
            sr = _forward(model, batch, device, dtype, scale)
            if out is None:
                out = torch.empty((n, sr.shape[1], h * s, w * s), dtype=torch.float32, device=x.device)
            for j, (i, (y0, y1, wy), (x0, x1, wx)) in enumerate(chunk):
                core = sr[j, :, (y0 - wy) * s : (y1 - wy) * s, (x0 - wx) * s : (x1 - wx) * s]
                out[i, :, y0 * s : y1 * s, x0 * s : x1 * s] = core.to(x.device)
            bar.update(len(chunk))
    return out


def auto_tile_size(
    model: nn.Module,
    *,
    channels: int = 3,
    tile_pad: int = 16,
    batch_size: int = 4,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    reserve_bytes: int = 0,
) -> int:
    """A tile size (LR pixels) expected to fit one batch of tiles in memory.

    CUDA: runs the model once on a small probe to measure peak activation bytes per LR pixel,
    then sizes ``batch_size`` windows of ``(tile + 2 * tile_pad)^2`` pixels to use
    ``AUTO_MEMORY_FRACTION`` of the free memory (``torch.cuda.mem_get_info`` plus what the
    caching allocator holds unused, minus ``reserve_bytes``). Rounded down to a multiple of 16
    within [``MIN_AUTO_TILE``, ``MAX_AUTO_TILE``]. CPU and other devices: ``CPU_AUTO_TILE``.
    """
    device = torch.device(device) if device is not None else _model_device(model, torch.device("cpu"))
    if device.type != "cuda":
        return CPU_AUTO_TILE
    free, _ = torch.cuda.mem_get_info(device)
    free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    probe = torch.rand((1, channels, _PROBE_SIDE, _PROBE_SIDE), device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), _autocast(device, dtype):
            model(probe)
    finally:
        model.train(was_training)
    torch.cuda.synchronize(device)
    per_pixel = max(torch.cuda.max_memory_allocated(device) - base, 1) / (_PROBE_SIDE * _PROBE_SIDE)
    del probe
    budget = max(AUTO_MEMORY_FRACTION * free - reserve_bytes, 0)
    side = int(math.sqrt(budget / (batch_size * per_pixel))) - 2 * tile_pad
    return int(min(max(side // 16 * 16, MIN_AUTO_TILE), MAX_AUTO_TILE))


def _check_options(tile, tile_pad, batch_size) -> None:
    if tile is not None and not isinstance(tile, AutoTile):
        if tile == "auto":
            return
        if isinstance(tile, bool) or not isinstance(tile, int) or tile < 1:
            raise ValueError(f"tile must be a positive int, 'auto', an AutoTile or None; got {tile!r}")
    if not isinstance(tile_pad, int) or tile_pad < 0:
        raise ValueError(f"tile_pad must be an int >= 0, got {tile_pad!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")


def upscale_tensor(
    model: nn.Module,
    x: torch.Tensor,
    *,
    scale: int | None = None,
    tile: TileArg = None,
    tile_pad: int = 16,
    batch_size: int = 4,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Upscale ``x`` (``(N, C, H, W)`` or ``(C, H, W)``, float in [0, 1]) with ``model``.

    ``scale`` defaults to ``model.perceptsr_meta["scale"]``. ``tile=None`` runs whole images
    (``batch_size`` images per forward); an int tiles each image as described in the module
    docstring, ``batch_size`` tiles per forward; ``"auto"`` (or an :class:`AutoTile`) picks the
    tile from free memory and, on an out-of-memory error, halves it and starts the image again
    (down to ``AutoTile.min_size``). ``device`` is where the model runs (default: where its
    parameters are; the model is moved there if needed); the result stays on ``x``'s device, as
    float32 clamped to [0, 1] at the very end. ``dtype=torch.bfloat16`` / ``torch.float16``
    runs the model under autocast. The model is put in eval mode for the call and restored.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim not in (3, 4):
        desc = f"{x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"upscale_tensor expects a float tensor (N, C, H, W) or (C, H, W); got {desc}")
    _check_options(tile, tile_pad, batch_size)
    scale = _meta_scale(model) if scale is None else int(scale)
    single = x.ndim == 3
    if single:
        x = x.unsqueeze(0)
    if device is None:
        device = _model_device(model, x.device)
    else:
        device = torch.device(device)
        if _model_device(model, device) != device:
            model.to(device)
    h, w = x.shape[-2:]
    multiple = input_multiple(model)
    x = _pad_to_multiple(x, multiple)
    was_training = model.training
    model.eval()
    try:
        if tile is None:
            out = _run_whole(model, x, scale, batch_size, device, dtype, progress)
        elif isinstance(tile, int):
            out = _run_tiled(model, x, scale, tile, tile_pad, batch_size, device, dtype, progress, multiple)
        else:
            state = AutoTile() if tile == "auto" else tile
            out = _run_auto(model, x, scale, state, tile_pad, batch_size, device, dtype, progress, multiple)
    finally:
        model.train(was_training)
    if out.shape[-2:] != (h * scale, w * scale):
        out = out[..., : h * scale, : w * scale]
    out.clamp_(0.0, 1.0)
    return out[0] if single else out


def _run_auto(model, x, scale, state: AutoTile, pad, batch_size, device, dtype, progress, multiple=1) -> torch.Tensor:
    if state.size is None:
        n, c, h, w = x.shape
        # the assembled output lives on x's device: keep it out of the budget if that is the GPU
        reserve = n * c * h * w * scale * scale * 4 if x.is_cuda else 0
        state.size = auto_tile_size(
            model, channels=c, tile_pad=pad, batch_size=batch_size, device=device, dtype=dtype, reserve_bytes=reserve
        )
    while True:
        failed_at = None
        try:
            return _run_tiled(model, x, scale, state.size, pad, batch_size, device, dtype, progress, multiple)
        except Exception as exc:  # only out-of-memory is retried
            if not _is_oom(exc) or state.size <= state.min_size:
                raise
            failed_at = state.size
        # outside the except block, so the failed attempt's tensors are no longer referenced
        state.size = max(state.min_size, failed_at // 2)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        warnings.warn(f"out of memory with tile {failed_at}; retrying with tile {state.size}", RuntimeWarning)


# --------------------------------------------------------------------------- images


def model_in_channels(model: nn.Module) -> int:
    """Image channels the model takes: from ``perceptsr_meta`` (top level or ``arch_kwargs``) or the
    model's ``num_in_ch`` / ``in_nc`` attribute; 3 if nothing says otherwise."""
    meta = getattr(model, "perceptsr_meta", None) or {}
    keys = ("num_in_ch", "in_nc", "in_channels")
    for source in (meta, meta.get("arch_kwargs") or {}):
        for key in keys:
            if source.get(key) is not None:
                return int(source[key])
    for key in keys:
        if isinstance(getattr(model, key, None), int):
            return int(getattr(model, key))
    return 3


def upscale_image(
    model: nn.Module,
    img: np.ndarray,
    *,
    scale: int | None = None,
    tile: TileArg = None,
    tile_pad: int = 16,
    batch_size: int = 4,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Upscale one NumPy image ``(H, W)`` or ``(H, W, C)`` with C in 1 (gray), 2 (gray + alpha),
    3 (RGB) or 4 (RGBA); the result keeps the input's layout and dtype (uint8, uint16, or
    float -> float32 in [0, 1]), so a 16-bit image stays 16-bit.

    Colour goes through the model (options as in :func:`upscale_tensor`). Alpha is resized
    with MATLAB bicubic :func:`perceptsr.data.imresize` and clamped to [0, 1]: a generator
    trained on photos would invent texture in a mask. Gray is replicated to three channels
    for an RGB model and the output's channel mean is taken (the model saw R = G = B, so its
    three outputs carry the same signal; no channel is favoured). A model whose
    ``perceptsr_meta`` says one input channel gets the gray channel directly. A NaN or Inf in the
    model's output raises :class:`PerceptsrError` rather than becoming black pixels.
    """
    from perceptsr.data.imresize import imresize

    arr = np.asarray(img)
    if arr.dtype == np.uint8:
        peak = 255.0
    elif arr.dtype == np.uint16:
        peak = 65535.0
    elif np.issubdtype(arr.dtype, np.floating):
        peak = None
    else:
        raise ValueError(f"upscale_image expects uint8, uint16 or float pixels, got {arr.dtype}")
    squeeze = arr.ndim == 2
    if squeeze:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f"upscale_image expects (H, W) or (H, W, C) with C in 1..4, got shape {np.shape(img)}")
    work = arr.astype(np.float32) / np.float32(peak) if peak else arr.astype(np.float32, copy=False)
    channels = arr.shape[2]
    color = work[:, :, : 3 if channels >= 3 else 1]
    alpha = work[:, :, -1] if channels in (2, 4) else None
    gray = color.shape[2] == 1

    t = torch.from_numpy(np.ascontiguousarray(color.transpose(2, 0, 1)))[None]
    if gray and model_in_channels(model) == 3:
        t = t.expand(-1, 3, -1, -1)
    scale = _meta_scale(model) if scale is None else int(scale)
    sr = upscale_tensor(
        model, t, scale=scale, tile=tile, tile_pad=tile_pad, batch_size=batch_size,
        device=device, dtype=dtype, progress=progress,
    )[0]
    if gray and sr.shape[0] != 1:
        sr = sr.mean(0, keepdim=True)
    out = sr.permute(1, 2, 0).cpu().numpy()
    if not np.isfinite(out).all():  # would be written as black pixels
        raise PerceptsrError("the model's output holds NaN or Inf values (diverged weights, or bf16 overflow?)")
    if alpha is not None:
        big = np.clip(imresize(alpha, scale), 0.0, 1.0).astype(np.float32)
        out = np.concatenate([out, big[:, :, None]], axis=2)
    if peak:
        out = np.rint(out * peak).astype(arr.dtype)
    else:
        out = np.ascontiguousarray(out, dtype=np.float32)
    return out[:, :, 0] if squeeze else out


# --------------------------------------------------------------------------- files


@dataclass
class UpscaleSummary:
    """What :func:`upscale_path` did: ``processed`` (input, output) pairs and ``failed``
    (input, reason) pairs, both in processing (sorted) order."""

    processed: list[tuple[Path, Path]] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _read(path: Path) -> tuple[np.ndarray, int]:
    """The file's own channels (gray / gray + alpha / RGB / RGBA) as float32 HWC, and the bits to
    write back (16 for any source with more than 8 bits per sample, else 8)."""
    from perceptsr.data.io import read_image, read_image_info

    img = read_image(path, mode="keep", keep_alpha=True)  # raises ImageReadError naming the file
    return img, 16 if read_image_info(path).bits > 8 else 8


def upscale_path(
    model: nn.Module,
    input: str | Path,
    output_dir: str | Path,
    *,
    scale: int | None = None,
    tile: TileArg = None,
    tile_pad: int = 16,
    batch_size: int = 4,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    suffix: str = "",
    progress: bool = True,
    report: Callable[[str], None] | None = None,
) -> UpscaleSummary:
    """Upscale an image file, or every image of a folder (sorted), to ``output_dir/<stem><suffix>.png``.

    Alpha is kept and 16-bit sources are written as 16-bit PNGs (atomically, by
    :func:`perceptsr.data.io.write_image`). A file that cannot be read or written, or that runs
    out of memory, is reported (a line beside the progress bar, or a logged warning without
    one) and recorded in the summary's ``failed`` with the reason; the other files are still
    processed. Outputs that would overwrite an input of this run, or an earlier output of this
    run, are refused the same way. ``report(reason)``, if given, replaces that line or warning
    (each failure is reported exactly once). A missing input or a folder without images raises
    :class:`ImageReadError`; other exceptions (bugs) propagate.
    Options as in :func:`upscale_tensor`; ``tile="auto"`` is sized once for the whole run.
    """
    from tqdm.auto import tqdm

    from perceptsr.data.io import list_images, write_image

    _check_options(tile, tile_pad, batch_size)
    src = Path(input)
    if src.is_dir():
        files = sorted(Path(p) for p in list_images(src))
        if not files:
            raise ImageReadError(f"{src}: no images found in this folder")
    elif src.is_file():
        files = [src]
    else:
        raise ImageReadError(f"{src}: no such file or folder")
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if scale is None:
        scale = _meta_scale(model)
    if tile == "auto":
        tile = AutoTile()  # one measurement (and any OOM reduction) for the whole folder

    summary = UpscaleSummary()
    inputs = {p.resolve(): p for p in files}
    written: dict[Path, Path] = {}
    bar = tqdm(files, unit="img", desc="upscale", disable=not progress, dynamic_ncols=True)
    for path in bar:
        bar.set_postfix_str(path.name, refresh=False)
        target = out_dir / f"{path.stem}{suffix}.png"
        try:
            if target.resolve() in inputs:
                which = "the input" if target.resolve() == path.resolve() else f"input {inputs[target.resolve()]}"
                raise PerceptsrError(f"{path}: output {target} would overwrite {which}; use a suffix or another folder")
            if target.resolve() in written:
                raise PerceptsrError(f"{path}: output {target} was already written for {written[target.resolve()]}")
            img, bits = _read(path)
            sr = upscale_image(
                model, img, scale=scale, tile=tile, tile_pad=tile_pad, batch_size=batch_size,
                device=device, dtype=dtype,
            )
            write_image(target, sr, bits=bits)
        except Exception as exc:
            if _is_oom(exc):  # this image is too big untiled / at this tile; smaller ones may fit
                reason = f"{path}: out of memory ({_first_line(exc)}); use a smaller tile or tile='auto'"
            elif isinstance(exc, (PerceptsrError, OSError, ValueError)):
                reason = str(exc) if str(path) in str(exc) else f"{path}: {exc}"
            else:
                raise
            summary.failed.append((path, reason))
            if _is_oom(exc) and torch.cuda.is_available():
                torch.cuda.empty_cache()
            if report is not None:
                report(reason)
            elif progress:
                tqdm.write(f"failed: {reason}", file=sys.stderr)
            else:
                logger.warning("failed: %s", reason)
        else:
            summary.processed.append((path, target))
            written[target.resolve()] = path
    bar.close()
    return summary
