"""Tiny synthetic training images shared by the training-loop tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_smooth_images(folder: Path, n: int, size: tuple[int, int], seed: int) -> Path:
    """``n`` RGB PNGs of ``size`` (H, W): bicubic upsampling of uniform noise at a quarter of the size."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        small = (rng.random((size[0] // 4, size[1] // 4, 3)) * 255).astype(np.uint8)
        Image.fromarray(small).resize((size[1], size[0]), Image.BICUBIC).save(folder / f"img{i:02d}.png")
    return folder
