"""Toy rank data for the rank-data and Ranker tests: blur levels of textured images and a cheap
registered no-reference metric (blurrier = higher = worse) so the tests need no assets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy.ndimage import gaussian_filter

from perceptsr.data.io import write_image
from perceptsr.metrics import Metric, register_metric


class ToyBlur(Metric):
    """1 / (0.01 + mean absolute horizontal and vertical gradient): higher for blurrier images."""

    name = "toy_blur"
    lower_better = True
    full_reference = False
    min_size = 8

    def compute(self, x, ref=None):
        g = (x[..., :, 1:] - x[..., :, :-1]).abs().mean(dim=(1, 2, 3)) + \
            (x[..., 1:, :] - x[..., :-1, :]).abs().mean(dim=(1, 2, 3))
        return 1.0 / (0.01 + g)


register_metric("toy_blur", ToyBlur, overwrite=True)

BLURS = {"sharp": 0.0, "soft": 1.0, "blurry": 2.5}


def texture(h: int, w: int, seed: int, flat_right: int = 0) -> np.ndarray:
    """A float RGB texture (bicubic-upscaled noise); the right ``flat_right`` columns are flat grey."""
    rng = np.random.default_rng(seed)
    small = (rng.random((h // 3 + 1, w // 3 + 1, 3)) * 255).astype(np.uint8)
    img = np.asarray(Image.fromarray(small).resize((w // 3 * 3 + 3, h // 3 * 3 + 3), Image.BICUBIC))[:h, :w]
    img = img.astype(np.float64) / 255
    if flat_right:
        img[:, w - flat_right:] = 0.5
    return img


def write_levels(root: Path, n_images: int, size=(192, 240), seed: int = 0, flat_right: int = 0) -> dict[str, Path]:
    """``root/<level>/img<i>.png`` for the blur levels (best first); returns level -> folder."""
    folders = {}
    for level, sigma in BLURS.items():
        folders[level] = root / level
        for i in range(n_images):
            img = texture(*size, seed=seed + i, flat_right=flat_right)
            if sigma:
                img = gaussian_filter(img, (sigma, sigma, 0), mode="nearest")
            write_image(folders[level] / f"img{i}.png", np.clip(img, 0, 1))
    return folders


def read_u8(path) -> np.ndarray:
    return np.array(Image.open(path).convert("RGB"))


def toy_label(patch_u8: np.ndarray) -> float:
    t = torch.from_numpy(patch_u8).permute(2, 0, 1)[None].float() / 255
    return float(ToyBlur()(t)[0])
