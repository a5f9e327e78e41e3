"""Checkpoint support for the SRResNet family (:mod:`perceptsr.archs.srresnet_arch`).

Declares the ``srresnet`` and ``msrresnet`` specs: recognising their state dicts and inferring
the builder arguments from tensor shapes, and converting two legacy key layouts:

* ``old-basicsr-srresnet``: old BasicSR's ``model.N`` sequential (``SRResNet_bicx4_in3nf64nb16.pth``)
  -> ``SRResNet``;
* ``mmsr-msrresnet``: mmsr's MSRResNet (``recon_trunk``, ``HRconv``) -> ``MSRResNet``.

RankSRGAN/mmsr ``SRResNet`` files already use our names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from perceptsr.archs.keys import indices, rename
from perceptsr.archs.registry import ArchSpec
from perceptsr.errors import CheckpointError

__all__ = ["SRRESNET", "MSRRESNET"]

# the released fusion regressor for these backbones (perceptsr.fusion.AttentionConfig keywords)
_FUSION_DEFAULTS = {"kernel_size": 5}


def _upscale(sd: Mapping[str, torch.Tensor], nf: int) -> int:
    ratio = sd["upconv1.weight"].shape[0] // nf
    if "upconv2.weight" in sd:
        return 4
    if ratio in (4, 9):
        return {4: 2, 9: 3}[ratio]
    raise CheckpointError(
        f"cannot infer the scale: upconv1 has {sd['upconv1.weight'].shape[0]} output channels for {nf} features"
    )


def _detect_srresnet(sd: Mapping[str, torch.Tensor]) -> dict[str, Any] | None:
    if not ("conv_first.weight" in sd and "LRconv.weight" in sd and "HRconv.weight" in sd):
        return None
    nf = sd["conv_first.weight"].shape[0]
    return {
        "in_nc": sd["conv_first.weight"].shape[1], "out_nc": sd["conv_last.weight"].shape[0], "nf": nf,
        "nb": len(indices(sd, r"recon_trunk\.(\d+)\.conv1\.weight$")), "upscale": _upscale(sd, nf),
    }


def _detect_msrresnet(sd: Mapping[str, torch.Tensor]) -> dict[str, Any] | None:
    if not ("conv_first.weight" in sd and "conv_hr.weight" in sd and "upconv1.weight" in sd):
        return None
    nf = sd["conv_first.weight"].shape[0]
    return {
        "num_in_ch": sd["conv_first.weight"].shape[1], "num_out_ch": sd["conv_last.weight"].shape[0], "num_feat": nf,
        "num_block": len(indices(sd, r"body\.(\d+)\.conv1\.weight$")), "upscale": _upscale(sd, nf),
    }


def _from_old_basicsr(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    # B.sequential(conv, ShortcutBlock(sequential(res blocks..., LR conv)), *upsampler, HR conv + ReLU, last conv)
    keys = list(sd)
    if "model.0.weight" not in sd or not any(k.startswith("model.1.sub.") and ".res.0." in k for k in keys):
        return None
    blocks = indices(keys, r"model\.1\.sub\.(\d+)\.res\.0\.weight$")
    lr = indices(keys, r"model\.1\.sub\.(\d+)\.weight$")
    top = [i for i in indices(keys, r"model\.(\d+)\.weight$") if i >= 2]
    if len(lr) != 1 or len(top) not in (3, 4) or blocks != list(range(len(blocks))) or lr[0] != len(blocks):
        raise CheckpointError("old BasicSR SRResNet layout: unexpected module indices "
                              f"(residual blocks {blocks[:3]}..., LR conv {lr}, top-level convs {top})")
    nf = sd["model.0.weight"].shape[0]
    ups = top[:-2]
    if any(sd[f"model.{i}.weight"].shape[0] == nf for i in ups):
        raise CheckpointError(
            "old BasicSR SRResNet with nearest-neighbour 'upconv' upsampling: perceptsr's SRResNet is the "
            "pixel-shuffle variant (RankSRGAN, SRResNet_bicx4_in3nf64nb16.pth) and cannot hold these weights"
        )
    mapping = {"model.0": "conv_first", f"model.1.sub.{lr[0]}": "LRconv",
               f"model.{top[-2]}": "HRconv", f"model.{top[-1]}": "conv_last"}
    for n, i in enumerate(ups, 1):
        mapping[f"model.{i}"] = f"upconv{n}"
    for b in blocks:
        mapping[f"model.1.sub.{b}.res.0"] = f"recon_trunk.{b}.conv1"
        mapping[f"model.1.sub.{b}.res.2"] = f"recon_trunk.{b}.conv2"
    return rename(sd, mapping, "old BasicSR SRResNet")


def _from_mmsr(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    if not ("HRconv.weight" in sd and "LRconv.weight" not in sd and "upconv1.weight" in sd):
        return None
    mapping = {n: n for n in ("conv_first", "upconv1", "upconv2", "conv_last")}
    mapping["HRconv"] = "conv_hr"
    for b in indices(sd, r"recon_trunk\.(\d+)\."):
        for c in ("conv1", "conv2"):
            mapping[f"recon_trunk.{b}.{c}"] = f"body.{b}.{c}"
    return rename(sd, mapping, "mmsr MSRResNet")


SRRESNET = ArchSpec(
    "srresnet", "perceptsr.archs.srresnet_arch:SRResNet", kind="generator", detect=_detect_srresnet,
    legacy_layouts={"old-basicsr-srresnet": _from_old_basicsr}, fusion_defaults=_FUSION_DEFAULTS,
)
MSRRESNET = ArchSpec(
    "msrresnet", "perceptsr.archs.srresnet_arch:MSRResNet", kind="generator", detect=_detect_msrresnet,
    legacy_layouts={"mmsr-msrresnet": _from_mmsr}, fusion_defaults=_FUSION_DEFAULTS,
)
