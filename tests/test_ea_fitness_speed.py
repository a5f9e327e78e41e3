"""EA fitness fast path (``FitnessEvaluator``): channels_last inputs, the HR cache on ``cache_device``,
the opt-in bf16 fitness, all against the straightforward per-child, per-image way of the release.
Speed itself is measured by ``benchmarks/ea_step.py``, not here."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from _images import write_smooth_images
from perceptsr.archs import build_arch
from perceptsr.config import TrainConfig, config_from_dict
from perceptsr.data import imresize
from perceptsr.ea_adam import PHASES_LOG, EvalSet, FitnessEvaluator, L1Fitness, PerceptualFitness
from perceptsr.ea_adam import objective as ea_objective
from perceptsr.errors import ConfigError
from perceptsr.losses import PerceptualLoss
from perceptsr.train.engine import train


def _loss() -> PerceptualLoss:
    return PerceptualLoss({"conv1_2": 0.5, "conv2_2": 1.0}, vgg_type="vgg16", weights=None,
                          generator=torch.Generator().manual_seed(0))


def _model() -> nn.Module:
    return build_arch("msrresnet", num_feat=8, num_block=1, upscale=4)


def _eval_set(images: int = 3, patches: int = 3) -> EvalSet:
    g = torch.Generator().manual_seed(1)
    hr = torch.rand(images * patches, 3, 32, 32, generator=g)
    return EvalSet(imresize(hr, 0.25), hr, torch.arange(images).repeat_interleave(patches))


def _children(n: int = 4) -> list[dict[str, torch.Tensor]]:
    out = []
    for k in range(n):
        torch.manual_seed(40 + k)
        out.append({name: v.clone() for name, v in _model().state_dict().items()})
    return out


def _released_fitness(state: dict[str, torch.Tensor], es: EvalSet, loss: PerceptualLoss) -> list[float]:
    """The release's way, child by child: a fresh NCHW model, one image per forward pass, HR features
    recomputed inside the loss, per-image means averaged over images."""
    net = _model()
    net.load_state_dict(state)
    l1s, pers = [], []
    with torch.no_grad():
        for img in range(es.num_images):
            sel = es.image_index == img
            sr = net(es.lr[sel])
            l1s.append(F.l1_loss(sr, es.hr[sel]).item())
            pers.append(loss(sr, es.hr[sel]).item())
    return [float(np.mean(l1s)), float(np.mean(pers))]


def _evaluator(es: EvalSet, loss: PerceptualLoss, **kwargs) -> FitnessEvaluator:
    return FitnessEvaluator(es, [L1Fitness(), PerceptualFitness(loss)], batch_size=4, **kwargs)  # crosses images


def test_fast_path_equals_released_per_child_way_and_keeps_children_apart():
    es, loss = _eval_set(), _loss()
    children = _children()
    ref = torch.tensor([_released_fitness(c, es, loss) for c in children], dtype=torch.float64)
    # children are far apart compared with the tolerance, so a mix-up (or a stale scratch model) shows
    gaps = (ref[:, None, :] - ref[None, :, :]).abs().amax(-1) / ref.abs().amax()
    assert float(gaps[~torch.eye(len(children), dtype=torch.bool)].min()) > 1e-4

    ev = _evaluator(es, loss)
    scratch = _model()
    layouts = []
    scratch.conv_first.register_forward_pre_hook(
        lambda m, args: layouts.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    many = ev.evaluate_states(scratch, children)
    torch.testing.assert_close(many, ref, rtol=1e-6, atol=0)
    assert layouts and all(layouts)  # the fast path ran: channels_last inputs
    for c in (2, 0, 3, 1):  # one at a time, out of order, through the same scratch model
        torch.testing.assert_close(ev.evaluate_state(scratch, children[c]), ref[c], rtol=1e-6, atol=0)


def test_fast_path_per_patch_values_match_patch_by_patch():
    es, loss = _eval_set(), _loss()
    ev = _evaluator(es, loss)
    net = _model()
    net.load_state_dict(_children(1)[0])
    values = ev.patch_values(net)
    with torch.no_grad():
        for p in range(es.num_patches):  # batch of one, plain NCHW, no cache
            sr = net(es.lr[p:p + 1])
            torch.testing.assert_close(values[p, 0].item(), F.l1_loss(sr, es.hr[p:p + 1]).item(), rtol=1e-6, atol=0)
            torch.testing.assert_close(values[p, 1].item(), loss(sr, es.hr[p:p + 1]).item(), rtol=1e-6, atol=0)
    nchw = _evaluator(es, loss, channels_last=False)
    torch.testing.assert_close(nchw.patch_values(net), values, rtol=1e-6, atol=0)


def test_cache_device_cpu_keeps_the_cache_there_with_the_same_fitness():
    es, loss = _eval_set(), _loss()
    child = _children(1)[0]
    scratch = _model()
    base = _evaluator(es, loss).evaluate_state(scratch, child)
    ev = _evaluator(es, loss, cache_device="cpu")
    assert torch.equal(ev.evaluate_state(scratch, child), base)
    feats = [t for batch in ev.hr_cache() for t in batch[1].values()]
    assert feats and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in feats)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cache_device_cpu_on_cuda_is_pinned_and_equal():
    es, loss = _eval_set(), _loss().cuda()
    child = _children(1)[0]
    scratch = _model().cuda()
    on_gpu = _evaluator(es, loss, device="cuda").evaluate_state(scratch, child)
    ev = _evaluator(es, loss, device="cuda", cache_device="cpu")
    assert torch.equal(ev.evaluate_state(scratch, child), on_gpu)
    feats = [t for batch in ev.hr_cache() for t in batch[1].values()]
    assert all(t.device.type == "cpu" and t.is_pinned() for t in feats)
    torch.testing.assert_close(on_gpu, torch.tensor(_released_fitness(child, _eval_set(), _loss()),
                                                    dtype=torch.float64), rtol=1e-3, atol=0)  # TF32 convs allowed


def test_bf16_fitness_is_opt_in_close_but_not_float32():
    es, loss = _eval_set(), _loss()
    child = _children(1)[0]
    scratch = _model()
    f32 = _evaluator(es, loss).evaluate_state(scratch, child)
    ev = _evaluator(es, loss, dtype="bfloat16")
    bf = ev.evaluate_state(scratch, child)
    assert bf.dtype == torch.float64
    torch.testing.assert_close(bf, f32, rtol=5e-2, atol=0)
    assert not torch.equal(bf, f32)  # the autocast really ran
    assert all(t.dtype == torch.bfloat16 for batch in ev.hr_cache() for t in batch[1].values())  # half the memory
    with pytest.raises(ConfigError, match="fitness dtype must be one of float32, bfloat16, got 'float16'"):
        _evaluator(es, loss, dtype="float16")


# ----------------------------------------------------------------------------- config -> evaluator


def _cfg(data, out, **objective) -> TrainConfig:
    obj = {"type": "ea_adam", "population": 2, "neighbourhood": 2,
           "perceptual": {"layer_weights": {"conv1_2": 1.0}, "weights": None},
           "discriminator": {"arch": "vgg_discriminator", "kwargs": {"num_feat": 4, "input_size": 32}},
           "t_adam": 1, "epoch_iterations": 1, "t_ea": 1, "eval_images": 2, "eval_patch_size": 32,
           "eval_batch_size": 2, "plane_metric": None, **objective}
    raw = {"name": "ea_speed", "output_root": str(out), "seed": 3,
           "model": {"arch": "msrresnet", "kwargs": {"num_feat": 8, "num_block": 1}},
           "data": {"train": {"hr_dir": str(data), "patch_size": 32, "batch_size": 2, "num_workers": 0}},
           "optim": {"lr": 1e-3}, "objective": obj,
           "train": {"iterations": 2, "log_every": 1, "save_every": 2, "ema_decay": 0.0}}
    return config_from_dict(TrainConfig, raw)


def test_config_keys_reach_the_evaluator(tmp_path, monkeypatch):
    data = write_smooth_images(tmp_path / "train", 2, (40, 36), seed=4)
    with pytest.raises(ConfigError, match="cache_device"):
        _cfg(data, tmp_path, cache_device="gpu")
    with pytest.raises(ConfigError, match="fitness_dtype"):
        _cfg(data, tmp_path, fitness_dtype="half")
    built: list[tuple[FitnessEvaluator, dict]] = []

    class Recording(FitnessEvaluator):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append((self, kwargs))

    monkeypatch.setattr(ea_objective, "FitnessEvaluator", Recording)
    run = train(_cfg(data, tmp_path, cache_device="cpu", fitness_dtype="bfloat16"), progress=False).run_dir
    assert len(built) == 1
    ev, kwargs = built[0]
    assert kwargs["cache_device"] == "cpu" and kwargs["dtype"] == "bfloat16"  # the keys, not just defaults
    assert ev.cache_device == torch.device("cpu") and ev.dtype == torch.bfloat16
    feats = [t for b in ev.hr_cache() for t in b[1].values()]
    assert feats and all(t.device.type == "cpu" and t.dtype == torch.bfloat16 for t in feats)
    phase = json.loads((run / PHASES_LOG).read_text().splitlines()[0])
    assert phase["evaluations"] == 2 + 2 and np.isfinite(phase["fitness"]).all()
