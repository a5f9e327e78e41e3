"""Checkpoints, one job per module:

* :mod:`~perceptsr.checkpoint.format`: the native format (safetensors + JSON metadata, EMA and raw
  weights in one file), :func:`save_model`, and :func:`read_checkpoint` for any supported file;
* :mod:`~perceptsr.checkpoint.legacy`: foreign ``.pth`` files, read with
  ``torch.load(weights_only=True)`` only, and the state dicts inside their wrappers;
* :mod:`~perceptsr.checkpoint.layouts`: legacy key layouts and architecture detection, asked of
  the architecture specs (:mod:`perceptsr.archs`);
* :mod:`~perceptsr.state_dicts`: prefix stripping and :func:`key_report`, the one
  missing/unexpected/mis-shaped key report;
* :mod:`~perceptsr.checkpoint.loading`: strict loading (:func:`load_model`, :func:`load_pretrained`,
  :func:`load_state_dict_strict`);
* :mod:`~perceptsr.checkpoint.training_state`: optimizer/scheduler/RNG state for resuming;
* :mod:`~perceptsr.checkpoint.saver`: :class:`CheckpointSaver`, periodic checkpoints with retention;
* :mod:`~perceptsr.checkpoint.atomic`: :func:`atomic_write`.
"""

from __future__ import annotations

from perceptsr.checkpoint.atomic import atomic_write
from perceptsr.checkpoint.format import (
    FORMAT_VERSION, META_KEY, RAW_PREFIX, LoadedCheckpoint, read_checkpoint, save_model,
)
from perceptsr.state_dicts import key_report, strip_prefixes
from perceptsr.checkpoint.layouts import convert_state_dict, detect_arch
from perceptsr.checkpoint.loading import load_model, load_pretrained, load_state_dict_strict, read_state_dict
from perceptsr.checkpoint.saver import CheckpointSaver
from perceptsr.checkpoint.training_state import (
    capture_rng_state, load_training_state, restore_rng_state, save_training_state,
)

__all__ = [
    "FORMAT_VERSION", "META_KEY", "RAW_PREFIX", "LoadedCheckpoint", "CheckpointSaver",
    "save_model", "read_checkpoint", "read_state_dict", "strip_prefixes", "convert_state_dict", "detect_arch", "load_model",
    "load_pretrained", "load_state_dict_strict", "key_report", "save_training_state", "load_training_state",
    "capture_rng_state", "restore_rng_state", "atomic_write",
]
