"""perceptsr.metrics.protocol: the per-metric preset rule, building metric sets, grey/colour pairing,
and ``perceptsr eval`` agreeing with ``perceptsr metric`` on grey/colour pairs."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from PIL import Image

import perceptsr.metrics
from perceptsr.cli import main
from perceptsr.data.color import rgb2gray, rgb2ycbcr
from perceptsr.errors import AssetError, ConfigError
from perceptsr.metrics import Metric, create_metric, register_metric
from perceptsr.metrics.protocol import PROTOCOLS, VALIDATION, build_metrics, match_channels, metric_options


class RgbOnly(Metric):
    """Toy full-reference metric without a Y mode (like LPIPS): mean absolute difference."""

    name = "rgb-only"
    lower_better = True
    allowed_colors = ("rgb",)

    def compute(self, x, ref):
        return (x - ref).abs().flatten(1).mean(1)


class NoAsset(Metric):
    """Toy metric whose asset is missing."""

    name = "no-asset"

    def __init__(self, **kw):
        raise AssetError("asset 'toy' is not available")


@pytest.fixture
def toys(monkeypatch):
    monkeypatch.setattr(perceptsr.metrics, "_REGISTRY", copy.deepcopy(perceptsr.metrics._REGISTRY))
    register_metric("rgb-only", RgbOnly)
    register_metric("no-asset", NoAsset)


# ------------------------------------------------------------------------------ per-metric presets


def test_validation_protocol_picks_a_preset_per_metric():
    # full-reference with a Y mode: sr-y with crop = scale; RGB-only: sr-rgb; no-reference: pirm
    assert metric_options("psnr", VALIDATION, scale=2) == {"preset": "sr-y", "scale": 2}
    assert metric_options("ssim", VALIDATION, scale=3) == {"preset": "sr-y", "scale": 3}
    assert metric_options("lpips", VALIDATION, scale=2) == {"preset": "sr-rgb", "scale": 2}
    assert metric_options("dists", VALIDATION) == {"preset": "sr-rgb"}
    for name in ("niqe", "ma", "pi"):
        assert metric_options(name, VALIDATION, scale=2) == {"preset": "pirm"}  # pirm shaves 4 whatever the scale


def test_one_preset_for_all_keeps_a_supported_colour():
    assert metric_options("psnr", "sr-y", scale=4) == {"preset": "sr-y", "scale": 4}
    assert metric_options("psnr", "pirm", scale=4) == {"preset": "pirm"}  # pirm does not crop by scale
    assert metric_options("lpips", "sr-y", scale=4) == {"preset": "sr-y", "scale": 4, "color": "rgb"}
    assert metric_options("lpips", "pirm") == {"preset": "pirm", "color": "rgb"}
    assert metric_options("niqe", "sr-rgb", scale=2) == {"preset": "sr-rgb", "scale": 2, "color": "y"}
    assert metric_options("psnr", None, scale=4) == {}
    assert set(PROTOCOLS) == {"pirm", "sr-y", "sr-rgb", VALIDATION}
    with pytest.raises(ConfigError, match="Did you mean 'sr-y'"):
        metric_options("psnr", "sr_y")


def test_build_metrics_under_validation(toys):
    built, missing = build_metrics(["psnr", "rgb-only", "psnr", "no-asset"], VALIDATION, scale=2)
    assert list(built) == ["psnr", "rgb-only"] and "not available" in missing["no-asset"]
    psnr, rgb = built["psnr"], built["rgb-only"]
    assert (psnr.preset, psnr.color, psnr.crop_border, psnr.round_uint8) == ("sr-y", "y", 2, False)
    assert (rgb.preset, rgb.color, rgb.crop_border) == ("sr-rgb", "rgb", 2)
    # under one preset the RGB-only metric keeps RGB with that preset's crop and rounding
    built, _ = build_metrics(["rgb-only"], "pirm", scale=2)
    assert (built["rgb-only"].preset, built["rgb-only"].color, built["rgb-only"].crop_border) == ("pirm", "rgb", 4)
    # explicit options win over the protocol's
    built, _ = build_metrics(["psnr"], "sr-y", scale=2, options={"crop_border": 0, "color": "gray"})
    assert (built["psnr"].color, built["psnr"].crop_border) == ("gray", 0)


def test_build_metrics_errors(toys):
    with pytest.raises(ConfigError, match=r"config key 'data.val.metrics\[1\]': unknown metric 'psnrr'. Did you mean 'psnr'"):
        build_metrics(["psnr", "psnrr"], VALIDATION, strict=True, config_key="data.val.metrics")
    with pytest.raises(ConfigError, match="unknown metric 'psnrr'"):
        build_metrics(["psnrr"], "sr-y")  # unknown names raise even when failures are left out
    with pytest.raises(AssetError, match="not available"):
        build_metrics(["psnr", "no-asset"], VALIDATION, strict=True, config_key="data.val.metrics")
    with pytest.raises(ConfigError, match=r"config key 'data.val.metrics\[0\]': .*unknown option"):
        build_metrics(["psnr"], VALIDATION, options={"colour": "y"}, strict=True, config_key="data.val.metrics")
    with pytest.raises(ConfigError, match="unknown metric preset"):
        build_metrics(["psnr"], "prim")


# ------------------------------------------------------------------------------ grey / colour pairs


def _grey_colour(seed=0, h=16, w=20):
    g = torch.Generator().manual_seed(seed)
    grey = torch.floor(torch.rand(1, 1, h, w, generator=g) * 255 + 0.5) / 255
    colour = (grey + 0.2 * torch.rand(1, 3, h, w, generator=g) - 0.1).clamp(0, 1)
    colour = torch.floor(colour * 255 + 0.5) / 255
    return grey, colour


@pytest.mark.parametrize("preset", ["sr-y", "pirm"])
def test_colour_image_is_reduced_to_the_metric_channel(preset):
    grey, colour = _grey_colour()
    psnr = create_metric("psnr", preset=preset, **({"scale": 4} if preset == "sr-y" else {}))
    x, ref = match_channels(colour, grey, psnr)
    assert x.shape == ref.shape == grey.shape and ref is grey
    y = rgb2ycbcr(colour, y_only=True)
    if preset == "pirm":  # MATLAB rgb2ycbcr of a uint8 image is rounded
        y = torch.floor(y * 255 + 0.5) / 255
    torch.testing.assert_close(x, y, atol=1e-6, rtol=0)
    # the pair scores as the metric scores the colour image's own channel (vice versa as well)
    expect = float(psnr(y, grey))
    assert float(psnr(*match_channels(colour, grey, psnr))) == pytest.approx(expect, abs=1e-5)
    assert float(psnr(*match_channels(grey, colour, psnr))) == pytest.approx(expect, abs=1e-5)


def test_gray_and_rgb_metrics():
    grey, colour = _grey_colour(1)
    gray_metric = create_metric("ssim", color="gray")
    x, _ = match_channels(colour, grey, gray_metric)
    torch.testing.assert_close(x, rgb2gray(colour))
    rgb_metric = create_metric("psnr", preset="sr-rgb")
    x, ref = match_channels(colour, grey, rgb_metric)
    assert x is colour and ref.shape == colour.shape and torch.equal(ref[:, 1], grey[:, 0])
    # same channels, or no reference: unchanged
    assert match_channels(colour, colour, rgb_metric) == (colour, colour)
    assert match_channels(grey, None, rgb_metric) == (grey, None)


# ------------------------------------------------------------------------------ eval == metric


@pytest.fixture
def grey_colour_sets(tmp_path):
    """Two datasets with SR folders: grey HR / colour SR, and colour HR / grey SR (sizes multiples of 4)."""
    rng = np.random.default_rng(0)
    sets = {}
    for kind in ("grey_hr", "colour_hr"):
        hr_dir, sr_dir = tmp_path / kind / "HR", tmp_path / f"{kind}_sr"
        hr_dir.mkdir(parents=True), sr_dir.mkdir()
        for i, (h, w) in enumerate([(32, 36), (28, 40)]):
            grey = rng.integers(20, 236, (h, w))
            colour = np.clip(grey[..., None] + rng.integers(-25, 26, (h, w, 3)), 0, 255)
            hr, sr = (grey, colour) if kind == "grey_hr" else (colour, grey)
            Image.fromarray(hr.astype(np.uint8)).save(hr_dir / f"im{i}.png")
            Image.fromarray(sr.astype(np.uint8)).save(sr_dir / f"im{i}_x4.png")
        sets[kind] = (tmp_path / kind, sr_dir)
    return sets


@pytest.mark.parametrize("kind", ["grey_hr", "colour_hr"])
@pytest.mark.parametrize("protocol", ["sr-y", "pirm", "sr-rgb"])
def test_eval_and_metric_agree_on_grey_colour_pairs(grey_colour_sets, kind, protocol, tmp_path, capsys):
    dataset, sr_dir = grey_colour_sets[kind]
    out = tmp_path / "results"
    assert main(["eval", "--sr-dir", f"pub={sr_dir}", "--datasets", str(dataset), "--metrics", "psnr,ssim",
                 "--protocol", protocol, "--out", str(out), "--quiet", "--device", "cpu"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert not res["skipped"] and len(res["images"]) == 2
    scale = ["--scale", "4"] if protocol != "pirm" else []
    for row in res["images"]:
        capsys.readouterr()
        sr = sr_dir / f"{row['image']}_x4.png"
        assert main(["metric", "psnr,ssim", str(sr), row["hr"], "--preset", protocol, *scale, "--json",
                     "--device", "cpu"]) == 0
        value = json.loads(capsys.readouterr().out)["value"]
        assert row["psnr"] == pytest.approx(value["psnr"], abs=1e-6)
        assert row["ssim"] == pytest.approx(value["ssim"], abs=1e-7)
        if protocol == "sr-rgb":
            continue
        # and both are what a MATLAB script gets: the colour file's Y against the grey file
        grey, colour = (row["hr"], sr) if kind == "grey_hr" else (sr, row["hr"])
        g = torch.from_numpy(np.array(Image.open(grey), dtype=np.float32) / 255)[None, None]
        c = torch.from_numpy(np.array(Image.open(colour), dtype=np.float32) / 255).permute(2, 0, 1)[None]
        y = rgb2ycbcr(c, y_only=True)
        if protocol == "pirm":
            y = torch.floor(y * 255 + 0.5) / 255
        psnr = create_metric("psnr", preset=protocol, **({"scale": 4} if protocol == "sr-y" else {}))
        assert row["psnr"] == pytest.approx(float(psnr(y, g)), abs=1e-4)
