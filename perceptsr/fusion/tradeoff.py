"""The perception-distortion trade-off at inference: a plain model at ``t`` in [0, 1] (0 = most
faithful member, 1 = most perceptual), spec ``shared/specs/eaadam.md`` §9.

:func:`interpolate_population` walks piecewise-linearly through the population ordered from most
faithful to most perceptual; :func:`interpolate_fusion_weights` is a per-layer path through the
fused weights between members 0 and K-1; :func:`build_tradeoff_model` makes either from files and
:func:`load_tradeoff_model` picks one for ``perceptsr upscale --tradeoff``.
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

from perceptsr.checkpoint.keys import key_report, listing
from perceptsr.errors import CheckpointError, ConfigError
from perceptsr.fusion.files import FUSION_WEIGHTS_FILE, load_fusion_weights, member_files
from perceptsr.fusion.layers import as_vector
from perceptsr.fusion.network import WeightsLike, fuse_state_dicts
from perceptsr.fusion.plan import StateDict

__all__ = ["interpolate_population", "interpolate_fusion_weights", "build_tradeoff_model", "load_tradeoff_model"]


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


def interpolate_fusion_weights(weights: WeightsLike, t: float, *, center: float = 0.5,
                               num_experts: int | None = None) -> dict[str, torch.Tensor] | torch.Tensor:
    """A per-layer path through the fused weights: ``t = 0`` is expert 0 (one-hot), ``t = center``
    the given (averaged) weights w̄, ``t = 1`` expert K-1; linear in between on each side.

    Why this path: the fused model is the method's chosen balance point, so the control should pass
    through it exactly and reach the two extreme members at the ends; blending toward one-hot
    vectors keeps every layer a convex combination of the experts, i.e. a model of the same family
    that :func:`collapse` turns into a plain network. ``weights`` is ``{layer: K-vector}`` or one
    K-vector (the result has the same form).
    """
    t = _check_t(t)
    center = float(center)
    if not 0.0 < center < 1.0:
        raise ConfigError(f"interpolate_fusion_weights: center must be in (0, 1), got {center}")

    def move(vec: Any, what: str) -> torch.Tensor:
        v = torch.as_tensor(vec, dtype=torch.float64).reshape(-1)
        k = num_experts or v.numel()
        v = as_vector(v, k, what)
        if t <= center:
            target, a = torch.zeros(k, dtype=torch.float64), 1.0 - t / center
            target[0] = 1.0
        else:
            target, a = torch.zeros(k, dtype=torch.float64), (t - center) / (1.0 - center)
            target[-1] = 1.0
        return torch.lerp(v, target, a)

    if isinstance(weights, Mapping):
        return {n: move(v, f"fusion weights of layer {n!r}") for n, v in weights.items()}
    return move(weights, "fusion weights")


def build_tradeoff_model(
    population_dir_or_files: Sequence[str | os.PathLike] | str | os.PathLike,
    t: float,
    *,
    fusion_weights: Mapping[str, Any] | str | os.PathLike | None = None,
    center: float = 0.5,
    sort: bool = True,
    arch: str | None = None,
    arch_kwargs: Mapping[str, Any] | None = None,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """A plain generator at trade-off ``t`` (0 = most faithful member, 1 = most perceptual).

    Members are native or legacy checkpoints (a folder, or files), sorted by individual index
    unless ``sort=False``. Without ``fusion_weights`` the result is :func:`interpolate_population`
    (only the two neighbouring members are read). With ``fusion_weights`` (a dict or a
    ``fusion_weights.json`` path/folder) all members are read and the result is
    ``collapse(members, interpolate_fusion_weights(w̄, t, center=center))``: at ``t = center`` it is
    the fused model. ``perceptsr_meta["tradeoff"]`` records how the model was made.
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
        models = [load(p) for p in files]
        for p, m in zip(files[1:], models[1:]):
            if arch_of(m) != arch_of(models[0]):
                raise CheckpointError(f"{p}: architecture {arch_of(m)} differs from {files[0]}'s {arch_of(models[0])}")
        w = interpolate_fusion_weights(fusion_weights, t, center=center, num_experts=k)
        model = models[0]
        sd = fuse_state_dicts(model, [m.state_dict() for m in models], w)
        info = {"t": t, "method": "fusion_weights", "center": center, "members": [str(f) for f in files]}
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
        info = {"t": t, "method": "population", "members": [str(f) for f in files], "between": [i, min(i + 1, k - 1)],
                "alpha": a}
    model.load_state_dict(sd, strict=True)
    model.to(device).eval()
    model.perceptsr_meta = {**model.perceptsr_meta, "tradeoff": info}
    return model


def load_tradeoff_model(path: str | os.PathLike, t: float, *, device: str | torch.device = "cpu") -> nn.Module:
    """A plain model at trade-off ``t`` (0 = most faithful, 1 = most perceptual) from a population
    folder (``member_<i>`` files: :func:`interpolate_population`) or a fused model (its checkpoint,
    or a folder, with ``fusion_weights.json`` naming the experts: the per-layer path of
    :func:`interpolate_fusion_weights`, which passes through the fused model at ``t = 0.5``)."""
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
