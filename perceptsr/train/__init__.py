"""Training: one loop (:mod:`.engine`), pluggable objectives (:mod:`.objectives`), EMA, DDP helpers.

Nothing heavy is imported here; ``from perceptsr.train import train`` pulls in the engine on use.
"""

from __future__ import annotations

__all__ = ["train", "TrainResult", "TrainingError", "Objective", "PSNRObjective", "Runtime", "RunContext",
           "register_objective", "build_objective", "NonFiniteLossError", "ModelEMA"]

_LAZY = {
    "train": "perceptsr.train.engine",
    "TrainResult": "perceptsr.train.engine",
    "TrainingError": "perceptsr.train.engine",
    "Objective": "perceptsr.train.objectives",
    "PSNRObjective": "perceptsr.train.objectives",
    "Runtime": "perceptsr.train.context",
    "RunContext": "perceptsr.train.context",
    "register_objective": "perceptsr.train.objectives",
    "build_objective": "perceptsr.train.objectives",
    "NonFiniteLossError": "perceptsr.train.objectives",
    "ModelEMA": "perceptsr.train.ema",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'perceptsr.train' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
