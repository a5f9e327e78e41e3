"""EA-Adam fusion (stages B/C): dynamic layers, collapse equivalence, averaged weights, checkpoints,
trade-off interpolation. Tiny MSRResNet/RRDBNet with K=3 random experts and a narrow regressor."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import perceptsr
from perceptsr.archs import build_arch
from perceptsr.checkpoint import save_model
from perceptsr.errors import CheckpointError, ConfigError
from perceptsr.fusion import (
    FUSION_ARCH, AttentionConfig, AttentionRegressor, DynamicConv2d, DynamicLayerNorm, DynamicLinear, DynamicNetwork,
    fuse_state_dicts,
    average_fusion_weights, build_tradeoff_model, center_crop_half, collapse, default_attention_config,
    expert_position, fused_tradeoff, interpolate_fusion_weights, interpolate_population, load_attention,
    load_fusion_weights, member_index, output_gap, save_fused_model, sort_expert_files,
)

K = 3
SMALL = AttentionConfig(kernel_size=3, num_feat=8, num_params=10, hidden=5)
ARCHS = {
    "msrresnet": {"num_feat": 8, "num_block": 1, "upscale": 4},
    "rrdbnet": {"num_feat": 8, "num_block": 1, "num_grow_ch": 4},
}


def experts(arch: str, k: int = K) -> list[dict[str, torch.Tensor]]:
    out = []
    for i in range(k):
        torch.manual_seed(100 + i)
        m = build_arch(arch, **ARCHS[arch])
        with torch.no_grad():  # make the experts clearly different, including biases
            for p in m.parameters():
                p.add_(0.05 * torch.randn_like(p))
        out.append(m.state_dict())
    return out


def dynamic(arch: str, seed: int = 0, **kwargs) -> DynamicNetwork:
    return DynamicNetwork(lambda: build_arch(arch, **ARCHS[arch]), experts(arch), attention=SMALL, seed=seed, **kwargs)


def lr(n: int = 2, h: int = 8, w: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


class Constant(nn.Module):
    """An attention module giving the same weights to every image (exercises the grouped path)."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("w", torch.as_tensor(w, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w.expand(x.shape[0], -1)


# --------------------------------------------------------------------------- dynamic layers

GEOMETRIES = [
    {"kernel_size": 3, "padding": 1},
    {"kernel_size": 3, "stride": 2, "padding": 2, "dilation": 2},
    {"kernel_size": 3, "padding": 1, "groups": 2, "padding_mode": "reflect"},
    {"kernel_size": 1, "bias": False},
]


def expert_convs(geometry: dict, k: int = K) -> list[nn.Conv2d]:
    torch.manual_seed(1)
    return [nn.Conv2d(4, 6, **geometry) for _ in range(k)]


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_one_hot_weights_give_the_expert_conv(geometry):
    convs = expert_convs(geometry)
    x = torch.randn(3, 4, 9, 9)
    for j, conv in enumerate(convs):
        one_hot = torch.eye(K)[j]
        fixed = DynamicConv2d(convs, config=SMALL)
        fixed.set_fixed_weights(one_hot)
        grouped = DynamicConv2d(convs, Constant(one_hot))  # per-sample grouped-conv path
        ref = conv(x)
        torch.testing.assert_close(fixed(x), ref, rtol=0, atol=1e-6)
        torch.testing.assert_close(grouped(x), ref, rtol=0, atol=1e-6)
        assert torch.equal(grouped.last_weights, one_hot.expand(3, K))


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_grouped_mixing_equals_a_per_image_loop(geometry):
    convs = expert_convs(geometry)
    torch.manual_seed(0)
    layer = DynamicConv2d(convs, config=SMALL)
    x = torch.randn(3, 4, 10, 10)
    out = layer(x)
    w = layer.last_weights
    assert w.shape == (3, K)
    torch.testing.assert_close(w.sum(1), torch.ones(3))
    assert not torch.allclose(w[0], w[1])  # a real per-image test
    for i in range(3):
        conv = convs[0]
        kernel = sum(w[i, j] * convs[j].weight for j in range(K))
        bias = None if conv.bias is None else sum(w[i, j] * convs[j].bias for j in range(K))
        xi = x[i : i + 1]
        if conv.padding_mode != "zeros":
            ref = F.conv2d(F.pad(xi, conv._reversed_padding_repeated_twice, mode=conv.padding_mode), kernel, bias,
                           conv.stride, 0, conv.dilation, conv.groups)
        else:
            ref = F.conv2d(xi, kernel, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
        torch.testing.assert_close(out[i : i + 1], ref, rtol=1e-5, atol=1e-6)


def test_regressor_structure_and_release_key_names():
    reg = AttentionRegressor(7, 5)  # defaults: 5x5, 64 -> 64 -> 100, 100 -> 15 -> 5, softmax
    shapes = {k: tuple(v.shape) for k, v in reg.state_dict().items()}
    assert shapes == {
        "ConvNet.0.weight": (64, 7, 5, 5), "ConvNet.0.bias": (64,), "ConvNet.2.weight": (64, 64, 5, 5),
        "ConvNet.2.bias": (64,), "ConvNet.4.weight": (100, 64, 5, 5), "ConvNet.4.bias": (100,),
        "MappingNet.0.weight": (15, 100), "MappingNet.0.bias": (15,), "MappingNet.2.weight": (5, 15),
        "MappingNet.2.bias": (5,),
    }
    w = reg(torch.randn(2, 7, 6, 6))
    torch.testing.assert_close(w.sum(1), torch.ones(2))
    assert default_attention_config(build_arch("rrdbnet", **ARCHS["rrdbnet"])).kernel_size == 3
    assert default_attention_config(build_arch("msrresnet", **ARCHS["msrresnet"])).kernel_size == 5
    with pytest.raises(ConfigError, match="odd"):
        AttentionConfig(kernel_size=4)


def test_attention_parameter_count_matches_the_formula():
    net = dynamic("msrresnet")
    assert len(net.layer_names) == 7  # conv_first, 2 body convs, upconv1/2, conv_hr, conv_last
    c = SMALL

    def per_layer(cin):
        k2 = c.kernel_size ** 2
        return (cin * c.num_feat * k2 + c.num_feat + c.num_feat * c.num_feat * k2 + c.num_feat
                + c.num_feat * c.num_params * k2 + c.num_params + c.num_params * c.hidden + c.hidden + c.hidden * K + K)

    assert net.num_attention_parameters() == per_layer(3) + 6 * per_layer(8)
    assert sum(p.numel() for p in net.trainable_parameters()) == net.num_attention_parameters()


def test_full_size_msrresnet_has_37_dynamic_layers_and_13_5m_attention_parameters():
    template = build_arch("msrresnet")  # x4, 64 features, 16 blocks

    def meta_regressor(name, layer):  # released shape (5x5, K=5), allocated on the meta device: no init cost
        with torch.device("meta"):
            return AttentionRegressor(layer.in_channels, 5)

    net = DynamicNetwork(template, [template.state_dict()] * 5, attention=meta_regressor)
    assert len(net.layer_names) == 37
    assert net.num_attention_parameters() == 13_467_451  # spec estimate: about 13.5M


# --------------------------------------------------------------------------- the dynamic network


@pytest.mark.parametrize("arch", ["msrresnet", "rrdbnet"])
def test_collapsed_model_equals_dynamic_net_with_averaged_weights(arch):
    net = dynamic(arch)
    avg = average_fusion_weights(net, [lr(1, 12, 12, s) for s in range(3)])
    x = lr(2, 8, 8, seed=7)
    fused = collapse(net, avg)
    assert type(fused).__name__ == {"msrresnet": "MSRResNet", "rrdbnet": "RRDBNet"}[arch]
    with torch.no_grad(), net.using_weights(avg):
        dyn_out = net(x)
        recorded = net.last_weights()
    torch.testing.assert_close(fused(x), dyn_out, rtol=0, atol=1e-5)
    for name, w in recorded.items():
        torch.testing.assert_close(w, avg[name].float().expand(2, K))
    assert net.fixed_weights() is None  # the context restored the regressors
    # the per-sample grouped path with constant weights agrees too
    const = DynamicNetwork(lambda: build_arch(arch, **ARCHS[arch]), experts(arch),
                           attention=lambda name, layer: Constant(avg[name]))
    with torch.no_grad():
        torch.testing.assert_close(const(x), dyn_out, rtol=0, atol=1e-5)
    # collapsing from (template, experts) without building regressors gives the same weights
    fused2 = collapse((build_arch(arch, **ARCHS[arch]), experts(arch)), avg)
    for k, v in fused.state_dict().items():
        assert torch.equal(v, fused2.state_dict()[k]), k


def test_average_is_the_mean_of_per_image_weights_with_centre_crop():
    net = dynamic("msrresnet")
    images = [lr(1, 12, 16, 1)[0], lr(1, 9, 13, 2), lr(2, 10, 10, 3)]
    per_image: dict[str, list[torch.Tensor]] = {}
    with torch.no_grad():
        for batch in images:
            batch = batch.unsqueeze(0) if batch.ndim == 3 else batch
            for img in batch:
                h, w = img.shape[-2:]
                net(img[None, :, int(h / 4) : int(h * 3 / 4), int(w / 4) : int(w * 3 / 4)])
                for name, wt in net.last_weights().items():
                    per_image.setdefault(name, []).append(wt[0].double())
    avg = average_fusion_weights(net, images)
    assert set(avg) == set(net.layer_names)
    for name, ws in per_image.items():
        assert len(ws) == 4
        torch.testing.assert_close(avg[name], torch.stack(ws).mean(0), rtol=0, atol=1e-6)
        torch.testing.assert_close(avg[name].sum(), torch.tensor(1.0, dtype=torch.float64))
    # a loader of (lr, hr) pairs / dicts gives the same; max_images stops early; it is deterministic
    as_dicts = [{"lr": b if b.ndim == 4 else b[None], "hr": None} for b in images]
    again = average_fusion_weights(net, as_dicts)
    for name in avg:
        torch.testing.assert_close(again[name], avg[name], rtol=0, atol=1e-6)
    first = average_fusion_weights(net, images, max_images=1)
    for name, ws in per_image.items():
        torch.testing.assert_close(first[name], ws[0], rtol=0, atol=1e-6)
    assert center_crop_half(torch.zeros(1, 3, 9, 13)).shape[-2:] == (4, 6)  # rows 2..6, cols 3..9
    uncropped = average_fusion_weights(net, images, center_crop_half=False)
    assert any(not torch.allclose(uncropped[n], avg[n]) for n in avg)


def test_only_attention_parameters_train_and_get_gradients():
    net = dynamic("rrdbnet")
    trainable = {n for n, _ in net.named_trainable_parameters()}
    assert trainable and all(".fusion." in n for n in trainable)
    assert {n for n, p in net.named_parameters() if ".fusion." in n} == trainable
    frozen = [n for n, p in net.named_parameters() if not p.requires_grad]
    assert frozen and all(n.endswith((".weight", ".bias")) and ".fusion." not in n for n in frozen)
    net.train()
    net(lr(2)).abs().mean().backward()
    for n, p in net.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), n
        else:
            assert p.grad is None, n
    assert any(float(p.grad.abs().sum()) > 0 for p in net.trainable_parameters())
    stacked = net.dynamic_layers()["body.0.rdb1.conv1"].weight
    assert stacked.shape == (K, 4, 8, 3, 3)


def test_last_weights_cover_every_layer_per_image():
    net = dynamic("msrresnet")
    with torch.no_grad():
        net(lr(3))
    got = net.last_weights()
    assert list(got) == net.layer_names
    assert all(w.shape == (3, K) and not w.requires_grad for w in got.values())


def test_mismatched_experts_name_the_keys():
    sds = experts("msrresnet")
    bad = dict(sds[1])
    del bad["conv_hr.bias"]
    bad["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"expert 1[\s\S]*conv_hr\.bias[\s\S]*extra\.weight"):
        DynamicNetwork(build_arch("msrresnet", **ARCHS["msrresnet"]), [sds[0], bad, sds[2]], attention=SMALL)
    other = build_arch("msrresnet", num_feat=4, num_block=1).state_dict()
    with pytest.raises(CheckpointError, match=r"expert 2[\s\S]*conv_first\.weight: template \[8, 3, 3, 3\], expert \[4"):
        DynamicNetwork(build_arch("msrresnet", **ARCHS["msrresnet"]), [sds[0], sds[1], other], attention=SMALL)
    with pytest.raises(CheckpointError, match=r"conv_last\.bias"):
        collapse((build_arch("msrresnet", **ARCHS["msrresnet"]), [sds[0], {k: v for k, v in sds[1].items()
                                                                             if k != "conv_last.bias"}]), [0.5, 0.5])


def test_tensors_outside_dynamic_layers_must_be_equal():
    def make():
        return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Conv2d(4, 3, 3, padding=1))

    torch.manual_seed(0)
    a, b = make().state_dict(), make().state_dict()
    for k in ("1.weight", "1.bias", "1.running_mean"):
        b[k] = b[k] + 0.1
    with pytest.raises(CheckpointError, match=r"1\.weight.*1\.bias.*1\.running_mean"):
        DynamicNetwork(make, [a, b], attention=SMALL)
    for k in a:
        if k.startswith("1."):
            b[k] = a[k].clone()
    net = DynamicNetwork(make, [a, b], attention=SMALL)
    assert net.layer_names == ["0", "2"]


def test_linear_and_layernorm_layers_are_dynamic():
    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Conv2d(3, 6, 3, padding=1)
            self.norm = nn.LayerNorm(6)
            self.fc = nn.Linear(6, 5)

        def forward(self, x):
            n, _, h, w = x.shape
            t = self.embed(x).flatten(2).transpose(1, 2)  # (N, HW, 6)
            t = t.reshape(n * 2, h * w // 2, 6)  # two "windows" per image, batch-major
            return self.fc(self.norm(t)).reshape(n, h * w, 5)

    sds = []
    for i in range(K):
        torch.manual_seed(i)
        m = Tokens()
        with torch.no_grad():
            m.norm.weight.uniform_(0.5, 1.5)
            m.norm.bias.uniform_(-0.5, 0.5)
        sds.append(m.state_dict())
    net = DynamicNetwork(Tokens, sds, attention=SMALL, seed=0)
    assert isinstance(net.dynamic_layers()["fc"], DynamicLinear)
    assert isinstance(net.dynamic_layers()["norm"], DynamicLayerNorm)
    x = lr(2, 4, 4)
    with torch.no_grad():
        out = net(x)
    w = net.last_weights()
    assert w["fc"].shape == (2, K) and w["norm"].shape == (2, K)  # per image, not per window
    # per-image reference: image i's windows use its mixed parameters
    ref = []
    for i in range(2):
        m = Tokens()
        m.load_state_dict({k: sum(w[k.split(".")[0]][i, j] * sds[j][k] for j in range(K)) for k in sds[0]})
        ref.append(m(x[i : i + 1]))
    torch.testing.assert_close(out, torch.cat(ref), rtol=1e-5, atol=1e-5)
    avg = {n: v.mean(0) for n, v in w.items()}
    with torch.no_grad(), net.using_weights(avg):
        torch.testing.assert_close(collapse(net, avg)(x), net(x), rtol=0, atol=1e-5)
    one_hot = {n: torch.eye(K)[2] for n in net.layer_names}
    ref2 = Tokens()
    ref2.load_state_dict(sds[2])
    with torch.no_grad(), net.using_weights(one_hot):
        torch.testing.assert_close(net(x), ref2(x), rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- checkpoints


def test_fused_checkpoint_and_weights_json_round_trip(tmp_path):
    files = []
    for i, sd in enumerate(experts("msrresnet")):
        files.append(save_model(tmp_path / "pop" / f"member_{i}.safetensors", sd, arch="msrresnet",
                                arch_kwargs=ARCHS["msrresnet"]))
    net = DynamicNetwork.from_files(list(reversed(files)), attention=SMALL, seed=0)  # sorted back to 0, 1, 2
    assert net.expert_sources == [str(f) for f in files]
    avg = average_fusion_weights(net, lr(2, 12, 12))
    fused = collapse(net, avg)
    ckpt, js = save_fused_model(tmp_path / "out" / "fused_x4.safetensors", fused, avg, num_images=2)
    assert js == tmp_path / "out" / "fusion_weights.json"
    loaded = perceptsr.load_model(ckpt)
    assert loaded.perceptsr_meta["arch"] == "msrresnet" and loaded.perceptsr_meta["scale"] == 4
    x = lr(1, 8, 8, 5)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), fused(x), rtol=0, atol=0)
    record = json.loads(js.read_text())
    assert record["checkpoint"] == "fused_x4.safetensors" and record["num_experts"] == K
    assert record["experts"] == [str(f) for f in files] and list(record["layers"]) == net.layer_names
    weights, _ = load_fusion_weights(js.parent)
    for name in avg:
        assert torch.equal(weights[name], avg[name])
    assert loaded.perceptsr_meta["extra"]["fusion"]["layers"] == record["layers"]
    # the JSON weights rebuild the same fused model
    again = collapse(net, weights)
    for k, v in fused.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k


def test_attention_save_load_resume_and_expert_order_check(tmp_path):
    net = dynamic("msrresnet", seed=0)
    path = save_model(tmp_path / "net_g.safetensors", net, arch=FUSION_ARCH)  # as a stage-B run saves it
    other = dynamic("msrresnet", seed=1)
    x = lr(2)
    with torch.no_grad():
        assert not torch.allclose(other(x), net(x))
        load_attention(path, other)
        torch.testing.assert_close(other(x), net(x), rtol=0, atol=0)
    sds = experts("msrresnet")
    swapped = DynamicNetwork(lambda: build_arch("msrresnet", **ARCHS["msrresnet"]), [sds[1], sds[0], sds[2]],
                             attention=SMALL)
    with pytest.raises(CheckpointError, match=r"0->1, 1->0, 2->2"):
        load_attention(path, swapped)
    # a released-style stage-B file: {'model_state_dict': {'module.<layer>.weight' [K,...], '<layer>.fusion...'}}
    full = {f"module.{k[len('net.'):]}": v for k, v in net.state_dict().items()}
    assert "module.body.0.conv1.fusion.ConvNet.0.weight" in full and full["module.conv_first.weight"].shape[0] == K
    torch.save({"epoch": 10, "model_state_dict": full}, tmp_path / "model_x4_10.pt")
    third = dynamic("msrresnet", seed=2)
    load_attention(tmp_path / "model_x4_10.pt", third)
    with torch.no_grad():
        torch.testing.assert_close(third(x), net(x), rtol=0, atol=0)
    with pytest.raises(CheckpointError, match=r"0->1, 1->0, 2->2"):
        load_attention(tmp_path / "model_x4_10.pt", swapped)
    with pytest.raises(CheckpointError, match="missing keys"):
        swapped.load_attention_state_dict({k: v for k, v in net.attention_state_dict().items() if "conv_last" not in k})


# --------------------------------------------------------------------------- trade-off


def test_population_interpolation_endpoints_and_midpoints():
    sds = experts("rrdbnet")
    for t, j in ((0.0, 0), (0.5, 1), (1.0, 2)):
        got = interpolate_population(sds, t)
        assert all(torch.equal(got[k], sds[j][k]) for k in sds[0])
    for t, (a, b) in ((0.25, (0, 1)), (0.75, (1, 2))):
        got = interpolate_population(sds, t)
        for k in sds[0]:
            torch.testing.assert_close(got[k], (sds[a][k] + sds[b][k]) / 2)
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        interpolate_population(sds, 1.5)


DOC_WEIGHTS = [0.004, 0.009, 0.015, 0.086, 0.886]  # the CPU run's mean weights in docs/ea_adam.md (issue 11)


def test_fusion_weight_interpolation_is_calibrated_to_the_expert_position():
    """t is the perceptual preference on the fused path too: mean expert index t * (K - 1), with the
    fused weights at their own position (issue 11: t = 0.5 used to be pinned to the fused model,
    i.e. expert 3.84 for these weights, and t = 0.25 was 1.92)."""
    k = len(DOC_WEIGHTS)
    avg = {"a": torch.tensor(DOC_WEIGHTS, dtype=torch.float64),
           "b": torch.tensor([0.2, 0.3, 0.2, 0.2, 0.1], dtype=torch.float64)}
    center = (3.841 + 1.7) / 2
    assert math.isclose(expert_position(avg), center, abs_tol=1e-12)
    for t in (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0):
        w = interpolate_fusion_weights(avg, t)
        assert math.isclose(expert_position(w), t * (k - 1), abs_tol=1e-12), t
        for v in w.values():  # still convex combinations of the experts
            assert bool((v >= 0).all()) and math.isclose(float(v.sum()), 1.0, abs_tol=1e-12)
    w0, w1 = interpolate_fusion_weights(avg, 0.0), interpolate_fusion_weights(avg, 1.0)
    for n in avg:
        assert torch.equal(w0[n], torch.eye(k, dtype=torch.float64)[0])
        assert torch.equal(w1[n], torch.eye(k, dtype=torch.float64)[-1])
    at_fused = interpolate_fusion_weights(avg, fused_tradeoff(avg))
    assert all(torch.equal(at_fused[n], avg[n]) for n in avg)
    assert math.isclose(fused_tradeoff(avg), center / (k - 1))
    # one common coefficient: every layer is the same blend of its fused weights and the end expert
    half = interpolate_fusion_weights(avg, 0.5 * center / (k - 1))
    for n in avg:
        torch.testing.assert_close(half[n], (avg[n] + torch.eye(k, dtype=torch.float64)[0]) / 2)
    assert math.isclose(expert_position(interpolate_fusion_weights(torch.tensor(DOC_WEIGHTS), 0.25)), 1.0,
                        abs_tol=1e-12)


def _write_population(folder, sds, arch="msrresnet"):
    for i, sd in enumerate(sds):
        save_model(folder / f"member_{i}.safetensors", sd, arch=arch, arch_kwargs=ARCHS[arch])
    return folder


def _recovered_weights(model: nn.Module, sds, key: str) -> torch.Tensor:
    """The K mixing weights behind one tensor of ``model``, solved from the experts' tensors."""
    basis = torch.stack([sd[key].double().reshape(-1) for sd in sds], dim=1)
    target = model.state_dict()[key].double().reshape(-1, 1)
    return torch.linalg.lstsq(basis, target).solution.reshape(-1)


def test_both_tradeoff_paths_put_t_at_the_same_expert_position(tmp_path):
    """Issue 11: --tradeoff 0.5 gave member 2 of 5 on the population path but about expert 3.8 on the
    fused path. Now both are at expert position t * (K - 1), read back from the weights themselves."""
    sds = experts("msrresnet", k=5)
    pop = _write_population(tmp_path / "pop", sds)
    fused_w = {n: torch.tensor(DOC_WEIGHTS, dtype=torch.float64)
               for n in DynamicNetwork.from_files(pop, attention=SMALL).layer_names}
    for t in (0.25, 0.5, 0.8):
        plain = build_tradeoff_model(pop, t)
        fused = build_tradeoff_model(pop, t, fusion_weights=fused_w)
        assert plain.perceptsr_meta["tradeoff"]["position"] == pytest.approx(4 * t, abs=1e-12)
        assert fused.perceptsr_meta["tradeoff"]["position"] == pytest.approx(4 * t, abs=1e-12)
        for key in ("conv_first.weight", "body.0.conv1.weight", "conv_last.weight"):
            for model in (plain, fused):
                w = _recovered_weights(model, sds, key)
                assert float(w @ torch.arange(5, dtype=torch.float64)) == pytest.approx(4 * t, abs=1e-5), (t, key)
    mid = build_tradeoff_model(pop, 0.5)
    assert all(torch.equal(v, sds[2][k]) for k, v in mid.state_dict().items())


def test_build_tradeoff_model_from_a_population_folder(tmp_path):
    sds = experts("msrresnet")
    pop = tmp_path / "pop"
    for i, sd in zip((2, 0, 1), (sds[2], sds[0], sds[1])):  # written out of order
        save_model(pop / f"model_x4_250_{i}.safetensors", sd, arch="msrresnet", arch_kwargs=ARCHS["msrresnet"])
    assert [member_index(p) for p in sort_expert_files(pop.iterdir())] == [0, 1, 2]
    x = lr(1, 8, 8, 3)
    for t, j in ((0.0, 0), (1.0, 2)):
        m = build_tradeoff_model(pop, t)
        assert all(torch.equal(v, sds[j][k]) for k, v in m.state_dict().items())
    mid = build_tradeoff_model(pop, 0.25)
    for k, v in mid.state_dict().items():
        torch.testing.assert_close(v, (sds[0][k] + sds[1][k]) / 2)
    assert mid.perceptsr_meta["tradeoff"]["between"] == [0, 1]
    # through fusion weights: the fused model at its own t (recorded in the JSON), t = 0 member 0
    net = DynamicNetwork.from_files(pop, attention=SMALL, seed=0)
    avg = average_fusion_weights(net, lr(1, 12, 12))
    fused = collapse(net, avg)
    _, js = save_fused_model(tmp_path / "fused" / "fused.safetensors", fused, avg)
    t_fused = load_fusion_weights(js)[1]["tradeoff_t"]
    assert t_fused == fused_tradeoff(avg) and 0 < t_fused < 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        at_center = build_tradeoff_model(pop, t_fused, fusion_weights=js)
    with torch.no_grad():
        torch.testing.assert_close(at_center(x), fused(x), rtol=0, atol=1e-6)
    at_zero = build_tradeoff_model(pop, 0.0, fusion_weights=avg)
    assert all(torch.equal(v, sds[0][k]) for k, v in at_zero.state_dict().items())
    with pytest.raises(ConfigError, match="individual index"):
        sort_expert_files([pop / "fused_x4.safetensors"])


# --------------------------------------------------------------------------- static policy (SwinIR)

SWIN = {"upscale": 4, "img_size": 8, "window_size": 4, "depths": [2], "embed_dim": 12, "num_heads": [2],
        "mlp_ratio": 2, "upsampler": "pixelshuffledirect"}
TABLE = "relative_position_bias_table"


def swinir_experts(k: int = K) -> list[dict[str, torch.Tensor]]:
    out = []
    for i in range(k):
        torch.manual_seed(200 + i)
        m = build_arch("swinir", **SWIN)
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.05 * torch.randn_like(p))
        out.append(m.state_dict())
    return out


def test_static_policy_decides_differing_tensors_outside_the_dynamic_layers():
    """Issue 11: SwinIR experts differ in their relative-position bias tables (not a dynamic layer),
    which made stage B raise. The policy is explicit: error (default), average or first, and stage C
    keeps what stage B used."""
    sds = swinir_experts()
    tables = [key for key in sds[0] if key.endswith(TABLE)]
    assert len(tables) == 2 and all(not torch.equal(sds[0][t], sds[1][t]) for t in tables)

    def make():
        return build_arch("swinir", **SWIN)

    with pytest.raises(CheckpointError, match=rf"{TABLE}[\s\S]*static_policy"):
        DynamicNetwork(make, sds, attention=SMALL)
    x = lr(2, 8, 8, seed=4)
    for policy, expected in (("average", lambda t: sum(sd[t].double() for sd in sds) / K),
                             ("first", lambda t: sds[0][t].double())):
        net = DynamicNetwork(make, sds, attention=SMALL, static_policy=policy, seed=0).eval()  # no drop path
        assert sorted(net.static_keys) == sorted(tables) and net.static_policy == policy
        with torch.no_grad():
            avg = average_fusion_weights(net, [lr(1, 8, 8, s) for s in range(2)], center_crop_half=False)
            fused = collapse(net, avg)
            for t in tables:
                torch.testing.assert_close(fused.state_dict()[t].double(), expected(t), rtol=0, atol=1e-7)
                torch.testing.assert_close(net.state_dict()[f"net.{t}"].double(), expected(t), rtol=0, atol=1e-7)
            with net.using_weights(avg):
                torch.testing.assert_close(fused(x), net(x), rtol=0, atol=1e-5)
        same = fuse_state_dicts(make(), sds, avg, static=policy)
        assert all(torch.equal(v, same[k]) for k, v in fused.state_dict().items())
    with pytest.raises(ConfigError, match="static_policy"):
        DynamicNetwork(make, sds, attention=SMALL, static_policy="last")


def test_tradeoff_of_a_swinir_fused_model_moves_the_static_tensors_along(tmp_path):
    sds = swinir_experts()
    pop = tmp_path / "pop"
    for i, sd in enumerate(sds):
        save_model(pop / f"member_{i}.safetensors", sd, arch="swinir", arch_kwargs=SWIN)
    net = DynamicNetwork.from_files(pop, attention=SMALL, static_policy="average", seed=0)
    avg = average_fusion_weights(net, lr(2, 8, 8), center_crop_half=False)
    fused = collapse(net, avg)
    _, js = save_fused_model(tmp_path / "fused" / "fused.safetensors", fused, avg, static_policy="average")
    for t, j in ((0.0, 0), (1.0, K - 1)):
        m = build_tradeoff_model(pop, t, fusion_weights=js)
        assert all(torch.equal(v, sds[j][k]) for k, v in m.state_dict().items()), t
    at_fused = build_tradeoff_model(pop, load_fusion_weights(js)[1]["tradeoff_t"], fusion_weights=js)
    assert all(torch.equal(v, fused.state_dict()[k]) for k, v in at_fused.state_dict().items())
    with pytest.raises(CheckpointError, match=TABLE):
        build_tradeoff_model(pop, 0.5, fusion_weights=avg)  # a bare dict records no policy: error


# --------------------------------------------------------------------------- output gap


def test_output_gap_compares_per_image_and_collapsed_outputs():
    net = dynamic("msrresnet")
    with torch.no_grad():  # sharper regressors: the per-image weights differ clearly from their average
        for layer in net.dynamic_layers().values():
            layer.fusion.MappingNet[2].weight.mul_(300)
    images = [lr(1, 12, 12, s) for s in range(3)]
    avg = average_fusion_weights(net, images)
    fused = collapse(net, avg)
    gap = output_gap(net, fused, images)
    diffs, psnrs = [], []
    with torch.no_grad():
        for img in images:
            crop = center_crop_half(img)
            d = (fused(crop).clamp(0, 1) - net(crop).clamp(0, 1)).double()
            diffs.append(d.reshape(-1))
            psnrs.append(float(-10 * torch.log10(d.pow(2).mean())))
    every = torch.cat(diffs)
    assert gap["images"] == 3
    assert gap["max_abs"] == pytest.approx(float(every.abs().max()), rel=1e-9)
    assert gap["mean_abs"] == pytest.approx(float(every.abs().mean()), rel=1e-9)
    assert gap["psnr"] == pytest.approx(sum(psnrs) / 3, rel=1e-9)
    assert 1e-4 < gap["max_abs"] < 1 and gap["psnr"] < 90  # per-image weights differ from their average
    # regressors that give every image the averaged weights: no gap (PSNR at its cap)
    const = DynamicNetwork(lambda: build_arch("msrresnet", **ARCHS["msrresnet"]), experts("msrresnet"),
                           attention=lambda name, layer: Constant(avg[name]))
    none = output_gap(const, fused, images)
    assert none["max_abs"] < 1e-5 and none["psnr"] > 90
