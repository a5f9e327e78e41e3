"""Loading weights into networks: strictly, with every mismatch reported key by key
(:func:`perceptsr.state_dicts.key_report`), from any supported file."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from perceptsr.archs import build_arch, get_arch
from perceptsr.checkpoint.format import read_checkpoint, scale_of
from perceptsr.state_dicts import key_report
from perceptsr.checkpoint.layouts import convert_state_dict, detect_arch
from perceptsr.errors import CheckpointError, ConfigError

__all__ = ["check_finite", "load_model", "load_pretrained", "load_state_dict_strict", "read_state_dict"]


def _convert_or_raise(sd: Mapping[str, torch.Tensor], path: Path) -> tuple[dict[str, torch.Tensor], str]:
    try:
        return convert_state_dict(sd)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None


def read_state_dict(
    path: str | os.PathLike, *, prefer_ema: bool = True, key: str | None = None, convert: bool = True
) -> dict[str, torch.Tensor]:
    """The file's weights, unwrapped and prefix-stripped; with ``convert`` legacy layouts are
    renamed to perceptsr key names (:func:`perceptsr.checkpoint.convert_state_dict`)."""
    ckpt = read_checkpoint(path, prefer_ema=prefer_ema, key=key)
    return _convert_or_raise(ckpt.state_dict, ckpt.path)[0] if convert else ckpt.state_dict


def check_finite(state_dict: Mapping[str, torch.Tensor], source: str | os.PathLike) -> None:
    """CheckpointError naming the tensors holding NaN or Inf: such weights make NaN (black) images."""
    bad = [k for k, v in state_dict.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        shown = ", ".join(bad[:5]) + (f" ... ({len(bad)} tensors)" if len(bad) > 5 else "")
        raise CheckpointError(f"{source}: weights hold NaN or Inf values ({shown}); the training run diverged "
                              "before this checkpoint; use an earlier one")


def load_state_dict_strict(
    module: nn.Module, state_dict: Mapping[str, torch.Tensor], *, strict: bool = True, source: str | os.PathLike | None = None
) -> nn.Module:
    """Load ``state_dict`` into ``module``, reporting every mismatch key by key.

    Raises CheckpointError listing missing keys, unexpected keys and keys whose shapes differ
    (expected vs found), each list truncated, prefixed by ``source`` (usually the file name).
    With ``strict=False`` only shape mismatches raise; missing/unexpected keys give a warning.
    Missing BatchNorm ``num_batches_tracked`` counters (old PyTorch files) are filled with 0.
    """
    expected = module.state_dict()
    sd = dict(state_dict)
    for key in expected:
        if key.endswith(".num_batches_tracked") and key not in sd and key[: -len("num_batches_tracked")] + "running_mean" in sd:
            sd[key] = torch.zeros_like(expected[key])
    where = f"{source}: " if source else ""
    name = type(module).__name__
    report = key_report(expected, sd, what=f"{where}weights do not fit {name}", strict=strict,
                        hint="(check the architecture and its arguments, e.g. arch=... / arch_kwargs=...)")
    if report:
        raise CheckpointError(report)
    if not strict and (loose := key_report(expected, sd, what=f"{where}loaded non-strictly into {name}")):
        warnings.warn(loose, stacklevel=2)
    module.load_state_dict(sd, strict=strict)
    return module


def load_pretrained(module: nn.Module, path: str | os.PathLike, *, key: str | None = None, strict: bool = True) -> nn.Module:
    """Initialise ``module`` from a checkpoint (EMA weights preferred, legacy layouts converted),
    loading strictly; errors name the file and the weight set. Returns ``module``."""
    ckpt = read_checkpoint(path, prefer_ema=True, key=key)
    sd, _layout = convert_state_dict(ckpt.state_dict)
    check_finite(sd, f"{ckpt.path} [{ckpt.weights_key or 'state dict'}]")
    return load_state_dict_strict(module, sd, strict=strict, source=f"{ckpt.path} [{ckpt.weights_key or 'state dict'}]")


def _canonical(name: str) -> str:
    try:
        return get_arch(name).name
    except ConfigError:
        return name.strip().lower()


def load_model(
    path: str | os.PathLike,
    *,
    arch: str | None = None,
    arch_kwargs: Mapping[str, Any] | None = None,
    prefer_ema: bool = True,
    key: str | None = None,
    device: str | torch.device = "cpu",
    strict: bool = True,
) -> nn.Module:
    """Build and strictly load the network stored in ``path`` (native or legacy), in eval mode.

    The architecture comes from ``arch``/``arch_kwargs`` if given, else the native metadata, else
    :func:`perceptsr.checkpoint.detect_arch`. ``model.perceptsr_meta`` holds the metadata plus how
    the file was read (``path``, ``file_format``, ``layout``, ``weights_key``, ``ema``, ``arch``,
    ``arch_kwargs``). Weights holding NaN or Inf are refused.
    """
    ckpt = read_checkpoint(path, prefer_ema=prefer_ema, key=key)
    sd, layout = _convert_or_raise(ckpt.state_dict, ckpt.path)
    check_finite(sd, ckpt.path)
    meta = dict(ckpt.meta)

    kwargs: dict[str, Any] | None = None
    if arch is None and meta.get("arch"):
        arch, kwargs = meta["arch"], dict(meta.get("arch_kwargs") or {})
    elif arch is not None and meta.get("arch") and _canonical(meta["arch"]) == _canonical(arch):
        kwargs = dict(meta.get("arch_kwargs") or {})
    if kwargs is None:
        try:
            detected, detected_kwargs = detect_arch(sd)
        except CheckpointError as exc:
            if arch is None:
                raise CheckpointError(f"{ckpt.path}: {exc}") from None
            detected, detected_kwargs = None, {}
        if arch is None:
            arch, kwargs = detected, detected_kwargs
        else:
            kwargs = detected_kwargs if detected == _canonical(arch) else {}
    kwargs = {**kwargs, **dict(arch_kwargs or {})}
    try:
        model = build_arch(arch, **kwargs)
    except ConfigError as exc:
        raise CheckpointError(f"{ckpt.path}: cannot build the stored architecture: {exc}") from None
    load_state_dict_strict(model, sd, strict=strict, source=f"{ckpt.path} ({arch} {kwargs})")
    model.eval().to(device)
    meta.update({
        "path": str(ckpt.path), "file_format": ckpt.file_format, "layout": layout, "weights_key": ckpt.weights_key,
        "available": ckpt.available, "ema": ckpt.ema, "arch": _canonical(arch), "arch_kwargs": kwargs,
    })
    meta.setdefault("scale", scale_of(model, kwargs))
    model.perceptsr_meta = meta
    return model
