"""Checkpoint support for the VGG-style discriminator (:mod:`perceptsr.archs.discriminator_arch`).

Declares ``vgg_discriminator`` and its presets ``vgg_discriminator_128`` / ``_296``: recognising the
state dict, inferring input size, conv bias and stage count from tensor shapes, and the
``old-vgg-discriminator`` layout (RankSRGAN's flattened ``features.N`` VGG whose classifier takes
the flattened last feature map).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch

from perceptsr.archs.keys import add_bn_counters, flat_vgg_mapping, indices, is_flat_vgg, rename
from perceptsr.archs.registry import ArchSpec

__all__ = ["VGG_DISCRIMINATOR", "VGG_DISCRIMINATOR_128", "VGG_DISCRIMINATOR_296"]

# (stages, final map side) -> input size of the known variants; others are taken as final * 2**stages
_KNOWN_SIZES = {(5, 4): 128, (6, 4): 256, (5, 9): 296}


def _detect(sd: Mapping[str, torch.Tensor]) -> dict[str, Any] | None:
    if not ("conv0_0.weight" in sd and "linear1.weight" in sd):
        return None
    nf = sd["conv0_0.weight"].shape[0]
    stages = len(indices(sd, r"conv(\d+)_1\.weight$"))
    last_ch = sd[f"conv{stages - 1}_1.weight"].shape[0]
    final = round((sd["linear1.weight"].shape[1] / last_ch) ** 0.5)
    input_size = _KNOWN_SIZES.get((stages, final), final * 2**stages)
    kwargs: dict[str, Any] = {"num_in_ch": sd["conv0_0.weight"].shape[1], "num_feat": nf, "input_size": input_size,
                              "conv_bias": "conv0_1.bias" in sd}
    if stages != (6 if input_size == 256 else 5):
        kwargs["num_stages"] = stages
    return kwargs


def _from_old_vgg(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    if not is_flat_vgg(sd):
        return None
    mapping, last_channels = flat_vgg_mapping(sd)
    if sd["classifier.0.weight"].shape[1] == last_channels:  # pooled channels: the Ranker
        return None
    mapping.update({"classifier.0": "linear1", "classifier.2": "linear2"})
    return add_bn_counters(rename(sd, mapping, "old VGG (features.N)"))


VGG_DISCRIMINATOR = ArchSpec(
    "vgg_discriminator", "perceptsr.archs.discriminator_arch:VGGDiscriminator", kind="discriminator", detect=_detect,
    legacy_layouts={"old-vgg-discriminator": _from_old_vgg},
)
# presets of the same class: no detection or layouts of their own (detection answers vgg_discriminator)
VGG_DISCRIMINATOR_128 = dataclasses.replace(
    VGG_DISCRIMINATOR, name="vgg_discriminator_128", defaults={"input_size": 128}, detect=None, legacy_layouts={},
)
VGG_DISCRIMINATOR_296 = dataclasses.replace(
    VGG_DISCRIMINATOR, name="vgg_discriminator_296", defaults={"input_size": 296}, detect=None, legacy_layouts={},
)
