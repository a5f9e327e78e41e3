"""The perception-distortion trade-off at inference (``perceptsr upscale --tradeoff t``; a perceptsr
extension, the release has no such control), spec ``shared/specs/eaadam.md`` §9.

One calibrated meaning on both paths: ``t`` in [0, 1] is the perceptual preference, and the model
at ``t`` sits at **expert position** ``t * (K - 1)``, where member i of K has preference
``i / (K - 1)`` and a fused weight vector ``w`` sits at ``Σ_j j w_j`` (averaged over layers:
:func:`expert_position`).

* :func:`interpolate_population` walks piecewise-linearly through the population ordered from most
  faithful to most perceptual: at ``t`` it lies between members ``i`` and ``i + 1`` with
  ``i + a = t (K - 1)``.
* :func:`interpolate_fusion_weights` moves every layer's fused weights by one common coefficient
  toward expert 0 (one-hot) or toward expert K-1 until the mean expert position is ``t (K - 1)``.
  The fused model itself sits at its own position, ``t = fused_tradeoff(w̄)``.

:func:`build_tradeoff_model` makes either from files and :func:`load_tradeoff_model` picks one.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from perceptsr.state_dicts import key_report, listing
from perceptsr.errors import CheckpointError, ConfigError
from perceptsr.fusion.files import FUSION_WEIGHTS_FILE, load_fusion_weights, member_files
from perceptsr.fusion.network import fuse_state_dicts
from perceptsr.fusion.plan import StateDict, static_vector
from perceptsr.fusion.positions import WeightsLike, count_experts, expert_position, fused_tradeoff, weight_vectors

__all__ = ["interpolate_population", "interpolate_fusion_weights", "build_tradeoff_model", "load_tradeoff_model"]

#: ``t`` this close (in expert positions) to the fused model's own position gives the fused weights exactly
_SNAP = 1e-9


def _check_t(t: float) -> float:
    try:
        t = float(t)
    except (TypeError, ValueError):
        raise ConfigError(f"tradeoff t must be a number in [0, 1], got {t!r}") from None
    if not 0.0 <= t <= 1.0 or math.isnan(t):
        raise ConfigError(f"tradeoff t must be in [0, 1] (0 = most faithful, 1 = most perceptual), got {t}")
    return t


def _lerp_state_dicts(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], alpha: float,
                      names: tuple[str, str] = ("member a", "member b")) -> StateDict:
    report = key_report(a, b, what=f"{names[0]} and {names[1]} have different weights ({names[1]} against "
                        f"{names[0]})", labels=names)
    if report:
        raise CheckpointError(report)
    out = {}
    for k, x in a.items():
        y = b[k]
        if alpha == 0.0 or not x.is_floating_point():
            out[k] = x.detach().clone()
        elif alpha == 1.0:
            out[k] = y.detach().clone().to(x.dtype)
        else:
            out[k] = torch.lerp(x.detach(), y.detach().to(device=x.device, dtype=x.dtype), alpha)
    return out


def _position(t: float, k: int) -> tuple[int, float]:
    p = _check_t(t) * (k - 1)
    i = min(int(math.floor(p)), k - 2)
    return i, p - i


def interpolate_population(state_dicts: Sequence[Mapping[str, torch.Tensor]], t: float) -> StateDict:
    """Piecewise-linear walk through the population, members ordered from most faithful (0) to most
    perceptual (K-1): position ``t * (K - 1)``; between members i and i+1 every floating tensor is
    ``lerp(θ_i, θ_{i+1}, a)``. ``t = 0`` / ``1`` give members 0 / K-1 exactly; non-float tensors
    (counters) come from the lower neighbour."""
    sds = list(state_dicts)
    if not sds:
        raise ConfigError("interpolate_population: the population is empty")
    if len(sds) == 1:
        _check_t(t)
        return {k: v.detach().clone() for k, v in sds[0].items()}
    i, a = _position(t, len(sds))
    return _lerp_state_dicts(sds[i], sds[i + 1], a, (f"member {i}", f"member {i + 1}"))


def _path(t: float, k: int, center: float) -> tuple[int, float]:
    """``(target expert, a)``: ``lerp(w, one_hot(target), a)`` is at position ``t (K - 1)`` when ``w``
    is at ``center`` (expert positions are linear in the weights)."""
    p = t * (k - 1)
    if abs(p - center) <= _SNAP or k == 1:
        return 0, 0.0
    if p < center:
        return 0, 1.0 - p / center
    return k - 1, (p - center) / (k - 1 - center)


def interpolate_fusion_weights(weights: WeightsLike, t: float, *,
                               num_experts: int | None = None) -> dict[str, torch.Tensor] | torch.Tensor:
    """The fused weights moved to perceptual preference ``t``: every layer ``lerp(w̄_l, e, a)`` with one
    common ``a``, toward ``e`` = expert 0 (one-hot) when ``t`` is below the fused model's own
    :func:`fused_tradeoff`, toward expert K-1 above it, so that :func:`expert_position` is exactly
    ``t (K - 1)``, as for :func:`interpolate_population`. ``t = 0`` / ``1`` are experts 0 / K-1 and
    ``t = fused_tradeoff(w̄)`` is w̄ itself.

    Every layer stays a convex combination of the experts (a model of the same family that
    :func:`collapse` turns into a plain network). ``weights`` is ``{layer: K-vector}`` or one
    K-vector (the result has the same form).
    """
    t = _check_t(t)
    vecs = weight_vectors(weights, num_experts)
    target, a = _path(t, count_experts(vecs), expert_position(vecs))
    return _move(vecs, target, a)


def _move(vecs: dict[str, torch.Tensor] | torch.Tensor, target: int, a: float):
    """Each vector ``lerp``-ed by ``a`` toward the one-hot vector of expert ``target`` (same form)."""

    def one(v: torch.Tensor) -> torch.Tensor:
        if a == 0.0:
            return v.clone()
        end = torch.zeros_like(v)
        end[target] = 1.0
        return torch.lerp(v, end, a)

    return {n: one(v) for n, v in vecs.items()} if isinstance(vecs, dict) else one(vecs)


def build_tradeoff_model(
    population_dir_or_files: Sequence[str | os.PathLike] | str | os.PathLike,
    t: float,
    *,
    fusion_weights: Mapping[str, Any] | str | os.PathLike | None = None,
    static_policy: str | None = None,
    sort: bool = True,
    arch: str | None = None,
    arch_kwargs: Mapping[str, Any] | None = None,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """A plain generator at perceptual preference ``t`` (expert position ``t (K - 1)``).

    Members are native or legacy checkpoints (a folder, or files), sorted by individual index
    unless ``sort=False``. Without ``fusion_weights`` the result is :func:`interpolate_population`
    (only the two neighbouring members are read). With ``fusion_weights`` (a dict or a
    ``fusion_weights.json`` path/folder) all members are read and the result is
    ``collapse(members, interpolate_fusion_weights(w̄, t))``: at ``t = fused_tradeoff(w̄)`` it is the
    fused model. Tensors outside the dynamic layers that differ between members start from the
    ``static_policy`` vector (default: the one the JSON records, else ``error``) and move along the
    same path, so ``t = 0`` / ``1`` are the end members exactly. ``perceptsr_meta["tradeoff"]``
    records how the model was made and its ``position``.
    """
    from perceptsr.checkpoint import load_model

    t = _check_t(t)
    files = member_files(population_dir_or_files, sort=sort)
    k = len(files)

    def load(p: Path) -> nn.Module:
        return load_model(p, arch=arch, arch_kwargs=arch_kwargs)

    def arch_of(m: nn.Module) -> tuple[str, dict]:
        return m.perceptsr_meta["arch"], dict(m.perceptsr_meta["arch_kwargs"])

    if fusion_weights is not None:
        if isinstance(fusion_weights, (str, os.PathLike)):
            fusion_weights, record = load_fusion_weights(fusion_weights)
            listed = record.get("experts")
            if listed and all(listed) and [Path(x).name for x in listed] != [f.name for f in files]:
                warnings.warn(f"the fusion weights were computed with experts {[Path(x).name for x in listed]}, "
                              f"but the members are {[f.name for f in files]} (check the order)", stacklevel=2)
            if static_policy is None:
                static_policy = record.get("static_policy", "error")
        models = [load(p) for p in files]
        for p, m in zip(files[1:], models[1:]):
            if arch_of(m) != arch_of(models[0]):
                raise CheckpointError(f"{p}: architecture {arch_of(m)} differs from {files[0]}'s {arch_of(models[0])}")
        vecs = weight_vectors(fusion_weights, k)
        center = expert_position(vecs)
        target, a = _path(t, k, center)
        w = _move(vecs, target, a)
        policy = static_policy or "error"
        base = static_vector(policy, k)
        static = policy if base is None else _move(base, target, a)
        model = models[0]
        sd = fuse_state_dicts(model, [m.state_dict() for m in models], w, static=static)
        info = {"t": t, "method": "fusion_weights", "position": expert_position(w), "fused_t": fused_tradeoff(vecs),
                "static_policy": policy, "members": [str(f) for f in files]}
    else:
        if k == 1:
            i, a = 0, 0.0
        else:
            i, a = _position(t, k)
        model = load(files[i])
        if k > 1 and a > 0.0:
            other = load(files[i + 1])
            if arch_of(other) != arch_of(model):
                raise CheckpointError(f"{files[i + 1]}: architecture {arch_of(other)} differs from {files[i]}'s "
                                      f"{arch_of(model)}")
            sd = _lerp_state_dicts(model.state_dict(), other.state_dict(), a, (str(files[i]), str(files[i + 1])))
        else:
            sd = model.state_dict()
        info = {"t": t, "method": "population", "position": i + a, "members": [str(f) for f in files],
                "between": [i, min(i + 1, k - 1)], "alpha": a}
    model.load_state_dict(sd, strict=True)
    model.to(device).eval()
    model.perceptsr_meta = {**model.perceptsr_meta, "tradeoff": info}
    return model


def load_tradeoff_model(path: str | os.PathLike, t: float, *, device: str | torch.device = "cpu") -> nn.Module:
    """A plain model at perceptual preference ``t`` (expert position ``t (K - 1)``; 0 = most
    faithful, 1 = most perceptual) from a population folder (``member_<i>`` files:
    :func:`interpolate_population`) or a fused model (its checkpoint, or a folder, with
    ``fusion_weights.json`` naming the experts: :func:`interpolate_fusion_weights`, which gives the
    fused model itself at its own ``t``, recorded in the JSON as ``tradeoff_t``)."""
    from perceptsr.checkpoint import CheckpointSaver
    from perceptsr.ea_adam import POPULATION_DIR, population_folder

    path = Path(path)
    weights_file = path / FUSION_WEIGHTS_FILE if path.is_dir() else path.parent / FUSION_WEIGHTS_FILE
    fused = weights_file.is_file() and (
        path.is_dir() or load_fusion_weights(weights_file)[1].get("checkpoint") == path.name)
    if fused:
        _, record = load_fusion_weights(weights_file)
        experts = record.get("experts") or []
        missing = [e for e in experts if not e or not Path(e).is_file()]
        if missing or not experts:
            raise ConfigError(f"{weights_file}: the expert files it names are not found "
                              f"({listing([str(m) for m in missing]) or 'none recorded'}); a trade-off needs them")
        return build_tradeoff_model(experts, t, fusion_weights=weights_file, sort=False, device=device)
    if (path / CheckpointSaver.MANIFEST).is_file():
        raise ConfigError(f"{path}: a training checkpoint folder, not a population; use the EA-Adam run's "
                          f"{population_folder()} (or {POPULATION_DIR}/phase_<k>) folder")
    if path.is_dir():
        return build_tradeoff_model(path, t, device=device)
    raise ConfigError(f"{path}: --tradeoff needs a population folder (member_<i> checkpoints) or a fused model "
                      f"with {FUSION_WEIGHTS_FILE} beside it")
