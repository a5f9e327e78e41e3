"""Foreign ``.pth`` files: read with ``torch.load(weights_only=True)`` only (never unpickling code),
and the state dicts inside their wrappers (``params_ema``/``params``, ``state_dict``,
``model_state_dict``, ``model``, ...) found. Key layouts are converted elsewhere
(:func:`perceptsr.checkpoint.convert_state_dict`)."""

from __future__ import annotations

import contextlib
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from perceptsr.errors import CheckpointError

__all__ = ["WRAPPER_KEYS", "first_line", "torch_load", "unsafe_globals_message", "weight_sets"]

# wrapper keys holding a state dict, tried in this order after params_ema/params
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net_g", "generator", "net", "network", "params_g")


def first_line(exc: BaseException) -> str:
    """``"TypeName: first line of the message"``, at most 300 characters."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def unsafe_globals_message(path: Path, exc: Exception) -> str:
    """Why a file that pickles Python objects is refused, and how to re-save its tensors."""
    names = re.findall(r"GLOBAL ([\w.]+)", str(exc))
    with contextlib.suppress(Exception):
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path)) or names
    listed = ", ".join(sorted(set(names))) if names else "unknown objects"
    return (
        f"{path}: refusing to load: the file pickles Python objects ({listed}) that would have to be imported "
        "and executed to read it. perceptsr reads checkpoints with torch.load(weights_only=True) and never "
        "unpickles code. If you trust the file, re-save only its tensors in a separate Python session, e.g. "
        "torch.save(obj['params'], 'weights.pth') or torch.save(model.state_dict(), 'weights.pth'), "
        "and convert that."
    )


def torch_load(path: Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; CheckpointError for unsafe or unreadable files."""
    try:
        with open(path, "rb") as f:  # a file object: torch.load would pick safetensors by the extension alone
            return torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if re.search(r"GLOBAL [\w.]+", str(exc)):
            raise CheckpointError(unsafe_globals_message(path, exc)) from None
        raise CheckpointError(f"{path}: not a readable PyTorch or safetensors checkpoint ({first_line(exc)})") from None
    except PermissionError as exc:
        raise CheckpointError(f"{path}: cannot read the checkpoint: {exc.strerror}") from None
    except Exception as exc:  # torch.load fails on foreign bytes with many types (KeyError, SafetensorError, ...)
        raise CheckpointError(
            f"{path}: not a readable PyTorch or safetensors checkpoint (corrupt, truncated or another kind of file?): "
            f"{first_line(exc)}"
        ) from None


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping) and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def weight_sets(obj: Any, depth: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """Candidate state dicts inside a loaded object, keyed by the wrapper path (``""`` for a plain one)."""
    if _is_state_dict(obj):
        return {"": dict(obj)}
    if not isinstance(obj, Mapping) or depth > 2:
        return {}
    found = {k: dict(obj[k]) for k in ("params_ema", "params") if _is_state_dict(obj.get(k))}
    if found:
        return found
    for k in WRAPPER_KEYS:
        if k in obj:
            inner = weight_sets(obj[k], depth + 1)
            if inner:
                return {(f"{k}/{n}" if n else k): sd for n, sd in inner.items()}
    return {}
