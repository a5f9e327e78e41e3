"""Checkpoint support for ESRGAN's RRDBNet (:mod:`perceptsr.archs.rrdbnet_arch`).

Declares the ``rrdbnet`` spec: recognising its (BasicSR-named) state dict, inferring scale, width,
depth and growth from tensor shapes, its input-size rule (x2 / x1 pixel-unshuffle their input, so
sides must be multiples of 2 / 4) and two legacy key layouts:

* ``old-esrgan-rrdb``: the original ESRGAN ``model.N`` sequential (``RRDB_ESRGAN_x4.pth``, x4 only);
* ``mmsr-rrdbnet``: mmsr's ``RRDB_trunk`` / ``trunk_conv`` / ``HRconv`` names.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from perceptsr.archs.keys import indices, rename
from perceptsr.archs.registry import ArchSpec
from perceptsr.errors import CheckpointError

__all__ = ["RRDBNET"]


def _detect(sd: Mapping[str, torch.Tensor]) -> dict[str, Any] | None:
    if not ("conv_first.weight" in sd and "conv_up1.weight" in sd and "conv_body.weight" in sd):
        return None
    nf, in_ch = sd["conv_first.weight"].shape[:2]
    out_ch = sd["conv_last.weight"].shape[0]
    scale, num_in = 4, in_ch
    if in_ch == out_ch * 4:
        scale, num_in = 2, out_ch
    elif in_ch == out_ch * 16:
        scale, num_in = 1, out_ch
    blocks = indices(sd, r"body\.(\d+)\.rdb1\.conv1\.weight$")
    gc = sd["body.0.rdb1.conv1.weight"].shape[0] if blocks else 32
    return {"num_in_ch": num_in, "num_out_ch": out_ch, "scale": scale, "num_feat": nf,
            "num_block": len(blocks), "num_grow_ch": gc}


def _input_multiple(module: Any) -> int:
    return 4 // module.scale


def _from_old_esrgan(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    # model.0, model.1.sub.{i}.RDB{k}.conv{j}.0, model.1.sub.{nb} (LR conv), upconvs, HR conv, last conv
    keys = list(sd)
    if "model.0.weight" not in sd or not any(k.startswith("model.1.sub.") and ".RDB1." in k for k in keys):
        return None
    blocks = indices(keys, r"model\.1\.sub\.(\d+)\.RDB1\.conv1\.0\.weight$")
    lr = indices(keys, r"model\.1\.sub\.(\d+)\.weight$")
    top = [i for i in indices(keys, r"model\.(\d+)\.weight$") if i >= 2]
    if len(lr) != 1 or blocks != list(range(len(blocks))) or lr[0] != len(blocks):
        raise CheckpointError(f"old ESRGAN RRDB layout: unexpected module indices (blocks {blocks[:3]}..., LR conv {lr})")
    if len(top) != 4:
        raise CheckpointError(
            f"old ESRGAN RRDB layout with {len(top) - 2} upsampling convs: only x4 models (two nearest-neighbour "
            "upsampling convs) map onto BasicSR's RRDBNet"
        )
    mapping = {"model.0": "conv_first", f"model.1.sub.{lr[0]}": "conv_body", f"model.{top[0]}": "conv_up1",
               f"model.{top[1]}": "conv_up2", f"model.{top[2]}": "conv_hr", f"model.{top[3]}": "conv_last"}
    for b in blocks:
        for k in (1, 2, 3):
            for j in range(1, 6):
                mapping[f"model.1.sub.{b}.RDB{k}.conv{j}.0"] = f"body.{b}.rdb{k}.conv{j}"
    return rename(sd, mapping, "old ESRGAN RRDB")


def _from_mmsr(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    if not (any(k.startswith("RRDB_trunk.") for k in sd) or "trunk_conv.weight" in sd):
        return None
    mapping = {"conv_first": "conv_first", "trunk_conv": "conv_body", "upconv1": "conv_up1", "upconv2": "conv_up2",
               "HRconv": "conv_hr", "conv_last": "conv_last"}
    rx = re.compile(r"RRDB_trunk\.(\d+)\.RDB([123])\.conv([1-5])$")
    for key in sd:
        module = key.rpartition(".")[0]
        if m := rx.match(module):
            mapping[module] = f"body.{m.group(1)}.rdb{m.group(2)}.conv{m.group(3)}"
    return rename(sd, mapping, "mmsr RRDBNet")


RRDBNET = ArchSpec(
    "rrdbnet", "perceptsr.archs.rrdbnet_arch:RRDBNet", kind="generator", detect=_detect,
    legacy_layouts={"old-esrgan-rrdb": _from_old_esrgan, "mmsr-rrdbnet": _from_mmsr},
    input_multiple=_input_multiple, fusion_defaults={"kernel_size": 3},
)
