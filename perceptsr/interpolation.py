"""Network interpolation (ESRGAN's ``net_interp``): the models on the straight line from A to B in
weight space, ``(1 - a) * A + a * B`` for ``a`` in ``linspace(0, 1, K)``, a PSNR-to-GAN slider.

>>> from perceptsr.interpolation import interpolate_files
>>> sweep = interpolate_files("psnr.safetensors", "esrgan.safetensors", 5, "interp/")   # doctest: +SKIP

A and B must be *interpolable*: the same architecture with the same tensors (names and shapes).
The line only gives sensible images when B was fine-tuned from A (or both from one parent), as
ESRGAN's GAN model was from its PSNR model: independently trained networks have unrelated
filters, and their midpoints give dark, washed-out or broken outputs. :func:`weight_similarity`
measures how related two networks are: the cosine similarity of each floating tensor's weights,
averaged over tensors weighted by their size. Fine-tuned pairs score close to 1 (a GAN fine-tune
of a PSNR model typically above 0.9); independently initialised networks score near 0.
Below :data:`SIMILARITY_WARNING` (0.5) :func:`interpolate_files` warns.

Each step is written as a native checkpoint (``step_<i>_a<alpha>.safetensors``; the endpoints are
A's and B's weights exactly) whose metadata ``extra["interpolation"]`` records A, B and ``alpha``,
plus ``interpolation.json`` listing the steps. :func:`evaluate_sweep` scores the steps (and, when
given, EA-Adam's trade-off models at the same positions ``t = a``) and draws them as curves on the
perception-distortion plane of the HTML report.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from perceptsr.checkpoint.atomic import atomic_write
from perceptsr.errors import CheckpointError, ConfigError

__all__ = [
    "SIMILARITY_WARNING", "InterpolationSweep", "check_interpolable", "evaluate_sweep", "interpolate_files",
    "interpolate_state_dicts", "weight_similarity",
]

SIMILARITY_WARNING = 0.5
SWEEP_FILE = "interpolation.json"

StateDict = Mapping[str, torch.Tensor]


@dataclasses.dataclass
class InterpolationSweep:
    """The written steps: ``alphas[i]`` is the weight of B in ``files[i]``; ``similarity`` as measured."""

    files: list[Path]
    alphas: list[float]
    similarity: float
    arch: str
    record: Path


def check_interpolable(a: StateDict, b: StateDict, names: tuple[str, str] = ("A", "B")) -> None:
    """Raise CheckpointError naming the first key (in A's order, then B's extras) that B lacks, has
    in another shape or dtype kind, or has in addition."""
    na, nb = names
    for key, x in a.items():
        if key not in b:
            raise CheckpointError(f"{nb}: has no tensor {key!r} that {na} has: the models are not interpolable "
                                  "(same architecture and arguments needed)")
        y = b[key]
        if tuple(x.shape) != tuple(y.shape):
            raise CheckpointError(f"{nb}: tensor {key!r} has shape {tuple(y.shape)}, {na} has {tuple(x.shape)}: "
                                  "the models are not interpolable")
        if x.is_floating_point() != y.is_floating_point():
            raise CheckpointError(f"{nb}: tensor {key!r} is {y.dtype}, {na} has {x.dtype}: the models are not "
                                  "interpolable")
    extra = [k for k in b if k not in a]
    if extra:
        raise CheckpointError(f"{nb}: has a tensor {extra[0]!r} that {na} lacks: the models are not interpolable")


def weight_similarity(a: StateDict, b: StateDict) -> float:
    """Size-weighted mean over floating tensors of the cosine similarity of A's and B's weights
    (1: same direction; ~0: unrelated). Tensors that are zero in either model count as similar
    when both are zero and as 0 otherwise."""
    total, weighted = 0, 0.0
    for key, x in a.items():
        if not x.is_floating_point() or x.numel() == 0:
            continue
        u, v = x.detach().double().reshape(-1), b[key].detach().double().reshape(-1)
        nu, nv = float(u.norm()), float(v.norm())
        cos = float(u @ v) / (nu * nv) if nu > 0 and nv > 0 else float(nu == nv)
        weighted += cos * x.numel()
        total += x.numel()
    return weighted / total if total else 1.0


def interpolate_state_dicts(a: StateDict, b: StateDict, alpha: float) -> dict[str, torch.Tensor]:
    """``(1 - alpha) * A + alpha * B`` for floating tensors (in float64, cast back: ``alpha`` 0 and 1
    give A and B exactly); other tensors (counters) come from A."""
    out = {}
    for key, x in a.items():
        if x.is_floating_point():
            mixed = (1.0 - alpha) * x.detach().double() + alpha * b[key].detach().double()
            out[key] = mixed.to(x.dtype).contiguous()
        else:
            out[key] = x.detach().clone()
    return out


def _first_kwarg_difference(ka: Mapping[str, Any], kb: Mapping[str, Any]) -> str | None:
    for key in ka:
        if key in kb and ka[key] != kb[key]:
            return key
    return None


def interpolate_files(
    a: str | os.PathLike, b: str | os.PathLike, steps: int, out_dir: str | os.PathLike,
) -> InterpolationSweep:
    """Write ``steps`` interpolated checkpoints between the models in files ``a`` and ``b`` (EMA
    weights preferred, any supported format and layout) into ``out_dir`` (module docstring)."""
    from perceptsr.checkpoint import load_model, save_model

    if not isinstance(steps, int) or steps < 2:
        raise ConfigError(f"interpolation steps must be an integer >= 2 (A and B included), got {steps!r}")
    ma, mb = load_model(a), load_model(b)
    meta_a, meta_b = ma.perceptsr_meta, mb.perceptsr_meta
    if meta_a["arch"] != meta_b["arch"]:
        raise CheckpointError(f"{b}: is a {meta_b['arch']} network, {a} a {meta_a['arch']}: the models are not "
                              "interpolable")
    sa, sb = ma.state_dict(), mb.state_dict()
    check_interpolable(sa, sb, (str(a), str(b)))
    differing = _first_kwarg_difference(meta_a["arch_kwargs"], meta_b["arch_kwargs"])
    if differing is not None:
        raise CheckpointError(f"{b}: architecture argument {differing!r} is {meta_b['arch_kwargs'][differing]!r}, "
                              f"{a} has {meta_a['arch_kwargs'][differing]!r}: the models are not interpolable")
    similarity = weight_similarity(sa, sb)
    if math.isnan(similarity):
        raise CheckpointError(f"{a} or {b}: the weights hold NaN or infinite values")
    if similarity < SIMILARITY_WARNING:
        warnings.warn(f"{a} and {b} are far apart in weight space (weight cosine similarity {similarity:.3f} < "
                      f"{SIMILARITY_WARNING}): they look independently trained, and their interpolations are "
                      "likely to give dark or broken outputs; interpolate a model with its own fine-tune",
                      stacklevel=2)
    out = Path(out_dir)
    alphas = [i / (steps - 1) for i in range(steps)]
    digits = max(2, len(str(steps - 1)))
    files = []
    for i, alpha in enumerate(alphas):
        path = out / f"step_{i:0{digits}d}_a{alpha:.3f}.safetensors"
        save_model(path, interpolate_state_dicts(sa, sb, alpha), arch=meta_a["arch"], arch_kwargs=meta_a["arch_kwargs"],
                   scale=meta_a.get("scale"), is_ema=bool(meta_a.get("ema")),
                   extra={"interpolation": {"a": str(Path(a).resolve()), "b": str(Path(b).resolve()), "alpha": alpha,
                                            "step": i, "steps": steps, "weight_similarity": similarity}})
        files.append(path)
    record = {"a": str(Path(a).resolve()), "b": str(Path(b).resolve()), "arch": meta_a["arch"],
              "weight_similarity": similarity, "similarity_warning_below": SIMILARITY_WARNING,
              "steps": [{"alpha": al, "file": p.name} for al, p in zip(alphas, files)]}
    text = json.dumps(record, indent=2) + "\n"
    record_path = atomic_write(out / SWEEP_FILE, lambda f: f.write(text.encode("utf-8")))
    return InterpolationSweep(files, alphas, similarity, meta_a["arch"], record_path)


def evaluate_sweep(
    sweep: InterpolationSweep,
    datasets: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    metrics: Sequence[str] = ("psnr", "lpips"),
    protocol: str = "sr-y",
    tradeoff: str | os.PathLike | None = None,
    **evaluate_kwargs: Any,
) -> tuple[dict, Path]:
    """Score every step on ``datasets`` with :func:`perceptsr.evaluation.evaluate` and write the
    results and ``report.html`` to ``out_dir``; returns ``(results, report path)``.

    Entries are named ``a=<alpha>``; with ``tradeoff`` (an EA-Adam population folder or fused model,
    as ``perceptsr upscale --tradeoff`` takes) the trade-off models at ``t`` = each alpha are scored
    too, as ``t=<t>``. ``results["curves"]`` lists each curve's entries in order, for the report.
    """
    from perceptsr.evaluation import evaluate, write_results
    from perceptsr.report import build_report

    entries: dict[str, Any] = {f"a={alpha:.3f}": str(path) for alpha, path in zip(sweep.alphas, sweep.files)}
    curves = [{"name": f"interpolation ({sweep.arch})", "parameter": "alpha",
               "points": [{"model": name, "value": alpha} for name, alpha in zip(entries, sweep.alphas)]}]
    if tradeoff is not None:
        from perceptsr.fusion import load_tradeoff_model

        names = [f"t={t:.3f}" for t in sweep.alphas]
        entries.update({name: load_tradeoff_model(tradeoff, t) for name, t in zip(names, sweep.alphas)})
        curves.append({"name": "EA-Adam trade-off", "parameter": "t",
                       "points": [{"model": name, "value": t} for name, t in zip(names, sweep.alphas)]})
    results = evaluate(entries, datasets, metrics=list(metrics), protocol=protocol, **evaluate_kwargs)
    results["curves"] = curves
    out = Path(out_dir)
    write_results(results, out)
    return results, build_report([out / "results.json"], out / "report.html")
