"""State-dict key helpers shared by the ``*_support`` modules.

``indices`` and ``rename`` serve every legacy-layout converter; the flattened VGG helpers serve
RankSRGAN's old ``features.N`` layout, which both the Ranker and the VGG discriminator come in.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import torch

from perceptsr.errors import CheckpointError

__all__ = ["indices", "rename", "is_flat_vgg", "flat_vgg_mapping", "add_bn_counters"]


def indices(keys: Iterable[str], pattern: str) -> list[int]:
    """Sorted distinct integers captured by group 1 of ``pattern`` (matched at the key start)."""
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys if (m := rx.match(k))})


def rename(sd: Mapping[str, torch.Tensor], mapping: Mapping[str, str], layout: str) -> dict[str, torch.Tensor]:
    """Rename by module prefix: ``mapping[old_module] = new_module``; every key must be covered."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        module, _, leaf = key.rpartition(".")
        if module not in mapping:
            raise CheckpointError(f"key {key!r} does not fit the {layout} layout")
        out[f"{mapping[module]}.{leaf}"] = value
    return out


def is_flat_vgg(sd: Mapping[str, torch.Tensor]) -> bool:
    """RankSRGAN's old ``features.N`` / ``classifier.{0,2}`` layout with batch norm (not a torchvision
    VGG, whose classifier is ``classifier.{0,3,6}``)."""
    keys = sd.keys()
    return (
        "features.0.weight" in keys and "classifier.2.weight" in keys and any(k.endswith(".running_mean") for k in keys)
        and all(re.match(r"(features\.\d+|classifier\.[02])\.\w+$", k) for k in keys)
    )


def flat_vgg_mapping(sd: Mapping[str, torch.Tensor]) -> tuple[dict[str, str], int]:
    """``features.N`` -> ``conv{i}_{j}`` / ``bn{i}_{j}`` (conv k, 0-based, is ``conv{k//2}_{k%2}``) and the
    channel count of the last conv."""
    mapping: dict[str, str] = {}
    conv_count = 0
    last_conv = None
    last_channels = 0
    for i in indices(sd, r"features\.(\d+)\.weight$"):
        w = sd[f"features.{i}.weight"]
        if w.ndim == 4:
            last_conv = f"{conv_count // 2}_{conv_count % 2}"
            mapping[f"features.{i}"] = f"conv{last_conv}"
            conv_count += 1
            last_channels = w.shape[0]
        elif w.ndim == 1 and f"features.{i}.running_mean" in sd and last_conv is not None:
            mapping[f"features.{i}"] = f"bn{last_conv}"
        else:
            raise CheckpointError(f"old VGG layout: cannot place features.{i}.weight with shape {list(w.shape)}")
    return mapping, last_channels


def add_bn_counters(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Add the ``num_batches_tracked`` counters that PyTorch < 0.4.1 did not save (as 0)."""
    for key in list(sd):
        if key.endswith(".running_mean"):
            sd.setdefault(key[: -len("running_mean")] + "num_batches_tracked", torch.tensor(0, dtype=torch.long))
    return sd
