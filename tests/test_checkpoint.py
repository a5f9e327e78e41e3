"""Checkpoints: native round trips, legacy layouts (keys built from the RankSRGAN spec tables),
wrappers and prefixes, strict-load messages, refusal of pickled code, atomic writes, retention."""

from __future__ import annotations

import argparse
import collections
import json
import os
import random

import numpy as np
import pytest
import torch
from safetensors import safe_open

import perceptsr
from perceptsr import checkpoint as ckpt
from perceptsr.archs import build_arch
from perceptsr.checkpoint import (
    CheckpointSaver, detect_arch, load_model, load_state_dict_strict, load_training_state, read_checkpoint,
    save_model, save_training_state,
)
from perceptsr.cli import convert as convert_cli
from perceptsr.errors import CheckpointError


def small(name: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    torch.manual_seed(seed)
    defaults = {
        "srresnet": {"nf": 8, "nb": 2},
        "msrresnet": {"num_feat": 8, "num_block": 2},
        "rrdbnet": {"num_feat": 8, "num_block": 2, "num_grow_ch": 4},
        "ranker": {"nf": 4},
    }[name]
    model = build_arch(name, **{**defaults, **kwargs}).eval()
    for m in model.modules():  # non-trivial BN statistics so a wrong mapping would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
            m.num_batches_tracked.fill_(7)
    return model


def same_output(a: torch.nn.Module, b: torch.nn.Module, shape=(1, 3, 8, 8)) -> bool:
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


def no_temp_files(folder) -> bool:
    return not [p for p in os.listdir(folder) if p.startswith(".")]


# ---------------------------------------------------------------------------------------------
# native format


def test_native_round_trip_and_metadata(tmp_path):
    model = small("srresnet", upscale=3)
    path = save_model(tmp_path / "g.safetensors", model, arch="srresnet", arch_kwargs={"nf": 8, "nb": 2, "upscale": 3},
                      iteration=1234, metrics={"psnr": 27.5}, extra={"note": "test"})
    with safe_open(str(path), framework="pt") as f:  # a plain safetensors file with JSON metadata
        meta = json.loads(f.metadata()["perceptsr"])
        assert set(f.keys()) == set(model.state_dict())
    assert meta["arch"] == "srresnet" and meta["scale"] == 3 and meta["ema"] is False
    assert meta["iteration"] == 1234 and meta["metrics"] == {"psnr": 27.5} and meta["extra"] == {"note": "test"}
    assert meta["perceptsr_version"] == perceptsr.__version__ and meta["format_version"] == 1

    loaded = load_model(path)
    assert not loaded.training and same_output(model, loaded)
    assert loaded.perceptsr_meta["arch_kwargs"] == {"nf": 8, "nb": 2, "upscale": 3}
    assert loaded.perceptsr_meta["iteration"] == 1234 and loaded.perceptsr_meta["layout"] == "perceptsr"
    assert same_output(model, perceptsr.load_model(path))  # the top-level shortcut
    assert no_temp_files(tmp_path)


def test_native_params_and_params_ema_in_one_file(tmp_path):
    raw, ema = small("msrresnet", seed=1), small("msrresnet", seed=2)
    path = save_model(tmp_path / "g.safetensors", raw, ema_model=ema, arch="msrresnet",
                      arch_kwargs={"num_feat": 8, "num_block": 2})
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
    assert "conv_first.weight" in keys and "__params__.conv_first.weight" in keys
    info = read_checkpoint(path)
    assert info.ema and info.weights_key == "params_ema" and sorted(info.available) == ["params", "params_ema"]
    assert same_output(load_model(path), ema)
    as_raw = load_model(path, prefer_ema=False)
    assert same_output(as_raw, raw) and as_raw.perceptsr_meta["ema"] is False
    assert same_output(load_model(path, key="params"), raw)


def test_save_unwraps_dataparallel_and_compile_prefixes(tmp_path):
    model = small("srresnet")
    wrapped = torch.nn.DataParallel(model)
    path = save_model(tmp_path / "g.safetensors", wrapped, arch="srresnet", arch_kwargs={"nf": 8, "nb": 2})
    with safe_open(str(path), framework="pt") as f:
        assert not [k for k in f.keys() if k.startswith("module.")]


def test_metadata_must_be_json(tmp_path):
    with pytest.raises(CheckpointError, match="JSON"):
        save_model(tmp_path / "g.safetensors", small("srresnet"), arch="srresnet", arch_kwargs={"nf": object()})
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------
# legacy torch files: wrappers and prefixes


def test_basicsr_params_ema_preference_and_prefixes(tmp_path):
    raw, ema = small("rrdbnet", seed=1), small("rrdbnet", seed=2)
    sd_raw = {f"module.{k}": v for k, v in raw.state_dict().items()}  # DataParallel prefix
    sd_ema = {f"_orig_mod.{k}": v for k, v in ema.state_dict().items()}  # torch.compile prefix
    path = tmp_path / "net_g_1000.pth"
    torch.save({"params": sd_raw, "params_ema": sd_ema}, path)
    loaded = load_model(path)
    assert same_output(loaded, ema)
    meta = loaded.perceptsr_meta
    assert meta["weights_key"] == "params_ema" and meta["ema"] and meta["arch"] == "rrdbnet"
    assert meta["arch_kwargs"] == {"num_in_ch": 3, "num_out_ch": 3, "scale": 4, "num_feat": 8, "num_block": 2,
                                   "num_grow_ch": 4}
    assert same_output(load_model(path, prefer_ema=False), raw)
    assert same_output(load_model(path, key="params"), raw)
    with pytest.raises(CheckpointError, match="no weights under 'net_d'.*available"):
        load_model(path, key="net_d")


@pytest.mark.parametrize("wrapper", ["state_dict", "model_state_dict", "model", None])
def test_wrappers(tmp_path, wrapper):
    model = small("ranker")
    sd = {f"module.{k}": v for k, v in model.state_dict().items()}
    obj = sd if wrapper is None else {"epoch": 3, wrapper: sd, "optimizer_state_dict": {"state": {}, "param_groups": []}}
    torch.save(obj, tmp_path / "r.pt")
    loaded = load_model(tmp_path / "r.pt")
    assert loaded.perceptsr_meta["arch"] == "ranker" and same_output(loaded, model, (2, 3, 32, 32))


def test_no_state_dict_lists_top_level_keys(tmp_path):
    torch.save({"epoch": 3, "config": {"lr": 1e-4}}, tmp_path / "x.pth")
    with pytest.raises(CheckpointError, match=r"x\.pth: no state dict found.*'epoch', 'config'"):
        load_model(tmp_path / "x.pth")


# ---------------------------------------------------------------------------------------------
# legacy key layouts, written here from the spec tables (RankSRGAN spec §6.2, §6.4, §6.6)


def old_srresnet_sd(model: torch.nn.Module, nb: int, upscale: int) -> dict[str, torch.Tensor]:
    """B.sequential indices: 0 conv, 1 shortcut(sub: blocks, LR conv), then conv/shuffle/ReLU per
    upsampler, HR conv, ReLU, last conv."""
    names = {"conv_first": "model.0", "LRconv": f"model.1.sub.{nb}"}
    for i in range(nb):
        names[f"recon_trunk.{i}.conv1"] = f"model.1.sub.{i}.res.0"
        names[f"recon_trunk.{i}.conv2"] = f"model.1.sub.{i}.res.2"
    if upscale == 4:  # spec table: model.2, model.5, model.8, model.10
        names.update({"upconv1": "model.2", "upconv2": "model.5", "HRconv": "model.8", "conv_last": "model.10"})
    else:  # one (conv, shuffle, ReLU) upsampler: 2, 3, 4; HR conv 5, ReLU 6; last 7
        names.update({"upconv1": "model.2", "HRconv": "model.5", "conv_last": "model.7"})
    out = {}
    for key, value in model.state_dict().items():
        module, leaf = key.rsplit(".", 1)
        out[f"{names[module]}.{leaf}"] = value
    return out


@pytest.mark.parametrize("upscale", [2, 3, 4])
def test_old_basicsr_srresnet_layout(tmp_path, upscale):
    model = small("srresnet", nb=3, upscale=upscale)
    torch.save(old_srresnet_sd(model, 3, upscale), tmp_path / "SRResNet_old.pth")
    loaded = load_model(tmp_path / "SRResNet_old.pth")
    assert loaded.perceptsr_meta["layout"] == "old-basicsr-srresnet"
    assert loaded.perceptsr_meta["arch_kwargs"] == {"in_nc": 3, "out_nc": 3, "nf": 8, "nb": 3, "upscale": upscale}
    assert same_output(loaded, model)


def test_old_srresnet_full_size_detection():
    sd = old_srresnet_sd(build_arch("srresnet"), 16, 4)
    assert detect_arch(sd) == ("srresnet", {"in_nc": 3, "out_nc": 3, "nf": 64, "nb": 16, "upscale": 4})


def test_old_srresnet_upconv_variant_is_refused(tmp_path):
    sd = old_srresnet_sd(small("srresnet", nb=1), 1, 4)
    sd["model.2.weight"], sd["model.2.bias"] = sd.pop("model.2.weight")[:8], sd.pop("model.2.bias")[:8]
    torch.save(sd, tmp_path / "SRGAN_upconv.pth")
    with pytest.raises(CheckpointError, match=r"SRGAN_upconv\.pth.*'upconv' upsampling"):
        load_model(tmp_path / "SRGAN_upconv.pth")


OLD_RANKER_INDEX = {  # spec §6.4
    "conv0_0": 0, "conv0_1": 2, "bn0_1": 3, "conv1_0": 5, "bn1_0": 6, "conv1_1": 8, "bn1_1": 9,
    "conv2_0": 11, "bn2_0": 12, "conv2_1": 14, "bn2_1": 15, "conv3_0": 17, "bn3_0": 18, "conv3_1": 20,
    "bn3_1": 21, "conv4_0": 23, "bn4_0": 24, "conv4_1": 26, "bn4_1": 27,
}


def test_old_ranker_layout_without_num_batches_tracked(tmp_path):
    model = small("ranker")
    old = {}
    for key, value in model.state_dict().items():
        module, leaf = key.rsplit(".", 1)
        if leaf == "num_batches_tracked":
            continue  # saved with PyTorch < 0.4.1
        old[key if module.startswith("classifier") else f"features.{OLD_RANKER_INDEX[module]}.{leaf}"] = value
    torch.save(old, tmp_path / "Ranker_NIQE.pth")
    loaded = load_model(tmp_path / "Ranker_NIQE.pth")
    assert loaded.perceptsr_meta["layout"] == "old-vgg-ranker"
    assert loaded.perceptsr_meta["arch_kwargs"] == {"in_nc": 3, "nf": 4, "depth": 12}
    assert same_output(loaded, model, (2, 3, 40, 40))
    assert int(loaded.bn2_0.num_batches_tracked) == 0


def test_old_discriminator_layout():
    model = build_arch("vgg_discriminator_296", num_feat=4, conv_bias=True)
    old = {}
    for key, value in model.state_dict().items():
        module, leaf = key.rsplit(".", 1)
        module = {"linear1": "classifier.0", "linear2": "classifier.2"}.get(module) or f"features.{OLD_RANKER_INDEX[module]}"
        old[f"{module}.{leaf}"] = value
    sd, layout = ckpt.convert_state_dict(old)
    assert layout == "old-vgg-discriminator" and set(sd) == set(model.state_dict())
    assert detect_arch(old) == ("vgg_discriminator", {"num_in_ch": 3, "num_feat": 4, "input_size": 296, "conv_bias": True})


def test_old_esrgan_rrdb_layout(tmp_path):
    model = small("rrdbnet")
    names = {"conv_first": "model.0", "conv_body": "model.1.sub.2", "conv_up1": "model.3", "conv_up2": "model.6",
             "conv_hr": "model.8", "conv_last": "model.10"}
    old = {}
    for key, value in model.state_dict().items():
        module, leaf = key.rsplit(".", 1)
        if module.startswith("body."):
            _, i, rdb, conv = module.split(".")
            old[f"model.1.sub.{i}.RDB{rdb[-1]}.{conv}.0.{leaf}"] = value
        else:
            old[f"{names[module]}.{leaf}"] = value
    torch.save(old, tmp_path / "ESRGAN_SuperSR.pth")
    loaded = load_model(tmp_path / "ESRGAN_SuperSR.pth")
    assert loaded.perceptsr_meta["layout"] == "old-esrgan-rrdb" and same_output(loaded, model)


def test_mmsr_rrdbnet_and_msrresnet_layouts(tmp_path):
    rrdb = small("rrdbnet")
    names = {"conv_first": "conv_first", "conv_body": "trunk_conv", "conv_up1": "upconv1", "conv_up2": "upconv2",
             "conv_hr": "HRconv", "conv_last": "conv_last"}
    old = {}
    for key, value in rrdb.state_dict().items():
        module, leaf = key.rsplit(".", 1)
        if module.startswith("body."):
            _, i, rdb, conv = module.split(".")
            module = f"RRDB_trunk.{i}.RDB{rdb[-1]}.{conv}"
        else:
            module = names[module]
        old[f"{module}.{leaf}"] = value
    torch.save(old, tmp_path / "mmsr_rrdb.pth")
    loaded = load_model(tmp_path / "mmsr_rrdb.pth")
    assert loaded.perceptsr_meta["layout"] == "mmsr-rrdbnet" and same_output(loaded, rrdb)

    msr = small("msrresnet")
    old = {k.replace("body.", "recon_trunk.").replace("conv_hr", "HRconv"): v for k, v in msr.state_dict().items()}
    torch.save(old, tmp_path / "mmsr_msrresnet.pth")
    loaded = load_model(tmp_path / "mmsr_msrresnet.pth")
    assert loaded.perceptsr_meta["layout"] == "mmsr-msrresnet" and same_output(loaded, msr)


def test_detect_variants():
    assert detect_arch(build_arch("rrdbnet", num_feat=8, num_block=1, num_grow_ch=4, scale=1).state_dict())[1]["scale"] == 1
    assert detect_arch(build_arch("ranker", nf=4, depth=8).state_dict())[1]["depth"] == 8
    assert detect_arch(build_arch("ranker", nf=4, depth=16).state_dict())[1]["depth"] == 16
    assert detect_arch(build_arch("vgg_discriminator", num_feat=4).state_dict())[1]["input_size"] == 128
    with pytest.raises(CheckpointError, match="cannot recognise.*pass arch"):
        detect_arch({"foo.weight": torch.zeros(1)})
    torchvision_vgg = {"features.0.weight": torch.zeros(4, 3, 3, 3), "features.0.bias": torch.zeros(4),
                       **{f"classifier.{i}.weight": torch.zeros(2, 2) for i in (0, 3, 6)}}
    assert ckpt.convert_state_dict(torchvision_vgg)[1] == "perceptsr"  # left alone, not a Ranker


# ---------------------------------------------------------------------------------------------
# strict loading


def test_strict_mismatch_message(tmp_path):
    path = save_model(tmp_path / "g.safetensors", small("srresnet", nb=12), arch="srresnet", arch_kwargs={"nf": 8, "nb": 12})
    with pytest.raises(CheckpointError) as info:
        load_model(path, arch_kwargs={"nf": 16, "nb": 2})
    msg = str(info.value)
    assert str(path) in msg
    assert "unexpected keys (40): recon_trunk.2.conv1.bias, recon_trunk.2.conv1.weight" in msg and "... and 32 more" in msg
    assert "conv_first.weight: expected [16, 3, 3, 3], found [8, 3, 3, 3]" in msg
    assert len(msg) < 2500

    model = build_arch("srresnet", nf=8, nb=2)
    sd = model.state_dict()
    sd.pop("conv_last.bias")
    sd["extra.weight"] = torch.zeros(1)
    pattern = r"(?s)my\.pth: .*missing keys \(1\): conv_last\.bias.*unexpected keys \(1\): extra\.weight"
    with pytest.raises(CheckpointError, match=pattern):
        load_state_dict_strict(model, sd, source="my.pth")
    with pytest.warns(UserWarning, match="non-strictly"):
        load_state_dict_strict(model, sd, strict=False)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_model(tmp_path / "missing.pth")


def test_wrong_arch_name_in_file(tmp_path):
    path = save_model(tmp_path / "g.safetensors", small("srresnet"), arch="no_such_arch")
    with pytest.raises(CheckpointError, match=r"g\.safetensors: cannot build.*unknown architecture 'no_such_arch'"):
        load_model(path)
    assert same_output(load_model(path, arch="srresnet"), small("srresnet"))  # explicit arch + detected kwargs


# ---------------------------------------------------------------------------------------------
# safety: never unpickle code


class Payload:
    """A custom class: unpickling it would run code, which must never happen."""

    executed = False

    def __setstate__(self, state):
        Payload.executed = True


def test_pickled_custom_class_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"params": small("srresnet").state_dict(), "opt": Payload()}, path)
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    msg = str(info.value)
    assert "evil.pth" in msg and "Payload" in msg and "never unpickles code" in msg and "weights_only=True" in msg
    assert not Payload.executed
    torch.save(small("srresnet"), tmp_path / "whole_module.pth")  # a pickled nn.Module, not a state dict
    with pytest.raises(CheckpointError, match="SRResNet"):
        load_model(tmp_path / "whole_module.pth")


def test_corrupt_and_truncated_files(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"definitely not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pth: not a readable"):
        load_model(tmp_path / "junk.pth")
    path = save_model(tmp_path / "g.safetensors", small("srresnet"), arch="srresnet", arch_kwargs={"nf": 8, "nb": 2})
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.safetensors"):
        load_model(tmp_path / "cut.safetensors")
    torch.save(small("srresnet").state_dict(), tmp_path / "t.pth")
    data = (tmp_path / "t.pth").read_bytes()
    (tmp_path / "t_cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="t_cut.pth"):
        load_model(tmp_path / "t_cut.pth")


# ---------------------------------------------------------------------------------------------
# atomic writes


def test_failed_writes_leave_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "state.pt"
    save_training_state(path, {"iteration": 1})
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match="cannot be serialised"):
        save_training_state(path, {"iteration": 2, "fn": lambda: 0})  # pickling fails mid-write
    assert path.read_bytes() == before and no_temp_files(tmp_path)

    with pytest.raises(CheckpointError, match="weights-only loading refuses.*Payload"):
        save_training_state(path, {"iteration": 3, "obj": Payload()})  # written, but would not load back
    assert path.read_bytes() == before and no_temp_files(tmp_path)

    def partial(f):
        f.write(b"half a file")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        ckpt.atomic_write(path, partial)
    assert path.read_bytes() == before and no_temp_files(tmp_path)

    model_path = save_model(tmp_path / "g.safetensors", small("srresnet"), arch="srresnet", arch_kwargs={"nf": 8, "nb": 2})
    good = model_path.read_bytes()

    def failing_replace(src, dst):
        raise OSError("rename failed")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="rename failed"):
        save_model(model_path, small("srresnet", seed=5), arch="srresnet", arch_kwargs={"nf": 8, "nb": 2})
    assert model_path.read_bytes() == good and no_temp_files(tmp_path)


# ---------------------------------------------------------------------------------------------
# training state


def test_training_state_round_trip(tmp_path):
    model = small("srresnet")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.rand(1, 3, 4, 4)).mean().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[2, 2, 5], gamma=0.5)  # milestones is a Counter
    state = {
        "iteration": 7, "epoch": 2, "best": 31.25, "history": [1.0, 2.5], "pair": (1, "a"), "flags": {"ema": True},
        "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "rng": ckpt.capture_rng_state(),
        "np_scalar": np.float32(1.5), "np_array": np.arange(6, dtype=np.uint32).reshape(2, 3),
    }
    path = save_training_state(tmp_path / "training_state.pt", state)
    back = load_training_state(path)
    assert back["iteration"] == 7 and back["best"] == 31.25 and back["history"] == [1.0, 2.5]
    assert back["pair"] == (1, "a") and back["flags"] == {"ema": True}
    assert isinstance(back["scheduler"]["milestones"], collections.Counter)
    assert back["scheduler"]["milestones"] == collections.Counter({2: 2, 5: 1})
    assert isinstance(back["np_scalar"], np.float32) and back["np_scalar"] == 1.5
    assert back["np_array"].dtype == np.uint32 and (back["np_array"] == state["np_array"]).all()
    exp_avg = opt.state_dict()["state"][0]["exp_avg"]
    assert torch.equal(back["optimizer"]["state"][0]["exp_avg"], exp_avg)
    opt2 = torch.optim.Adam(small("srresnet").parameters(), lr=1e-3)
    opt2.load_state_dict(back["optimizer"])
    sched2 = torch.optim.lr_scheduler.MultiStepLR(opt2, milestones=[1])
    sched2.load_state_dict(back["scheduler"])
    assert sched2.milestones == collections.Counter({2: 2, 5: 1})

    ckpt.restore_rng_state(back["rng"])
    draws = (random.random(), np.random.rand(), torch.rand(1).item())
    ckpt.restore_rng_state(back["rng"])
    assert draws == (random.random(), np.random.rand(), torch.rand(1).item())


# ---------------------------------------------------------------------------------------------
# CheckpointSaver


def saver_models(seed: int):
    g, d = small("srresnet", seed=seed), small("ranker", seed=seed)
    return g, d, small("srresnet", seed=seed + 100)


def test_saver_retention_best_and_latest(tmp_path):
    saver = CheckpointSaver(tmp_path, keep_last=2, best_metric="psnr", mode="max")
    assert saver.latest() is None and saver.restore() is None
    for it, psnr in [(100, 1.0), (200, 5.0), (300, 2.0), (400, 3.0), (500, 4.0)]:
        g, d, g_ema = saver_models(it)
        folder = saver.save(it, models={"net_g": (g, "srresnet", {"nf": 8, "nb": 2}), "net_d": (d, "ranker", {"nf": 4})},
                            ema={"net_g": g_ema}, training_state={"iteration": it}, metrics={"psnr": psnr})
        assert folder.name == f"iter_{it}"
    assert [p.name for p in saver.checkpoints()] == ["iter_200", "iter_400", "iter_500"]
    assert saver.latest().name == "iter_500" and saver.best().name == "iter_200"
    pointer = json.loads((tmp_path / "latest.json").read_text())
    assert pointer["latest"] == "iter_500" and pointer["best"]["iteration"] == 200 and pointer["best"]["metric"] == 5.0
    assert no_temp_files(tmp_path)

    # a new saver (a resumed run) recovers the best from the manifests and keeps protecting it
    saver2 = CheckpointSaver(tmp_path, keep_last=1, best_metric="psnr")
    assert saver2.best().name == "iter_200"
    g, d, g_ema = saver_models(600)
    saver2.save(600, models={"net_g": (g, "srresnet", {"nf": 8, "nb": 2})}, metric=0.5)
    assert [p.name for p in saver2.checkpoints()] == ["iter_200", "iter_600"]

    # restore loads raw weights into models, EMA weights into ema, returns the training state
    g, d, g_ema = saver_models(0)
    state = saver.restore(tmp_path / "iter_200", models={"net_g": g, "net_d": d}, ema={"net_g": g_ema})
    ref_g, ref_d, ref_ema = saver_models(200)
    assert state == {"iteration": 200}
    assert same_output(g, ref_g) and same_output(g_ema, ref_ema) and same_output(d, ref_d, (1, 3, 32, 32))
    assert same_output(load_model(tmp_path / "iter_200" / "net_g.safetensors"), ref_ema)  # EMA is the main set


def test_saver_min_mode_and_pointer_fallback(tmp_path):
    saver = CheckpointSaver(tmp_path, keep_last=1, best_metric="niqe", mode="min")
    for it, niqe in [(1, 5.0), (2, 3.0), (3, 4.0)]:
        saver.save(it, models={"g": (small("srresnet"), "srresnet", {"nf": 8, "nb": 2})}, metric=niqe)
    assert [p.name for p in saver.checkpoints()] == ["iter_2", "iter_3"] and saver.best().name == "iter_2"
    (tmp_path / "latest.json").write_text("{ broken")
    assert saver.latest().name == "iter_3"
    saver.save(3, models={"g": (small("srresnet", seed=9), "srresnet", {"nf": 8, "nb": 2})})  # re-save an iteration
    assert same_output(load_model(tmp_path / "iter_3" / "g.safetensors"), small("srresnet", seed=9))
    assert no_temp_files(tmp_path)
    with pytest.raises(CheckpointError, match="keep_last"):
        CheckpointSaver(tmp_path, keep_last=0)


def test_saver_failure_keeps_previous_checkpoint(tmp_path):
    saver = CheckpointSaver(tmp_path, keep_last=1)
    saver.save(10, models={"g": (small("srresnet"), "srresnet", {"nf": 8, "nb": 2})}, training_state={"iteration": 10})
    with pytest.raises(CheckpointError):
        saver.save(20, models={"g": (small("srresnet"), "srresnet", {"nf": 8, "nb": 2})},
                   training_state={"iteration": 20, "bad": lambda: 0})
    assert [p.name for p in saver.checkpoints()] == ["iter_10"] and saver.latest().name == "iter_10"
    assert no_temp_files(tmp_path)
    assert saver.restore(models={"g": small("srresnet", seed=3)}) == {"iteration": 10}


# ---------------------------------------------------------------------------------------------
# perceptsr convert


def run_convert(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    convert_cli.add_arguments(parser)
    return convert_cli.run(parser.parse_args(argv))


def test_convert_cli(tmp_path, capsys):
    raw, ema = small("srresnet", seed=1, nb=3), small("srresnet", seed=2, nb=3)
    src = tmp_path / "RankSRGAN_old.pth"
    torch.save({"params": old_srresnet_sd(raw, 3, 4), "params_ema": old_srresnet_sd(ema, 3, 4)}, src)
    out = tmp_path / "ranksrgan.safetensors"
    assert run_convert([str(src), str(out)]) == 0
    printed = capsys.readouterr().out
    assert "old-basicsr-srresnet" in printed and "srresnet" in printed and "params_ema" in printed and str(out) in printed
    assert same_output(load_model(out), ema) and same_output(load_model(out, prefer_ema=False), raw)
    meta = load_model(out).perceptsr_meta
    assert meta["layout"] == "perceptsr" and meta["extra"]["source_layout"] == "old-basicsr-srresnet"

    with pytest.raises(CheckpointError, match="already exists"):
        run_convert([str(src), str(out)])
    assert run_convert([str(src), str(out), "--no-prefer-ema", "--overwrite"]) == 0
    converted = load_model(out)
    assert same_output(converted, raw) and converted.perceptsr_meta["ema"] is False
    assert run_convert([str(src), str(tmp_path / "r.safetensors"), "--arch", "srresnet", "--key", "params"]) == 0
    assert same_output(load_model(tmp_path / "r.safetensors"), raw)
