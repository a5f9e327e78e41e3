"""Architectures and the registry: parameter counts from the specs, shapes, forward semantics, errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch.nn import functional as F

from perceptsr.archs import build_arch, get_arch, list_archs, register_arch, registry
from perceptsr.errors import ConfigError


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------------------------
# parameter counts (RankSRGAN spec §3.1, §4.1, §4.2; BasicSR defaults)


@pytest.mark.parametrize(
    "name, kwargs, expected",
    [
        ("srresnet", {}, 1_554_499),  # RankSRGAN generator x4 (spec §4.1 / §6.1)
        ("ranker", {}, 13_734_281),  # Ranker VGG-12 (spec §3.1)
        ("vgg_discriminator_296", {}, 17_827_401),  # Discriminator_VGG_296, convs without bias (spec §4.2)
        ("vgg_discriminator", {"input_size": 296}, 17_827_401),
        ("msrresnet", {}, 1_517_571),  # BasicSR MSRResNet x4 (= SRResNet minus LRconv)
        ("vgg_discriminator", {}, 14_499_401),  # BasicSR VGGStyleDiscriminator 128 (linear1 8192->100)
    ],
)
def test_parameter_counts(name, kwargs, expected):
    assert n_params(build_arch(name, **kwargs)) == expected


def test_rrdbnet_parameter_count():
    assert n_params(build_arch("rrdbnet")) == 16_697_987  # BasicSR RRDBNet x4, 23 blocks (EA-Adam: "about 16.7M")


def test_srresnet_key_layout_matches_mmsr_table():
    sd = build_arch("srresnet").state_dict()
    # spec §6.1 says "70 tensors", but its own table gives 2 + 16 * 4 + 2 + 4 + 2 + 2 = 76
    assert len(sd) == 76
    assert sd["upconv2.weight"].shape == (256, 64, 3, 3)
    assert {"conv_first.weight", "recon_trunk.15.conv2.bias", "LRconv.weight", "HRconv.bias", "conv_last.weight"} <= set(sd)


def test_discriminator_296_keys_and_bias_variants():
    sd = build_arch("vgg_discriminator_296", num_feat=8).state_dict()
    assert "conv0_0.bias" in sd and "conv0_1.bias" not in sd and "conv4_1.bias" not in sd
    assert "bn0_1.weight" in sd and "bn0_0.weight" not in sd
    assert build_arch("vgg_discriminator_296").state_dict()["linear1.weight"].shape == (100, 41472)
    old = build_arch("vgg_discriminator_296", num_feat=8, conv_bias=True).state_dict()
    assert "conv0_1.bias" in old and "conv4_1.bias" in old
    big = build_arch("vgg_discriminator", input_size=256, num_feat=8).state_dict()
    assert "conv5_1.weight" in big and big["linear1.weight"].shape == (100, 64 * 4 * 4)


def test_ranker_depth_variants_keep_vgg12_names():
    names12 = set(build_arch("ranker", nf=8).state_dict())
    names8 = set(build_arch("ranker", nf=8, depth=8).state_dict())
    names16 = set(build_arch("ranker", nf=8, depth=16).state_dict())
    assert names8 < names12 < names16
    assert "conv2_1.weight" in names8 and "conv3_0.weight" not in names8
    assert {f"conv{i}_2.weight" for i in range(1, 5)} <= names16 and "conv0_2.weight" not in names16
    convs = lambda names: sum(1 for k in names if k.startswith("conv") and k.endswith(".weight"))  # noqa: E731
    assert (convs(names8), convs(names12), convs(names16)) == (6, 10, 14)  # + 2 linears = depth
    assert build_arch("ranker", nf=8, depth=8).classifier[0].in_features == 32
    with pytest.raises(ConfigError, match="depth"):
        build_arch("ranker", depth=10)


# ---------------------------------------------------------------------------------------------
# shapes


def test_srresnet_full_x4_shape():
    model = build_arch("srresnet").eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 16, 16)).shape == (1, 3, 64, 64)


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("name", ["srresnet", "msrresnet"])
def test_resnet_shapes(name, scale):
    kwargs = {"nf": 8, "nb": 2, "upscale": scale} if name == "srresnet" else {"num_feat": 8, "num_block": 2, "upscale": scale}
    model = build_arch(name, **kwargs)
    assert model.scale == scale
    first_up = model.state_dict()["upconv1.weight"]
    assert first_up.shape[0] == 8 * (4 if scale in (2, 4) else 9)
    assert ("upconv2.weight" in model.state_dict()) == (scale == 4)
    assert model(torch.rand(2, 3, 6, 5)).shape == (2, 3, 6 * scale, 5 * scale)


@pytest.mark.parametrize("scale", [1, 2, 4])
def test_rrdbnet_shapes(scale):
    model = build_arch("rrdbnet", num_feat=8, num_block=1, num_grow_ch=4, scale=scale)
    assert model.conv_first.in_channels == 3 * {4: 1, 2: 4, 1: 16}[scale]
    assert model(torch.rand(1, 3, 8, 12)).shape == (1, 3, 8 * scale, 12 * scale)
    if scale != 4:
        with pytest.raises(ValueError, match="multiples"):
            model(torch.rand(1, 3, 7, 8))


def test_bad_scales_raise_config_error():
    for name, kwargs in [("srresnet", {"upscale": 8}), ("msrresnet", {"upscale": 1}), ("rrdbnet", {"scale": 3})]:
        with pytest.raises(ConfigError, match="scale"):
            build_arch(name, **kwargs)


def test_ranker_any_size_and_non_square():
    model = build_arch("ranker", nf=4).eval()
    for h, w in [(32, 32), (37, 45), (64, 33)]:
        assert model(torch.rand(2, 3, h, w)).shape == (2, 1)
    with pytest.raises(ValueError, match="at least 32x32"):
        model(torch.rand(1, 3, 31, 40))
    assert build_arch("ranker", nf=4, depth=8).eval()(torch.rand(1, 3, 8, 8)).shape == (1, 1)


def test_discriminator_sizes():
    d296 = build_arch("vgg_discriminator_296", num_feat=4)
    assert d296(torch.rand(2, 3, 296, 296)).shape == (2, 1)
    with pytest.raises(ValueError, match="296x296"):
        d296(torch.rand(1, 3, 128, 128))
    assert build_arch("vgg_discriminator", num_feat=4)(torch.rand(2, 3, 128, 128)).shape == (2, 1)


# ---------------------------------------------------------------------------------------------
# forward semantics against independent functional references


def _conv(x, sd, name):
    w = sd[f"{name}.weight"]
    return F.conv2d(x, w, sd.get(f"{name}.bias"), padding=1)


def test_srresnet_matches_reference_forward():
    torch.manual_seed(0)
    model = build_arch("srresnet", nf=8, nb=2, upscale=4)
    sd = model.state_dict()
    x = torch.rand(1, 3, 5, 6)
    fea = _conv(x, sd, "conv_first")
    h = fea
    for i in range(2):
        h = h + _conv(F.relu(_conv(h, sd, f"recon_trunk.{i}.conv1")), sd, f"recon_trunk.{i}.conv2")
    h = _conv(h, sd, "LRconv") + fea
    h = F.relu(F.pixel_shuffle(_conv(h, sd, "upconv1"), 2))
    h = F.relu(F.pixel_shuffle(_conv(h, sd, "upconv2"), 2))
    ref = _conv(F.relu(_conv(h, sd, "HRconv")), sd, "conv_last")
    torch.testing.assert_close(model(x), ref)


def test_msrresnet_matches_reference_forward():
    torch.manual_seed(0)
    model = build_arch("msrresnet", num_feat=8, num_block=2, upscale=3)
    sd = model.state_dict()
    x = torch.rand(1, 3, 5, 6)
    h = F.leaky_relu(_conv(x, sd, "conv_first"), 0.1)
    for i in range(2):
        h = h + _conv(F.relu(_conv(h, sd, f"body.{i}.conv1")), sd, f"body.{i}.conv2")
    h = F.leaky_relu(F.pixel_shuffle(_conv(h, sd, "upconv1"), 3), 0.1)
    ref = _conv(F.leaky_relu(_conv(h, sd, "conv_hr"), 0.1), sd, "conv_last")
    ref = ref + F.interpolate(x, scale_factor=3, mode="bilinear", align_corners=False)
    torch.testing.assert_close(model(x), ref)


def test_rrdbnet_matches_reference_forward():
    torch.manual_seed(0)
    model = build_arch("rrdbnet", num_feat=8, num_block=1, num_grow_ch=4)
    sd = model.state_dict()
    x = torch.rand(1, 3, 5, 6)

    def rdb(h, p):
        feats = [h]
        for j in range(1, 5):
            feats.append(F.leaky_relu(_conv(torch.cat(feats, 1), sd, f"{p}.conv{j}"), 0.2))
        return _conv(torch.cat(feats, 1), sd, f"{p}.conv5") * 0.2 + h

    feat = _conv(x, sd, "conv_first")
    body = rdb(rdb(rdb(feat, "body.0.rdb1"), "body.0.rdb2"), "body.0.rdb3") * 0.2 + feat
    feat = feat + _conv(body, sd, "conv_body")
    for name in ("conv_up1", "conv_up2"):
        feat = F.leaky_relu(_conv(F.interpolate(feat, scale_factor=2, mode="nearest"), sd, name), 0.2)
    ref = _conv(F.leaky_relu(_conv(feat, sd, "conv_hr"), 0.2), sd, "conv_last")
    torch.testing.assert_close(model(x), ref)


def test_ranker_matches_reference_forward():
    torch.manual_seed(0)
    model = build_arch("ranker", nf=4).eval()
    sd = model.state_dict()
    x = torch.rand(2, 3, 40, 33)
    h = x
    for i in range(5):
        for j, stride in ((0, 1), (1, 2)):
            h = F.conv2d(h, sd[f"conv{i}_{j}.weight"], sd[f"conv{i}_{j}.bias"], stride=stride, padding=1)
            if (i, j) != (0, 0):
                bn = f"bn{i}_{j}"
                h = F.batch_norm(h, sd[f"{bn}.running_mean"], sd[f"{bn}.running_var"], sd[f"{bn}.weight"], sd[f"{bn}.bias"])
            h = F.leaky_relu(h, 0.2)
    h = h.mean(dim=(2, 3))
    ref = F.linear(F.leaky_relu(F.linear(h, sd["classifier.0.weight"], sd["classifier.0.bias"]), 0.2),
                   sd["classifier.2.weight"], sd["classifier.2.bias"])
    torch.testing.assert_close(model(x), ref)


# ---------------------------------------------------------------------------------------------
# registry


@pytest.fixture
def clean_registry(monkeypatch):
    monkeypatch.setattr(registry, "_ARCHS", registry._builtin_registry())


def test_list_archs_by_kind():
    names = list_archs()
    assert {"srresnet", "msrresnet", "rrdbnet", "vgg_discriminator", "vgg_discriminator_296", "ranker"} <= set(names)
    assert names == sorted(names)
    assert {"srresnet", "msrresnet", "rrdbnet"} <= set(list_archs("generator"))
    assert "ranker" not in list_archs("generator")
    assert "vgg_discriminator_128" in list_archs("discriminator")
    assert list_archs("ranker") == ["ranker"]
    with pytest.raises(ConfigError, match="kind"):
        list_archs("loss")


def test_unknown_name_did_you_mean():
    with pytest.raises(ConfigError) as info:
        build_arch("srresnett")
    msg = str(info.value)
    assert "unknown architecture 'srresnett'" in msg and "Did you mean 'srresnet'" in msg
    assert "Known architectures:" in msg and "rrdbnet" in msg and "ranker" in msg


def test_unknown_kwarg_names_bad_and_allowed():
    with pytest.raises(ConfigError) as info:
        build_arch("rrdbnet", num_feats=8)
    msg = str(info.value)
    assert "'num_feats'" in msg and "did you mean 'num_feat'" in msg
    assert "allowed: num_in_ch, num_out_ch, scale, num_feat, num_block, num_grow_ch" in msg


def test_case_insensitive_and_aliases():
    assert get_arch("RRDBNet").name == "rrdbnet"
    assert get_arch("VGGStyleDiscriminator").name == "vgg_discriminator"
    d = build_arch("Discriminator_VGG_296", num_feat=4)
    assert d.input_size == 296


def test_register_arch_class_factory_and_lazy(clean_registry):
    class Tiny(torch.nn.Module):
        arch_kind = "ranker"

        def __init__(self, width: int = 2):
            super().__init__()
            self.lin = torch.nn.Linear(width, 1)

    register_arch("tiny", Tiny)
    assert build_arch("tiny", width=3).lin.in_features == 3
    assert "tiny" in list_archs("ranker")
    with pytest.raises(ConfigError, match="already registered"):
        register_arch("tiny", Tiny)
    with pytest.raises(ConfigError, match="already registered"):
        register_arch("srresnet", Tiny)
    with pytest.raises(ConfigError, match="'widht'.*allowed: width"):
        build_arch("tiny", widht=3)

    register_arch("tiny_factory", lambda **kw: Tiny(**kw), kind="discriminator")
    assert "tiny_factory" in list_archs("discriminator")
    assert isinstance(build_arch("tiny_factory", width=4), Tiny)  # **kwargs factories are not checked

    register_arch("lazy_srresnet", "perceptsr.archs.srresnet_arch:SRResNet", defaults={"nb": 1, "nf": 4})
    assert len(build_arch("lazy_srresnet").recon_trunk) == 1
    register_arch("broken", "no_such_module_xyz:Net")
    with pytest.raises(ConfigError, match="cannot import 'no_such_module_xyz:Net'"):
        build_arch("broken")
    with pytest.raises(ConfigError, match="kind"):
        register_arch("bad_kind", Tiny, kind="loss")


def test_entry_point_plugins(monkeypatch):
    class FakeEP:
        def __init__(self, name, obj=None, exc=None):
            self.name, self.value, self._obj, self._exc = name, f"plugin.mod:{name}", obj, exc

        def load(self):
            if self._exc:
                raise self._exc
            return self._obj

    def plugin_net(channels: int = 3):
        return torch.nn.Conv2d(channels, channels, 1)

    eps = {"plugin_net": FakeEP("plugin_net", plugin_net), "plugin_broken": FakeEP("plugin_broken", exc=ImportError("boom"))}
    monkeypatch.setattr(registry, "_entry_points", eps)
    monkeypatch.setattr(registry, "_ARCHS", registry._builtin_registry())
    assert "plugin_net" in list_archs()
    assert build_arch("plugin_net", channels=2).in_channels == 2
    assert get_arch("plugin_net").source.startswith("entry point")
    with pytest.raises(ConfigError, match="plugin_broken.*failed to load.*boom"):
        build_arch("plugin_broken")
    with pytest.warns(UserWarning, match="plugin_broken"):
        assert "plugin_net" in list_archs("generator")


def test_importing_archs_imports_no_architecture_module():
    code = (
        "import sys, perceptsr.archs as a; a.list_archs(); "
        "assert not [m for m in sys.modules if m.endswith('_arch')], sorted(sys.modules); "
        "a.SRResNet; assert 'perceptsr.archs.srresnet_arch' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
