"""The native checkpoint format, and reading any supported file.

One ``.safetensors`` file. Tensors are the plain ``state_dict`` keys; the header metadata key
``"perceptsr"`` holds JSON: ``format_version``, ``arch``, ``arch_kwargs``, ``scale``, ``ema``,
``iteration``, ``metrics``, ``perceptsr_version``, ``created``, ``extra`` and ``raw_prefix``.
A file may carry *both* weight sets of a training run: the EMA weights (what inference wants)
are the plain keys, so any safetensors reader sees them first, and the raw (non-EMA) training
weights are stored under the prefix ``"__params__."`` (``raw_prefix``). In BasicSR terms: plain
keys = ``params_ema``, prefixed keys = ``params``.

:func:`read_checkpoint` tells the format from the bytes: native files, foreign safetensors and
torch files (:mod:`perceptsr.checkpoint.legacy`).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as st_save
from torch import nn

from perceptsr import __version__
from perceptsr.checkpoint.atomic import atomic_write
from perceptsr.state_dicts import listing, strip_prefixes
from perceptsr.checkpoint.legacy import WRAPPER_KEYS, first_line, torch_load, weight_sets
from perceptsr.errors import CheckpointError

__all__ = [
    "FORMAT_VERSION", "META_KEY", "RAW_PREFIX", "LoadedCheckpoint", "read_checkpoint", "save_model", "scale_of",
    "unwrap_module",
]

FORMAT_VERSION = 1
META_KEY = "perceptsr"
RAW_PREFIX = "__params__."


# --------------------------------------------------------------------------------------------
# writing


def unwrap_module(module: nn.Module) -> nn.Module:
    """The user's module inside DataParallel/DDP and torch.compile wrappers."""
    while True:
        if isinstance(module, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            module = module.module
        elif isinstance(getattr(module, "_orig_mod", None), nn.Module):
            module = module._orig_mod
        else:
            return module


def _tensors_of(obj: nn.Module | Mapping[str, Any], what: str) -> dict[str, torch.Tensor]:
    sd = unwrap_module(obj).state_dict() if isinstance(obj, nn.Module) else obj
    if not isinstance(sd, Mapping):
        raise CheckpointError(f"{what}: expected an nn.Module or a state dict, got {type(obj).__name__}")
    sd = strip_prefixes(sd)
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for key, value in sd.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{what}: state dict entry {key!r} is a {type(value).__name__}, not a tensor")
        t = value.detach().to("cpu").contiguous()
        ident = t.untyped_storage().data_ptr() if t.numel() else id(t)
        if ident in seen:  # safetensors refuses tensors sharing memory (tied weights, views)
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr() if t.numel() else id(t))
        out[key] = t
    return out


def scale_of(model: Any, arch_kwargs: Mapping[str, Any]) -> int | None:
    """The upscaling factor: the model's ``scale`` attribute, else ``arch_kwargs["upscale"|"scale"]``."""
    for value in (getattr(model, "scale", None), arch_kwargs.get("upscale"), arch_kwargs.get("scale")):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def save_model(
    path: str | os.PathLike,
    model_or_state_dict: nn.Module | Mapping[str, torch.Tensor],
    *,
    arch: str,
    arch_kwargs: Mapping[str, Any] | None = None,
    ema_model: nn.Module | Mapping[str, torch.Tensor] | None = None,
    is_ema: bool = False,
    scale: int | None = None,
    iteration: int | None = None,
    metrics: Mapping[str, float] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a native ``.safetensors`` checkpoint atomically and return its path.

    ``arch``/``arch_kwargs`` must rebuild the module with :func:`perceptsr.archs.build_arch`.
    With ``ema_model`` the file holds both sets: EMA weights as the plain keys and
    ``model_or_state_dict`` (the raw training weights) under :data:`RAW_PREFIX`. ``is_ema=True``
    marks a single set as EMA weights. ``scale`` defaults to the model's ``scale`` attribute or
    ``arch_kwargs["upscale"|"scale"]``.
    """
    path = Path(path)
    if not isinstance(arch, str) or not arch:
        raise CheckpointError(f"{path}: arch must be a non-empty string naming a registered architecture, got {arch!r}")
    arch_kwargs = dict(arch_kwargs or {})
    tensors = _tensors_of(model_or_state_dict, str(path))
    raw_prefix = None
    if ema_model is not None:
        raw = tensors
        tensors = _tensors_of(ema_model, f"{path} (ema_model)")
        if set(raw) != set(tensors):
            diff = sorted(set(raw) ^ set(tensors))
            raise CheckpointError(f"{path}: EMA and raw weights have different keys, e.g. {listing(diff)}")
        raw_prefix = RAW_PREFIX
        tensors.update({raw_prefix + k: v for k, v in raw.items()})
        is_ema = True
    meta = {
        "format_version": FORMAT_VERSION,
        "arch": arch,
        "arch_kwargs": arch_kwargs,
        "scale": scale if scale is not None else scale_of(model_or_state_dict, arch_kwargs),
        "ema": bool(is_ema),
        "raw_prefix": raw_prefix,
        "iteration": iteration,
        "metrics": dict(metrics or {}),
        "perceptsr_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "extra": dict(extra or {}),
    }
    try:
        meta_json = json.dumps(meta, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: metadata must be JSON-serialisable (arch_kwargs, metrics, extra): {exc}") from exc
    blob = st_save(tensors, metadata={META_KEY: meta_json, "format": "pt"})
    return atomic_write(path, lambda f: f.write(blob))


# --------------------------------------------------------------------------------------------
# reading


@dataclasses.dataclass
class LoadedCheckpoint:
    """What :func:`read_checkpoint` found in a file.

    ``state_dict`` is unwrapped and prefix-stripped but still in the file's key layout (see
    :func:`perceptsr.checkpoint.convert_state_dict`); ``weights_key`` names the wrapper it came
    from (``"params_ema"``, ``"params"``, ``"state_dict"``, ... or ``""`` for a plain state dict);
    ``available`` lists all weight sets found; ``meta`` is the native metadata (``{}`` for
    foreign files).
    """

    path: Path
    file_format: str  # "perceptsr", "safetensors" or "torch"
    state_dict: dict[str, torch.Tensor]
    weights_key: str
    available: list[str]
    ema: bool
    meta: dict[str, Any]


def _is_safetensors(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    return head[8:9] == b"{" and 2 <= n <= path.stat().st_size - 8


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            header = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own SafetensorError
        raise CheckpointError(f"{path}: corrupt safetensors file: {first_line(exc)}") from None
    return tensors, header


def _native_weight_sets(path: Path, tensors: dict[str, torch.Tensor], meta_json: str) -> tuple[dict, dict[str, Any]]:
    """The weight sets of a native file (main set, plus ``params`` under ``raw_prefix``) and its metadata."""
    try:
        meta = json.loads(meta_json)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: corrupt perceptsr metadata: {exc}") from None
    raw_prefix = meta.get("raw_prefix")
    main = {k: v for k, v in tensors.items() if not (raw_prefix and k.startswith(raw_prefix))}
    sets = {"params_ema" if meta.get("ema") else "params": main}
    if raw_prefix:
        sets["params"] = {k[len(raw_prefix):]: v for k, v in tensors.items() if k.startswith(raw_prefix)}
    return sets, meta


def _choose(sets: dict[str, dict], prefer_ema: bool, key: str | None, path: Path) -> str:
    if key is not None:
        matches = [n for n in sets if n == key or n.split("/")[-1] == key]
        if not matches:
            raise CheckpointError(f"{path}: no weights under {key!r}; available: {', '.join(map(repr, sets)) or 'none'}")
        return matches[0]
    order = ("params_ema", "params") if prefer_ema else ("params", "params_ema")
    for want in order:
        for n in sets:
            if n.split("/")[-1] == want:
                return n
    return next(iter(sets))


def read_checkpoint(path: str | os.PathLike, *, prefer_ema: bool = True, key: str | None = None) -> LoadedCheckpoint:
    """Read any supported checkpoint file (format found from its bytes, not its extension).

    Picks ``params_ema`` over ``params`` when ``prefer_ema`` (the reverse otherwise); ``key``
    selects a weight set explicitly (e.g. ``"params"``). Prefixes ``module.`` and ``_orig_mod.``
    are stripped; key layouts are *not* converted (see :func:`perceptsr.checkpoint.convert_state_dict`).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, expected a checkpoint file (.safetensors/.pth)")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes), not a checkpoint")
    meta: dict[str, Any] = {}
    try:
        native = _is_safetensors(path)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the checkpoint: {exc.strerror or exc}") from None
    if native:
        tensors, header = _read_safetensors(path)
        if META_KEY in header:
            file_format = "perceptsr"
            sets, meta = _native_weight_sets(path, tensors, header[META_KEY])
        else:
            file_format = "safetensors"
            sets = {"": tensors}
    else:
        file_format = "torch"
        obj = torch_load(path)
        sets = weight_sets(obj)
        if not sets:
            top = list(obj)[:20] if isinstance(obj, Mapping) else type(obj).__name__
            raise CheckpointError(
                f"{path}: no state dict found (looked for a plain dict of tensors or under params_ema, params, "
                f"{', '.join(WRAPPER_KEYS)}); top-level content: {top}"
            )
    chosen = _choose(sets, prefer_ema, key, path)
    leaf = chosen.split("/")[-1]
    ema = leaf == "params_ema" or (file_format == "perceptsr" and bool(meta.get("ema")) and leaf != "params")
    return LoadedCheckpoint(path, file_format, strip_prefixes(sets[chosen]), chosen, list(sets), ema, meta)
