"""The metric API: create_metric, presets, protocol, input validation, registration."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import perceptsr.metrics
from perceptsr.errors import ConfigError, MetricInputError
from perceptsr.metrics import PRESETS, Metric, create_metric, list_metrics, register_metric


def _pair(n=2, c=3, h=24, w=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, h, w, generator=g), torch.rand(n, c, h, w, generator=g)


class Mean(Metric):
    """Toy no-reference metric: mean intensity."""

    name = "mean"
    lower_better = False
    full_reference = False
    differentiable = True
    min_size = 2

    def compute(self, x, ref=None):
        return x.flatten(1).mean(1)


@pytest.fixture
def scratch_registry(monkeypatch):
    """Metrics registered by the test are forgotten after it."""
    monkeypatch.setattr(perceptsr.metrics, "_REGISTRY", copy.deepcopy(perceptsr.metrics._REGISTRY))


@pytest.fixture
def mean_metric(scratch_registry):
    register_metric("toy-mean", Mean, overwrite=True)


def test_list_metrics_builtins():
    names = list_metrics()
    for n in ("psnr", "ssim", "niqe", "ma", "pi", "lpips", "lpips-vgg", "dists"):
        assert n in names
    assert names == sorted(names)


def test_unknown_metric_and_preset_did_you_mean():
    with pytest.raises(ConfigError, match="Did you mean 'psnr'"):
        create_metric("psnrr")
    with pytest.raises(ConfigError, match="Did you mean 'pirm'"):
        create_metric("psnr", preset="prim")
    with pytest.raises(ConfigError, match="unknown option"):
        create_metric("psnr", colour="y")


def test_flags():
    psnr, ssim = create_metric("psnr"), create_metric("ssim")
    assert not psnr.lower_better and psnr.full_reference and psnr.differentiable
    assert not ssim.lower_better and ssim.min_size == 11
    assert isinstance(psnr, torch.nn.Module) and not psnr.training


def test_presets_merge_under_options():
    assert set(PRESETS) >= {"pirm", "sr-y", "sr-rgb"}
    m = create_metric("psnr", preset="pirm")
    assert (m.color, m.round_uint8, m.crop_border, m.preset) == ("y", True, 4, "pirm")
    m = create_metric("psnr", preset="sr-y")
    assert (m.color, m.round_uint8, m.crop_border) == ("y", False, 4)
    m = create_metric("ssim", preset="sr-y", scale=2)
    assert m.crop_border == 2
    m = create_metric("psnr", preset="sr-rgb", scale=3, crop_border=0, color="y")
    assert (m.color, m.crop_border) == ("y", 0)
    with pytest.raises(ConfigError, match="does not take a scale"):
        create_metric("psnr", preset="pirm", scale=2)
    with pytest.raises(ConfigError, match="only used by presets"):
        create_metric("psnr", scale=2)


def test_protocol_string():
    p = create_metric("ssim", preset="sr-y", scale=3).protocol
    assert "preset=sr-y" in p and "color=y" in p and "crop_border=3" in p
    assert "rgb2ycbcr" in p and "'valid'" in p
    p = create_metric("psnr").protocol
    assert "preset=none" in p and "color=rgb" in p and "higher is better" in p


@pytest.mark.parametrize(
    "x, match",
    [
        (torch.rand(3, 8, 8), "4-D"),
        ((torch.rand(1, 3, 8, 8) * 255).to(torch.uint8), "float"),
        (torch.rand(1, 2, 8, 8), "1 or 3 channels"),
        (torch.full((1, 3, 8, 8), float("nan")), "NaN"),
        (torch.rand(1, 3, 8, 8) * 255, "divide by 255"),
        (torch.rand(1, 3, 8, 8) * 2 - 1, r"\[-1, 1\]"),
        ([[0.0]], "torch.Tensor"),
    ],
)
def test_input_validation(x, match):
    m = create_metric("psnr")
    ref = torch.rand(1, 3, 8, 8)
    with pytest.raises(MetricInputError, match=match):
        m(x, ref)


def test_reference_rules_and_size(mean_metric):
    psnr = create_metric("psnr")
    x, y = _pair()
    with pytest.raises(MetricInputError, match="full-reference"):
        psnr(x)
    with pytest.raises(MetricInputError, match="shapes differ"):
        psnr(x, y[..., :-1])
    with pytest.raises(MetricInputError, match="no-reference"):
        create_metric("toy-mean")(x, y)
    with pytest.raises(MetricInputError, match="too small.*14x10.*11x11"):
        create_metric("ssim", crop_border=5)(x, y)


def test_range_tolerance_and_clamp():
    m = create_metric("psnr")
    x = torch.ones(1, 3, 8, 8) + 5e-5
    assert math.isinf(float(m(x, torch.ones(1, 3, 8, 8))))
    with pytest.raises(MetricInputError):
        m(torch.ones(1, 3, 8, 8) + 1e-3, torch.ones(1, 3, 8, 8))


def test_color_conversion_and_grayscale_input():
    from perceptsr.data.color import rgb2gray, rgb2ycbcr

    x, y = _pair()
    m_y = create_metric("psnr", color="y")
    expect = create_metric("psnr")(rgb2ycbcr(x, y_only=True), rgb2ycbcr(y, y_only=True))
    torch.testing.assert_close(m_y(x, y), expect)
    # 1-channel input is used as is for y (and gray)
    gy, gx = rgb2ycbcr(y, y_only=True), rgb2ycbcr(x, y_only=True)
    torch.testing.assert_close(m_y(gx, gy), expect)
    m_g = create_metric("ssim", color="gray")
    expect = create_metric("ssim")(rgb2gray(x), rgb2gray(y))
    torch.testing.assert_close(m_g(x, y), expect)


def test_round_uint8_and_crop():
    x, y = _pair(h=30, w=30)
    m = create_metric("psnr", round_uint8=True)
    q = torch.floor(x * 255 + 0.5) / 255
    assert torch.isinf(m(q + 0.3 / 255 * (q < 0.5), q)).all()
    assert torch.isfinite(create_metric("psnr")(q + 0.3 / 255 * (q < 0.5), q)).all()
    crop = create_metric("psnr", crop_border=3)
    torch.testing.assert_close(crop(x, y), create_metric("psnr")(x[..., 3:-3, 3:-3], y[..., 3:-3, 3:-3]))
    # pirm: y, rounded on the uint8 grid as MATLAB rgb2ycbcr(uint8), 4 px shave
    pirm = create_metric("psnr", preset="pirm")
    yq = lambda t: torch.floor(16 + (65.481 * t[:, 0] + 128.553 * t[:, 1] + 24.966 * t[:, 2]) / 255 + 0.5)
    a = yq(torch.floor(x.double() * 255 + 0.5))[:, 4:-4, 4:-4]
    b = yq(torch.floor(y.double() * 255 + 0.5))[:, 4:-4, 4:-4]
    want = 10 * torch.log10(255.0**2 / ((a - b) ** 2).flatten(1).mean(1))
    torch.testing.assert_close(pirm(x, y).double(), want, atol=1e-4, rtol=0)


def test_as_loss():
    x, y = _pair()
    x.requires_grad_(True)
    loss = create_metric("ssim", as_loss=True)
    out = loss(x, y)
    assert out.shape == (2,) and out.requires_grad
    (1 - out).mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    # without as_loss nothing is tracked
    assert not create_metric("ssim")(x, y).requires_grad
    with pytest.raises(ConfigError, match="round_uint8"):
        create_metric("psnr", as_loss=True, preset="pirm")


def test_register_metric(mean_metric):
    assert "toy-mean" in list_metrics()
    m = create_metric("toy-mean")
    x = torch.full((3, 1, 4, 4), 0.25)
    torch.testing.assert_close(m(x), torch.full((3,), 0.25))
    with pytest.raises(ConfigError, match="already registered"):
        register_metric("toy-mean", Mean)
    with pytest.raises(ConfigError, match="not a perceptsr Metric"):
        register_metric("bad", dict)
    with pytest.raises(ConfigError, match="not differentiable"):
        class Hard(Mean):
            differentiable = False
        Hard(as_loss=True)


def test_unavailable_module_does_not_break_listing(scratch_registry):
    register_metric("ghost", "perceptsr.metrics.no_such_module:Ghost", overwrite=True)
    assert "ghost" in list_metrics()
    with pytest.raises(ConfigError, match="not available"):
        create_metric("ghost")


def test_batch_shape_and_device():
    x, y = _pair(n=4)
    m = create_metric("psnr", device="cpu")
    out = m(x, y)
    assert out.shape == (4,) and out.device.type == "cpu"
    torch.testing.assert_close(out[1:2], m(x[1:2], y[1:2]))


def test_niqe_flags(assets_dir):
    m = create_metric("niqe")
    assert m.lower_better and not m.full_reference and not m.differentiable
    assert (m.color, m.round_uint8, m.crop_border) == ("y", True, 0)
    assert create_metric("niqe", preset="pirm").crop_border == 4
    with pytest.raises(ConfigError, match="not differentiable"):
        create_metric("niqe", as_loss=True)
    with pytest.raises(ConfigError, match="not supported"):
        create_metric("niqe", color="rgb")
    assert "LIVE NIQE" in m.protocol


def _write_png(path, arr):
    from PIL import Image

    Image.fromarray(arr).save(path)


def _cli(argv):
    import argparse

    from perceptsr.cli import metric as cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return cli.run(parser.parse_args(argv))


def test_cli_metric_file_and_folder(tmp_path, capsys):
    import json

    import numpy as np

    rng = np.random.default_rng(0)
    sr, hr = tmp_path / "sr", tmp_path / "hr"
    sr.mkdir(), hr.mkdir()
    for i, shape in enumerate([(24, 20, 3), (24, 20, 3), (16, 30, 3)]):
        a = rng.integers(0, 256, shape, dtype=np.uint8)
        b = np.clip(a.astype(int) + rng.integers(-9, 10, shape), 0, 255).astype(np.uint8)
        _write_png(sr / f"im{i}.png", a)
        _write_png(hr / f"im{i}.png", b)
    assert _cli(["psnr", str(sr / "im0.png"), str(hr / "im0.png"), "--json"]) == 0
    single = json.loads(capsys.readouterr().out)
    from PIL import Image

    load = lambda p: torch.from_numpy(np.array(Image.open(p))).permute(2, 0, 1)[None] / 255
    x, y = load(sr / "im0.png"), load(hr / "im0.png")
    assert abs(single["value"]["psnr"] - float(create_metric("psnr")(x.float(), y.float()))) < 1e-4

    out = tmp_path / "res.json"
    assert _cli(["psnr,ssim", str(sr), str(hr), "--preset", "sr-y", "--scale", "2", "--out", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "mean" in text and "im2.png" in text
    res = json.loads(out.read_text())
    assert res["count"] == 3 and "preset=sr-y" in res["protocol"]["psnr"]
    vals = [r["psnr"] for r in res["images"]]
    assert abs(res["mean"]["psnr"] - sum(vals) / 3) < 1e-9
    csv_out = tmp_path / "res.csv"
    assert _cli(["ssim", str(sr), str(hr), "--out", str(csv_out), "--quiet"]) == 0
    lines = csv_out.read_text().splitlines()
    assert lines[0] == "image,ref,ssim" and lines[4].startswith("mean,")


def test_cli_metric_errors(tmp_path):
    import numpy as np

    from perceptsr.errors import ImageReadError

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    _write_png(a / "x.png", np.zeros((20, 20, 3), np.uint8))
    _write_png(b / "y.png", np.zeros((20, 20, 3), np.uint8))
    with pytest.raises(ImageReadError, match="same stem"):
        _cli(["psnr", str(a), str(b), "--quiet"])
    assert _cli(["psnr", str(a), str(b), "--pair", "order", "--quiet"]) == 0
    with pytest.raises(ConfigError, match="full-reference"):
        _cli(["psnr", str(a / "x.png")])
    with pytest.raises(ConfigError, match="Did you mean"):
        _cli(["ssimm", str(a / "x.png"), str(b / "y.png")])
