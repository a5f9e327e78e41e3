"""Checkpoint support for SwinIR (:mod:`perceptsr.archs.swinir_arch`).

Declares the ``swinir`` spec: recognising official (SwinIR / BasicSR) state dicts and inferring
every builder argument from key names and tensor shapes, plus the released fusion regressor
(sigmoid-sum normalisation). SwinIR pads its input to the window size itself, so it has no
input-size rule.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from perceptsr.archs.keys import indices
from perceptsr.archs.registry import ArchSpec
from perceptsr.errors import CheckpointError

__all__ = ["SWINIR"]


def _upsampler(sd: Mapping[str, torch.Tensor], in_chans: int) -> tuple[str, int]:
    """``(upsampler, upscale)`` from the reconstruction head's keys and shapes."""
    if "conv_up1.weight" in sd:
        return "nearest+conv", 4
    if "conv_before_upsample.0.weight" in sd:
        nf = sd["conv_before_upsample.0.weight"].shape[0]
        convs = indices(sd, r"upsample\.(\d+)\.weight$")
        single_x3 = len(convs) == 1 and sd[f"upsample.{convs[0]}.weight"].shape[0] == 9 * nf
        return "pixelshuffle", 3 if single_x3 else 2 ** len(convs)
    if "upsample.0.weight" in sd:
        out = sd["upsample.0.weight"].shape[0]
        upscale = round((out / in_chans) ** 0.5)
        if upscale * upscale * in_chans != out:
            raise CheckpointError(f"swinir: upsample.0 has {out} output channels, not scale**2 * {in_chans}")
        return "pixelshuffledirect", upscale
    return "", 1


def _detect(sd: Mapping[str, torch.Tensor]) -> dict[str, Any] | None:
    """SwinIR arguments from official key names and shapes.

    ``img_size`` comes from the stored ``attn_mask`` buffers (square training patches assumed);
    a file without them gets ``persistent_attn_mask=False`` so it still loads strictly.
    ``img_range`` is not stored in weights (official JPEG models use 255: pass it explicitly).
    """
    if not ("conv_first.weight" in sd and "layers.0.residual_group.blocks.0.attn.qkv.weight" in sd):
        return None
    embed_dim, in_chans = sd["conv_first.weight"].shape[:2]
    groups = indices(sd, r"layers\.(\d+)\.residual_group\.blocks\.0\.norm1\.weight$")
    depths = [len(indices(sd, rf"layers\.{i}\.residual_group\.blocks\.(\d+)\.norm1\.weight$")) for i in groups]
    tables = [sd[f"layers.{i}.residual_group.blocks.0.attn.relative_position_bias_table"].shape for i in groups]
    window = (round(tables[0][0] ** 0.5) + 1) // 2
    hidden = sd["layers.0.residual_group.blocks.0.mlp.fc1.weight"].shape[0]
    mlp_ratio = hidden // embed_dim if hidden % embed_dim == 0 else hidden / embed_dim
    upsampler, upscale = _upsampler(sd, in_chans)
    kwargs: dict[str, Any] = {
        "upscale": upscale, "in_chans": in_chans, "window_size": window, "depths": depths, "embed_dim": embed_dim,
        "num_heads": [t[1] for t in tables], "mlp_ratio": mlp_ratio, "upsampler": upsampler,
        "resi_connection": "3conv" if "conv_after_body.0.weight" in sd else "1conv",
    }
    masks = [k for k in sd if k.endswith(".attn_mask")]
    if masks:
        n_windows = sd[masks[0]].shape[0]
        side = round(n_windows ** 0.5)
        if side * side != n_windows:
            raise CheckpointError(f"swinir: {masks[0]} holds {n_windows} windows, not a square training patch; "
                                  "pass arch_kwargs img_size=(H, W)")
        kwargs["img_size"] = side * window
    elif max(depths) > 1:
        kwargs["persistent_attn_mask"] = False
    if "patch_embed.norm.weight" not in sd:
        kwargs["patch_norm"] = False
    if "layers.0.residual_group.blocks.0.attn.qkv.bias" not in sd:
        kwargs["qkv_bias"] = False
    return kwargs


SWINIR = ArchSpec("swinir", "perceptsr.archs.swinir_arch:SwinIR", kind="generator", detect=_detect,
                  fusion_defaults={"kernel_size": 5, "normalization": "sigmoid_sum"})
