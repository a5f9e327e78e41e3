"""Checkpoint support for RankSRGAN's Ranker (:mod:`perceptsr.archs.ranker_arch`).

Declares the ``ranker`` spec: recognising its state dict (mmsr names), inferring width and depth
(8 / 12 / 16) from the keys, and the ``old-vgg-ranker`` layout (RankSRGAN's flattened
``features.N`` VGG whose classifier takes the pooled last conv channels).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from perceptsr.archs.keys import add_bn_counters, flat_vgg_mapping, is_flat_vgg, rename
from perceptsr.archs.registry import ArchSpec

__all__ = ["RANKER"]


def _detect(sd: Mapping[str, torch.Tensor]) -> dict[str, Any] | None:
    if not ("conv0_0.weight" in sd and "classifier.0.weight" in sd):
        return None
    depth = 16 if "conv1_2.weight" in sd else 12 if "conv4_0.weight" in sd else 8
    return {"in_nc": sd["conv0_0.weight"].shape[1], "nf": sd["conv0_0.weight"].shape[0], "depth": depth}


def _from_old_vgg(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    if not is_flat_vgg(sd):
        return None
    mapping, last_channels = flat_vgg_mapping(sd)
    if sd["classifier.0.weight"].shape[1] != last_channels:  # a flattened map: the discriminator
        return None
    mapping.update({"classifier.0": "classifier.0", "classifier.2": "classifier.2"})
    return add_bn_counters(rename(sd, mapping, "old VGG (features.N)"))


RANKER = ArchSpec("ranker", "perceptsr.archs.ranker_arch:Ranker", kind="ranker", detect=_detect,
                  legacy_layouts={"old-vgg-ranker": _from_old_vgg})
