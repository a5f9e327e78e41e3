"""``perceptsr reproduce``: the tiny profiles end to end (2 seeds), the summary schema, resume and refusals."""

from __future__ import annotations

import json
import math
import statistics

import pytest
import yaml

from perceptsr.cli import main
from perceptsr.reproduce import ReproduceError, run_reproduce
from perceptsr.reproduce.summary import aggregate

RANKER_KEYS = {"accuracy", "hard_accuracy", "srocc", "kendall"}
METRIC_KEYS = {"psnr", "ssim", "niqe", "lpips"}


@pytest.fixture(scope="module")
def ranksrgan_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduce_ranksrgan")
    summary = run_reproduce("ranksrgan", "tiny", 2, out, progress=False)
    return out, summary


def _flat(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def test_ranksrgan_summary_has_every_seed_and_their_mean_and_std(ranksrgan_run):
    out, summary = ranksrgan_run
    assert summary == json.loads((out / "summary.json").read_text())
    assert (summary["experiment"], summary["profile"], summary["seeds"]) == ("ranksrgan", "tiny", [0, 1])
    assert summary["complete"] and summary["seeds_done"] == [0, 1]
    assert summary["perceptsr_version"] and summary["profile_settings"]["name"] == "tiny"
    assert summary["commands"]["reproduce"] == [f"perceptsr reproduce ranksrgan --profile tiny --seeds 2 --out {out}"]
    assert set(summary["commands"]["stages"]) == {f"seed_{s}/{m}" for s in (0, 1)
                                                  for m in ("psnr", "srgan", "ranker", "ranksrgan")}
    for block in (*summary["per_seed"].values(), summary["mean"], summary["std"]):
        assert set(block["ranker"]) >= RANKER_KEYS
        datasets = block["datasets"]
        assert list(datasets) == ["photos"]
        for method in ("psnr", "srgan", "ranksrgan", "ranksrgan_minus_srgan"):
            assert set(datasets["photos"][method]) == METRIC_KEYS
    assert set(summary["per_seed"]) == {"0", "1"}
    for path in ("datasets.photos.srgan.psnr", "datasets.photos.ranksrgan.niqe", "ranker.accuracy"):
        values = [_flat(summary["per_seed"][s])[path] for s in ("0", "1")]
        assert _flat(summary["mean"])[path] == pytest.approx(statistics.mean(values))
        assert _flat(summary["std"])[path] == pytest.approx(statistics.stdev(values))
    seed0 = summary["per_seed"]["0"]["datasets"]["photos"]
    assert seed0["ranksrgan_minus_srgan"]["niqe"] == pytest.approx(seed0["ranksrgan"]["niqe"] - seed0["srgan"]["niqe"])
    assert all(math.isfinite(v) for v in summary["per_seed"]["0"]["ranker"].values() if v is not None)
    assert 0.0 <= summary["per_seed"]["0"]["ranker"]["gan_patch_accuracy"] <= 1.0  # the rank loss's input size
    assert summary["baselines"]["bicubic"]["photos"]["psnr"] > 0


def test_srgan_control_and_ranksrgan_differ_only_in_the_rank_term(ranksrgan_run):
    out, _ = ranksrgan_run
    for seed in (0, 1):
        srgan = _flat(yaml.safe_load((out / f"seed_{seed}/srgan/SRGAN/config.yml").read_text()))
        rank = _flat(yaml.safe_load((out / f"seed_{seed}/ranksrgan/RankSRGAN/config.yml").read_text()))
        differ = {k for k in set(srgan) | set(rank) if srgan.get(k) != rank.get(k)}
        assert {k.split(".")[0] if k in ("name", "output_root") else ".".join(k.split(".")[:2]) for k in differ} \
            == {"name", "output_root", "objective.type", "objective.rank"}
        assert srgan["seed"] == rank["seed"] == seed
        assert srgan["model.pretrained"] == rank["model.pretrained"] == str(out / f"seed_{seed}/psnr/PSNR/checkpoints/"
                                                                            f"iter_12/net_g.safetensors")
        assert srgan["objective.discriminator.pretrained"] == str(out / f"seed_{seed}/srgan/net_d_init.safetensors")


def test_runs_are_named_by_what_they_are_and_log_tensorboard(ranksrgan_run):
    out, _ = ranksrgan_run
    for stage, name in (("psnr", "PSNR"), ("srgan", "SRGAN"), ("ranker", "Ranker"), ("ranksrgan", "RankSRGAN")):
        assert any((out / "seed_0" / stage / name / "tb").glob("events.out.tfevents.*"))
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "Ranker on the held-out rank patches" in html
    assert (out / "report_curves.png").is_file() and (out / "report_pd_niqe.png").is_file()


def test_a_second_invocation_skips_finished_stages(ranksrgan_run, capsys):
    out, summary = ranksrgan_run
    runs = out / "seed_1" / "ranksrgan" / "RankSRGAN"
    launches = (runs / "command.txt").read_text()
    capsys.readouterr()
    assert main(["reproduce", "ranksrgan", "--profile", "tiny", "--seeds", "2", "--out", str(out), "--no-progress"]) == 0
    said = capsys.readouterr().out
    assert said.count("already done") == 3 + 2 * 6
    assert (runs / "command.txt").read_text() == launches  # no training was started
    again = json.loads((out / "summary.json").read_text())
    assert again["per_seed"] == summary["per_seed"] and len(again["commands"]["reproduce"]) == 2


def test_an_interrupted_training_stage_resumes_where_it_stopped(ranksrgan_run, capsys):
    import shutil

    from safetensors.torch import load_file

    from perceptsr.config import load_config
    from perceptsr.train.engine import train

    out, summary = ranksrgan_run
    run = out / "seed_1/ranksrgan/RankSRGAN"
    uninterrupted = load_file(run / "checkpoints/iter_4/net_g.safetensors")
    config = load_config(run / "config.yml")
    for stage in ("ranksrgan", "eval"):
        (out / "seed_1" / stage / "done.json").unlink()
    shutil.rmtree(run)
    train(config, stop_after=2, progress=False)  # as if killed after iteration 2 (checkpoint iter_2)
    run_reproduce("ranksrgan", "tiny", 2, out, progress=False)
    assert capsys.readouterr().out.count("already done") == 3 + 2 * 6 - 2
    assert "resumed from" in (run / "log.txt").read_text() and "iter_2" in (run / "log.txt").read_text()
    resumed = load_file(run / "checkpoints/iter_4/net_g.safetensors")
    assert resumed.keys() == uninterrupted.keys()
    for key, value in uninterrupted.items():
        assert (resumed[key] == value).all(), key
    assert json.loads((out / "summary.json").read_text())["per_seed"] == summary["per_seed"]


def test_another_profile_fewer_seeds_or_changed_settings_are_refused(ranksrgan_run, tmp_path):
    out, _ = ranksrgan_run
    manifest = (out / "reproduce.json").read_text()
    with pytest.raises(ReproduceError, match="started with --profile tiny, not --profile demo"):
        run_reproduce("ranksrgan", "demo", 2, out, progress=False)
    with pytest.raises(ReproduceError, match=r"holds seeds \[0, 1\] but --seeds asks for \[0\]"):
        run_reproduce("ranksrgan", "tiny", 1, out, progress=False)
    with pytest.raises(ReproduceError, match="holds a 'ranksrgan' reproduction, not 'ea-adam'"):
        run_reproduce("ea-adam", "tiny", 2, out, progress=False)
    assert (out / "reproduce.json").read_text() == manifest  # a refused run changes nothing
    edited = json.loads(manifest)
    edited["settings"]["gan"]["iterations"] = 5
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "reproduce.json").write_text(json.dumps(edited))
    with pytest.raises(ReproduceError, match=r"has changed since this folder was started \(gan\.iterations: 5 then, 4 now"):
        run_reproduce("ranksrgan", "tiny", 2, copy, progress=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert main(["reproduce", "ranksrgan", "--profile", "tiny", "--out", str(tmp_path / "other")]) == 1


def test_aggregate_gives_mean_and_sample_std_leaf_by_leaf():
    mean, std = aggregate([{"a": {"x": 1.0, "y": None}, "n": 2}, {"a": {"x": 3.0, "y": 4.0}, "n": 4}])
    assert mean == {"a": {"x": 2.0, "y": 4.0}, "n": 3.0}
    assert std["a"]["x"] == pytest.approx(math.sqrt(2)) and std["a"]["y"] is None and std["n"] == pytest.approx(math.sqrt(2))


# ------------------------------------------------------------------------------------------------
# ea-adam


@pytest.fixture(scope="module")
def ea_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduce_ea_adam")
    summary = run_reproduce("ea-adam", "tiny", 2, out, progress=False)
    return out, summary


def test_ea_adam_summary_has_both_populations_fused_sweep_and_hypervolumes(ea_run):
    out, summary = ea_run
    assert summary == json.loads((out / "summary.json").read_text())
    assert (summary["experiment"], summary["seeds"], summary["seeds_done"]) == ("ea-adam", [0, 1], [0, 1])
    members = {"member_0", "member_1", "member_2"}
    for block in (*summary["per_seed"].values(), summary["mean"], summary["std"]):
        d = block["datasets"]["photos"]
        assert set(d["ea_adam"]) == set(d["ws_adam"]) == members
        assert all(set(m) == METRIC_KEYS for m in (*d["ea_adam"].values(), *d["ws_adam"].values(), d["fused"]))
        assert set(d["sweep"]) == {"t=0", "t=0.5", "t=1"}
        assert {"ea_adam", "ws_adam", "fused", "ea_adam_plus_fused", "ea_minus_ws"} <= set(d["hypervolume"])
    for seed in ("0", "1"):
        entry = summary["per_seed"][seed]
        ea, ws = entry["budget"]["ea_adam"], entry["budget"]["ws_adam"]
        assert ea["generator_steps"] == ws["generator_steps"] == 2 * 6  # 2 trainable individuals x 6 iterations
        assert ea["ea_phases"] == 2 and ea["fitness_evaluations"] > 0
        assert ws["ea_phases"] == ws["fitness_evaluations"] == 0
        d = entry["datasets"]["photos"]
        assert d["ea_adam"]["member_0"] == d["ws_adam"]["member_0"]  # both populations keep the PSNR model
        assert d["sweep"]["t=0"] == d["ea_adam"]["member_0"] and d["sweep"]["t=1"] == d["ea_adam"]["member_2"]
        assert entry["fusion"]["output_gap"]["max_abs"] < 1e-4
        ref = d["hypervolume"]["reference"]
        bic = summary["baselines"]["bicubic"]["photos"]
        assert ref == {"psnr": pytest.approx(bic["psnr"] - 1.0), "lpips": pytest.approx(bic["lpips"])}
    html = (out / "report.html").read_text()
    assert "Hypervolume in the PSNR-LPIPS plane" in html and "data:image/png;base64," in html


def test_ea_adam_and_weighted_sum_runs_differ_only_in_adam_mode_and_ea_phases(ea_run):
    out, _ = ea_run
    ea = _flat(yaml.safe_load((out / "seed_1/ea_adam/EA-Adam/config.yml").read_text()))
    ws = _flat(yaml.safe_load((out / "seed_1/ws_adam/weighted-sum Adam/config.yml").read_text()))
    differ = {k for k in set(ea) | set(ws) if ea.get(k) != ws.get(k)}
    assert differ == {"name", "output_root", "objective.adam_mode", "objective.epoch_iterations"}
    assert (ea["objective.adam_mode"], ws["objective.adam_mode"]) == ("normalised", "weighted_sum")
    assert ws["objective.epoch_iterations"] >= ws["train.iterations"]  # no EA phase can start
    assert not (out / "seed_1/ws_adam/weighted-sum Adam/ea_phases.jsonl").exists()


def test_ea_adam_second_invocation_skips_everything(ea_run, capsys):
    out, summary = ea_run
    capsys.readouterr()
    again = run_reproduce("ea-adam", "tiny", 2, out, progress=False)
    assert capsys.readouterr().out.count("already done") == 3 + 2 * 5
    assert again["per_seed"] == summary["per_seed"]


def test_hypervolume_is_the_area_dominated_in_the_psnr_lpips_plane():
    from perceptsr.reproduce.ea_adam import hypervolume

    ref = (25.0, 0.5)
    assert hypervolume([(27.0, 0.4)], ref) == pytest.approx(2.0 * 0.1)
    # two front points: 2 x 0.1 + (26 - 25) x (0.4 - 0.3); a dominated point and one beyond the reference add nothing
    front = [(27.0, 0.4), (26.0, 0.3)]
    assert hypervolume(front, ref) == pytest.approx(0.3)
    assert hypervolume([*front, (25.5, 0.45), (24.0, 0.1), (28.0, 0.6)], ref) == pytest.approx(0.3)
    assert hypervolume([], ref) == 0.0


def test_weighted_sum_gradient_is_the_plain_weighted_loss_gradient():
    import torch

    from perceptsr.ea_adam.gradients import normalised_gradient_mix, weighted_sum_gradient

    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3)
    x = torch.randn(8, 4)
    losses = lambda: (net(x).pow(2).mean(), (net(x) - 1).abs().mean())  # noqa: E731
    a, b = losses()
    expected = torch.autograd.grad(0.25 * a + 0.75 * b, list(net.parameters()))
    weighted_sum_gradient(net, list(losses()), [0.25, 0.75])
    for p, g in zip(net.parameters(), expected):
        torch.testing.assert_close(p.grad, g)
    normalised_gradient_mix(net, list(losses()), [0.25, 0.75])
    assert not torch.allclose(net.weight.grad, expected[0])  # the normalised mix is another direction
