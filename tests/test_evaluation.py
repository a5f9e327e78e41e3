"""perceptsr.evaluation and ``perceptsr eval``: result files, numbers, pairing rules, skipped images."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from perceptsr.cli import main
from perceptsr.data import imresize, modcrop, read_image, write_image
from perceptsr.errors import ConfigError
from perceptsr.evaluation import (
    default_data_root,
    evaluate,
    markdown_table,
    match_sr_files,
    resolve_dataset,
    write_results,
)
from perceptsr.metrics import create_metric

SIZES = {"apple": (50, 45), "boat": (44, 52), "cat": (48, 48)}  # not multiples of 4: modcrop matters


def _smooth_image(rng, h, w):
    coarse = rng.random((h // 6 + 2, w // 6 + 2, 3))
    return np.clip(imresize(coarse, output_shape=(h, w)), 0, 1)


@pytest.fixture
def toy(tmp_path):
    """A dataset of HR images only (LR made on the fly), a tiny random MSRResNet and an SR folder."""
    from perceptsr.archs import build_arch
    from perceptsr.checkpoint import save_model

    rng = np.random.default_rng(0)
    hr_dir = tmp_path / "Toy" / "HR"
    for name, (h, w) in SIZES.items():
        write_image(hr_dir / f"{name}.png", _smooth_image(rng, h, w))
    torch.manual_seed(0)
    kw = dict(num_feat=8, num_block=1, upscale=4)
    ckpt = save_model(tmp_path / "tiny.safetensors", build_arch("msrresnet", **kw), arch="msrresnet", arch_kwargs=kw)
    # published-style SR folder: MATLAB bicubic of the on-the-fly LR, with name suffixes
    sr_dir = tmp_path / "published"
    for name, suffix in zip(SIZES, ("_x4", "_SR", "")):
        hr = (modcrop(read_image(hr_dir / f"{name}.png"), 4) * 255 + 0.5).astype(np.uint8)
        write_image(sr_dir / f"{name}{suffix}.png", imresize(imresize(hr, 1 / 4), 4))
    return {"root": tmp_path, "dataset": tmp_path / "Toy", "hr": hr_dir, "ckpt": ckpt, "sr": sr_dir}


def test_eval_cli_writes_tables_and_matches_direct_metrics(toy, capsys):
    out = toy["root"] / "results"
    rc = main(["eval", "--model", str(toy["ckpt"]), "--model", "bicubic", "--sr-dir", f"pub={toy['sr']}",
               "--datasets", str(toy["dataset"]), "--metrics", "psnr,ssim", "--protocol", "sr-y",
               "--out", str(out), "--tile", "8", "--quiet", "--device", "cpu"])
    assert rc == 0
    for name in ("results.json", "results.csv", "per_image.csv", "results.md"):
        assert (out / name).is_file()
    res = json.loads((out / "results.json").read_text())
    assert [m["name"] for m in res["models"]] == ["tiny", "bicubic", "pub"]
    assert [m["kind"] for m in res["models"]] == ["model", "bicubic", "sr_dir"]
    assert res["datasets"][0]["name"] == "Toy" and res["datasets"][0]["total"] == 3
    assert not res["skipped"]

    # PSNR of the SR folder entry equals the metric computed directly on the files
    psnr = create_metric("psnr", preset="sr-y", scale=4)
    values = {r["image"]: r["psnr"] for r in res["images"] if r["model"] == "pub"}
    for name, suffix in zip(SIZES, ("_x4", "_SR", "")):
        sr = torch.from_numpy(read_image(toy["sr"] / f"{name}{suffix}.png")).permute(2, 0, 1)[None]
        hr = torch.from_numpy(modcrop(read_image(toy["hr"] / f"{name}.png"), 4)).permute(2, 0, 1)[None]
        assert values[name] == pytest.approx(float(psnr(sr, hr)), abs=1e-6)
    # the bicubic entry made the same images, so it scores the same
    by_model = {s["model"]: s for s in res["summary"]}
    assert by_model["bicubic"]["mean"]["psnr"] == pytest.approx(by_model["pub"]["mean"]["psnr"], abs=1e-6)
    assert by_model["tiny"]["mean"]["psnr"] < by_model["bicubic"]["mean"]["psnr"] - 1  # untrained net

    # Markdown: arrows, the best value bold (bicubic and pub tie), the untrained model not bold
    md = (out / "results.md").read_text()
    assert "PSNR ↑" in md and "SSIM ↑" in md
    rows = {line.split("|")[2].strip(): line for line in md.splitlines() if line.startswith("| Toy")}
    assert "**" in rows["bicubic"].split("|")[3] and "**" in rows["pub"].split("|")[3]
    assert "**" not in rows["tiny"]
    assert "images)" not in md  # nothing skipped: no n/N note
    with open(out / "per_image.csv", newline="") as fh:
        per_image = list(csv.DictReader(fh))
    assert len(per_image) == 9 and {r["status"] for r in per_image} == {"ok"}
    with open(out / "results.csv", newline="") as fh:
        summary = list(csv.DictReader(fh))
    assert float(summary[1]["psnr"]) == pytest.approx(by_model["bicubic"]["mean"]["psnr"])
    assert "results written" in capsys.readouterr().err


def test_model_entry_equals_direct_inference(toy):
    from perceptsr.checkpoint import load_model
    from perceptsr.data import quantize
    from perceptsr.inference import upscale_image

    res = evaluate({"net": str(toy["ckpt"])}, [toy["dataset"]], metrics=["psnr"], tile=None, progress=False,
                   device="cpu")
    model = load_model(toy["ckpt"])
    psnr = create_metric("psnr", preset="sr-y", scale=4)
    for row in res["images"]:
        hr = modcrop(read_image(row["hr"]), 4)
        lr = imresize((hr * 255 + 0.5).astype(np.uint8), 1 / 4).astype(np.float32) / 255
        sr = quantize(upscale_image(model, lr))
        t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None]  # noqa: E731
        assert row["psnr"] == pytest.approx(float(psnr(t(sr), t(hr))), abs=1e-4)


def test_corrupt_and_mismatched_images_are_skipped_and_reported(toy):
    (toy["hr"] / "zebra.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    bad = toy["root"] / "bad_sr"
    bad.mkdir()
    for p in toy["sr"].iterdir():
        img = read_image(p)
        write_image(bad / p.name, img[:-4] if p.stem.startswith("boat") else img)
    res = evaluate(["bicubic"], [toy["dataset"]], sr_dirs={"bad": bad}, metrics=["psnr"], progress=False)
    skipped = {(s["model"], s["image"]): s["reason"] for s in res["skipped"]}
    assert "zebra.png" in skipped[("(all)", "zebra")]
    assert "size mismatch" in skipped[("bad", "boat")]
    counts = {s["model"]: (s["count"]["psnr"], s["total"]) for s in res["summary"]}
    assert counts == {"bicubic": (3, 4), "bad": (2, 4)}
    md = markdown_table(res)
    assert "(3/4 images)" in md and "(2/4 images)" in md
    assert "zebra" in md and "size mismatch" in md


def test_metric_without_asset_is_left_out(toy, tmp_path, monkeypatch):
    monkeypatch.setenv("PERCEPTSR_ASSETS", str(tmp_path / "no_assets"))
    monkeypatch.setenv("PERCEPTSR_CACHE", str(tmp_path / "no_cache"))
    monkeypatch.setenv("PERCEPTSR_OFFLINE", "1")
    res = evaluate(["bicubic"], [toy["dataset"]], metrics=["psnr", "pi"], progress=False)
    assert res["metrics"] == ["psnr"]
    assert "model.mat" in res["missing_metrics"]["pi"]
    assert res["summary"][0]["mean"]["psnr"] > 20
    paths = write_results(res, tmp_path / "out")
    assert "`pi` left out" in paths["results.md"].read_text()
    with pytest.raises(ConfigError, match="unknown metric"):
        evaluate(["bicubic"], [toy["dataset"]], metrics=["psnrr"], progress=False)


def test_too_small_for_a_metric_is_a_per_image_note(toy, monkeypatch):
    pytest.importorskip("scipy")
    try:
        create_metric("niqe")
    except Exception as exc:  # noqa: BLE001 - the asset may be absent
        pytest.skip(f"NIQE parameters unavailable: {exc}")
    res = evaluate(["bicubic"], [toy["dataset"]], metrics=["psnr", "niqe"], progress=False)
    summary = res["summary"][0]
    assert summary["count"] == {"psnr": 3, "niqe": 0} and summary["mean"]["niqe"] is None
    assert "too small" in res["images"][0]["errors"]["niqe"]
    assert "(0/3 images)" in markdown_table(res)


def test_sr_file_matching_rule():
    hr = ["baby", "bird", "img_001", "img_0010"]
    files = [Path(n) for n in ("baby_x4.png", "babyx4.png", "bird-RankSRGAN.png", "img_001_SR.png",
                               "img_0010.png", "unrelated.png", "IMG_0010_x4.png")]
    matched, ambiguous = match_sr_files(hr, files, scale=4)
    assert matched["bird"].name == "bird-RankSRGAN.png"
    assert matched["img_001"].name == "img_001_SR.png"
    assert matched["img_0010"].name == "img_0010.png"  # the exact stem wins over IMG_0010_x4
    assert "baby" not in matched and {p.name for p in ambiguous["baby"]} == {"baby_x4.png", "babyx4.png"}
    matched, _ = match_sr_files(["bird"], [Path("birds.png"), Path("bird2.png")])
    assert matched == {}  # a longer word is not a suffix


def test_resolve_dataset(tmp_path, monkeypatch):
    (tmp_path / "Set5" / "HR").mkdir(parents=True)
    (tmp_path / "Set5" / "LR_bicubic" / "X4").mkdir(parents=True)
    (tmp_path / "plain").mkdir()
    spec = resolve_dataset("set5", data_root=tmp_path)
    assert spec.name == "Set5" and spec.hr_dir.name == "HR" and spec.lr_dir.name == "X4"
    assert resolve_dataset("Set5", data_root=tmp_path, scale=2).lr_dir is None
    assert resolve_dataset(tmp_path / "plain").hr_dir == tmp_path / "plain"
    monkeypatch.setenv("PERCEPTSR_DATA", str(tmp_path))
    assert default_data_root() == tmp_path
    assert resolve_dataset("Set5").name == "Set5"
    with pytest.raises(ConfigError, match="it has: Set5, plain"):
        resolve_dataset("Urban100")


def test_set5_bicubic_baseline(benchmark_dir):
    res = evaluate(["bicubic"], ["Set5"], data_root=benchmark_dir, metrics=["psnr", "ssim"], protocol="sr-y",
                   progress=False)
    mean = res["summary"][0]["mean"]
    assert res["summary"][0]["count"]["psnr"] == 5
    # standard figure 28.42 dB / 0.8104 (MATLAB, uint8 Y); sr-y (unrounded Y) gives 28.430 / 0.8111
    assert mean["psnr"] == pytest.approx(28.42, abs=0.03)
    assert mean["ssim"] == pytest.approx(0.8104, abs=0.002)
    assert all(r["lr"].endswith(".png") for r in res["images"])  # the released LR files were used
