"""perceptsr: perceptual image super-resolution (RankSRGAN, EA-Adam) with calibrated metrics."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "load_model"]


def load_model(path, **kwargs):
    """Load a generator from any supported checkpoint; see :func:`perceptsr.checkpoint.load_model`."""
    from perceptsr.checkpoint import load_model as _load_model

    return _load_model(path, **kwargs)
