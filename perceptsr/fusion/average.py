"""EA-Adam stage C on LR images: the per-layer fusion weights averaged over them (spec
``shared/specs/eaadam.md`` §4.2; the release's ``train_cal_weight.py``), and what collapsing costs.

:func:`average_fusion_weights` runs the dynamic net on LR images (centre half crop, as released) and
averages the per-image weight vectors per layer; :func:`perceptsr.fusion.collapse` then mixes them
into one plain network. That network is not the trained stage-B network (one weight vector for all
images instead of one per image): :func:`output_gap` measures how far their outputs are apart.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from perceptsr.checkpoint.format import unwrap_module
from perceptsr.state_dicts import listing
from perceptsr.errors import ConfigError
from perceptsr.fusion.network import DynamicNetwork

__all__ = ["center_crop_half", "average_fusion_weights", "output_gap", "GAP_PSNR_CAP"]

#: PSNR of the gap when the two outputs are identical (per-image MSE floored at 1e-20)
GAP_PSNR_CAP = 200.0


def center_crop_half(x: torch.Tensor) -> torch.Tensor:
    """Rows H/4..3H/4 and columns W/4..3W/4 (integer parts), as ``train_cal_weight.py`` does."""
    h, w = x.shape[-2:]
    return x[..., h // 4 : (3 * h) // 4, w // 4 : (3 * w) // 4]


_LR_KEYS = ("lr", "lq", "LR", "LQ", "input", "img")


def _to_batch(item: Any) -> torch.Tensor:
    """One ``(N, C, H, W)`` float batch from any input kind :func:`average_fusion_weights` documents."""
    if isinstance(item, (str, os.PathLike)):
        from perceptsr.data.io import read_image

        item = read_image(item)
    if type(item).__module__ == "numpy":
        import numpy as np

        arr = np.asarray(item, dtype=np.float32)
        if arr.ndim == 2:
            arr = arr[..., None]
        if arr.ndim != 3:
            raise ConfigError(f"average_fusion_weights: NumPy images must be (H, W[, C]), got shape {arr.shape}")
        item = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
    if isinstance(item, torch.Tensor):
        if item.ndim == 3:
            item = item.unsqueeze(0)
        if item.ndim != 4 or not item.is_floating_point():
            raise ConfigError(f"average_fusion_weights: expected float (N, C, H, W) or (C, H, W) images, got "
                              f"{item.dtype} {tuple(item.shape)}")
        return item
    if isinstance(item, Mapping):
        for key in _LR_KEYS:
            if key in item:
                return _to_batch(item[key])
        raise ConfigError(f"average_fusion_weights: a batch dict needs one of the keys {list(_LR_KEYS)}, got {list(item)}")
    if isinstance(item, (tuple, list)) and item:
        return _to_batch(item[0])  # (lr, hr, ...) from a paired loader
    raise ConfigError(f"average_fusion_weights: cannot read LR images from {type(item).__name__}")


def _iter_lr_batches(source: Any) -> Iterator[torch.Tensor]:
    """The batches of ``source``: one tensor or dict, the sorted images of a folder, a file, or an iterable."""
    if isinstance(source, torch.Tensor):
        yield _to_batch(source)
        return
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            from perceptsr.data.io import list_images

            files = list_images(path)
            if not files:
                raise ConfigError(f"{path}: no images found")
            for f in files:
                yield _to_batch(f)
        else:
            yield _to_batch(path)
        return
    if isinstance(source, Mapping):
        yield _to_batch(source)
        return
    for item in source:
        yield _to_batch(item)


def _cropped_batches(source: Any, crop: bool, max_images: int | None) -> Iterator[torch.Tensor]:
    """The LR batches of ``source``, cut to ``max_images`` images in all and centre-cropped if ``crop``."""
    count = 0
    for batch in _iter_lr_batches(source):
        if max_images is not None:
            if count >= max_images:
                return
            batch = batch[: max_images - count]
        if crop:
            batch = center_crop_half(batch)
        if batch.shape[-1] < 1 or batch.shape[-2] < 1:
            raise ConfigError(f"average_fusion_weights: image of {tuple(batch.shape[-2:])} pixels is empty after "
                              "cropping")
        count += batch.shape[0]
        yield batch


def _check_inputs(dynamic_net: Any, max_images: int | None) -> DynamicNetwork:
    dynamic_net = unwrap_module(dynamic_net)
    if not isinstance(dynamic_net, DynamicNetwork):
        raise ConfigError(f"expected a DynamicNetwork, got {type(dynamic_net).__name__}")
    if max_images is not None and (not isinstance(max_images, int) or max_images < 1):
        raise ConfigError(f"max_images must be a positive int or None, got {max_images!r}")
    return dynamic_net


def average_fusion_weights(
    dynamic_net: DynamicNetwork,
    lr_images_or_loader: Any,
    *,
    center_crop_half: bool = True,
    max_images: int | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    """Stage C weights: for every layer the mean of the per-image weight vectors over the set.

    ``lr_images_or_loader``: a tensor ``(N, C, H, W)``/``(C, H, W)``, a folder or file path (images
    read in sorted order), or an iterable of tensors, NumPy HWC images, paths, ``(lr, hr)`` pairs
    or dicts with an ``"lr"`` key (a DataLoader over :class:`perceptsr.data.PairedValDataset`).
    Images are in [0, 1]. With ``center_crop_half`` each image is cropped to its middle half as in
    the release (which used the first ``max_images=100`` DIV2K-train LR images). The net runs in
    eval mode without gradients, with its regressors (any fixed weights are set aside meanwhile).
    Returns ``{layer: float64 tensor (K,)}`` on the CPU; batching changes it only by float rounding.
    """
    dynamic_net = _check_inputs(dynamic_net, max_images)
    if device is None:
        device = next(dynamic_net.parameters()).device
    sums: dict[str, torch.Tensor] = {n: torch.zeros(dynamic_net.num_experts, dtype=torch.float64)
                                     for n in dynamic_net.layer_names}
    count = 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=max_images, unit="img", desc="fusion weights")
    was_training = dynamic_net.training
    dynamic_net.eval()
    try:
        with dynamic_net.using_weights(None), torch.no_grad():
            for batch in _cropped_batches(lr_images_or_loader, center_crop_half, max_images):
                dynamic_net(batch.to(device=device, dtype=torch.float32))
                got = dynamic_net.last_weights()
                silent = [n for n in dynamic_net.layer_names if n not in got]
                if silent:
                    raise ConfigError(f"average_fusion_weights: layers {listing(silent)} did not run in the forward pass")
                for n in dynamic_net.layer_names:
                    sums[n] += got[n].double().sum(dim=0).cpu()
                count += batch.shape[0]
                if bar is not None:
                    bar.update(batch.shape[0])
    finally:
        dynamic_net.train(was_training)
        if bar is not None:
            bar.close()
    if count == 0:
        raise ConfigError("average_fusion_weights: no images were given")
    return {n: s / count for n, s in sums.items()}


def output_gap(
    dynamic_net: DynamicNetwork,
    collapsed: torch.nn.Module,
    lr_images_or_loader: Any,
    *,
    center_crop_half: bool = True,
    max_images: int | None = None,
    device: torch.device | str | None = None,
) -> dict[str, Any]:
    """How far the collapsed model's outputs are from the dynamic network's (per-image weights from
    its regressors) on the same LR images (any input :func:`average_fusion_weights` takes, cropped
    the same way). Both outputs are clamped to [0, 1], as ``perceptsr upscale`` writes them, and
    compared on RGB without rounding or border crop.

    Returns ``{"images", "max_abs", "mean_abs", "psnr"}``: the largest and the mean absolute
    difference over all pixels, and the mean over images of the PSNR (data range 1) of the
    collapsed output against the dynamic one, capped at :data:`GAP_PSNR_CAP` dB.
    """
    dynamic_net = _check_inputs(dynamic_net, max_images)
    if device is None:
        device = next(dynamic_net.parameters()).device
    count, numel, abs_sum, max_abs, psnr_sum = 0, 0, 0.0, 0.0, 0.0
    was_training = (dynamic_net.training, collapsed.training)
    dynamic_net.eval()
    collapsed.eval()
    try:
        with dynamic_net.using_weights(None), torch.no_grad():
            for batch in _cropped_batches(lr_images_or_loader, center_crop_half, max_images):
                batch = batch.to(device=device, dtype=torch.float32)
                diff = (collapsed(batch).clamp(0, 1) - dynamic_net(batch).clamp(0, 1)).double()
                mse = diff.pow(2).flatten(1).mean(1).clamp_min(10 ** (-GAP_PSNR_CAP / 10))
                psnr_sum += float((-10 * mse.log10()).sum())
                abs_sum += float(diff.abs().sum())
                max_abs = max(max_abs, float(diff.abs().max()))
                numel += diff.numel()
                count += batch.shape[0]
    finally:
        dynamic_net.train(was_training[0])
        collapsed.train(was_training[1])
    if count == 0:
        raise ConfigError("output_gap: no images were given")
    return {"images": count, "max_abs": max_abs, "mean_abs": abs_sum / numel, "psnr": psnr_sum / count}
