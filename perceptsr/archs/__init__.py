"""Network architectures and their registry.

Use :func:`build_arch` (``build_arch("srresnet", upscale=4)``) or import the classes by name;
class names resolve lazily so ``import perceptsr.archs`` imports no architecture module.

Each registered family lives in two modules: ``{family}_arch.py`` (the network) and
``{family}_support.py`` (its :class:`ArchSpec`: state-dict detection, legacy key layouts,
input-size rule, fusion defaults), with shared key helpers in :mod:`perceptsr.archs.keys`;
:func:`spec_of` finds the spec of a built module. ``vgg_arch.py`` holds the feature backbones of
the perceptual losses and metrics, which are not in the registry.
"""

from __future__ import annotations

import importlib
from typing import Any

from perceptsr.archs.registry import (
    ARCH_KINDS, ArchSpec, arch_specs, build_arch, get_arch, list_archs, register_arch, spec_of,
)

__all__ = [
    "ARCH_KINDS", "ArchSpec", "arch_specs", "build_arch", "get_arch", "list_archs", "register_arch", "spec_of",
    "SRResNet", "MSRResNet", "RRDBNet", "SwinIR", "VGGDiscriminator", "Ranker",
    "SRVGGNetCompact",
]

_LAZY = {
    "SRResNet": "perceptsr.archs.srresnet_arch",
    "MSRResNet": "perceptsr.archs.srresnet_arch",
    "RRDBNet": "perceptsr.archs.rrdbnet_arch",
    "SwinIR": "perceptsr.archs.swinir_arch",
    "VGGDiscriminator": "perceptsr.archs.discriminator_arch",
    "Ranker": "perceptsr.archs.ranker_arch",
    "SRVGGNetCompact": "perceptsr.archs.srvggnet_arch",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'perceptsr.archs' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
