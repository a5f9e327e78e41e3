"""Network interpolation (perceptsr.interpolation, ``perceptsr interpolate``): the weights on the line,
interpolability errors, the far-apart warning, and the scored sweep drawn as a PD curve."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from _images import write_smooth_images
from perceptsr.archs import build_arch
from perceptsr.checkpoint import load_model, save_model
from perceptsr.cli import main
from perceptsr.errors import CheckpointError, ConfigError
from perceptsr.interpolation import (
    SIMILARITY_WARNING, check_interpolable, interpolate_files, interpolate_state_dicts, weight_similarity,
)
from perceptsr.report import curve_lines

KWARGS = {"num_feat": 8, "num_block": 1, "upscale": 4}


def net(seed: int, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_arch("msrresnet", **{**KWARGS, **overrides})


def fine_tune(model: torch.nn.Module, seed: int = 7, amount: float = 0.1) -> dict[str, torch.Tensor]:
    """A's weights moved by ``amount`` of each tensor's own scale: a stand-in for a GAN fine-tune."""
    g = torch.Generator().manual_seed(seed)
    return {k: v + amount * v.std() * torch.randn(v.shape, generator=g) if v.numel() > 1 else v + 0.01
            for k, v in model.state_dict().items()}


@pytest.fixture
def pair(tmp_path):
    a = net(0)
    pa = save_model(tmp_path / "a.safetensors", a, arch="msrresnet", arch_kwargs=KWARGS, iteration=10)
    pb = save_model(tmp_path / "b.safetensors", fine_tune(a), arch="msrresnet", arch_kwargs=KWARGS)
    return pa, pb


def test_steps_are_the_straight_line_with_exact_endpoints(tmp_path, pair):
    pa, pb = pair
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fine-tune is close: no far-apart warning
        sweep = interpolate_files(pa, pb, 5, tmp_path / "out")
    assert sweep.alphas == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert [p.name for p in sweep.files] == [f"step_{i:02d}_a{a:.3f}.safetensors" for i, a in enumerate(sweep.alphas)]
    sa, sb = load_model(pa).state_dict(), load_model(pb).state_dict()
    for path, alpha in zip(sweep.files, sweep.alphas):
        model = load_model(path)
        assert model.perceptsr_meta["extra"]["interpolation"]["alpha"] == alpha
        assert model.perceptsr_meta["arch"] == "msrresnet" and model.perceptsr_meta["scale"] == 4
        for key, value in model.state_dict().items():
            if alpha in (0.0, 1.0):
                assert torch.equal(value, (sa if alpha == 0.0 else sb)[key]), key
            else:
                torch.testing.assert_close(value, (1 - alpha) * sa[key] + alpha * sb[key], rtol=0, atol=1e-7)
    record = json.loads(sweep.record.read_text())
    assert [s["alpha"] for s in record["steps"]] == sweep.alphas and record["arch"] == "msrresnet"
    assert record["weight_similarity"] == pytest.approx(sweep.similarity) and sweep.similarity > 0.9


def test_independently_trained_nets_warn_and_fine_tunes_do_not():
    a, b = net(0).state_dict(), net(1).state_dict()
    assert abs(weight_similarity(a, b)) < 0.2 < SIMILARITY_WARNING
    assert weight_similarity(a, fine_tune(net(0))) > 0.9
    assert weight_similarity(a, a) == pytest.approx(1.0)


def test_far_apart_models_give_the_warning(tmp_path):
    pa = save_model(tmp_path / "a.safetensors", net(0), arch="msrresnet", arch_kwargs=KWARGS)
    pb = save_model(tmp_path / "b.safetensors", net(1), arch="msrresnet", arch_kwargs=KWARGS)
    with pytest.warns(UserWarning, match=r"far apart in weight space \(weight cosine similarity -?0\.\d+ < 0\.5\)"):
        interpolate_files(pa, pb, 2, tmp_path / "out")


def test_non_interpolable_models_name_the_first_mismatch(tmp_path):
    a = net(0).state_dict()
    with pytest.raises(CheckpointError, match=r"B: tensor 'conv_first\.weight' has shape \(16, 3, 3, 3\), A has "
                                              r"\(8, 3, 3, 3\)"):
        check_interpolable(a, net(0, num_feat=16).state_dict())
    with pytest.raises(CheckpointError, match=r"B: has a tensor 'body\.1\.conv1\.weight' that A lacks"):
        check_interpolable(a, net(0, num_block=2).state_dict())
    with pytest.raises(CheckpointError, match=r"A2: has no tensor 'body\.1\.conv1\.weight' that A1 has"):
        check_interpolable(net(0, num_block=2).state_dict(), a, ("A1", "A2"))
    pa = save_model(tmp_path / "a.safetensors", a, arch="msrresnet", arch_kwargs=KWARGS)
    torch.manual_seed(0)
    other = build_arch("srresnet", nf=8, nb=1)
    pb = save_model(tmp_path / "b.safetensors", other, arch="srresnet", arch_kwargs={"nf": 8, "nb": 1})
    with pytest.raises(CheckpointError, match=r"b\.safetensors: is a srresnet network, .*a\.safetensors a msrresnet"):
        interpolate_files(pa, pb, 3, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match="steps must be an integer >= 2"):
        interpolate_files(pa, pa, 1, tmp_path / "out")


def test_counters_come_from_a_and_floats_mix_in_float64():
    a = {"w": torch.tensor([1.0, 3.0]), "n": torch.tensor(5)}
    b = {"w": torch.tensor([3.0, 7.0]), "n": torch.tensor(9)}
    mid = interpolate_state_dicts(a, b, 0.25)
    assert mid["w"].tolist() == [1.5, 4.0] and mid["n"].item() == 5


def test_curve_lines_follow_the_sweep_order_and_skip_missing_entries():
    summary = [{"dataset": "D", "model": m, "mean": {"psnr": p, "lpips": l}}
               for m, p, l in [("a=1", 20.0, 0.1), ("a=0", 30.0, 0.4), ("a=.5", 25.0, None), ("x", 1.0, 1.0)]]
    results = {"summary": summary, "curves": [
        {"name": "interp", "points": [{"model": "a=0"}, {"model": "a=.5"}, {"model": "a=1"}, {"model": "gone"}]},
        {"name": "single", "points": [{"model": "x"}]},
    ]}
    assert curve_lines(results, "D", "lpips") == [("interp", [30.0, 20.0], [0.4, 0.1])]
    assert curve_lines(results, "other", "lpips") == []


def test_cli_writes_the_steps_and_checks_its_options(tmp_path, pair, capsys):
    pa, pb = pair
    out = tmp_path / "cli"
    assert main(["interpolate", str(pa), str(pb), "--steps", "3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "weight cosine similarity of A and B: 0.9" in printed
    assert f"alpha 0.500: {out / 'step_01_a0.500.safetensors'}" in printed
    assert main(["interpolate", str(pa), str(pb), "--steps", "3", "--out", str(out), "--tradeoff", str(tmp_path)]) == 1
    assert "--tradeoff needs --eval DATASETS" in capsys.readouterr().err


def test_eval_scores_every_step_and_draws_both_curves(tmp_path, pair, assets_dir, capsys):
    pa, pb = pair
    data = write_smooth_images(tmp_path / "ds" / "HR", 2, (48, 48), seed=3).parent
    population = tmp_path / "population"
    for i, seed in enumerate((0, 5)):
        save_model(population / f"member_{i}.safetensors", fine_tune(net(0), seed=seed), arch="msrresnet",
                   arch_kwargs=KWARGS)
    out = tmp_path / "sweep"
    assert main(["interpolate", str(pa), str(pb), "--steps", "3", "--out", str(out), "--eval", str(data),
                 "--metrics", "psnr,lpips", "--tradeoff", str(population), "--tile", "0", "--quiet"]) == 0
    assert f"report written to {out / 'eval' / 'report.html'}" in capsys.readouterr().out
    results = json.loads((out / "eval" / "results.json").read_text())
    assert [m["name"] for m in results["models"]] == ["a=0.000", "a=0.500", "a=1.000", "t=0.000", "t=0.500", "t=1.000"]
    means = {s["model"]: s["mean"] for s in results["summary"]}
    lines = curve_lines(results, "ds", "lpips")
    assert [name for name, _, _ in lines] == ["interpolation (msrresnet)", "EA-Adam trade-off"]
    assert lines[0][1] == [means[f"a={a}"]["psnr"] for a in ("0.000", "0.500", "1.000")]
    assert lines[1][2] == [means[f"t={t}"]["lpips"] for t in ("0.000", "0.500", "1.000")]
    assert (out / "eval" / "report_pd_lpips.png").stat().st_size > 0
    assert "PSNR vs lpips" in (out / "eval" / "report.html").read_text()
