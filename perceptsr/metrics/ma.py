"""Ma et al. 2017 no-reference SR quality ("Ma", "NRQM") and the PIRM 2018 Perceptual Index.

``Ma``: the official pipeline of chaoma99/sr-metric (``quality_predict.m``): features
:func:`~perceptsr.metrics.ma_features.ma_features` (f1 18, f2 45, f3 75), one randomforest-matlab
regression forest per group (``model.rf{1..3}``, 2000 trees each), then the robust-fit linear stage
``[1 s1 s2 s3] * model.linear``. Higher is better (about 0..10).

``PI = ((10 - Ma) + NIQE) / 2`` (lower is better), with NIQE the LIVE release
(:class:`perceptsr.metrics.niqe.NIQE`). The PIRM scripts average Ma and NIQE over a set first
(:func:`perceptual_index`); PI is linear in both, so that equals the mean of per-image PI.

Default protocol for both is the PIRM toolbox's (``calc_scores.m``): Y of MATLAB ``rgb2ycbcr`` on
the uint8 image, rounded to uint8, 4 pixels shaved from each border (``preset="pirm"``).

The forests are the asset ``ma_model`` (``model.mat`` of the official repository, not bundled; pass
``model_path=`` or put it where :func:`perceptsr.assets.asset_path` looks).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path

import numpy as np
import torch

from perceptsr.errors import AssetError, MetricInputError
from perceptsr.metrics.base import Metric
from perceptsr.metrics.ma_features import MIN_SIZE, ma_features
from perceptsr.metrics.random_forest import (
    CompiledForests,
    RegressionForest,
    cells,
    load_mat_struct,
    struct_field,
)

__all__ = ["Ma", "PI", "MaModel", "load_ma_model", "ma_features", "perceptual_index", "OFFICIAL_REPO"]

OFFICIAL_REPO = "https://github.com/chaoma99/sr-metric"
PIRM_CROP = 4


@dataclasses.dataclass
class MaModel:
    """The three regression forests and the linear stage of ``model.mat``."""

    forests: list[RegressionForest]
    linear: np.ndarray  # (4,): intercept, s1, s2, s3

    def compile(self, device=None) -> CompiledForests:
        return CompiledForests(self.forests, device=device)


def load_ma_model(path: str | os.PathLike) -> MaModel:
    """Read Ma's ``model.mat`` (``model.rf`` = cell of 3 regRF structs, ``model.linear`` = 4x1)."""
    path = Path(path)
    model = load_mat_struct(path, "model")
    rf, linear = struct_field(model, "rf"), struct_field(model, "linear")
    if rf is None or linear is None:
        raise AssetError(f"{path}: variable 'model' must have fields 'rf' and 'linear' (Ma et al. model.mat)")
    items = cells(rf)
    if len(items) != 3:
        raise AssetError(f"{path}: model.rf must hold 3 forests (one per feature group), found {len(items)}")
    try:
        forests = [RegressionForest.from_struct(c, where=f"{path}: model.rf{{{i + 1}}}") for i, c in enumerate(items)]
    except ValueError as exc:
        raise AssetError(str(exc)) from exc
    linear = np.asarray(linear, dtype=np.float64).ravel()
    if linear.size != 4:
        raise AssetError(f"{path}: model.linear must hold 4 weights [intercept s1 s2 s3], found {linear.size}")
    return MaModel(forests=forests, linear=linear)


@functools.lru_cache(maxsize=2)
def _compiled_model(path: str, mtime: float, size: int) -> tuple[CompiledForests, np.ndarray]:
    model = load_ma_model(path)
    return model.compile(), model.linear


def _resolve_model(model_path) -> Path:
    from perceptsr.assets import asset_path

    try:
        return asset_path("ma_model", model_path)
    except AssetError as exc:
        raise AssetError(
            "Ma (NRQM) and PI need the random-forest model model.mat of Ma et al. 2017, from the "
            f"official sr-metric repository {OFFICIAL_REPO} (file model.mat at its root). "
            "Pass model_path=... or put the file in the asset folder. Details: " + str(exc)
        ) from None


def _default_crop(crop_border, kw) -> int | None:
    """PIRM shave (4 px) unless a crop or a preset is given."""
    if crop_border is None and kw.get("preset") is None:
        return PIRM_CROP
    return crop_border


class Ma(Metric):
    """Ma et al. 2017 no-reference SR quality (higher is better), official features and forests.

    Options: ``model_path`` (the official ``model.mat``; default: the ``ma_model`` asset).
    Defaults follow the PIRM toolbox: Y channel, uint8 rounding, 4-pixel shave.
    """

    name = "ma"
    lower_better = False
    full_reference = False
    differentiable = False
    min_size = MIN_SIZE
    default_color = "y"
    default_round_uint8 = True
    allowed_colors = ("y", "gray")

    def __init__(self, *, model_path=None, crop_border=None, **kw) -> None:
        super().__init__(crop_border=_default_crop(crop_border, kw), **kw)
        path = _resolve_model(model_path)
        stat = path.stat()
        forests, linear = _compiled_model(str(path.resolve()), stat.st_mtime, stat.st_size)
        self.model_file = str(path)
        self.forests = forests  # shared between instances; its forward moves inputs to its device
        self.linear = tuple(float(v) for v in linear)  # plain floats: immune to module dtype casts

    def protocol_details(self) -> str:
        return ("Ma et al. 2017 official pipeline (feature_all.m: block-DCT on a 3-level pyramid, "
                "buildSFpyr(2,5) GSM statistics, 5x5 patch SVD; regRF_predict x3; [1 s1 s2 s3]*linear) "
                f"in float64; model {self.model_file}")

    def forest_scores(self, f1, f2, f3) -> torch.Tensor:
        """(N, 3) forest outputs ``s1, s2, s3`` for feature batches (N, 18), (N, 45), (N, 75)."""
        return self.forests([f1, f2, f3])

    def score_features(self, f1, f2, f3) -> torch.Tensor:
        """Ma score (N,) float64 from features: ``[1 s1 s2 s3] * linear``."""
        s = self.forest_scores(f1, f2, f3)
        lin = torch.tensor(self.linear, dtype=torch.float64, device=s.device)
        return lin[0] + s @ lin[1:]

    def score64(self, x: torch.Tensor) -> torch.Tensor:
        """Ma (N,) in float64 for a prepared batch (N, 1, H, W) in [0, 1]."""
        im = x[:, 0].double() * 255
        if self.round_uint8:
            im = torch.round(im)
        f1, f2, f3 = ma_features(im / 255)
        return self.score_features(f1, f2, f3)

    def compute(self, x: torch.Tensor, ref=None) -> torch.Tensor:
        return self.score64(x).to(device=x.device, dtype=_out_dtype(x))


def _out_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


class PI(Metric):
    """Perceptual Index of PIRM 2018: ``((10 - Ma) + NIQE) / 2`` (lower is better).

    Ma and NIQE see the same prepared image (default: PIRM protocol). Options: ``model_path`` (Ma's
    ``model.mat``), ``niqe_params_path``. :meth:`components` returns Ma, NIQE and PI per image;
    :func:`perceptual_index` gives the set-level PI from the means, as ``evaluate_results.m``.
    """

    name = "pi"
    lower_better = True
    full_reference = False
    differentiable = False
    min_size = MIN_SIZE
    default_color = "y"
    default_round_uint8 = True
    allowed_colors = ("y", "gray")

    def __init__(self, *, model_path=None, niqe_params_path=None, crop_border=None, **kw) -> None:
        super().__init__(crop_border=_default_crop(crop_border, kw), **kw)
        from perceptsr.metrics.niqe import NIQE

        inner = {"color": self.color, "crop_border": 0, "round_uint8": self.round_uint8}
        self.ma = Ma(model_path=model_path, **inner)
        self.niqe = NIQE(params_path=niqe_params_path, **inner)
        self.min_size = max(self.ma.min_size, self.niqe.min_size)

    def protocol_details(self) -> str:
        return "PI = ((10 - Ma) + NIQE) / 2 on the same prepared image; " + self.ma.protocol_details()

    def _parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ma = self.ma.score64(x)
        nq = self.niqe.compute(x.double(), None).to(ma)
        return ma, nq

    def components(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-image ``{"ma", "niqe", "pi"}``, each (N,), with this metric's protocol."""
        self._validate(x, None)
        with torch.no_grad():
            ma, nq = self._parts(self.prepare(x))
        out = {"ma": ma, "niqe": nq, "pi": 0.5 * ((10 - ma) + nq)}
        return {k: v.to(device=x.device, dtype=_out_dtype(x)) for k, v in out.items()}

    def compute(self, x: torch.Tensor, ref=None) -> torch.Tensor:
        ma, nq = self._parts(x)
        return (0.5 * ((10 - ma) + nq)).to(device=x.device, dtype=_out_dtype(x))


def perceptual_index(ma, niqe) -> float:
    """Set-level PI from per-image Ma and NIQE values: ``((10 - mean(Ma)) + mean(NIQE)) / 2``."""
    ma = np.asarray(torch.as_tensor(ma).detach().cpu(), dtype=np.float64).ravel()
    niqe = np.asarray(torch.as_tensor(niqe).detach().cpu(), dtype=np.float64).ravel()
    if ma.size == 0 or niqe.size == 0:
        raise MetricInputError("perceptual_index: need at least one Ma and one NIQE value")
    return float(((10.0 - ma.mean()) + niqe.mean()) / 2.0)
