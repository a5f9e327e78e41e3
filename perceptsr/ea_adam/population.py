"""The population's layout: preference vectors, mating neighbourhoods, and the names under which a
stage-A run stores its networks, populations and logs.

These names are the contract with stage B (:mod:`perceptsr.fusion`) and the demo: import them,
never spell the strings out again.
"""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = [
    "StateDict",
    "preference_vectors",
    "neighbourhoods",
    "POPULATION_DIR",
    "FINAL_POPULATION",
    "PHASES_LOG",
    "CHILDREN_LOG",
    "PLANE_DIR",
    "population_folder",
    "member_file",
    "generator_name",
    "discriminator_name",
]

StateDict = dict[str, torch.Tensor]

#: run-folder subfolder holding the exported populations (``phase_<k>/``, ``final/``)
POPULATION_DIR = "population"
#: the population exported at the last iteration: ``population/final``
FINAL_POPULATION = "final"
#: one JSON line per EA phase (fitness, ideal/nadir, replacements, perception-distortion plane)
PHASES_LOG = "ea_phases.jsonl"
#: one JSON line per EA child (parent, mate, operators, fitness, replaced slots)
CHILDREN_LOG = "ea_children.jsonl"
#: run-folder subfolder of the per-phase plane plots (``plane_phase_<k>.png``)
PLANE_DIR = "ea_adam"


def preference_vectors(n: int) -> torch.Tensor:
    """``(n, 2)`` float64 preference vectors ``λ_i = (1 - i/(n-1), i/(n-1))``: row 0 is pure
    distortion, row ``n-1`` pure perception (EA-Adam ``uniform_point`` with 2 objectives)."""
    if int(n) != n or n < 2:
        raise ValueError(f"preference_vectors: n must be an integer >= 2, got {n!r}")
    t = torch.arange(int(n), dtype=torch.float64) / (n - 1)
    return torch.stack([1 - t, t], dim=1)


def neighbourhoods(n: int, size: int = 3) -> list[list[int]]:
    """Index windows of ``size`` consecutive individuals around each ``i``, shifted inward at the
    ends: for ``size=3`` a middle ``i`` gets ``[i-1, i, i+1]``, ``0 -> [0, 1, 2]`` and
    ``n-1 -> [n-3, n-2, n-1]`` (the release's ``neighborsize: 1``). Each window contains ``i``."""
    if int(n) != n or n < 1:
        raise ValueError(f"neighbourhoods: n must be a positive integer, got {n!r}")
    if int(size) != size or not 1 <= size <= n:
        raise ValueError(f"neighbourhoods: size must be an integer in [1, n={n}], got {size!r}")
    n, size = int(n), int(size)
    out = []
    for i in range(n):
        start = min(max(i - (size - 1) // 2, 0), n - size)
        out.append(list(range(start, start + size)))
    return out


def population_folder(phase: int | None = None) -> Path:
    """Run-folder-relative folder of the population exported after EA phase ``phase`` (1-based:
    ``population/phase_001``), or of the final one (``population/final``) when ``phase`` is None."""
    return Path(POPULATION_DIR) / (FINAL_POPULATION if phase is None else f"phase_{phase:03d}")


def member_file(folder: str | Path, i: int) -> Path:
    """Where individual ``i`` of an exported population lives (``member_<i>.safetensors``)."""
    return Path(folder) / f"member_{i}.safetensors"


def generator_name(i: int) -> str:
    """The loop's network name of individual ``i``: ``net_g`` (the trained module) for 0, else ``net_g_<i>``."""
    return "net_g" if i == 0 else f"net_g_{i}"


def discriminator_name(i: int) -> str:
    """The loop's network name of individual ``i``'s discriminator (``net_d_<i>``; checkpoint file
    ``<checkpoint folder>/net_d_<i>.safetensors``)."""
    return f"net_d_{i}"
