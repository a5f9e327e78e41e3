"""Which network a state dict belongs to, in which key layout: the generic dispatch over the
architecture specs (:func:`perceptsr.archs.arch_specs`). Each family's ``*_support`` module knows
its own legacy layouts (``ArchSpec.legacy_layouts``) and how to read its arguments from tensor
shapes (``ArchSpec.detect``); this module knows no network by name."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from perceptsr.archs import arch_specs
from perceptsr.state_dicts import MAX_LISTED, strip_prefixes
from perceptsr.errors import CheckpointError

__all__ = ["convert_state_dict", "detect_arch"]


def convert_state_dict(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """Rename a legacy key layout to perceptsr names; returns ``(state_dict, layout)``.

    The layouts are those the registered specs declare, tried in priority order; the built-ins:
    ``"old-basicsr-srresnet"``, ``"old-esrgan-rrdb"``, ``"mmsr-rrdbnet"``, ``"mmsr-msrresnet"``,
    ``"old-vgg-ranker"`` and ``"old-vgg-discriminator"``. ``"perceptsr"`` means none applied (the
    dict is returned unchanged: already ours, e.g. RankSRGAN/mmsr SRResNet, BasicSR MSRResNet/
    RRDBNet/VGGStyleDiscriminator, mmsr Ranker). Raises CheckpointError (without a file name)
    when a layout is recognised but does not fit.
    """
    sd = dict(state_dict)
    for spec in arch_specs():
        for layout, convert in spec.legacy_layouts.items():
            converted = convert(sd)
            if converted is not None:
                return converted, layout
    return sd, "perceptsr"


def detect_arch(state_dict: Mapping[str, torch.Tensor]) -> tuple[str, dict[str, Any]]:
    """Infer ``(arch_name, arch_kwargs)`` from key names and shapes (legacy layouts are converted first).

    Asks each registered spec's ``detect`` in priority order; the built-ins recognise srresnet,
    msrresnet, rrdbnet, ranker (depth 8/12/16), vgg_discriminator (input size, conv bias, stage
    count) and swinir (official key names). Raises CheckpointError listing some keys otherwise.
    """
    sd, _ = convert_state_dict(strip_prefixes(state_dict))
    for spec in arch_specs():
        if spec.detect is not None and (kwargs := spec.detect(sd)) is not None:
            return spec.name, kwargs
    sample = ", ".join(list(sd)[:MAX_LISTED])
    raise CheckpointError(
        f"cannot recognise the architecture from the state dict ({len(sd)} keys: {sample}, ...); pass arch=NAME"
    )
