"""The training loop end to end on tiny synthetic data: run directory, TensorBoard, retention,
bit-exact resume, non-finite loss policies, schedules, EMA, numerics options and the CLI."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from _images import write_smooth_images
from perceptsr.config import ObjectiveConfig, PSNRObjectiveConfig, TrainConfig, config_from_dict, load_config
from perceptsr.train.engine import TrainingError, train
from perceptsr.train.networks import build_generator
from perceptsr.train.objectives import PSNRObjective, register_objective


# ---------------------------------------------------------------------------------------------
# a test objective: PSNR, but the loss turns NaN at chosen iterations (exercises the objective
# registry the way a GAN objective will)


@ObjectiveConfig.register("nan_psnr_test")
@dataclasses.dataclass(frozen=True)
class NanPSNRConfig(PSNRObjectiveConfig):
    type: str = "nan_psnr_test"
    nan_at: tuple[int, ...] = ()
    nan_from: int = 0  # 0 = off; else NaN at every iteration >= nan_from


@register_objective("nan_psnr_test")
class NanPSNRObjective(PSNRObjective):
    def step(self, batch, iteration):
        lr = self.runtime.to_device(batch["lr"])
        hr = self.runtime.to_device(batch["hr"])
        loss = self.criterion(self.net_g(lr), hr)
        o = self.options
        if iteration in o.nan_at or (o.nan_from and iteration >= o.nan_from):
            loss = loss * float("nan")
        self.optimize(loss, self.optimizer_g, self.generator)
        return {"loss/l1": loss.item()}


# ---------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_smooth_images(root / "train", 12, (44, 40), seed=1)
    write_smooth_images(root / "val", 2, (36, 32), seed=2)
    return root


def make_cfg(data_dirs: Path, out: Path, name: str = "run", **sections) -> TrainConfig:
    raw = {
        "name": name,
        "output_root": str(out),
        "seed": 3,
        "model": {"arch": "msrresnet", "kwargs": {"num_feat": 8, "num_block": 1}},
        "data": {
            "train": {"hr_dir": str(data_dirs / "train"), "patch_size": 32, "batch_size": 4, "num_workers": 0},
            "val": {"hr_dir": str(data_dirs / "val"), "log_images": 1, "crop_size": 16},
        },
        "optim": {"lr": 1e-3},
        "train": {"iterations": 8, "log_every": 2, "val_every": 4, "save_every": 4, "keep_last": 2,
                  "ema_decay": 0.9},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            merged = dict(raw[key])
            for k, v in value.items():
                merged[k] = {**merged[k], **v} if isinstance(v, dict) and isinstance(merged.get(k), dict) else v
            raw[key] = merged
        else:
            raw[key] = value
    return config_from_dict(TrainConfig, raw)


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _assert_bit_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ---------------------------------------------------------------------------------------------
# end-to-end


@pytest.mark.slow
def test_run_directory_tensorboard_and_retention(data_dirs, tmp_path):
    from perceptsr.checkpoint import load_model

    cfg = make_cfg(data_dirs, tmp_path, train={"save_every": 2, "val_every": 4})
    result = train(cfg, command="perceptsr train tiny.yml --set x=1", progress=False)
    run = tmp_path / "run"
    assert result.run_dir == run and result.iteration == 8 and not result.stopped_early
    assert set(result.val_metrics) == {"val/psnr", "val/ssim"} and result.val_metrics["val/psnr"] > 5

    # resolved config round-trips; command line recorded; log written
    assert load_config(run / "config.yml") == cfg
    assert "perceptsr train tiny.yml --set x=1" in (run / "command.txt").read_text()
    log = (run / "log.txt").read_text()
    assert "iter 8/8" in log and "validation @ 4" in log and "validation @ 8" in log

    # TensorBoard: scalars (loss, lr, val metrics) and validation images
    events = list((run / "tb").glob("events.out.tfevents.*"))
    assert events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    tags = acc.Tags()
    assert {"loss/l1", "lr/net_g", "val/psnr", "val/ssim", "perf/it_per_s"} <= set(tags["scalars"])
    assert [e.step for e in acc.Scalars("loss/l1")] == [2, 4, 6, 8]
    assert any(t.startswith("val/img") for t in tags["images"])

    # retention: saves at 2, 4, 6, 8; keep_last 2 plus the best by val PSNR
    ckpt = run / "checkpoints"
    pointer = json.loads((ckpt / "latest.json").read_text())
    assert pointer["iteration"] == 8 and pointer["best"]["name"] == "psnr"
    kept = sorted(p.name for p in ckpt.glob("iter_*"))
    assert {"iter_6", "iter_8"} <= set(kept) and set(kept) <= {"iter_4", "iter_6", "iter_8"}
    assert pointer["best"]["checkpoint"] in kept
    assert result.last_checkpoint == ckpt / "iter_8"

    # model file: native format, EMA as the default weights, raw ones on request, metadata
    ema_model = load_model(ckpt / "iter_8" / "net_g.safetensors")
    raw_model = load_model(ckpt / "iter_8" / "net_g.safetensors", prefer_ema=False)
    meta = ema_model.perceptsr_meta
    assert meta["arch"] == "msrresnet" and meta["scale"] == 4 and meta["iteration"] == 8 and meta["ema"]
    assert meta["arch_kwargs"]["num_feat"] == 8
    assert set(meta["metrics"]) == {"psnr", "ssim"}
    _assert_bit_equal(_state(ema_model), _state(result.ema_generator))
    _assert_bit_equal(_state(raw_model), _state(result.generator))
    assert not all(torch.equal(a, b) for a, b in zip(ema_model.state_dict().values(), raw_model.state_dict().values()))

    # a new run can start from that file (model.pretrained, EMA weights by default)
    cfg2 = make_cfg(data_dirs, tmp_path, name="ft", model={"pretrained": str(ckpt / "iter_8" / "net_g.safetensors")})
    generator, kwargs = build_generator(cfg2)
    assert kwargs == {"num_feat": 8, "num_block": 1, "upscale": 4}
    _assert_bit_equal(_state(generator), _state(result.ema_generator))

    # a second fresh run into the same directory is refused
    with pytest.raises(TrainingError, match="already holds checkpoints.*--resume"):
        train(cfg, progress=False)
    # resuming a finished run is a no-op
    again = train(cfg, resume=True, progress=False)
    assert again.iteration == 8


@pytest.mark.slow
@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_is_bit_exact(data_dirs, tmp_path, num_workers):
    sections = dict(
        data={"train": {"num_workers": num_workers}},
        schedule={"type": "cosine", "periods": [7, 13], "restart_weights": [1, 0.5], "eta_min": 1e-5},
        train={"iterations": 20, "save_every": 5, "val_every": 10, "grad_clip": 0.5, "ema_decay": 0.8,
               "keep_last": 10},
    )
    full = train(make_cfg(data_dirs, tmp_path, name="full", **sections), progress=False)

    cfg = make_cfg(data_dirs, tmp_path, name="cut", **sections)
    cut = train(cfg, progress=False, stop_after=12)  # "killed" after iteration 12: last checkpoint is 10
    assert cut.stopped_early and cut.iteration == 12 and cut.last_checkpoint.name == "iter_10"
    resumed = train(cfg, resume=True, progress=False)
    assert resumed.iteration == 20
    assert "resumed from" in (tmp_path / "cut" / "log.txt").read_text()

    _assert_bit_equal(_state(full.generator), _state(resumed.generator))
    _assert_bit_equal(_state(full.ema_generator), _state(resumed.ema_generator))
    from perceptsr.checkpoint import load_training_state

    s_full = load_training_state(full.last_checkpoint / "training_state.pt")
    s_res = load_training_state(resumed.last_checkpoint / "training_state.pt")
    for (k, a), (_, b) in zip(s_full["optimizers"]["net_g"]["state"].items(), s_res["optimizers"]["net_g"]["state"].items()):
        assert torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["exp_avg_sq"], b["exp_avg_sq"]), k
    assert s_full["ema"] == s_res["ema"] == {"decay": 0.8, "updates": 20}
    assert full.val_metrics == resumed.val_metrics

    # an explicit checkpoint path works too (here: the same iteration-10 checkpoint of 'full')
    cfg_c = make_cfg(data_dirs, tmp_path, name="from_path", **sections)
    from_path = train(cfg_c, resume=str(tmp_path / "full" / "checkpoints" / "iter_10"), progress=False)
    _assert_bit_equal(_state(full.generator), _state(from_path.generator))


def test_data_order_does_not_depend_on_workers(data_dirs):
    from perceptsr.distributed import DistInfo
    from perceptsr.train.engine import build_train_stream

    cfg = make_cfg(data_dirs, Path("unused"))
    batches = {}
    for nw in (0, 2):
        cfg_nw = dataclasses.replace(cfg, data=dataclasses.replace(
            cfg.data, train=dataclasses.replace(cfg.data.train, num_workers=nw)))
        _, stream, loader = build_train_stream(cfg_nw, DistInfo(), start_batch=0, pin_memory=False)
        it = iter(loader)
        batches[nw] = [next(it) for _ in range(7)]  # crosses the epoch boundary (3 batches per epoch)
        # starting at batch 4 gives batches 4.. of the uninterrupted stream
        _, _, loader4 = build_train_stream(cfg_nw, DistInfo(), start_batch=4, pin_memory=False)
        it4 = iter(loader4)
        for k in range(4, 7):
            b = next(it4)
            assert torch.equal(b["hr"], batches[nw][k]["hr"]) and b["name"] == batches[nw][k]["name"]
        del it, it4
    assert stream.batches_per_epoch == 3
    for a, b in zip(batches[0], batches[2]):
        assert torch.equal(a["lr"], b["lr"]) and torch.equal(a["hr"], b["hr"])
    assert batches[0][0]["name"] != batches[0][3]["name"]  # epochs are reshuffled


@pytest.mark.slow
def test_nan_policy_stop_keeps_last_checkpoint(data_dirs, tmp_path):
    cfg = make_cfg(data_dirs, tmp_path, objective={"type": "nan_psnr_test", "nan_at": [6]},
                   train={"save_every": 4, "val_every": 100})
    with pytest.raises(TrainingError) as info:
        train(cfg, progress=False)
    message = str(info.value)
    assert "iteration 6" in message and "non-finite" in message and "nan_policy=stop" in message
    assert "iter_4" in message
    ckpt = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in ckpt.glob("iter_*")) == ["iter_4"]
    assert json.loads((ckpt / "latest.json").read_text())["iteration"] == 4
    # and the run can be resumed from it (with the NaN gone)
    fixed = dataclasses.replace(cfg, objective=NanPSNRConfig(nan_at=()))
    assert train(fixed, resume=True, progress=False).iteration == 8


@pytest.mark.slow
def test_nan_policy_skip(data_dirs, tmp_path):
    cfg = make_cfg(data_dirs, tmp_path, objective={"type": "nan_psnr_test", "nan_at": [3, 5]},
                   train={"nan_policy": "skip", "val_every": 100, "save_every": 100})
    result = train(cfg, progress=False)
    assert result.iteration == 8 and result.skipped_steps == 2
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "iteration 3: non-finite" in log and "step skipped (1 in a row, 1 in total)" in log
    from perceptsr.checkpoint import load_training_state

    state = load_training_state(result.last_checkpoint / "training_state.pt")
    assert state["skipped_steps"] == 2 and state["ema"]["updates"] == 6  # EMA skips the bad steps too

    # skipped steps never reached the optimizer
    steps = {int(s["step"]) for s in state["optimizers"]["net_g"]["state"].values()}
    assert steps == {6}

    # K consecutive bad steps: give up
    cfg2 = make_cfg(data_dirs, tmp_path, name="bad", objective={"type": "nan_psnr_test", "nan_from": 3},
                    train={"nan_policy": "skip", "max_skips": 3, "val_every": 100})
    with pytest.raises(TrainingError, match="3 consecutive non-finite steps"):
        train(cfg2, progress=False)


# ---------------------------------------------------------------------------------------------
# components


def test_schedules_match_basicsr():
    import math

    from perceptsr.config import CosineRestartScheduleConfig, MultiStepScheduleConfig
    from perceptsr.train.optim import build_optimizer, build_scheduler
    from perceptsr.config import OptimConfig

    p = [torch.nn.Parameter(torch.zeros(1))]
    opt = build_optimizer(p, OptimConfig(lr=2.0))
    sched = build_scheduler(opt, MultiStepScheduleConfig(milestones=(3, 6), gamma=0.5))
    lrs = []
    for t in range(1, 9):
        sched.set_iteration(t)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs == [2.0, 2.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5]

    opt = build_optimizer(p, OptimConfig(lr=1.0))
    sched = build_scheduler(opt, CosineRestartScheduleConfig(periods=(10, 10), restart_weights=(1.0, 0.5), eta_min=0.0))

    def lr_at(t):
        sched.set_iteration(t)
        return opt.param_groups[0]["lr"]

    assert lr_at(0) == pytest.approx(1.0)
    assert lr_at(5) == pytest.approx(0.5)
    assert lr_at(10) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(11) == pytest.approx(0.5 * 0.5 * (1 + math.cos(math.pi / 10)))
    assert lr_at(15) == pytest.approx(0.25)
    assert lr_at(20) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(25) == 0.0  # past the last period: eta_min
    assert sched.state_dict() == {"iteration": 25}


def test_ema_update():
    from perceptsr.train.ema import ModelEMA

    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ema = ModelEMA(model, decay=0.75)
    before = _state(ema.module)
    _assert_bit_equal(before, _state(model))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        model[1].running_mean.fill_(3.0)
    ema.update(model)
    for (name, e), p in zip(ema.module.named_parameters(), model.parameters()):
        assert torch.allclose(e, 0.75 * before[name] + 0.25 * p), name
        assert not e.requires_grad
    assert torch.equal(ema.module[1].running_mean, model[1].running_mean)
    assert ema.updates == 1 and not ema.module.training


@pytest.mark.slow
def test_bf16_channels_last_l2(data_dirs, tmp_path):
    cfg = make_cfg(data_dirs, tmp_path, objective={"type": "psnr", "loss": "charbonnier", "charbonnier_eps": 1e-6},
                   train={"iterations": 3, "bf16": True, "channels_last": True, "val_every": 3, "save_every": 3})
    result = train(cfg, progress=False)
    assert result.iteration == 3 and np.isfinite(result.val_metrics["val/psnr"])
    assert "loss/charbonnier" in (tmp_path / "run" / "log.txt").read_text()


def test_pixel_losses():
    from perceptsr.train.objectives import pixel_loss

    a, b = torch.tensor([0.0, 1.0]), torch.tensor([1.0, 1.0])
    assert pixel_loss("l1")(a, b) == pytest.approx(0.5)
    assert pixel_loss("l2")(a, b) == pytest.approx(0.5)
    assert pixel_loss("charbonnier", eps=1e-6)(a, b) == pytest.approx((1 + 1e-6) ** 0.5 / 2 + 1e-3 / 2)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*script_method.*:DeprecationWarning")  # raised inside torch.compile
def test_torch_compile_runs_on_cpu(data_dirs, tmp_path):
    import shutil

    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("torch.compile (inductor) needs a C compiler on CPU")
    cfg = make_cfg(data_dirs, tmp_path, model={"kwargs": {"num_feat": 4, "num_block": 1}},
                   train={"iterations": 2, "compile": True, "val_every": 2, "save_every": 2})
    result = train(cfg, progress=False)
    assert result.iteration == 2
    # the checkpoint holds plain keys (no _orig_mod. prefix)
    from safetensors.torch import load_file

    assert not any("_orig_mod" in k for k in load_file(result.last_checkpoint / "net_g.safetensors"))


def test_batch_size_must_divide_world_size(data_dirs, tmp_path):
    from perceptsr.errors import ConfigError
    from perceptsr.distributed import DistInfo
    from perceptsr.train.engine import build_train_stream

    cfg = make_cfg(data_dirs, tmp_path, data={"train": {"batch_size": 3}})
    with pytest.raises(ConfigError, match="divisible by WORLD_SIZE"):
        build_train_stream(cfg, DistInfo(rank=0, world_size=2), 0, False)
    cfg = make_cfg(data_dirs, tmp_path, data={"train": {"batch_size": 16}})
    with pytest.raises(ConfigError, match="less than one batch"):
        build_train_stream(cfg, DistInfo(), 0, False)


def test_scale_disagreement_is_reported(data_dirs, tmp_path):
    from perceptsr.errors import ConfigError

    cfg = make_cfg(data_dirs, tmp_path, model={"kwargs": {"num_feat": 8, "num_block": 1, "upscale": 2}})
    with pytest.raises(ConfigError, match="'model.kwargs.upscale' \\(2\\) disagrees with 'scale' \\(4\\)"):
        build_generator(cfg)


@pytest.mark.slow
def test_cli(data_dirs, tmp_path, capsys):
    from perceptsr.cli import train as cli

    cfg_file = tmp_path / "tiny.yml"
    cfg_file.write_text(
        "name: clirun\n"
        "model: {arch: msrresnet, kwargs: {num_feat: 8, num_block: 1}}\n"
        f"data: {{train: {{hr_dir: {data_dirs / 'train'}, patch_size: 32, batch_size: 4, num_workers: 0}}}}\n"
        "train: {iterations: 100, log_every: 1}\n"
    )
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)

    args = parser.parse_args([str(cfg_file), "--set", "train.iterations=2", "optim.lr=1e-4", "--print-config"])
    assert cli.run(args) == 0
    printed = capsys.readouterr().out
    assert "iterations: 2" in printed and "lr: 0.0001" in printed

    args = parser.parse_args([str(cfg_file), "--set", "train.iterations=2", "--set", "train.save_every=1",
                              "--out", str(tmp_path / "out"), "--no-progress"])
    assert cli.run(args) == 0
    assert "done:" in capsys.readouterr().out
    run = tmp_path / "out" / "clirun"
    assert (run / "checkpoints" / "iter_2" / "net_g.safetensors").is_file()

    args = parser.parse_args([str(cfg_file), "--set", "train.iterations=3", "--out", str(tmp_path / "out"),
                              "--resume", "--no-progress"])
    assert cli.run(args) == 0
    assert json.loads((run / "checkpoints" / "latest.json").read_text())["iteration"] == 3
    assert len((run / "command.txt").read_text().splitlines()) == 2

    args = parser.parse_args([str(cfg_file), "--set", "train.iteratons=3"])
    from perceptsr.errors import ConfigError

    with pytest.raises(ConfigError, match="did you mean 'train.iterations'"):
        cli.run(args)


def test_sigterm_saves_a_checkpoint_and_resume_is_bit_exact(data_dirs, tmp_path, monkeypatch):
    import os
    import signal
    import threading

    from perceptsr.train.objectives import PSNRObjective

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers need the main thread")
    sections = dict(train={"iterations": 12, "save_every": 5, "val_every": 100, "keep_last": 10})
    handler_before = signal.getsignal(signal.SIGTERM)
    full = train(make_cfg(data_dirs, tmp_path, name="full", **sections), progress=False)

    step = PSNRObjective.step

    def step_then_preempt(self, batch, iteration):
        logs = step(self, batch, iteration)
        if iteration == 7:  # as a cluster scheduler would, in the middle of an iteration
            os.kill(os.getpid(), signal.SIGTERM)
        return logs

    monkeypatch.setattr(PSNRObjective, "step", step_then_preempt)
    cfg = make_cfg(data_dirs, tmp_path, name="cut", **sections)
    cut = train(cfg, progress=False)
    assert cut.stopped_early and cut.iteration == 7 and cut.last_checkpoint.name == "iter_7"
    assert "received SIGTERM at iteration 7" in (tmp_path / "cut" / "log.txt").read_text()
    assert signal.getsignal(signal.SIGTERM) == handler_before  # the loop's handler is gone again
    monkeypatch.setattr(PSNRObjective, "step", step)
    resumed = train(cfg, resume=True, progress=False)
    assert resumed.iteration == 12
    _assert_bit_equal(_state(full.generator), _state(resumed.generator))
