"""EA-Adam stage C from a stage-B run (``perceptsr fuse``): rebuild the run's dynamic network,
average its weights over LR images, collapse it, measure the output gap between the two and save
the fused model (spec ``shared/specs/eaadam.md`` §4.2).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from perceptsr.state_dicts import listing
from perceptsr.errors import CheckpointError, ConfigError
from perceptsr.fusion.average import average_fusion_weights, output_gap
from perceptsr.fusion.files import FUSION_ARCH, save_fused_model
from perceptsr.fusion.layers import AttentionConfig
from perceptsr.fusion.network import DynamicNetwork, collapse, load_attention
from perceptsr.fusion.objective import FusionObjective
from perceptsr.train.runs import find_resume_checkpoint

__all__ = ["fuse_run"]


def _stage_b_file(source: str | os.PathLike) -> Path:
    """The trained dynamic net (``net_g.safetensors``, the name the loop saves a fusion run's trained
    module under) of a fusion run folder (latest checkpoint), checkpoint folder, or the file itself."""
    path = Path(source)
    if path.is_file():
        return path
    if not path.exists():
        raise ConfigError(f"{path}: no such fusion run, checkpoint folder or file")
    folder = find_resume_checkpoint(path, path)
    file = folder / f"{FusionObjective.trained_network}.safetensors"
    if not file.is_file():
        raise CheckpointError(f"{folder}: no {file.name} (is this a fusion run?)")
    return file


def fuse_run(
    source: str | os.PathLike,
    lr_images: Any,
    output: str | os.PathLike,
    *,
    experts: Sequence[str | os.PathLike] | str | os.PathLike | None = None,
    max_images: int | None = 100,
    crop: bool = True,
    gap_images: Any = None,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> tuple[Path, Path, dict[str, torch.Tensor]]:
    """EA-Adam stage C from a stage-B run: rebuild its dynamic net (experts from the checkpoint's
    record unless ``experts`` is given; EMA attention weights when saved; the run's static policy),
    average its per-layer weights over ``lr_images`` (:func:`average_fusion_weights`),
    :func:`collapse`, measure :func:`output_gap` on ``gap_images`` (whole images, e.g. a val set;
    default: the ``lr_images`` as averaged) and :func:`save_fused_model` to ``output`` with the gap in
    ``fusion_weights.json`` and the checkpoint. Returns ``(checkpoint, fusion_weights.json, weights)``."""
    from perceptsr.checkpoint import read_checkpoint

    file = _stage_b_file(source)
    meta = read_checkpoint(file).meta
    if meta.get("arch") != FUSION_ARCH:
        raise CheckpointError(f"{file}: not a fusion (stage B) checkpoint (arch {meta.get('arch')!r}, "
                              f"expected {FUSION_ARCH!r})")
    info = meta.get("arch_kwargs") or {}
    if experts is None:
        experts = info.get("experts") or []
        missing = [e for e in experts if not e or not Path(e).is_file()]
        if missing or not experts:
            raise ConfigError(f"{file}: the recorded expert files are not found "
                              f"({listing([str(m) for m in missing])}); "
                              "pass the population folder explicitly (perceptsr fuse --experts)")
        sort = False
    else:
        sort = True
    att = AttentionConfig(**info["attention"]) if info.get("attention") else None
    policy = info.get("static_policy", "error")
    net = DynamicNetwork.from_files(experts, sort=sort, attention=att, static_policy=policy).to(device)
    load_attention(file, net)
    weights = average_fusion_weights(net, lr_images, center_crop_half=crop, max_images=max_images, device=device,
                                     progress=progress)
    num = None
    if isinstance(lr_images, (str, os.PathLike)) and Path(lr_images).is_dir():
        from perceptsr.data.io import list_images

        num = len(list_images(lr_images))
        num = num if max_images is None else min(num, max_images)
    fused = collapse(net, weights)
    if gap_images is None:
        gap = output_gap(net, fused, lr_images, center_crop_half=crop, max_images=max_images, device=device)
        gap["on"] = "the averaging images" + (" (centre half crop)" if crop else "")
    else:
        gap = output_gap(net, fused, gap_images, center_crop_half=False, device=device)
        gap["on"] = str(gap_images) if isinstance(gap_images, (str, os.PathLike)) else "the given images"
    ckpt, json_path = save_fused_model(output, fused, weights, num_images=num,
                                       expert_files=[str(Path(e).resolve()) for e in net.expert_sources],
                                       static_policy=policy, output_gap=gap,
                                       extra={"fusion_run": str(file), "center_crop_half": crop})
    return ckpt, json_path, weights
