"""EA-Adam end to end through the training loop on tiny models: stage A (Adam + EA phases), stage B
(fusion regressors), stage C (``perceptsr fuse``) and ``perceptsr upscale --tradeoff``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from _images import write_smooth_images
from perceptsr.cli import main as cli_main
from perceptsr.config import TrainConfig, config_from_dict, load_config
from perceptsr.ea_adam import CHILDREN_LOG, PHASES_LOG, member_file, neighbourhoods, tchebycheff
from perceptsr.errors import ConfigError
from perceptsr.train.engine import train
from perceptsr.train.networks import build_generator

TINY = {"arch": "msrresnet", "kwargs": {"num_feat": 8, "num_block": 1}}
VGG = {"layer_weights": {"conv1_2": 1.0}, "weights": None}  # random VGG: no download
DISC = {"arch": "vgg_discriminator", "kwargs": {"num_feat": 4, "input_size": 32}}
N = 3
ITERS_A = 6  # EA phases at the start of iterations 3 and 5 (t_adam 1 epoch of 2 iterations)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ea_data")
    write_smooth_images(root / "train", 6, (44, 40), seed=1)
    write_smooth_images(root / "val", 2, (36, 32), seed=2)
    write_smooth_images(root / "lr", 3, (12, 16), seed=3)
    return root


def _base(data: Path, out: Path, name: str, objective: dict, iterations: int) -> dict:
    return {
        "name": name, "output_root": str(out), "seed": 5, "model": dict(TINY),
        "data": {"train": {"hr_dir": str(data / "train"), "patch_size": 32, "batch_size": 2, "num_workers": 0},
                 "val": {"hr_dir": str(data / "val"), "log_images": 0}},
        "optim": {"lr": 1e-3, "betas": [0.9, 0.999]},
        "objective": objective,
        "train": {"iterations": iterations, "log_every": 2, "val_every": iterations, "save_every": 2,
                  "keep_last": 10, "ema_decay": 0.0},
    }


def stage_a_cfg(data: Path, out: Path, name: str = "ea", **objective) -> TrainConfig:
    obj = {"type": "ea_adam", "population": N, "perceptual": VGG, "discriminator": DISC, "t_adam": 1,
           "epoch_iterations": 2, "t_ea": 3, "eval_images": 4, "eval_patch_size": 32, "eval_batch_size": 3,
           "p_mutation": 0.5, "plane_metric": "ssim", **objective}
    return config_from_dict(TrainConfig, _base(data, out, name, obj, ITERS_A))


def stage_b_cfg(data: Path, out: Path, run_a: Path, name: str = "fusion") -> TrainConfig:
    obj = {"type": "fusion", "experts": str(run_a / "population" / "final"),
           "attention": {"kernel_size": 3, "num_feat": 8, "num_params": 8, "hidden": 4},
           "perceptual": VGG,
           "discriminator": {**DISC, "pretrained": str(
               run_a / "checkpoints" / f"iter_{ITERS_A}" / f"net_d_{N - 1}.safetensors")}}
    raw = _base(data, out, name, obj, 4)
    raw["train"]["ema_decay"] = 0.5
    return config_from_dict(TrainConfig, raw)


def _weights(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    return {f.stem: load_file(f) for f in sorted(folder.glob("*.safetensors"))}


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].keys() == b[name].keys(), name
        for k in a[name]:
            assert torch.equal(a[name][k], b[name][k]), f"{name}: {k}"


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def run_a(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("stage_a")
    result = train(stage_a_cfg(data, out), progress=False)
    assert result.iteration == ITERS_A
    return result.run_dir


@pytest.fixture(scope="module")
def run_b(data, run_a, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("stage_b")
    return train(stage_b_cfg(data, out, run_a), progress=False).run_dir


# --------------------------------------------------------------------------------------------- stage A


def test_stage_a_population_logs_and_checkpoints(run_a):
    ckpt = run_a / "checkpoints" / f"iter_{ITERS_A}"
    files = {f.stem for f in ckpt.glob("*.safetensors")}
    assert files == {"net_g", "net_g_1", "net_g_2", "net_d_1", "net_d_2"}  # individual 0 frozen: no D
    phases = _jsonl(run_a / PHASES_LOG)
    assert [p["phase"] for p in phases] == [0, 1] and [p["iteration"] for p in phases] == [3, 5]
    assert all(p["generations"] == 3 and p["evaluations"] == N + 3 * N for p in phases)
    assert all((run_a / "ea_adam" / f"plane_phase_{k:03d}.png").is_file() for k in (1, 2))
    assert all(len(p["plane"]["psnr"]) == N and len(p["plane"]["ssim"]) == N for p in phases)
    for k in (1, 2, "final"):
        folder = run_a / "population" / (k if k == "final" else f"phase_{k:03d}")
        assert all(member_file(folder, i).is_file() for i in range(N))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_a / "tb"), size_guidance={"scalars": 0, "images": 0})  # the run's one writer
    acc.Reload()
    assert "ea/plane" in acc.Tags()["images"] and "ea/replacements" in acc.Tags()["scalars"]
    # the frozen individual 0 is still the initial (here: seeded random) model, the others moved
    torch.manual_seed(5)
    init = build_generator(load_config(run_a / "config.yml"))[0].state_dict()
    w = _weights(ckpt)
    final = _weights(run_a / "population" / "final")
    for k, v in w["net_g"].items():
        assert torch.equal(v, init[k]) and torch.equal(v, final["member_0"][k])
        assert torch.equal(w["net_g_2"][k], final["member_2"][k])
    assert any(not torch.equal(w["net_g"][k], w["net_g_1"][k]) for k in w["net_g"])


def test_replacements_follow_the_tchebycheff_rule(run_a):
    """Replay every logged child: it replaced exactly the (unprotected) neighbours whose normalised
    Tchebycheff value it strictly lowered, at the ideal/nadir points of that moment."""
    phases = _jsonl(run_a / PHASES_LOG)
    children = _jsonl(run_a / CHILDREN_LOG)
    lam = torch.tensor(phases[0]["preferences"], dtype=torch.float64)
    nb = neighbourhoods(N, 3)
    replaced = rejected = 0
    for phase in phases:
        f = torch.tensor(phase["initial_fitness"], dtype=torch.float64)
        ideal, nadir = f.amin(0), f.amax(0)
        mine = [c for c in children if c["phase"] == phase["phase"]]
        assert len(mine) == 3 * N
        for child in mine:
            fc = torch.tensor(child["fitness"], dtype=torch.float64)
            ideal, nadir = torch.minimum(ideal, fc), torch.maximum(nadir, fc)
            expect = [k for k in nb[child["parent"]] if k not in phase["protected"]
                      and float(tchebycheff(fc, lam[k], ideal, nadir)) < float(tchebycheff(f[k], lam[k], ideal, nadir))]
            assert child["replaced"] == expect, child
            for k in expect:
                f[k] = fc
            replaced += len(expect)
            rejected += len([k for k in nb[child["parent"]] if k not in expect])
        assert torch.allclose(f, torch.tensor(phase["fitness"], dtype=torch.float64))
        assert torch.allclose(ideal, torch.tensor(phase["ideal"], dtype=torch.float64))
        assert 0 not in [k for c in mine for k in c["replaced"]]  # protected PSNR model
    assert replaced > 0 and rejected > 0


def test_stage_a_resumes_bit_exact(data, run_a, tmp_path):
    """Stopped after iteration 3 (its EA phase logged, last checkpoint at 2) and resumed: the phase is
    re-run, the logs hold it once, and every network ends bit-identical to the uninterrupted run."""
    cfg = stage_a_cfg(data, tmp_path)
    first = train(cfg, progress=False, stop_after=3)
    assert first.stopped_early and len(_jsonl(first.run_dir / PHASES_LOG)) == 1
    train(cfg, resume=True, progress=False)
    run = tmp_path / "ea"
    _assert_same(_weights(run / "checkpoints" / f"iter_{ITERS_A}"), _weights(run_a / "checkpoints" / f"iter_{ITERS_A}"))
    _assert_same(_weights(run / "population" / "final"), _weights(run_a / "population" / "final"))
    assert [p["phase"] for p in _jsonl(run / PHASES_LOG)] == [0, 1]
    assert len(_jsonl(run / CHILDREN_LOG)) == 2 * 3 * N


def test_stage_a_config_errors(data, tmp_path):
    with pytest.raises(ConfigError, match="ema_decay"):
        raw = _base(data, tmp_path, "bad", {"type": "ea_adam", "perceptual": VGG, "discriminator": DISC}, 2)
        raw["train"]["ema_decay"] = 0.9
        train(config_from_dict(TrainConfig, raw), progress=False)
    with pytest.raises(ConfigError, match="objective.neighbourhood"):
        stage_a_cfg(data, tmp_path, neighbourhood=4)
    with pytest.raises(ConfigError, match="objective.plane_metric"):  # the plane is scored by the loop's validation
        train(stage_a_cfg(data, tmp_path, plane_metric="lpips"), progress=False)


# ------------------------------------------------------------------------------------- stages B and C


def test_stage_b_trains_only_the_regressors_and_resumes(data, run_a, run_b, tmp_path):
    from perceptsr.fusion import FUSION_ARCH, DynamicNetwork

    ckpt = run_b / "checkpoints" / "iter_4"
    w = _weights(ckpt)
    experts = DynamicNetwork.from_files(run_a / "population" / "final")
    for k, v in experts.state_dict().items():  # stacked experts untouched, regressors trained
        if ".fusion." not in k:
            assert torch.equal(w["net_g"][k], v), k
    init = _weights(run_b / "checkpoints" / "iter_2")["net_g"]
    assert any(not torch.equal(init[k], w["net_g"][k]) for k in init if ".fusion." in k)
    from perceptsr.checkpoint import read_checkpoint

    assert read_checkpoint(ckpt / "net_g.safetensors").meta["arch"] == FUSION_ARCH
    # interrupted after iteration 3 (checkpoint 2) and resumed: the same bits
    cfg = stage_b_cfg(data, tmp_path, run_a)
    train(cfg, progress=False, stop_after=3)
    train(cfg, resume=True, progress=False)
    _assert_same(_weights(tmp_path / "fusion" / "checkpoints" / "iter_4"), w)


def test_stage_c_collapse_equals_dynamic_net_and_tradeoff_endpoints(data, run_a, run_b, tmp_path, capsys):
    from perceptsr.checkpoint import load_model, read_checkpoint
    from perceptsr.data import read_image
    from perceptsr.fusion import DynamicNetwork, attention_for, load_attention, load_fusion_weights, output_gap

    fused_file = tmp_path / "fused" / "fused_x4.safetensors"
    assert cli_main(["fuse", str(run_b), "--lr-dir", str(data / "lr"), "--output", str(fused_file),
                     "--device", "cpu", "--quiet"]) == 0
    printed = capsys.readouterr().out
    fused = load_model(fused_file)
    weights, record = load_fusion_weights(fused_file.parent)
    assert record["num_images"] == 3 and record["arch"] == "msrresnet"
    assert all(abs(float(v.sum()) - 1) < 1e-6 for v in weights.values())
    # the output gap between the per-image dynamic network and the collapsed model, printed and recorded
    gap = record["output_gap"]
    assert gap["images"] == 3 and 0 <= gap["mean_abs"] <= gap["max_abs"] and gap["psnr"] > 0
    assert f"max |diff| {gap['max_abs']:.4g}" in printed and f"PSNR {gap['psnr']:.2f} dB" in printed
    assert read_checkpoint(fused_file).meta["extra"]["fusion"]["output_gap"] == gap

    # the collapsed network computes what the dynamic network computes with the averaged weights
    population = run_a / "population" / "final"
    net = DynamicNetwork.from_files(population, attention=attention_for(stage_b_cfg(data, tmp_path, run_a)))
    load_attention(run_b / "checkpoints" / "iter_4" / "net_g.safetensors", net)
    x = torch.rand(2, 3, 10, 12, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), net.using_weights(weights):
        expected = net.eval()(x)
        got = fused(x)
    assert torch.allclose(got, expected, atol=1e-5, rtol=0)
    again = output_gap(net, fused, data / "lr")  # the same images and crop as perceptsr fuse
    assert {k: again[k] for k in ("images", "max_abs", "mean_abs", "psnr")} == \
        {k: gap[k] for k in ("images", "max_abs", "mean_abs", "psnr")}
    on_val = tmp_path / "fused_val" / "fused_x4.safetensors"
    assert cli_main(["fuse", str(run_b), "--lr-dir", str(data / "lr"), "--output", str(on_val), "--device", "cpu",
                     "--gap-dir", str(data / "val"), "--quiet"]) == 0
    assert load_fusion_weights(on_val.parent)[1]["output_gap"]["images"] == 2

    # --tradeoff: 0 and 1 are the end members, for a population folder and for the fused model
    def upscale(model: Path, *extra: str) -> np.ndarray:
        out = tmp_path / f"up_{len(list(tmp_path.glob('up_*')))}"
        assert cli_main(["upscale", "--model", str(model), "--input", str(data / "lr" / "img00.png"),
                         "--output", str(out), "--tile", "0", "--device", "cpu", "--quiet", *extra]) == 0
        return read_image(out / "img00.png")

    first, last = upscale(member_file(population, 0)), upscale(member_file(population, N - 1))
    assert not np.array_equal(first, last)
    for source in (population, fused_file):
        assert np.array_equal(upscale(source, "--tradeoff", "0"), first)
        assert np.array_equal(upscale(source, "--tradeoff", "1"), last)
    # the fused model sits at its own expert position (issue 11: it used to be pinned to t = 0.5)
    assert np.array_equal(upscale(fused_file, "--tradeoff", repr(record["tradeoff_t"])), upscale(fused_file))
    assert cli_main(["upscale", "--model", str(member_file(population, 0)), "--input", str(data / "lr"),
                     "--output", str(tmp_path / "bad"), "--tradeoff", "0.3", "--quiet"]) == 1


# ------------------------------------------------------------------------------------------- SwinIR

SWIN = {"arch": "swinir", "kwargs": {"img_size": 8, "window_size": 4, "depths": [2], "embed_dim": 12,
                                     "num_heads": [2], "mlp_ratio": 2.0, "upsampler": "pixelshuffledirect"}}
TABLE = "relative_position_bias_table"


def test_swinir_population_trained_by_adam_goes_through_stages_b_and_c(data, tmp_path):
    """Issue 11: Adam trains SwinIR's relative-position bias tables in stage A, SBX/mutation never
    touch them, so the experts differ there and stage B used to raise. With static_policy: average
    stage B trains and stage C collapses to a model holding the tables' mean."""
    from safetensors.torch import load_file

    from perceptsr.checkpoint import load_model
    from perceptsr.errors import CheckpointError
    from perceptsr.fusion import DynamicNetwork, attention_for, load_attention, load_fusion_weights

    raw = _base(data, tmp_path, "ea_swin", {"type": "ea_adam", "population": N, "perceptual": VGG, "discriminator": DISC,
                                            "t_adam": 1, "epoch_iterations": 100, "plane_metric": "ssim"}, 2)
    raw["model"] = dict(SWIN)
    run_a = train(config_from_dict(TrainConfig, raw), progress=False).run_dir
    population = run_a / "population" / "final"
    members = [load_file(member_file(population, i)) for i in range(N)]
    tables = [k for k in members[0] if k.endswith(TABLE)]
    assert tables and all(not torch.equal(members[0][k], members[i][k]) for k in tables for i in (1, 2))

    def stage_b(name: str, **options) -> dict:
        obj = {"type": "fusion", "experts": str(population), "perceptual": VGG,
               "attention": {"kernel_size": 3, "num_feat": 4, "num_params": 4, "hidden": 3},
               "discriminator": {**DISC, "pretrained": str(run_a / "checkpoints" / "iter_2" / f"net_d_{N - 1}.safetensors")},
               **options}
        raw_b = _base(data, tmp_path, name, obj, 2)
        raw_b["model"] = dict(SWIN)
        return config_from_dict(TrainConfig, raw_b)

    with pytest.raises(CheckpointError, match=rf"{TABLE}[\s\S]*static_policy"):
        train(stage_b("swin_fusion_strict"), progress=False)
    cfg_b = stage_b("swin_fusion", static_policy="average")
    run_b = train(cfg_b, progress=False).run_dir
    fused_file = tmp_path / "fused" / "swin_x4.safetensors"
    assert cli_main(["fuse", str(run_b), "--lr-dir", str(data / "lr"), "--output", str(fused_file), "--device", "cpu",
                     "--no-crop", "--quiet"]) == 0
    weights, record = load_fusion_weights(fused_file.parent)
    assert record["static_policy"] == "average" and record["output_gap"]["images"] == 3
    fused = load_model(fused_file)
    for k in tables:
        mean = sum(m[k].double() for m in members) / N
        torch.testing.assert_close(fused.state_dict()[k].double(), mean, rtol=0, atol=1e-7)
    net = DynamicNetwork.from_files(population, attention=attention_for(cfg_b), static_policy="average").eval()
    load_attention(run_b / "checkpoints" / "iter_2" / "net_g.safetensors", net)
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), net.using_weights(weights):
        torch.testing.assert_close(fused(x), net(x), rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------------ best checkpoint


def test_population_run_picks_its_best_checkpoint_by_hypervolume(data, tmp_path):
    """Issue 11: the best checkpoint used to follow individual 0's PSNR, which never changes with
    freeze_first, so "best" stayed at the first validation. Now it follows the hypervolume of the
    population in the (PSNR, plane metric) plane, which rises while Adam improves the members."""
    from perceptsr.ea_adam.objective import HV_REFERENCE
    from perceptsr.ea_adam.selection import hypervolume

    raw = _base(data, tmp_path, "ea_best", {"type": "ea_adam", "population": N, "perceptual": VGG, "discriminator": DISC,
                                            "t_adam": 1, "epoch_iterations": 100, "plane_metric": "ssim"}, 6)  # no EA phase
    raw["optim"]["lr"] = 3e-3
    raw["train"].update({"val_every": 2, "save_every": 100})
    run = train(config_from_dict(TrainConfig, raw), progress=False).run_dir
    manifests = {int(p.parent.name.split("_")[1]): json.loads(p.read_text())
                 for p in (run / "checkpoints").glob("iter_*/manifest.json")}
    values = {}
    for it, man in sorted(manifests.items()):
        m = man["metrics"]
        assert man["metric_name"] == "hypervolume"
        expect = hypervolume([[-m[f"ind{i}/psnr"], -m[f"ind{i}/ssim"]] for i in range(N)],
                             [-HV_REFERENCE["psnr"], -HV_REFERENCE["ssim"]])
        assert man["metric"] == pytest.approx(expect, rel=1e-12)
        values[it] = man["metric"]
        assert m["ind0/psnr"] == manifests[min(manifests)]["metrics"]["ind0/psnr"]  # individual 0 is frozen
    best = json.loads((run / "checkpoints" / "latest.json").read_text())["best"]
    assert best["name"] == "hypervolume" and best["iteration"] == max(values, key=values.get)
    assert best["iteration"] > 2  # it moved after the first validation
