"""SwinIR: parameter counts of the released configurations, official key names, shapes for any
input size, shifted-window attention against a per-token reference, checkpoint detection and
strict round trips, registry."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from perceptsr.archs import build_arch, get_arch, list_archs
from perceptsr.archs.swinir_arch import SwinIR, SwinTransformerBlock, shifted_window_mask
from perceptsr.checkpoint import detect_arch, load_model, load_state_dict_strict, save_model
from perceptsr.errors import ConfigError

TINY = {"embed_dim": 12, "depths": [2], "num_heads": [2], "window_size": 4, "img_size": 8, "mlp_ratio": 2}
LIGHT = {"upscale": 4, "in_chans": 3, "img_size": 64, "window_size": 8, "img_range": 1.0, "depths": [6, 6, 6, 6],
         "embed_dim": 60, "num_heads": [6, 6, 6, 6], "mlp_ratio": 2, "upsampler": "pixelshuffledirect",
         "resi_connection": "1conv"}
CLASSICAL = {"img_size": 48, "window_size": 8, "depths": [6] * 6, "embed_dim": 180, "num_heads": [6] * 6, "mlp_ratio": 2}
LARGE = {"img_size": 64, "window_size": 8, "depths": [6] * 9, "embed_dim": 240, "num_heads": [8] * 9, "mlp_ratio": 2,
         "upsampler": "nearest+conv", "resi_connection": "3conv", "upscale": 4}


def n_params(module: torch.nn.Module, skip: str | None = None) -> int:
    return sum(p.numel() for name, p in module.named_parameters() if skip is None or skip not in name)


def tiny(seed: int = 0, **kwargs) -> SwinIR:
    """A tiny SwinIR with every parameter randomised (so a wrong mapping or branch shows)."""
    torch.manual_seed(seed)
    model = SwinIR(**{**TINY, **kwargs}).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def image(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------
# parameter counts and key layout


def test_lightweight_x4_parameter_count():
    # SwinIR-S x4 (EA-Adam backbone): 929,628 parameters, as counted by traiNNer-redux's
    # architecture benchmarks for the released model; the paper's "897K" omits the
    # 24 blocks x 225 offsets x 6 heads = 32,400 relative-position bias entries.
    model = build_arch("swinir", **LIGHT)
    assert n_params(model) == 929_628
    assert n_params(model, skip="relative_position_bias_table") == 897_228
    assert n_params(build_arch("swinir")) == 929_628  # the defaults are this configuration


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({**LIGHT, "upscale": 3}, 918_267),  # SwinIR-S x3
        ({**CLASSICAL, "upscale": 4, "upsampler": "pixelshuffle"}, 11_900_199),  # classical SwinIR x4
        ({**CLASSICAL, "upscale": 3, "upsampler": "pixelshuffle"}, 11_937_127),  # classical SwinIR x3
        (LARGE, 28_013_059),  # real-world SwinIR-L x4 (3conv, nearest+conv)
    ],
)
def test_released_configurations_parameter_counts(kwargs, expected):
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        assert n_params(SwinIR(**kwargs)) == expected  # traiNNer-redux benchmark table figures


def test_official_key_names_and_buffers():
    sd = build_arch("swinir", **LIGHT).state_dict()
    # 24 blocks x 14 tensors + 12 shifted-block masks + 4 group convs x 2 + 10 others
    assert len(sd) == 366
    block = "layers.3.residual_group.blocks.5"
    assert {
        "conv_first.weight", "patch_embed.norm.weight", "patch_embed.norm.bias", f"{block}.norm1.weight",
        f"{block}.attn.relative_position_bias_table", f"{block}.attn.relative_position_index",
        f"{block}.attn.qkv.weight", f"{block}.attn.qkv.bias", f"{block}.attn.proj.weight", f"{block}.norm2.bias",
        f"{block}.mlp.fc1.weight", f"{block}.mlp.fc2.bias", f"{block}.attn_mask", "layers.3.conv.weight",
        "norm.weight", "conv_after_body.weight", "upsample.0.weight", "upsample.0.bias",
    } <= set(sd)
    assert "layers.0.residual_group.blocks.0.attn_mask" not in sd  # unshifted blocks have none
    assert not any(k == "mean" or k.endswith(".mean") for k in sd)  # the RGB mean is not stored
    assert sd[f"{block}.attn.relative_position_bias_table"].shape == (225, 6)
    assert sd[f"{block}.attn.relative_position_index"].shape == (64, 64)
    assert sd[f"{block}.attn.relative_position_index"].dtype == torch.int64
    assert sd[f"{block}.attn_mask"].shape == (64, 64, 64)  # (64 / 8)^2 windows of 8 x 8 tokens
    assert sd[f"{block}.mlp.fc1.weight"].shape == (120, 60)
    assert sd["upsample.0.weight"].shape == (48, 60, 3, 3)


def test_head_key_names():
    classical = set(tiny(upscale=4, upsampler="pixelshuffle").state_dict())
    assert {"conv_before_upsample.0.weight", "upsample.0.weight", "upsample.2.weight", "conv_last.weight"} <= classical
    assert set(tiny(upscale=3, upsampler="pixelshuffle").state_dict()) >= {"upsample.0.weight", "conv_last.weight"}
    real = set(tiny(upscale=4, upsampler="nearest+conv", resi_connection="3conv").state_dict())
    assert {"conv_before_upsample.0.weight", "conv_up1.weight", "conv_up2.weight", "conv_hr.weight",
            "conv_last.weight", "conv_after_body.0.weight", "conv_after_body.4.weight", "layers.0.conv.2.weight"} <= real
    assert "conv_last.weight" in set(tiny(upscale=1, upsampler="").state_dict())


# ---------------------------------------------------------------------------------------------
# shapes, padding


@pytest.mark.parametrize(
    "kwargs, size, expected",
    [
        ({"upscale": 4}, (13, 17), (52, 68)),
        ({"upscale": 2, "upsampler": "pixelshuffle"}, (13, 17), (26, 34)),
        ({"upscale": 3, "upsampler": "pixelshuffle"}, (5, 9), (15, 27)),
        ({"upscale": 4, "upsampler": "nearest+conv", "resi_connection": "3conv"}, (7, 10), (28, 40)),
        ({"upscale": 1, "upsampler": ""}, (13, 17), (13, 17)),
        ({"upscale": 4}, (3, 2), (12, 8)),  # smaller than the padding: reflected repeatedly
        ({"upscale": 2}, (1, 6), (2, 12)),  # one pixel high: replicated
        ({"upscale": 2, "in_chans": 1}, (9, 4), (18, 8)),
    ],
)
def test_output_shapes_for_any_input_size(kwargs, size, expected):
    model = tiny(**kwargs)
    c = kwargs.get("in_chans", 3)
    with torch.no_grad():
        out = model(image(2, c, *size))
    assert out.shape == (2, c, *expected)
    assert torch.isfinite(out).all()


def test_padding_is_official_reflect_padding():
    model = tiny()
    x = image(1, 3, 13, 17)
    assert torch.equal(model.pad_to_window(x), F.pad(x, (0, 3, 0, 3), mode="reflect"))
    assert model.pad_to_window(image(1, 3, 8, 12)).shape == (1, 3, 8, 12)


def test_crop_of_padded_input_matches_direct_run():
    # running on the reflect-padded image and cropping must equal running on the original
    model = tiny(upscale=2)
    x = image(1, 3, 13, 17)
    with torch.no_grad():
        direct = model(x)
        padded = model(F.pad(x, (0, 3, 0, 3), mode="reflect"))[:, :, :26, :34]
    torch.testing.assert_close(direct, padded, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# shifted-window attention against a per-token reference


def naive_block(blk: SwinTransformerBlock, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The block without windows, rolls or masks: every token attends to the tokens of its own
    (shift-offset, border-clipped) window, with bias ``table[dy, dx]`` from their offset."""
    ws, s, heads = blk.window_size, blk.shift_size, blk.num_heads
    rows = torch.arange(h).repeat_interleave(w)
    cols = torch.arange(w).repeat(h)
    # windows start at s, s + ws, ...; the clipped pieces at both borders are separate windows
    grp_r, grp_c = (rows + ws - s) // ws, (cols + ws - s) // ws
    same = (grp_r[:, None] == grp_r[None, :]) & (grp_c[:, None] == grp_c[None, :])
    dy = (rows[:, None] - rows[None, :]).clamp(-(ws - 1), ws - 1) + ws - 1
    dx = (cols[:, None] - cols[None, :]).clamp(-(ws - 1), ws - 1) + ws - 1
    bias = blk.attn.relative_position_bias_table[dy * (2 * ws - 1) + dx].permute(2, 0, 1)  # heads, L, L
    b, n, c = x.shape
    q, k, v = blk.attn.qkv(blk.norm1(x)).view(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    logits = (q @ k.transpose(-2, -1)) * (c // heads) ** -0.5 + bias
    attn = logits.masked_fill(~same, float("-inf")).softmax(-1)
    x = x + blk.attn.proj((attn @ v).transpose(1, 2).reshape(b, n, c))
    return x + blk.mlp(blk.norm2(x))


@pytest.mark.parametrize("shift", [0, 2])
@pytest.mark.parametrize("size", [(8, 8), (8, 12), (12, 4)])
def test_window_attention_matches_per_token_reference(shift, size):
    torch.manual_seed(0)
    # trained at 8x8; (8, 12) and (12, 4) need a mask computed for the actual size
    blk = SwinTransformerBlock(12, (8, 8), num_heads=3, window_size=4, shift_size=shift).eval()
    with torch.no_grad():
        for p in blk.parameters():
            p.add_(torch.randn_like(p) * 0.3)
        x = torch.randn(2, size[0] * size[1], 12)
        torch.testing.assert_close(blk(x, size), naive_block(blk, x, *size), rtol=1e-5, atol=1e-5)


def naive_swinir(model: SwinIR, x: torch.Tensor) -> torch.Tensor:
    """SwinIR with ``pixelshuffledirect`` from the paper's equations and :func:`naive_block`."""
    h, w = x.shape[-2:]
    ws, c = model.window_size, model.embed_dim
    x = F.pad(x, (0, -w % ws, 0, -h % ws), mode="reflect")
    x = (x - torch.tensor([0.4488, 0.4371, 0.4040]).view(1, 3, 1, 1)) * model.img_range
    hp, wp = x.shape[-2:]
    feat = model.conv_first(x)
    tokens = model.patch_embed.norm(feat.flatten(2).transpose(1, 2))
    for layer in model.layers:
        y = tokens
        for blk in layer.residual_group.blocks:
            y = naive_block(blk, y, hp, wp)
        tokens = tokens + layer.conv(y.transpose(1, 2).reshape(-1, c, hp, wp)).flatten(2).transpose(1, 2)
    deep = model.norm(tokens).transpose(1, 2).reshape(-1, c, hp, wp)
    out = model.upsample(model.conv_after_body(deep) + feat) / model.img_range
    out = out + torch.tensor([0.4488, 0.4371, 0.4040]).view(1, 3, 1, 1)
    return out[:, :, : h * model.upscale, : w * model.upscale]


def test_full_model_matches_per_token_reference():
    model = tiny(upscale=2, depths=[2, 3], num_heads=[2, 3], img_range=255.0)
    x = image(2, 3, 13, 10)
    with torch.no_grad():
        torch.testing.assert_close(model(x), naive_swinir(model, x), rtol=1e-4, atol=1e-4)


def test_stored_attn_mask_is_the_official_one_and_unused():
    model = tiny()
    blk = model.layers[0].residual_group.blocks[1]
    assert torch.equal(blk.attn_mask, shifted_window_mask(8, 8, 4, 2))
    mask = shifted_window_mask(8, 8, 4, 2)
    assert set(mask.unique().tolist()) == {0.0, -100.0}
    assert torch.equal(mask[0], torch.zeros(16, 16))  # the top-left window is one region
    assert (mask[-1] != 0).any()  # the bottom-right one mixes four
    x = image(1, 3, 8, 8)
    with torch.no_grad():
        before = model(x)
        blk.attn_mask.fill_(123.0)  # forward computes its own mask for the actual size
        assert torch.equal(model(x), before)


def test_training_mode_gradients_and_checkpointing():
    x = image(2, 3, 8, 8)
    grads = []
    for use_checkpoint in (False, True):
        model = tiny(seed=3, drop_path_rate=0.0, use_checkpoint=use_checkpoint).train()
        model(x).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1])


def test_bfloat16_forward():
    model = tiny().to(torch.bfloat16)
    with torch.no_grad():
        out = model(image(1, 3, 13, 17).to(torch.bfloat16))
    assert out.dtype == torch.bfloat16 and out.shape == (1, 3, 52, 68)


# ---------------------------------------------------------------------------------------------
# checkpoints


@pytest.mark.parametrize(
    "kwargs",
    [
        {"upscale": 4},
        {"upscale": 3, "upsampler": "pixelshuffle", "depths": [2, 2], "num_heads": [2, 4], "img_size": 12},
        {"upscale": 8, "upsampler": "pixelshuffle"},
        {"upscale": 4, "upsampler": "nearest+conv", "resi_connection": "3conv", "mlp_ratio": 1.5},
        {"upscale": 1, "upsampler": "", "in_chans": 1, "window_size": 2, "img_size": 6},
    ],
)
def test_detect_arch_recovers_the_arguments(kwargs):
    model = tiny(**kwargs)
    name, detected = detect_arch(model.state_dict())
    assert name == "swinir"
    expected = {**TINY, "upscale": 4, "in_chans": 3, "upsampler": "pixelshuffledirect", "resi_connection": "1conv",
                **kwargs}
    assert detected == expected
    load_state_dict_strict(build_arch(name, **detected), model.state_dict())


@pytest.mark.parametrize("kwargs", [LIGHT, {**CLASSICAL, "upscale": 4, "upsampler": "pixelshuffle"}, LARGE])
def test_detect_arch_on_released_configurations(kwargs):
    with torch.device("meta"):
        sd = SwinIR(**kwargs).state_dict()
        name, detected = detect_arch(sd)
        assert name == "swinir"
        # img_range is not stored in weights (it is 1.0 for all but the JPEG models)
        assert detected == {"in_chans": 3, "resi_connection": "1conv",
                            **{k: v for k, v in kwargs.items() if k != "img_range"}}
        rebuilt = SwinIR(**detected).state_dict()
    assert {k: v.shape for k, v in rebuilt.items()} == {k: v.shape for k, v in sd.items()}


def test_official_params_pth_loads_strictly(tmp_path):
    model = tiny(upscale=4)
    path = tmp_path / "002_lightweightSR_DIV2K_s64w8_SwinIR-S_x4.pth"
    torch.save({"params": model.state_dict()}, path)  # the layout of the official release
    loaded = load_model(path)
    assert isinstance(loaded, SwinIR) and loaded.perceptsr_meta["arch"] == "swinir"
    assert loaded.perceptsr_meta["arch_kwargs"]["img_size"] == 8
    x = image(1, 3, 13, 17)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_native_round_trip(tmp_path):
    model = tiny(upscale=2, upsampler="pixelshuffle", depths=[2, 1], num_heads=[2, 2])
    kwargs = {**TINY, "upscale": 2, "upsampler": "pixelshuffle", "depths": [2, 1], "num_heads": [2, 2]}
    path = save_model(tmp_path / "swinir.safetensors", model, arch="swinir", arch_kwargs=kwargs)
    loaded = load_model(path)
    assert loaded.perceptsr_meta["arch_kwargs"] == kwargs and loaded.perceptsr_meta["scale"] == 2
    assert set(loaded.state_dict()) == set(model.state_dict())
    x = image(1, 3, 9, 11)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_state_dict_without_attn_masks_loads_strictly(tmp_path):
    model = tiny(upscale=4)
    sd = {k: v for k, v in model.state_dict().items() if not k.endswith("attn_mask")}
    assert detect_arch(sd)[1]["persistent_attn_mask"] is False
    torch.save({"params_ema": sd}, tmp_path / "no_masks.pth")
    loaded = load_model(tmp_path / "no_masks.pth")
    assert not any(k.endswith("attn_mask") for k in loaded.state_dict())
    x = image(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


# ---------------------------------------------------------------------------------------------
# registry and argument errors


def test_registry_entry():
    assert get_arch("SwinIR").kind == "generator"
    assert "swinir" in list_archs("generator")
    model = build_arch("swinir", **TINY, upscale=2)
    assert isinstance(model, SwinIR) and model.scale == model.upscale == 2
    with pytest.raises(ConfigError, match="window_sizes"):
        build_arch("swinir", window_sizes=8)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"upsampler": "bicubic"}, "upsampler must be one of"),
        ({"upsampler": "pixelshuffle", "upscale": 5}, "2\\^n or 3"),
        ({"upsampler": "nearest+conv", "upscale": 2}, "upscale 4 only"),
        ({"upsampler": "", "upscale": 2}, "upscale must be 1"),
        ({"resi_connection": "2conv"}, "resi_connection"),
        ({"num_heads": [5]}, "divisible"),
        ({"depths": [2, 2]}, "one positive entry per group"),
        ({"img_size": 10}, "multiple of window_size"),
        ({"patch_size": 2}, "patch_size 1"),
    ],
)
def test_argument_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        SwinIR(**{**TINY, **kwargs})
