"""RankSRGAN stage 2: pair sampling, the margin-ranking and regression losses, ordering accuracy and
rank correlations, and Ranker training through the engine (validation, best checkpoint, resume)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from _rank_toy import write_levels
from scipy import stats

from perceptsr.config import config_from_dict, TrainConfig, load_config
from perceptsr.errors import ConfigError
from perceptsr.ranksrgan import (
    RankDataOptions,
    RankerObjectiveConfig,
    RankLevel,
    RankPairDataset,
    build_rank_dataset,
    pairwise_accuracy,
    rank_correlations,
    ranking_loss,
    regression_loss,
)
from perceptsr.train.engine import train

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def rank_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("rank")
    folders = write_levels(root / "levels", 4, seed=10, flat_right=96)
    opts = RankDataOptions(patch_size=64, stride=32, metric="toy_blur", preset=None, texture_threshold=3.0,
                           min_gap=0.0, valid_fraction=0.25, seed=1)
    build_rank_dataset([RankLevel(n, str(f)) for n, f in folders.items()], root / "data", opts, progress=False)
    return root / "data"


def make_cfg(rank_dir: Path, out: Path, name="ranker", iterations=60, **objective) -> TrainConfig:
    return config_from_dict(TrainConfig, {
        "name": name, "output_root": str(out), "seed": 0,
        "model": {"arch": "ranker", "kwargs": {"depth": 8, "nf": 8}},
        "data": {"train": {"batch_size": 8, "num_workers": 0}},
        "objective": {"type": "ranker", "rank_dir": str(rank_dir), **objective},
        "optim": {"lr": 1e-3, "betas": [0.9, 0.999], "weight_decay": 1e-4},
        "train": {"iterations": iterations, "ema_decay": 0, "log_every": 5, "val_every": iterations // 2,
                  "save_every": iterations // 2, "device": "cpu"},
    })


def test_ranking_loss_sign_convention_and_clamp():
    s1 = torch.tensor([2.0, -1.0, 7.0, 0.0], requires_grad=True)
    s2 = torch.tensor([1.0, 0.5, -9.0, 0.0])
    l1 = torch.tensor([6.0, 3.0, 5.0, 4.0])  # image 1 worse (higher metric) except in the 2nd pair
    l2 = torch.tensor([4.0, 5.0, 4.0, 4.0])  # a tie counts as "image 1 worse" (+1)
    loss = ranking_loss(s1, s2, l1, l2, margin=0.5, clamp=5.0)
    # targets +1, -1, +1, +1; clamped scores (2, 1), (-1, .5), (5, -5), (0, 0)
    expected = (max(0, -(2 - 1) + 0.5) + max(0, (-1 - 0.5) + 0.5) + max(0, -(5 + 5) + 0.5) + 0.5) / 4
    assert loss.item() == pytest.approx(expected)
    ref = torch.nn.MarginRankingLoss(margin=0.5)(s1.clamp(-5, 5), s2.clamp(-5, 5), torch.tensor([1.0, -1, 1, 1]))
    assert loss.item() == pytest.approx(ref.item())
    loss.backward()
    assert s1.grad[2] == 0  # outside the clamp: no gradient, as the release
    assert float(regression_loss(torch.tensor([1.0, 3.0]), torch.tensor([2.0, 1.0]), "l1")) == 1.5
    assert float(regression_loss(torch.tensor([1.0, 3.0]), torch.tensor([2.0, 1.0]), "l2")) == 2.5


def test_accuracy_and_correlations_on_fixed_numbers():
    scores = [0.1, 0.5, 0.4, 2.0, 1.0, 3.0, 0.0, 0.0]
    labels = [1.0, 2.0, 3.0, 4.0, 6.0, 5.0, 7.0, 7.5]
    groups = [[0, 1, 2], [3, 4, 5], [6, 7]]
    # group 1: (0,1) ok, (0,2) ok, (1,2) wrong (0.5 >= 0.4 but 2 < 3); group 2: (3,4) wrong
    # (2 >= 1 but 4 < 6), (3,5) ok, (4,5) wrong; group 3: 0 >= 0 says "first worse" but 7 < 7.5,
    # wrong -> 3 of 7; the first pairs only: 1 of 3
    assert pairwise_accuracy(scores, labels, groups) == pytest.approx(3 / 7)
    assert pairwise_accuracy(scores, labels, groups, pairs=[(0, 1)]) == pytest.approx(1 / 3)
    got = rank_correlations(scores, labels)
    assert got["srocc"] == pytest.approx(stats.spearmanr(scores, labels)[0], abs=1e-12)
    assert got["kendall"] == pytest.approx(stats.kendalltau(scores, labels)[0], abs=1e-12)
    assert rank_correlations([1, 2, 3], [3, 2, 1])["srocc"] == pytest.approx(-1.0)
    assert math.isnan(rank_correlations([1, 1, 1], [1, 2, 3])["srocc"])


def test_pair_dataset_is_seeded_and_oversamples_the_hard_pair(rank_dir):
    ds = RankPairDataset(rank_dir, seed=0, hard_pair_weight=3.0)
    assert ds.data.levels == ["sharp", "soft", "blurry"] and ds.data.hard_pair == ("sharp", "soft")
    a, b = ds[(2, 5)], ds[(2, 5)]
    assert torch.equal(a["img1"], b["img1"]) and a["score1"] == b["score1"]
    assert a["img1"].shape == (3, 64, 64) and a["img1"].dtype == torch.float32
    group = ds.data.groups[0]
    counts = {}
    for j in range(0, 600 * len(ds), len(ds)):  # always location 0, many draws
        item = ds[(0, j)]
        drawn = (float(item["score1"]), float(item["score2"]))
        pair = frozenset(lv for lv, _, score in group if float(np.float32(score)) in drawn)
        assert len(pair) == 2
        counts[pair] = counts.get(pair, 0) + 1
    hard = counts[frozenset({"sharp", "soft"})] / 600
    assert hard == pytest.approx(0.6, abs=0.07)  # 3:1:1


def test_ranker_training_learns_the_toy_order(rank_dir, tmp_path):
    result = train(make_cfg(rank_dir, tmp_path, iterations=40, swap_order=True), progress=False)
    m = result.val_metrics
    assert list(m)[0] == "val/srocc"
    assert m["val/srocc"] > 0.7 and m["val/accuracy"] > 0.8, m
    assert set(m) == {"val/srocc", "val/kendall", "val/accuracy", "val/hard_accuracy"}
    manifest = json.loads((result.last_checkpoint / "manifest.json").read_text())
    assert manifest["metric_name"] == "srocc" and manifest["metric"] == pytest.approx(m["val/srocc"])
    assert manifest["metrics"]["kendall"] == pytest.approx(m["val/kendall"])
    pointer = json.loads((tmp_path / "ranker" / "checkpoints" / "latest.json").read_text())
    assert pointer["best"]["name"] == "srocc" and pointer["best"]["mode"] == "max"
    assert list((tmp_path / "ranker" / "tb").glob("events.*"))
    from perceptsr.checkpoint import load_model

    assert not (result.last_checkpoint / "net_g.safetensors").exists()
    ranker = load_model(result.last_checkpoint / "ranker.safetensors")
    assert type(ranker).__name__ == "Ranker" and ranker.depth == 8


def test_ranker_resume_is_bit_exact(rank_dir, tmp_path):
    full = train(make_cfg(rank_dir, tmp_path / "a", iterations=16, hard_pair_weight=3.0), progress=False)
    cfg = make_cfg(rank_dir, tmp_path / "b", iterations=16, hard_pair_weight=3.0)
    train(cfg, progress=False, stop_after=8)
    resumed = train(cfg, progress=False, resume=True)
    for (k, v), w in zip(full.generator.state_dict().items(), resumed.generator.state_dict().values()):
        assert torch.equal(v, w), k
    assert full.val_metrics == resumed.val_metrics


def test_regression_variant_reduces_its_loss(rank_dir, tmp_path):
    cfg = make_cfg(rank_dir, tmp_path, name="reg", iterations=30, loss="l2")
    result = train(cfg, progress=False)
    log = (tmp_path / "reg" / "log.txt").read_text()
    losses = [float(line.split("loss/l2 ")[1].split()[0]) for line in log.splitlines() if "loss/l2 " in line]
    assert losses[-1] < losses[0]
    assert np.isfinite(result.val_metrics["val/srocc"])


def _plain(cfg):
    from perceptsr.config import config_to_dict

    return config_to_dict(cfg)


def test_configs_and_errors(rank_dir, tmp_path):
    for path in ("configs/paper/ranker_vgg12_niqe.yml", "configs/cpu/ranker_vgg12_niqe.yml"):
        cfg = load_config(REPO / path)
        assert isinstance(cfg.objective, RankerObjectiveConfig) and cfg.model.arch == "ranker"
    paper = load_config(REPO / "configs/paper/ranker_vgg12_niqe.yml")
    assert (paper.optim.lr, paper.optim.weight_decay, paper.data.train.batch_size) == (1e-3, 1e-4, 32)
    assert paper.schedule.milestones == (100000, 200000) and paper.train.iterations == 400000
    with pytest.raises(ConfigError, match="objective.margin"):
        config_from_dict(TrainConfig, {**_plain(make_cfg(rank_dir, tmp_path)), "objective": {"type": "ranker",
                                                                                            "margin": -1}})
    bad = config_from_dict(TrainConfig, {**_plain(make_cfg(rank_dir, tmp_path)),
                                         "model": {"arch": "msrresnet", "kwargs": {"num_feat": 8, "num_block": 1}}})
    with pytest.raises(ConfigError, match="model.arch.*Ranker"):
        train(bad, progress=False)
    for data, objective in (({"hr_dir": str(tmp_path)}, {}), ({}, {"rank_dir": str(tmp_path)})):
        missing = config_from_dict(TrainConfig, {**_plain(make_cfg(rank_dir, tmp_path, name="m")),
                                                 "data": {"train": data}, "objective": {"type": "ranker", **objective}})
        with pytest.raises(ConfigError, match="train_label.txt"):
            train(missing, progress=False)


def test_rank_dir_and_its_older_spelling(rank_dir, tmp_path):
    for path in ("configs/paper/ranker_vgg12_niqe.yml", "configs/cpu/ranker_vgg12_niqe.yml"):
        cfg = load_config(REPO / path)
        assert cfg.objective.rank_dir and cfg.data.train.hr_dir is None
    plain = _plain(make_cfg(rank_dir, tmp_path, iterations=4))
    new = train(config_from_dict(TrainConfig, {**plain, "name": "new"}), progress=False)
    old = train(config_from_dict(TrainConfig, {
        **plain, "name": "old", "data": {"train": {**plain["data"]["train"], "hr_dir": str(rank_dir)}},
        "objective": {**plain["objective"], "rank_dir": None}}), progress=False)
    for (k, v), w in zip(new.generator.state_dict().items(), old.generator.state_dict().values()):
        assert torch.equal(v, w), k
    neither = config_from_dict(TrainConfig, {**plain, "objective": {**plain["objective"], "rank_dir": None}})
    with pytest.raises(ConfigError, match="objective.rank_dir.*required"):
        train(neither, progress=False)
    both = config_from_dict(TrainConfig, {**plain, "data": {"train": {**plain["data"]["train"], "hr_dir": str(tmp_path)}}})
    with pytest.raises(ConfigError, match="give only objective.rank_dir"):
        train(both, progress=False)
