"""What a resumed run may change, checked against the run's recorded ``config.yml``.

A change on resume is either applied (and logged, one line per key) or refused with the list of
differing keys; it is never ignored. Refused (:func:`refused`): what the checkpoint itself fixes,
so that a new value could not be honoured: the generator (``model.*``) and the discriminator
(``objective.discriminator.*``) whose weights are restored, ``seed`` and ``scale``,
``objective.type``, and the optimiser hyperparameters other than the learning rate
(``type``, ``betas``, ``eps``, ``weight_decay`` of ``optim`` and of any ``objective.optim_*``),
which the restored optimiser state would silently override. Everything else is read from the
config when the run is rebuilt, so it applies from the next iteration: length, logging /
validation / checkpoint cadence, device, data folders and loading, losses and their weights, the
schedule, EMA, numerics. A changed learning rate (``optim.lr``, ``objective.optim_*.lr``)
replaces the schedule's base rate: from the next iteration the rate is ``new_lr * factor(t)``
(the loop resets the optimisers' ``initial_lr`` after restoring them; Adam's moments are kept).
Any applied change makes the result differ from an uninterrupted run; with no change, resume is
bit-exact.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from perceptsr.config import TrainConfig, dump_config, load_yaml
from perceptsr.errors import ConfigError

__all__ = ["ResumeChanges", "refused", "resume_changes"]

_FIXED = ("seed", "scale", "objective.type")
_FIXED_SECTIONS = ("model.", "objective.discriminator.")
_OPTIMISER_STATE = re.compile(r"(^|\.)optim(_\w+)?\.(type|betas|eps|weight_decay)(\[\d+\])?$")
_LEARNING_RATE = re.compile(r"(^|\.)optim(_\w+)?\.lr$")


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out or {prefix[:-1]: {}}
    return {prefix[:-1]: node}


def refused(key: str) -> bool:
    """True for a dotted key whose value the checkpoint fixes (see the module docstring)."""
    return key in _FIXED or key.startswith(_FIXED_SECTIONS) or bool(_OPTIMISER_STATE.search(key))


@dataclass(frozen=True)
class ResumeChanges:
    """The applied changes as ``"key: old -> new"`` lines, and whether a learning rate is among them."""

    lines: tuple[str, ...] = ()
    learning_rate: bool = False


def resume_changes(recorded: Path, cfg: TrainConfig) -> ResumeChanges:
    """Compare ``cfg`` with ``recorded`` (a run's config.yml), both as the YAML a run folder stores;
    ConfigError listing every key that may not change, else the changes to apply."""
    old = _flatten(load_yaml(recorded))
    new = _flatten(yaml.safe_load(dump_config(cfg)))
    missing = object()
    diffs = {k: (old.get(k, missing), new.get(k, missing)) for k in sorted(set(old) | set(new))
             if old.get(k, missing) != new.get(k, missing)}
    bad = [k for k in diffs if refused(k)]
    if bad:
        shown = "; ".join(f"{k}: {_show(diffs[k][0], missing)} -> {_show(diffs[k][1], missing)}" for k in bad)
        raise ConfigError(
            f"--resume: {len(bad)} key(s) differ from the config this run was trained with ({recorded}) and cannot "
            f"change on resume (the checkpoint fixes them): {shown}. Resume with the recorded values, or start a new "
            f"run initialised from the checkpoint (model.pretrained=.../net_g.safetensors)"
        )
    return ResumeChanges(tuple(f"{k}: {_show(a, missing)} -> {_show(b, missing)}" for k, (a, b) in diffs.items()),
                         any(_LEARNING_RATE.search(k) for k in diffs))


def _show(value: Any, missing: object) -> str:
    return "(absent)" if value is missing else repr(value)
