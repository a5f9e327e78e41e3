"""GAN objectives (SRGAN / ESRGAN / RankSRGAN) on tiny models: which parameters each step moves,
the frozen Ranker, the rank-content value, bit-exact resume with ``net_d``, NIQE validation and
config errors."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from _images import write_smooth_images
from perceptsr.archs import build_arch
from perceptsr.checkpoint import load_training_state, save_model
from perceptsr.config import TrainConfig, config_from_dict
from perceptsr.errors import ConfigError
from perceptsr.ranksrgan import RankContentLoss
from perceptsr.train.engine import train
from perceptsr.train.context import RunContext, Runtime
from perceptsr.train.objectives import GANObjective, build_objective

RANKER_KWARGS = {"nf": 4, "depth": 8}


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("gan_data")
    write_smooth_images(root / "train", 8, (44, 40), seed=1)
    write_smooth_images(root / "val", 1, (36, 32), seed=2)
    write_smooth_images(root / "val_big", 1, (200, 200), seed=3)  # NIQE needs 2x2 blocks of 96 after the 4-px shave
    torch.manual_seed(0)
    save_model(root / "ranker.safetensors", build_arch("ranker", **RANKER_KWARGS), arch="ranker",
               arch_kwargs=RANKER_KWARGS)
    return root


def make_cfg(data_dirs: Path, out: Path, name: str = "run", objective: dict | None = None, **sections) -> TrainConfig:
    raw = {
        "name": name,
        "output_root": str(out),
        "seed": 5,
        "model": {"arch": "msrresnet", "kwargs": {"num_feat": 8, "num_block": 1}},
        "data": {
            "train": {"hr_dir": str(data_dirs / "train"), "patch_size": 32, "batch_size": 4, "num_workers": 0},
            "val": {"hr_dir": str(data_dirs / "val"), "log_images": 0},
        },
        "objective": {
            "type": "ranksrgan",
            "perceptual": {"weights": None, "layer_weights": {"conv2_2": 1.0}},
            "rank": {"checkpoint": str(data_dirs / "ranker.safetensors")},
            "discriminator": {"arch": "vgg_discriminator", "kwargs": {"num_feat": 4, "input_size": 32}},
            **(objective or {}),
        },
        "optim": {"lr": 1e-3},
        "train": {"iterations": 6, "log_every": 2, "val_every": 3, "save_every": 3, "keep_last": 5,
                  "ema_decay": 0.9},
    }
    raw["objective"] = {k: v for k, v in raw["objective"].items() if v is not None}  # rank=None: no rank term
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return config_from_dict(TrainConfig, raw)


def _params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def _changed(before: dict, module: torch.nn.Module) -> bool:
    return any(not torch.equal(before[k], v) for k, v in module.named_parameters())


def _objective(data_dirs, tmp_path, **objective) -> tuple[GANObjective, dict]:
    cfg = make_cfg(data_dirs, tmp_path, objective=objective)
    torch.manual_seed(0)
    generator = build_arch("msrresnet", num_feat=8, num_block=1, upscale=4)
    obj = build_objective(generator, cfg, RunContext(Runtime(device=torch.device("cpu"))))
    g = torch.Generator().manual_seed(1)
    batch = {"lr": torch.rand(4, 3, 8, 8, generator=g), "hr": torch.rand(4, 3, 32, 32, generator=g)}
    return obj, batch


def test_steps_move_only_their_own_network_and_the_ranker_stays_frozen(data_dirs, tmp_path):
    obj, batch = _objective(data_dirs, tmp_path)
    assert isinstance(obj, GANObjective) and set(obj.networks()) == {"net_d"}
    ranker = obj.rank.ranker
    # train-mode BatchNorm by default, as the release (issue 10: eval mode diverged at the cpu profile)
    assert ranker.training and not any(p.requires_grad for p in ranker.parameters())
    optimised = {id(p) for opt in obj.optimizers().values() for group in opt.param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in ranker.parameters()}
    assert not optimised & {id(p) for p in obj.perceptual.parameters()}
    ranker_before = _params(ranker)

    sr = obj.net_g(batch["lr"])
    g0, d0 = _params(obj.generator), _params(obj.discriminator)
    logs = obj._generator_step(sr, batch["hr"])
    assert _changed(g0, obj.generator) and not _changed(d0, obj.discriminator)
    assert all(p.requires_grad for p in obj.discriminator.parameters())  # unfrozen again
    assert {"loss/g_percep", "loss/g_gan", "loss/g_rank", "loss/g_total"} <= set(logs)
    assert "loss/g_pix" not in logs  # ranksrgan: pixel weight 0
    assert logs["loss/g_total"] == pytest.approx(logs["loss/g_percep"] + logs["loss/g_gan"] + logs["loss/g_rank"],
                                                 rel=1e-5)

    g1, d1 = _params(obj.generator), _params(obj.discriminator)
    logs = obj._discriminator_step(sr.detach(), batch["hr"])
    assert _changed(d1, obj.discriminator) and not _changed(g1, obj.generator)
    assert np.isfinite(logs["loss/d"])

    for it in (1, 2):
        logs = obj.step(batch, it)
        assert all(np.isfinite(v) for v in logs.values())
    assert not _changed(ranker_before, ranker)


def test_net_d_init_iters_and_ragan(data_dirs, tmp_path):
    obj, batch = _objective(data_dirs, tmp_path, type="gan", gan_type="ragan", net_d_init_iters=1, rank=None)
    g0, d0 = _params(obj.generator), _params(obj.discriminator)
    logs = obj.step(batch, 1)  # discriminator warm-up: G does not move
    assert set(logs) == {"loss/d", "d/real_logit", "d/fake_logit"}
    assert not _changed(g0, obj.generator) and _changed(d0, obj.discriminator)
    logs = obj.step(batch, 2)
    assert {"loss/g_pix", "loss/g_percep", "loss/g_gan"} <= set(logs) and "loss/g_rank" not in logs
    assert _changed(g0, obj.generator) and all(np.isfinite(v) for v in logs.values())


def test_rank_content_value_and_loading(data_dirs, tmp_path):
    torch.manual_seed(3)
    ranker = build_arch("ranker", **RANKER_KWARGS)
    x = torch.rand(3, 3, 40, 40, generator=torch.Generator().manual_seed(4))
    reference = copy.deepcopy(ranker).train()
    loss = RankContentLoss(ranker, weight=0.03)
    assert ranker.training  # train-mode BatchNorm by default, as the original
    expected = 0.03 * torch.sigmoid(reference(x)).sum()
    assert torch.allclose(loss(x), expected, rtol=1e-6, atol=0)
    loss.eval()
    assert ranker.training  # the loss's own mode does not switch the Ranker's BN

    # from a file, eval-mode BN on request, with bias; the gradient reaches the input, not the Ranker
    file_loss = RankContentLoss(data_dirs / "ranker.safetensors", weight=0.5, bias=0.2, bn_mode="eval")
    assert not file_loss.ranker.training
    file_loss.train()
    assert not file_loss.ranker.training
    torch.manual_seed(0)
    same = build_arch("ranker", **RANKER_KWARGS).eval()
    xg = x.clone().requires_grad_(True)
    value = file_loss(xg)
    assert torch.allclose(value, 0.5 * torch.sigmoid(same(x) - 0.2).sum(), rtol=1e-6, atol=0)
    value.backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0
    assert all(p.grad is None for p in file_loss.ranker.parameters())

    save_model(tmp_path / "d.safetensors", build_arch("vgg_discriminator", num_feat=4), arch="vgg_discriminator",
               arch_kwargs={"num_feat": 4})
    with pytest.raises(ConfigError, match="holds a discriminator"):
        RankContentLoss(tmp_path / "d.safetensors")
    with pytest.raises(ConfigError, match="bn_mode"):
        RankContentLoss(ranker, bn_mode="frozen")


@pytest.mark.slow
def test_gan_resume_is_bit_exact(data_dirs, tmp_path):
    sections = dict(schedule={"type": "multistep", "milestones": [3], "gamma": 0.5},
                    train={"iterations": 4, "log_every": 1, "val_every": 2, "save_every": 2, "ema_decay": 0.9})
    full = train(make_cfg(data_dirs, tmp_path, name="full", **sections), progress=False)
    cfg = make_cfg(data_dirs, tmp_path, name="cut", **sections)
    cut = train(cfg, progress=False, stop_after=3)  # "killed" after iteration 3: last checkpoint is 2
    assert cut.stopped_early and cut.last_checkpoint.name == "iter_2"
    resumed = train(cfg, resume=True, progress=False)
    assert resumed.iteration == 4

    for module in ("generator", "ema_generator"):
        a, b = getattr(full, module).state_dict(), getattr(resumed, module).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), module
    from perceptsr.checkpoint import read_checkpoint

    d_full = read_checkpoint(full.last_checkpoint / "net_d.safetensors").state_dict
    d_res = read_checkpoint(resumed.last_checkpoint / "net_d.safetensors").state_dict
    assert d_full.keys() == d_res.keys() and all(torch.equal(d_full[k], d_res[k]) for k in d_full)
    s_full = load_training_state(full.last_checkpoint / "training_state.pt")
    s_res = load_training_state(resumed.last_checkpoint / "training_state.pt")
    assert set(s_full["optimizers"]) == {"net_g", "net_d"}
    for name in ("net_g", "net_d"):
        for a, b in zip(s_full["optimizers"][name]["state"].values(), s_res["optimizers"][name]["state"].values()):
            assert torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])
    assert s_res["schedulers"]["net_d"] == s_full["schedulers"]["net_d"]
    assert full.val_metrics == resumed.val_metrics

    log = (tmp_path / "full" / "log.txt").read_text()
    for key in ("loss/g_percep", "loss/g_gan", "loss/g_rank", "loss/d", "lr/net_d 5.000e-04"):
        assert key in log, key


def test_validation_logs_niqe(data_dirs, tmp_path, assets_dir):
    cfg = make_cfg(data_dirs, tmp_path, objective={"type": "gan", "rank": None},
                   data={"train": {"hr_dir": str(data_dirs / "train"), "patch_size": 32, "batch_size": 4,
                                   "num_workers": 0},
                         "val": {"hr_dir": str(data_dirs / "val_big"), "log_images": 0,
                                 "metrics": ["psnr", "niqe"]}},
                   train={"iterations": 2, "val_every": 2, "save_every": 2, "log_every": 2})
    result = train(cfg, progress=False)
    assert list(result.val_metrics) == ["val/psnr", "val/niqe"]
    assert np.isfinite(result.val_metrics["val/niqe"]) and result.val_metrics["val/niqe"] > 0
    assert "val/niqe" in (tmp_path / "run" / "log.txt").read_text()


def test_config_errors(data_dirs, tmp_path):
    with pytest.raises(ConfigError, match="objective.rank.*required"):
        make_cfg(data_dirs, tmp_path, objective={"rank": None})
    with pytest.raises(ConfigError, match="data.val.metrics.*start with 'psnr'"):
        make_cfg(data_dirs, tmp_path, data={"val": {"hr_dir": "x", "metrics": ["niqe", "psnr"]}})
    cfg = make_cfg(data_dirs, tmp_path, objective={"discriminator": {"arch": "vgg_discriminator_128"}})
    with pytest.raises(ConfigError, match="objective.discriminator.*128x128.*patch_size is 32"):
        build_objective(build_arch("msrresnet", num_feat=8, num_block=1), cfg, RunContext(Runtime(device=torch.device("cpu"))))
    cfg = make_cfg(data_dirs, tmp_path, objective={"discriminator": {"arch": "ranker"}})
    with pytest.raises(ConfigError, match="objective.discriminator.arch.*not a discriminator"):
        build_objective(build_arch("msrresnet", num_feat=8, num_block=1), cfg, RunContext(Runtime(device=torch.device("cpu"))))
    cfg = make_cfg(data_dirs, tmp_path, name="badmetric",
                   data={"val": {"hr_dir": str(data_dirs / "val"), "metrics": ["psnr", "niqee"]}})
    with pytest.raises(ConfigError, match=r"data.val.metrics\[1\].*Did you mean 'niqe'"):
        train(cfg, progress=False)


# ---------------------------------------------------------------------------------------------
# the released RankSRGAN files, as synthetic state dicts written from the spec's key tables (§6)


def _mmsr_generator_sd(g: torch.Generator) -> dict[str, torch.Tensor]:
    shapes = {"conv_first": (64, 3), "LRconv": (64, 64), "upconv1": (256, 64), "upconv2": (256, 64),
              "HRconv": (64, 64), "conv_last": (3, 64)}
    shapes.update({f"recon_trunk.{i}.conv{j}": (64, 64) for i in range(16) for j in (1, 2)})
    sd = {}
    for name, (cout, cin) in shapes.items():
        sd[f"{name}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * 0.02
        sd[f"{name}.bias"] = torch.randn(cout, generator=g) * 0.02
    return sd


def _old_generator_sd(mmsr: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    names = {"conv_first": "model.0", "LRconv": "model.1.sub.16", "upconv1": "model.2", "upconv2": "model.5",
             "HRconv": "model.8", "conv_last": "model.10"}
    names.update({f"recon_trunk.{i}.conv{j}": f"model.1.sub.{i}.res.{2 * (j - 1)}" for i in range(16) for j in (1, 2)})
    return {f"{names[k.rsplit('.', 1)[0]]}.{k.rsplit('.', 1)[1]}": v for k, v in mmsr.items()}


def _mmsr_ranker_sd(g: torch.Generator) -> dict[str, torch.Tensor]:
    sd = {}
    chans = [64, 128, 256, 512, 512]
    prev = 3
    for i, ch in enumerate(chans):
        for j, (k, cin) in enumerate(((3, prev), (4, ch))):
            sd[f"conv{i}_{j}.weight"] = torch.randn(ch, cin, k, k, generator=g) * 0.02
            sd[f"conv{i}_{j}.bias"] = torch.zeros(ch)
            if (i, j) != (0, 0):
                bn = f"bn{i}_{j}"
                sd.update({f"{bn}.weight": torch.ones(ch), f"{bn}.bias": torch.zeros(ch),
                           f"{bn}.running_mean": torch.zeros(ch), f"{bn}.running_var": torch.ones(ch),
                           f"{bn}.num_batches_tracked": torch.tensor(7)})
        prev = ch
    sd.update({"classifier.0.weight": torch.randn(100, 512, generator=g) * 0.05, "classifier.0.bias": torch.zeros(100),
               "classifier.2.weight": torch.randn(1, 100, generator=g) * 0.1, "classifier.2.bias": torch.zeros(1)})
    return sd


def test_released_rankSRGAN_layouts_load(tmp_path):
    from perceptsr.checkpoint import load_model

    g = torch.Generator().manual_seed(0)
    mmsr = _mmsr_generator_sd(g)
    assert len(mmsr) == 76 and sum(v.numel() for v in mmsr.values()) == 1_554_499  # spec §6.1 (its "70 tensors" miscounts)
    torch.save({f"module.{k}": v for k, v in mmsr.items()}, tmp_path / "mmsr_RankSRGAN_NIQE.pth")
    torch.save(_old_generator_sd(mmsr), tmp_path / "RankSRGAN_NIQE.pth")
    x = torch.rand(1, 3, 8, 8, generator=g)
    outputs = []
    for name, layout in (("mmsr_RankSRGAN_NIQE.pth", "perceptsr"), ("RankSRGAN_NIQE.pth", "old-basicsr-srresnet")):
        model = load_model(tmp_path / name)
        meta = model.perceptsr_meta
        assert (meta["arch"], meta["layout"]) == ("srresnet", layout)
        assert meta["arch_kwargs"] == {"in_nc": 3, "out_nc": 3, "nf": 64, "nb": 16, "upscale": 4}
        assert torch.equal(model.state_dict()["recon_trunk.15.conv2.weight"], mmsr["recon_trunk.15.conv2.weight"])
        with torch.no_grad():
            outputs.append(model(x))
    assert outputs[0].shape == (1, 3, 32, 32) and torch.equal(outputs[0], outputs[1])

    ranker_sd = _mmsr_ranker_sd(g)
    assert sum(v.numel() for k, v in ranker_sd.items() if "running" not in k and "num_batches" not in k) == 13_734_281
    torch.save(ranker_sd, tmp_path / "mmsr_Ranker_NIQE.pth")
    old_index = {"conv0_0": 0, "conv0_1": 2, "bn0_1": 3}  # spec §6.4: conv/BN/LReLU flattened from index 5 on
    for i in range(1, 5):
        for j in range(2):
            old_index[f"conv{i}_{j}"] = 5 + 6 * (i - 1) + 3 * j
            old_index[f"bn{i}_{j}"] = 6 + 6 * (i - 1) + 3 * j
    old = {(k if k.startswith("classifier") else f"features.{old_index[k.rsplit('.', 1)[0]]}.{k.rsplit('.', 1)[1]}"): v
           for k, v in ranker_sd.items() if not k.endswith("num_batches_tracked")}
    assert {"features.26.weight", "features.27.running_var"} <= set(old)
    torch.save(old, tmp_path / "Ranker_NIQE.pth")
    patch = torch.rand(2, 3, 32, 32, generator=g)
    values = []
    for name in ("mmsr_Ranker_NIQE.pth", "Ranker_NIQE.pth"):
        loss = RankContentLoss(tmp_path / name, bn_mode="eval")
        assert loss.ranker.perceptsr_meta["arch_kwargs"] == {"in_nc": 3, "nf": 64, "depth": 12}
        values.append(loss(patch))
    assert torch.equal(values[0], values[1]) and torch.isfinite(values[0])
