"""Calibrated image-quality metrics: ``create_metric(name, preset=..., device=...)`` -> ``nn.Module``.

>>> from perceptsr.metrics import create_metric
>>> psnr = create_metric("psnr", preset="sr-y", scale=4)   # doctest: +SKIP
>>> psnr(sr, hr)                                            # (N,) values  # doctest: +SKIP

Built-in metrics are imported on first use, so a metric whose module or assets are missing does not
break ``import perceptsr.metrics`` or :func:`list_metrics`. Which preset each metric gets under an
evaluation protocol, and how grey and colour images are paired, is :mod:`perceptsr.metrics.protocol`.
"""

from __future__ import annotations

from perceptsr.errors import ConfigError
from perceptsr.metrics.base import PRESETS, Metric, Preset, resolve_preset
from perceptsr.registry import Registry, import_target

__all__ = [
    "Metric",
    "PRESETS",
    "Preset",
    "create_metric",
    "list_metrics",
    "metric_class",
    "register_metric",
]

# name -> (Metric subclass or "module:Class", default options). Aliases carry options
# (lpips-vgg = LPIPS(net="vgg")). String targets are imported on first use.
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
_REGISTRY: Registry[tuple[type | str, dict]] = Registry("metric")
for _name, _entry in _BUILTIN.items():
    _REGISTRY.register(_name, _entry)

def list_metrics() -> list[str]:
    """Names accepted by :func:`create_metric` (built-in and registered), sorted."""
    return _REGISTRY.names()


def register_metric(name: str, cls, *, overwrite: bool = False, **default_options) -> None:
    """Register a metric: ``cls`` is a :class:`Metric` subclass or a ``"module:Class"`` string."""
    if isinstance(cls, type):
        if not issubclass(cls, Metric):
            raise ConfigError(f"register_metric: {cls.__name__} is not a perceptsr Metric subclass")
    elif not (isinstance(cls, str) and ":" in cls):
        raise ConfigError(
            f"register_metric: cls must be a Metric subclass or 'module:Class', got {cls!r}"
        )
    _REGISTRY.register(name, (cls, dict(default_options)), overwrite=overwrite)


def metric_class(name: str) -> type:
    """The :class:`Metric` subclass behind ``name`` (imports its module)."""
    target, _ = _REGISTRY.get(name)
    if isinstance(target, type):
        return target
    return import_target(target, f"metric {_REGISTRY.key(name)!r} is not available")


def create_metric(name: str, *, preset: str | None = None, device=None, **options) -> Metric:
    """Build metric ``name`` with a named protocol ``preset`` (see :data:`PRESETS`) and options.

    Explicit options (``color``, ``crop_border``, ``round_uint8``, ``as_loss``, metric-specific
    ones) override the preset's; ``scale=`` sets the crop of presets ``sr-y``/``sr-rgb``
    (default 4). The module is moved to ``device`` and put in eval mode.
    """
    resolve_preset(preset)  # fail early with the did-you-mean hint
    key = _REGISTRY.key(name)
    _, defaults = _REGISTRY.get(key)
    cls = metric_class(key)
    metric = cls(preset=preset, **{**defaults, **options})
    if key != getattr(cls, "name", key):
        metric.name = key  # aliases (lpips-vgg) report their own name
    if device is not None:
        metric = metric.to(device)
    return metric.eval()
