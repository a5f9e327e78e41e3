"""Training state for resuming: optimizer/scheduler/RNG/counters written with ``torch.save``
atomically and read back with ``weights_only=True``; NumPy arrays/scalars (e.g. NumPy's RNG state)
are encoded so they round-trip too."""

from __future__ import annotations

import os
import pickle
import random
from collections import Counter, OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from perceptsr.checkpoint.atomic import atomic_write
from perceptsr.checkpoint.legacy import first_line, unsafe_globals_message
from perceptsr.errors import CheckpointError

__all__ = ["capture_rng_state", "load_training_state", "restore_rng_state", "save_training_state"]

_NP_TAG = "__perceptsr_numpy__"


def _encode(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor) or obj is None or isinstance(obj, (bool, int, float, str, bytes, complex)):
        return obj
    if isinstance(obj, (np.ndarray, np.generic)):
        arr = np.asarray(obj)
        if arr.dtype.hasobject:
            raise CheckpointError("training state: NumPy arrays of Python objects cannot be stored safely")
        return {_NP_TAG: True, "dtype": arr.dtype.str, "shape": list(arr.shape), "data": arr.tobytes(),
                "scalar": isinstance(obj, np.generic)}
    if type(obj) in (dict, OrderedDict, Counter):
        out = type(obj)()
        for k, v in obj.items():
            out[k] = _encode(v)
        return out
    if type(obj) in (list, tuple, set):
        return type(obj)(_encode(v) for v in obj)
    return obj  # anything else is checked by the weights-only scan before the file is kept


def _decode(obj: Any) -> Any:
    if isinstance(obj, dict):
        if obj.get(_NP_TAG) is True:
            arr = np.frombuffer(obj["data"], dtype=np.dtype(obj["dtype"])).reshape(obj["shape"]).copy()
            return arr[()] if obj.get("scalar") else arr
        out = type(obj)()
        for k, v in obj.items():
            out[k] = _decode(v)
        return out
    if type(obj) in (list, tuple, set):
        return type(obj)(_decode(v) for v in obj)
    return obj


def save_training_state(path: str | os.PathLike, state_dict: Mapping[str, Any]) -> Path:
    """Atomically ``torch.save`` optimizer/scheduler/RNG/counter state for resuming.

    Everything must be loadable with ``weights_only=True`` (tensors, Python scalars/strings, lists,
    tuples, dicts, sets, OrderedDict, Counter; NumPy arrays/scalars are encoded): otherwise a
    CheckpointError names the offending types and no file is written.
    """
    path = Path(path)
    encoded = _encode(dict(state_dict))

    def check(tmp: Path) -> None:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(tmp))
        if unsafe:
            raise CheckpointError(
                f"{path}: training state holds objects that weights-only loading refuses ({', '.join(unsafe)}); "
                "store plain tensors, numbers, strings, lists and dicts instead"
            )

    def write(f: IO[bytes]) -> None:
        try:
            torch.save(encoded, f)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"{path}: training state cannot be serialised: {first_line(exc)}") from exc

    return atomic_write(path, write, check=check)


def load_training_state(path: str | os.PathLike, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a file written by :func:`save_training_state` (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such training-state file")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(unsafe_globals_message(path, exc)) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable training state (corrupt or truncated?): {first_line(exc)}") from None
    return _decode(obj)


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU (and CUDA, if initialised) RNG states, ready for :func:`save_training_state`."""
    state: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in state:
        np.random.set_state(tuple(state["numpy"]))
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
