"""Checkpoint support for Real-ESRGAN's SRVGGNetCompact (:mod:`perceptsr.archs.srvggnet_arch`).

Declares the ``srvggnet_compact`` spec: a state dict is this network's when every key is a
``body.{i}.weight`` / ``body.{i}.bias`` of the one ``nn.Sequential`` (BasicSR's names, which no
other family here uses alone). The builder arguments come from the shapes: ``num_feat`` and
``num_in_ch`` from ``body.0``, the activation from the 1-D ``body.1.weight`` (PReLU slopes),
``num_conv`` from the number of convs, ``upscale`` from the last conv's channels (``num_in_ch *
upscale**2``; output channels equal input channels, as the skip requires). ReLU and LeakyReLU carry
no weights and cannot be told apart: such files are taken as ``relu`` unless their native metadata
or ``arch_kwargs`` say ``leakyrelu``. There are no legacy layouts: every release uses these names.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import torch

from perceptsr.archs.keys import indices
from perceptsr.archs.registry import ArchSpec
from perceptsr.errors import CheckpointError

__all__ = ["SRVGGNET_COMPACT"]

_KEY = re.compile(r"body\.\d+\.(weight|bias)$")


def _detect(sd: Mapping[str, torch.Tensor]) -> dict[str, Any] | None:
    if "body.0.weight" not in sd or not all(_KEY.match(k) for k in sd) or sd["body.0.weight"].ndim != 4:
        return None
    convs = [i for i in indices(sd, r"body\.(\d+)\.weight$") if sd[f"body.{i}.weight"].ndim == 4]
    prelu = "body.1.weight" in sd and sd["body.1.weight"].ndim == 1
    num_feat, num_in = sd["body.0.weight"].shape[:2]
    last = sd[f"body.{convs[-1]}.weight"].shape[0]
    upscale = math.isqrt(last // num_in)
    if len(convs) < 2 or upscale * upscale * num_in != last:
        raise CheckpointError(
            f"SRVGGNetCompact-like state dict: the last conv body.{convs[-1]} has {last} output channels, "
            f"not {num_in} x upscale**2"
        )
    return {"num_in_ch": num_in, "num_out_ch": num_in, "num_feat": num_feat, "num_conv": len(convs) - 2,
            "upscale": upscale, "act_type": "prelu" if prelu else "relu"}


SRVGGNET_COMPACT = ArchSpec(
    "srvggnet_compact", "perceptsr.archs.srvggnet_arch:SRVGGNetCompact", kind="generator", detect=_detect,
)
