"""Evaluation protocol policy, in one place for ``perceptsr eval``, ``perceptsr metric`` and training.

A *protocol* is a preset name (``sr-y``, ``sr-rgb``, ``pirm``; see :data:`~perceptsr.metrics.PRESETS`)
applied to every metric, or :data:`VALIDATION`, the training-validation rule that picks a preset
per metric. Either way a metric that cannot work in the preset's colour space (LPIPS and DISTS are
RGB-only) keeps a colour it supports.

>>> from perceptsr.metrics.protocol import VALIDATION, build_metrics
>>> metrics, missing = build_metrics(["psnr", "lpips", "niqe"], VALIDATION, scale=4)  # doctest: +SKIP

Grey against colour (:func:`match_channels`) follows the MATLAB evaluation scripts, which read each
file as it is and reduce a colour one to the metric's channel (``rgb2ycbcr`` Y or ``rgb2gray``);
a grey image is repeated to three channels only for metrics that work in RGB.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch

from perceptsr.errors import ConfigError, PerceptsrError
from perceptsr.metrics import create_metric, list_metrics, metric_class
from perceptsr.metrics.base import PRESETS, Metric, apply_color, resolve_preset

__all__ = ["PROTOCOLS", "VALIDATION", "build_metrics", "match_channels", "metric_options"]

#: Training validation: full-reference metrics get ``sr-y`` (``sr-rgb`` if they have no Y mode),
#: no-reference ones (NIQE, Ma, PI) get ``pirm``, as the PIRM/RankSRGAN scripts score them.
VALIDATION = "validation"
#: Every protocol name :func:`build_metrics` accepts.
PROTOCOLS = (*PRESETS, VALIDATION)


def _check_protocol(protocol: str | None) -> None:
    if protocol != VALIDATION:
        resolve_preset(protocol)


def metric_options(name: str, protocol: str | None, *, scale: int | None = None) -> dict[str, Any]:
    """The :func:`~perceptsr.metrics.create_metric` keywords metric ``name`` gets under ``protocol``.

    ``{"preset": ...}``, plus ``scale`` when the preset crops by scale and ``scale`` is given, plus
    ``color`` when the preset's colour is one the metric does not support (``rgb`` if it supports
    RGB, else its first colour). ``protocol=None``: no preset, the metric's defaults (``{}``).
    """
    _check_protocol(protocol)
    cls = metric_class(name)
    if protocol == VALIDATION:
        if not cls.full_reference:
            protocol = "pirm"
        else:
            protocol = "sr-y" if "y" in cls.allowed_colors else "sr-rgb"
    preset = resolve_preset(protocol)
    if preset is None:
        return {}
    out: dict[str, Any] = {"preset": preset.name}
    if preset.crop_border == "scale" and scale is not None:
        out["scale"] = int(scale)
    if preset.color is not None and preset.color not in cls.allowed_colors:
        out["color"] = "rgb" if "rgb" in cls.allowed_colors else cls.allowed_colors[0]
    return out


@contextlib.contextmanager
def _config_key(key: str | None, index: int) -> Iterator[None]:
    """Prefix a ConfigError with the config key of list item ``index`` (when ``key`` is given)."""
    try:
        yield
    except ConfigError as exc:
        if key is None:
            raise
        raise ConfigError(f"config key '{key}[{index}]': {exc}") from None


def build_metrics(
    names: Sequence[str],
    protocol: str | None = None,
    *,
    scale: int | None = None,
    device=None,
    options: Mapping[str, Any] | None = None,
    strict: bool = False,
    config_key: str | None = None,
) -> tuple[dict[str, Metric], dict[str, str]]:
    """Build each named metric once under ``protocol``: ``({name: Metric}, {name: why left out})``.

    Per-metric options come from :func:`metric_options`; ``options`` (``color``, ``crop_border``,
    ... for all metrics) override them. An unknown protocol or metric name raises before anything
    is built. A metric that cannot be built (missing asset, unreadable weights) is left out with the
    reason, or with ``strict=True`` its error is raised. ``config_key`` (e.g. ``"data.val.metrics"``)
    names the config list the names came from in raised :class:`ConfigError` messages.
    """
    _check_protocol(protocol)
    known = set(list_metrics())
    for i, name in enumerate(names):
        if name not in known:
            with _config_key(config_key, i):
                metric_class(name)  # raises the "unknown metric ... did you mean" error
    built: dict[str, Metric] = {}
    missing: dict[str, str] = {}
    for i, name in enumerate(names):
        if name in built or name in missing:
            continue
        try:
            with _config_key(config_key, i):
                kwargs = {**metric_options(name, protocol, scale=scale), **(options or {})}
                built[name] = create_metric(name, device=device, **kwargs)
        except PerceptsrError as exc:
            if strict:
                raise
            missing[name] = str(exc)
    return built, missing


def _grey(t: torch.Tensor, metric: Metric) -> torch.Tensor:
    return t if t.shape[1] == 1 else apply_color(t, metric.color, metric.round_uint8)


def _rgb(t: torch.Tensor) -> torch.Tensor:
    return t.expand(-1, 3, -1, -1) if t.shape[1] == 1 else t


def match_channels(x: torch.Tensor, ref: torch.Tensor | None, metric: Metric) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Give a grey/colour pair of ``(N, C, H, W)`` tensors in [0, 1] the channels ``metric`` compares.

    Same channel counts, no reference or a no-reference metric: unchanged. For a metric working in
    ``y``/``gray`` the colour image is converted to that channel exactly as the metric converts
    its own inputs (uint8 rounding included) and the grey one is kept; for an ``rgb`` metric the
    grey image is repeated to three channels. So a grey HR scores as MATLAB scripts score it.
    """
    if ref is None or not metric.full_reference or x.shape[1] == ref.shape[1]:
        return x, ref
    if metric.color == "rgb":
        return _rgb(x), _rgb(ref)
    return _grey(x, metric), _grey(ref, metric)
