"""perceptsr.report and ``perceptsr report``: a self-contained HTML page with table, plots, curves, crops."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from perceptsr.cli import main
from perceptsr.data import imresize, write_image
from perceptsr.evaluation import evaluate, write_results
from perceptsr.report import build_report, pareto_front, read_scalars

PNG = b"\x89PNG\r\n\x1a\n"


def _write_run(folder, scale):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(folder / "tb"))
    for step in range(0, 50, 10):
        writer.add_scalar("train/l_pix", scale / (step + 1), step)
        writer.add_scalar("val/psnr", 20 + scale * step / 50, step)
    writer.close()


@pytest.fixture
def evaluated(tmp_path):
    """Eval results (tiny random MSRResNet, bicubic) with saved SR images, plus two training runs."""
    from perceptsr.archs import build_arch
    from perceptsr.checkpoint import save_model

    rng = np.random.default_rng(1)
    for i in range(2):
        img = np.clip(imresize(rng.random((10, 12, 3)), output_shape=(64, 72)), 0, 1)
        write_image(tmp_path / "data" / "Tiny" / "HR" / f"im{i}.png", img)
    torch.manual_seed(0)
    kw = dict(num_feat=8, num_block=1, upscale=4)
    run_a = tmp_path / "runs" / "psnr_run"
    ckpt = save_model(run_a / "checkpoints" / "net_g.safetensors", build_arch("msrresnet", **kw),
                      arch="msrresnet", arch_kwargs=kw)
    _write_run(run_a, 1.0)
    _write_run(tmp_path / "runs" / "gan_run", 2.0)
    res = evaluate({"net": str(ckpt), "bicubic": "bicubic"}, [tmp_path / "data" / "Tiny"], metrics=["psnr", "ssim"],
                   save_images=tmp_path / "eval" / "images", progress=False, device="cpu")
    write_results(res, tmp_path / "eval")
    return tmp_path


def test_pareto_front():
    pts = [(30.0, 0.30), (28.0, 0.10), (29.0, 0.35), (27.0, 0.12), (25.0, 0.05)]
    assert pareto_front(pts) == [0, 1, 4]
    assert pareto_front([(1.0, 1.0), (1.0, 1.0)]) == [0]


def test_report_is_self_contained(evaluated):
    out = evaluated / "report" / "index.html"
    path = build_report([evaluated / "eval", evaluated / "runs"], out)
    assert path == out
    text = out.read_text(encoding="utf-8")
    assert "http" not in text and "<script" not in text.lower()
    assert re.findall(r'src="([^"]{0,22})', text) == ["data:image/png;base64,"] * len(re.findall(r"<img ", text))
    # the metric table with arrows and the best value in bold
    assert "<table>" in text and "PSNR ↑" in text
    assert re.search(r"<td class=\"name\">bicubic</td><td><b>[\d.]+</b></td>", text)
    # curves of both runs (the run of the evaluated checkpoint is found once), crops of both images
    assert "psnr_run" in text and "gan_run" in text
    assert sorted(p.name for p in out.parent.glob("*.png")) == [
        "index_crops_Tiny_im0.png", "index_crops_Tiny_im1.png", "index_curves_train.png", "index_curves_val.png"]
    for png in out.parent.glob("*.png"):
        assert png.read_bytes().startswith(PNG)
    assert text.count("data:image/png;base64,") == 4
    assert "Needs PSNR together with LPIPS or NIQE" in text  # no perception metric was scored


def test_report_pd_plane_and_cli(tmp_path, capsys):
    members = {f"member{k}": (25 + k, 0.4 - 0.03 * k * k) for k in range(4)}  # a population, one dominated
    results = {
        "protocol": "sr-y", "scale": 4, "metrics": ["psnr", "lpips", "niqe"],
        "metric_info": {"psnr": {"lower_better": False}, "lpips": {"lower_better": True},
                        "niqe": {"lower_better": True}},
        "missing_metrics": {"pi": "asset 'ma_model' is not available; see https://example.org/model.mat"},
        "models": [{"name": n, "kind": "model", "source": f"{n}.safetensors"} for n in members],
        "datasets": [{"name": "Set5", "total": 5}],
        "summary": [{"dataset": "Set5", "model": n, "total": 5, "scored": 5,
                     "mean": {"psnr": p, "lpips": lp, "niqe": 5 + lp}, "count": {"psnr": 5, "lpips": 5, "niqe": 4}}
                    for n, (p, lp) in members.items()],
        "images": [], "skipped": [],
    }
    (tmp_path / "results.json").write_text(json.dumps(results))
    assert main(["report", str(tmp_path / "results.json")]) == 0
    out = tmp_path / "report.html"
    assert str(out) in capsys.readouterr().out
    text = out.read_text(encoding="utf-8")
    assert (tmp_path / "report_pd_lpips.png").read_bytes().startswith(PNG)
    assert (tmp_path / "report_pd_niqe.png").read_bytes().startswith(PNG)
    assert text.count("data:image/png;base64,") == 2
    assert "(4/5 images)" in text  # NIQE covered fewer images than the dataset has
    assert "http" not in text and "pi</code> left out" in text
    assert "No TensorBoard logs" in text and "--save-images" in text
    assert main(["report", str(tmp_path / "missing")]) == 1


def test_read_scalars(tmp_path):
    _write_run(tmp_path, 3.0)
    scalars = read_scalars(tmp_path / "tb")
    assert scalars["train/l_pix"][0] == [0, 10, 20, 30, 40]
    assert scalars["val/psnr"][1][-1] == pytest.approx(20 + 3.0 * 40 / 50)
