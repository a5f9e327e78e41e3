"""Calibrated image-quality metrics: ``create_metric(name, preset=..., device=...)`` -> ``nn.Module``.

>>> from perceptsr.metrics import create_metric
>>> psnr = create_metric("psnr", preset="sr-y", scale=4)   # doctest: +SKIP
>>> psnr(sr, hr)                                            # (N,) values  # doctest: +SKIP

Built-in metrics are imported on first use, so a metric whose module or assets are missing does not
break ``import perceptsr.metrics`` or :func:`list_metrics`.
"""

from __future__ import annotations

import difflib
import importlib

from perceptsr.errors import ConfigError
from perceptsr.metrics.base import PRESETS, Metric, Preset, resolve_preset

__all__ = [
    "Metric",
    "PRESETS",
    "Preset",
    "create_metric",
    "list_metrics",
    "metric_class",
    "register_metric",
]

# name -> ("module:Class", default options). Aliases carry options (lpips-vgg = LPIPS(net="vgg")).
_BUILTIN: dict[str, tuple[str, dict]] = {
    "psnr": ("perceptsr.metrics.psnr_ssim:PSNR", {}),
    "ssim": ("perceptsr.metrics.psnr_ssim:SSIM", {}),
    "niqe": ("perceptsr.metrics.niqe:NIQE", {}),
    "ma": ("perceptsr.metrics.ma:Ma", {}),
    "pi": ("perceptsr.metrics.ma:PI", {}),
    "lpips": ("perceptsr.metrics.lpips:LPIPS", {}),
    "lpips-vgg": ("perceptsr.metrics.lpips:LPIPS", {"net": "vgg"}),
    "dists": ("perceptsr.metrics.dists:DISTS", {}),
}
_USER: dict[str, tuple[type | str, dict]] = {}


def list_metrics() -> list[str]:
    """Names accepted by :func:`create_metric` (built-in and registered), sorted."""
    return sorted(set(_BUILTIN) | set(_USER))


def register_metric(name: str, cls, *, overwrite: bool = False, **default_options) -> None:
    """Register a user metric: ``cls`` is a :class:`Metric` subclass or a ``"module:Class"`` string."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"register_metric: name must be a non-empty string, got {name!r}")
    if isinstance(cls, type):
        if not issubclass(cls, Metric):
            raise ConfigError(f"register_metric: {cls.__name__} is not a perceptsr Metric subclass")
    elif not (isinstance(cls, str) and ":" in cls):
        raise ConfigError(
            f"register_metric: cls must be a Metric subclass or 'module:Class', got {cls!r}"
        )
    if not overwrite and (name in _BUILTIN or name in _USER):
        raise ConfigError(f"metric {name!r} is already registered (pass overwrite=True to replace it)")
    _USER[name] = (cls, dict(default_options))


def _lookup(name: str) -> tuple[type | str, dict]:
    if name in _USER:
        return _USER[name]
    if name in _BUILTIN:
        return _BUILTIN[name]
    close = difflib.get_close_matches(str(name).lower(), list_metrics(), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ConfigError(f"unknown metric {name!r}.{hint} Known metrics: {', '.join(list_metrics())}")


def metric_class(name: str) -> type:
    """The :class:`Metric` subclass behind ``name`` (imports its module)."""
    target, _ = _lookup(name)
    if isinstance(target, type):
        return target
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"metric {name!r} is not available: importing {module_name} failed ({exc})"
        ) from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"metric {name!r} is not available: {module_name} has no {attr}") from None


def create_metric(name: str, *, preset: str | None = None, device=None, **options) -> Metric:
    """Build metric ``name`` with a named protocol ``preset`` (see :data:`PRESETS`) and options.

    Explicit options (``color``, ``crop_border``, ``round_uint8``, ``as_loss``, metric-specific
    ones) override the preset's; ``scale=`` sets the crop of presets ``sr-y``/``sr-rgb``
    (default 4). The module is moved to ``device`` and put in eval mode.
    """
    resolve_preset(preset)  # fail early with the did-you-mean hint
    _, defaults = _lookup(name)
    cls = metric_class(name)
    metric = cls(preset=preset, **{**defaults, **options})
    if name != getattr(cls, "name", name):
        metric.name = name  # aliases (lpips-vgg) report their own name
    if device is not None:
        metric = metric.to(device)
    return metric.eval()
