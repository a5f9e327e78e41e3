"""The loop's validation: held-out images, metrics chosen by protocol, means over whole images.

One :class:`Validator` serves the loop's periodic validation and any method that needs scores of
its models (EA-Adam's perception-distortion plane), through ``RunContext.validate``.
"""

from __future__ import annotations

import torch
from torch import nn

from perceptsr.config import TrainConfig

__all__ = ["Validator", "build_val_metrics", "load_val_set"]


def load_val_set(cfg: TrainConfig) -> list[dict]:
    """The first ``data.val.max_images`` pairs of ``data.val`` (all by default), in sorted order."""
    from perceptsr.data.datasets import PairedValDataset

    v = cfg.data.val
    dataset = PairedValDataset(v.hr_dir, v.lr_dir, scale=cfg.scale)
    n = len(dataset) if v.max_images is None else min(v.max_images, len(dataset))
    return [dataset[i] for i in range(n)]


def build_val_metrics(cfg: TrainConfig, device: torch.device) -> dict[str, nn.Module]:
    """The metrics named by ``data.val.metrics``, in order (PSNR first: it picks the best checkpoint),
    under the ``validation`` protocol (:mod:`perceptsr.metrics.protocol`): full-reference metrics on
    Y with crop = scale, no-reference ones under PIRM's."""
    from perceptsr.metrics.protocol import VALIDATION, build_metrics

    return build_metrics(cfg.data.val.metrics, VALIDATION, scale=cfg.scale, device=device, strict=True,
                         config_key="data.val.metrics")[0]


def _center_crop(x: torch.Tensor, size: int, multiple: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    size_h = min(size, h) // multiple * multiple
    size_w = min(size, w) // multiple * multiple
    top = (h - size_h) // 2 // multiple * multiple
    left = (w - size_w) // 2 // multiple * multiple
    return x[..., top : top + size_h, left : left + size_w]


class Validator:
    """``validator(model, prefix="val/", step=None)`` -> mean of each metric over ``data.val``.

    The SR output is clamped and rounded to the 8-bit grid first, as when it is saved to PNG. With
    ``step`` and a log, a few LR-bicubic / SR / HR crops go to TensorBoard.
    """

    def __init__(self, cfg: TrainConfig, device: torch.device, log=None):
        self.cfg = cfg
        self.device = device
        self.log = log
        self.val_set = load_val_set(cfg)
        self.metrics = build_val_metrics(cfg, device)  # bad names fail before training

    @torch.no_grad()
    def __call__(self, model: nn.Module, *, prefix: str = "val/", step: int | None = None) -> dict[str, float]:
        from perceptsr.data import imresize
        from perceptsr.inference import upscale_tensor

        cfg, device = self.cfg, self.device
        totals = {name: 0.0 for name in self.metrics}
        dtype = torch.bfloat16 if cfg.train.bf16 else None
        for i, item in enumerate(self.val_set):
            lr = item["lr"].unsqueeze(0)
            hr = item["hr"].unsqueeze(0).to(device)
            sr = upscale_tensor(model, lr.to(device), scale=cfg.scale, tile=None, device=device, dtype=dtype)
            sr = torch.floor(sr * 255.0 + 0.5) / 255.0
            for name, metric in self.metrics.items():
                totals[name] += float((metric(sr, hr) if metric.full_reference else metric(sr)).mean())
            if self.log is not None and step is not None and i < cfg.data.val.log_images:
                bicubic = imresize(lr, cfg.scale).clamp(0, 1).to(device)
                row = [_center_crop(t[0], cfg.data.val.crop_size, cfg.scale) for t in (bicubic, sr, hr)]
                self.log.image(f"{prefix}{item['name']}", torch.cat(row, dim=-1), step)
        return {f"{prefix}{name}": total / max(1, len(self.val_set)) for name, total in totals.items()}
