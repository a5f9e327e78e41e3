"""Model cards: ``perceptsr eval --stamp`` writes the scores into the safetensors metadata (atomically, the
tensors untouched and still plain-safetensors readable); ``perceptsr info`` prints them."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from _images import write_smooth_images
from perceptsr import __version__
from perceptsr.archs import build_arch
from perceptsr.cards import CARD_KEY, model_info, read_card, stamp_evaluation
from perceptsr.checkpoint import load_model, save_model
from perceptsr.cli import main
from perceptsr.errors import CheckpointError

KWARGS = {"num_feat": 8, "num_block": 1, "upscale": 4}


def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_arch("msrresnet", **KWARGS)


@pytest.fixture
def dataset(tmp_path):
    return write_smooth_images(tmp_path / "Tiny" / "HR", 2, (32, 32), seed=1).parent


def header(path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata())


def evaluate_cli(model, dataset, out, *extra) -> int:
    return main(["eval", "--model", str(model), "--datasets", str(dataset), "--metrics", "psnr,ssim", "--out", str(out),
                 "--tile", "0", "--quiet", *extra])


def test_stamp_writes_the_scores_and_keeps_the_tensors(tmp_path, dataset):
    model = tiny()
    path = save_model(tmp_path / "net_g.safetensors", model, arch="msrresnet", arch_kwargs=KWARGS, iteration=1234)
    before = header(path)
    assert evaluate_cli(path, dataset, tmp_path / "ev1", "--stamp") == 0
    results = json.loads((tmp_path / "ev1" / "results.json").read_text())
    tensors = load_file(str(path))  # plain safetensors still reads it, BasicSR names unchanged
    assert sorted(tensors) == sorted(model.state_dict())
    for key, value in model.state_dict().items():
        assert torch.equal(tensors[key], value), key
    after = header(path)
    assert {k: v for k, v in after.items() if k != CARD_KEY} == before  # native metadata untouched
    card = read_card(path)
    assert card["card_version"] == 1 and len(card["evaluations"]) == 1
    ev = card["evaluations"][0]
    summary = results["summary"][0]
    assert ev["protocol"] == "sr-y" and ev["scale"] == 4 and ev["entry"] == summary["model"]
    assert ev["datasets"] == [{"name": "Tiny", "images": 2}]
    assert ev["metrics"] == {"Tiny": summary["mean"]} and ev["counts"] == {"Tiny": {"psnr": 2, "ssim": 2}}
    assert ev["date"] == results["created"] and ev["perceptsr_version"] == __version__
    assert set(ev["metric_protocols"]) == {"psnr", "ssim"}
    # a second evaluation appends
    assert evaluate_cli(path, dataset, tmp_path / "ev2", "--stamp", "--protocol", "sr-rgb") == 0
    assert [e["protocol"] for e in read_card(path)["evaluations"]] == ["sr-y", "sr-rgb"]
    assert load_model(path).perceptsr_meta["iteration"] == 1234


def test_foreign_safetensors_is_stamped_and_stays_foreign(tmp_path, dataset):
    path = tmp_path / "basicsr.safetensors"
    save_file(tiny().state_dict(), str(path))
    assert evaluate_cli(path, dataset, tmp_path / "ev", "--stamp") == 0
    assert len(read_card(path)["evaluations"]) == 1
    loaded = load_model(path)
    assert loaded.perceptsr_meta["file_format"] == "safetensors" and loaded.perceptsr_meta["arch"] == "msrresnet"


def test_torch_files_are_refused_before_evaluating(tmp_path, dataset, capsys):
    path = tmp_path / "net.pth"
    torch.save({"params_ema": tiny().state_dict()}, path)
    assert evaluate_cli(path, dataset, tmp_path / "ev", "--stamp") == 1
    err = capsys.readouterr().err
    assert f"{path}: not a safetensors file" in err and "convert it first with perceptsr convert" in err
    assert not (tmp_path / "ev").exists()


def test_a_corrupt_card_is_named_and_the_file_left_alone(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file(tiny().state_dict(), str(path), metadata={CARD_KEY: "{not json"})
    data = path.read_bytes()
    results = {"summary": [{"dataset": "D", "model": "m", "total": 1, "mean": {"psnr": 1.0}, "count": {"psnr": 1}}],
               "protocol": "sr-y"}
    with pytest.raises(CheckpointError, match=rf"m\.safetensors: corrupt model card \(metadata '{CARD_KEY}'\)"):
        stamp_evaluation(path, results, "m")
    with pytest.raises(CheckpointError, match="the results hold no entry 'other' to stamp"):
        stamp_evaluation(path, results, "other")
    assert path.read_bytes() == data and sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


def test_info_prints_the_card(tmp_path, dataset, capsys):
    model = tiny()
    path = save_model(tmp_path / "net_g.safetensors", model, arch="msrresnet", arch_kwargs=KWARGS, iteration=1234,
                      extra={"source": "unit test"})
    assert main(["info", str(path)]) == 0
    printed = capsys.readouterr().out
    count = sum(p.numel() for p in model.parameters())
    assert "architecture: msrresnet(num_block=1, num_feat=8, upscale=4)" in printed
    assert "scale:        x4" in printed and f"parameters:   {count:,}" in printed and "iteration:    1234" in printed
    assert f"provenance:   perceptsr file (perceptsr {__version__}, created " in printed
    assert '  source: "unit test"' in printed and "scores:       none stamped" in printed
    assert evaluate_cli(path, dataset, tmp_path / "ev", "--stamp") == 0
    capsys.readouterr()
    assert main(["info", str(path)]) == 0
    printed = capsys.readouterr().out
    psnr = read_card(path)["evaluations"][0]["metrics"]["Tiny"]["psnr"]
    assert "protocol sr-y, x4):" in printed and f"  Tiny (2 images): psnr {psnr:.2f}, ssim " in printed
    assert main(["info", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["parameters"] == count and info["evaluations"][0]["metrics"]["Tiny"]["psnr"] == psnr


def test_info_reads_legacy_files_without_a_card(tmp_path):
    path = tmp_path / "old.pth"
    torch.save({"params": tiny().state_dict()}, path)
    info = model_info(path)
    assert info["arch"] == "msrresnet" and info["scale"] == 4 and info["iteration"] is None
    assert info["provenance"]["file_format"] == "torch" and info["evaluations"] == []
