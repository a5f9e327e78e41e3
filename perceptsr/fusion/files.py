"""The files of EA-Adam stages B and C: how expert files are named and ordered, the arch name of
stage-B checkpoints, and the fused model's ``fusion_weights.json`` (spec ``shared/specs/eaadam.md`` §4.2).

Expert order is the order given: callers sort by individual index (:func:`sort_expert_files`), and
stages B and C must use the same order. The index is read from any ``<name>_<index>`` file name, so
the release's ``model_x4_{epoch}_{i}.pt`` sort like our ``member_<i>.safetensors``
(:func:`perceptsr.ea_adam.member_file`).
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from perceptsr.state_dicts import listing
from perceptsr.errors import ConfigError
from perceptsr.fusion.positions import fused_tradeoff

__all__ = [
    "FUSION_ARCH", "FUSION_WEIGHTS_FILE", "CHECKPOINT_SUFFIXES", "member_index", "sort_expert_files", "member_files",
    "save_fused_model", "load_fusion_weights",
]

FUSION_ARCH = "fusion_dynamic"  # the arch name stage-B checkpoints carry (read by fuse_run, not load_model)
FUSION_WEIGHTS_FILE = "fusion_weights.json"
CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".ckpt")
_WEIGHTS_FORMAT = "perceptsr-fusion-weights"


# --------------------------------------------------------------------------------------------
# expert files


_INDEX_RE = re.compile(r"(?:^|[_\-.])(\d+)$")


def member_index(path: str | os.PathLike) -> int | None:
    """The individual index in a member file name: the digits after the last ``_``, ``-`` or ``.``
    ending the stem (``model_x4_250_3.pt`` -> 3, ``member-02.safetensors`` -> 2), or None."""
    m = _INDEX_RE.search(Path(path).stem)
    return int(m.group(1)) if m else None


def sort_expert_files(files: Iterable[str | os.PathLike]) -> list[Path]:
    """Files sorted by :func:`member_index` (what the release's ``os.listdir`` order should have been).
    A file without an index, or two files with the same index, raise ConfigError."""
    paths = [Path(f) for f in files]
    unindexed = [str(p) for p in paths if member_index(p) is None]
    if unindexed:
        raise ConfigError(f"cannot tell the individual index of {listing(unindexed)}; name member files "
                          "'<anything>_<index>.<ext>' or pass them in order with sort=False")
    by_index: dict[int, Path] = {}
    for p in paths:
        i = member_index(p)
        if i in by_index:
            raise ConfigError(f"{by_index[i]} and {p} have the same individual index {i}")
        by_index[i] = p
    return [by_index[i] for i in sorted(by_index)]


def member_files(source: Sequence[str | os.PathLike] | str | os.PathLike, *, sort: bool = True) -> list[Path]:
    """The member checkpoints of a population folder (indexed names only, sorted by index) or the
    given files (checked to exist; sorted by index unless ``sort=False``)."""
    if isinstance(source, (str, os.PathLike)):
        folder = Path(source)
        if not folder.is_dir():
            raise ConfigError(f"{folder}: expected a folder of member checkpoints or a list of files")
        candidates = sorted(p for p in folder.iterdir()
                            if p.is_file() and p.suffix.lower() in CHECKPOINT_SUFFIXES and not p.name.startswith("."))
        files = [p for p in candidates if member_index(p) is not None]
        skipped = [p.name for p in candidates if member_index(p) is None]
        if skipped:
            warnings.warn(f"{folder}: skipping checkpoints without an individual index in their name: {listing(skipped)}",
                          stacklevel=3)
        if not files:
            raise ConfigError(f"{folder}: no member checkpoints named '<name>_<index>{{{','.join(CHECKPOINT_SUFFIXES)}}}'")
        return sort_expert_files(files)
    files = [Path(f) for f in source]
    if not files:
        raise ConfigError("no member checkpoint files given")
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise ConfigError(f"member checkpoint files not found: {listing(missing)}")
    return sort_expert_files(files) if sort else files


# --------------------------------------------------------------------------------------------
# the fused model and its weights


def _weights_to_lists(weights: Mapping[str, Any]) -> dict[str, list[float]]:
    out, k = {}, None
    for name, v in weights.items():
        vec = torch.as_tensor(v, dtype=torch.float64).reshape(-1)
        if k is None:
            k = vec.numel()
        if vec.numel() != k:
            raise ConfigError(f"fusion weights: layer {name!r} has {vec.numel()} weights, others have {k}")
        out[name] = [float(x) for x in vec.tolist()]
    return out


def save_fused_model(
    path: str | os.PathLike,
    model: nn.Module,
    weights: Mapping[str, Any],
    arch: str | None = None,
    arch_kwargs: Mapping[str, Any] | None = None,
    *,
    expert_files: Sequence[str | os.PathLike | None] | None = None,
    num_images: int | None = None,
    static_policy: str = "error",
    output_gap: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Write the collapsed model as a native checkpoint and ``fusion_weights.json`` beside it.

    ``arch``/``arch_kwargs`` default to ``model.perceptsr_meta`` (set by :func:`collapse` when the
    dynamic net came from files). The JSON holds ``layers`` (layer -> K floats, expert order),
    ``experts`` (source files in expert order, when known), ``arch``, ``arch_kwargs``,
    ``checkpoint`` (the file name), ``tradeoff_t`` (the fused model's own ``--tradeoff`` value, its
    mean expert position / (K - 1)), ``static_policy`` (how differing tensors outside the dynamic
    layers were mixed) and ``output_gap`` (dynamic network against the collapsed model, when
    measured: :func:`perceptsr.fusion.output_gap`); the checkpoint's ``extra["fusion"]`` holds the
    same record. Returns ``(checkpoint_path, json_path)``. Note: one JSON per folder (the fixed name).
    """
    from perceptsr.checkpoint import atomic_write, save_model

    path = Path(path)
    meta = dict(getattr(model, "perceptsr_meta", {}) or {})
    arch = arch or meta.get("arch")
    if not arch:
        raise ConfigError(f"{path}: arch is needed (the model carries no perceptsr_meta['arch'])")
    if arch_kwargs is None:
        arch_kwargs = meta.get("arch_kwargs") or {}
    layers = _weights_to_lists(weights)
    k = len(next(iter(layers.values()))) if layers else 0
    if expert_files is None:
        expert_files = meta.get("fusion_experts")
    experts = [None if f is None else str(f) for f in expert_files] if expert_files is not None else None
    if experts is not None and len(experts) != k:
        raise ConfigError(f"{path}: {len(experts)} expert files given for {k} weights per layer")
    record = {
        "format": _WEIGHTS_FORMAT,
        "format_version": 1,
        "method": "EA-Adam stage C: per-layer average of the dynamic network's weights",
        "checkpoint": path.name,
        "arch": arch,
        "arch_kwargs": dict(arch_kwargs),
        "num_experts": k,
        "expert_order": "expert j is the j-th expert given to the dynamic network (sorted by individual index)",
        "experts": experts,
        "num_images": num_images,
        "tradeoff_t": fused_tradeoff(layers) if layers else None,
        "static_policy": static_policy,
        "output_gap": None if output_gap is None else dict(output_gap),
        "layers": layers,
    }
    ckpt = save_model(path, model, arch=arch, arch_kwargs=arch_kwargs,
                      extra={**dict(extra or {}), "fusion": {**record, "weights_file": FUSION_WEIGHTS_FILE}})
    text = json.dumps(record, indent=1)
    json_path = atomic_write(path.parent / FUSION_WEIGHTS_FILE, lambda f: f.write(text.encode("utf-8")))
    return ckpt, json_path


def load_fusion_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read ``fusion_weights.json`` (a file, or a folder holding one): ``({layer: float64 (K,)}, record)``."""
    path = Path(path)
    if path.is_dir():
        path = path / FUSION_WEIGHTS_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such fusion-weights file") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not a readable fusion-weights JSON file: {exc}") from None
    if (not isinstance(record, dict) or record.get("format") != _WEIGHTS_FORMAT
            or not isinstance(record.get("layers"), dict)):
        raise ConfigError(f"{path}: not a perceptsr fusion-weights file (format {_WEIGHTS_FORMAT!r} with 'layers')")
    return {n: torch.tensor(v, dtype=torch.float64) for n, v in record["layers"].items()}, record
