"""Network architectures and their registry.

Use :func:`build_arch` (``build_arch("srresnet", upscale=4)``) or import the classes by name;
class names resolve lazily so ``import perceptsr.archs`` imports no architecture module.
"""

from __future__ import annotations

import importlib
from typing import Any

from perceptsr.archs.registry import ARCH_KINDS, ArchSpec, build_arch, get_arch, list_archs, register_arch

__all__ = [
    "ARCH_KINDS", "ArchSpec", "build_arch", "get_arch", "list_archs", "register_arch",
    "SRResNet", "MSRResNet", "RRDBNet", "SwinIR", "VGGDiscriminator", "Ranker",
]

_LAZY = {
    "SRResNet": "perceptsr.archs.srresnet_arch",
    "MSRResNet": "perceptsr.archs.srresnet_arch",
    "RRDBNet": "perceptsr.archs.rrdbnet_arch",
    "SwinIR": "perceptsr.archs.swinir_arch",
    "VGGDiscriminator": "perceptsr.archs.discriminator_arch",
    "Ranker": "perceptsr.archs.ranker_arch",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'perceptsr.archs' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
