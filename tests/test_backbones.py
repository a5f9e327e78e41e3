"""Feature backbones: torchvision layout, loading from safetensors and .pth, strict errors, conventions."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from perceptsr.archs.vgg_arch import (
    FeatureBackbone,
    FeatureExtractor,
    build_backbone,
    layer_names,
    load_backbone_weights,
    normalize_input,
    read_backbone_state_dict,
)
from perceptsr.errors import AssetError, CheckpointError


def _conv_indices(arch):
    return [i for i, m in enumerate(FeatureBackbone(arch).features) if isinstance(m, nn.Conv2d)]


def test_torchvision_layouts():
    assert _conv_indices("alexnet") == [0, 3, 6, 8, 10]
    assert _conv_indices("vgg16") == [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    vgg19 = _conv_indices("vgg19")
    assert len(vgg19) == 16 and vgg19[-1] == 34
    names = layer_names("vgg19")
    assert names[34] == "conv5_4" and names[35] == "relu5_4" and names[3] == "relu1_2"
    assert layer_names("alexnet")[11] == "relu5"


def _torchvision_style_state(arch, seed):
    """A whole-model state dict as torchvision saves it: features.* plus classifier.*."""
    net = FeatureBackbone(arch, generator=torch.Generator().manual_seed(seed))
    state = dict(net.state_dict())
    state["classifier.0.weight"] = torch.randn(8, 4)
    state["classifier.0.bias"] = torch.randn(8)
    return net, state


def test_load_torchvision_pth(tmp_path):
    net, state = _torchvision_style_state("alexnet", 1)
    path = tmp_path / "alexnet-owt.pth"
    torch.save(state, path)
    sd = read_backbone_state_dict(path)
    assert all(k.startswith("features.") for k in sd)
    loaded = build_backbone("alexnet", weights=path)
    for k, v in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_load_safetensors_float16_cast(tmp_path):
    net, _ = _torchvision_style_state("vgg16", 2)
    half = {k: v.half().contiguous() for k, v in net.state_dict().items()}
    path = tmp_path / "vgg16_features.safetensors"
    save_file(half, str(path))
    loaded = build_backbone("vgg16", weights=path)
    for k, v in loaded.state_dict().items():
        assert v.dtype == torch.float32
        assert torch.equal(v, half[k].float()), k


def test_strict_mismatch_is_reported_key_by_key(tmp_path):
    _, state = _torchvision_style_state("vgg16", 3)
    path = tmp_path / "vgg16.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as err:
        build_backbone("vgg19", weights=path)
    msg = str(err.value)
    assert "missing keys" in msg and "features.34.weight" in msg and str(path) in msg
    assert "shape mismatches" in msg and "features.19.weight" in msg
    # an unexpected key is named too
    state["features.40.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"unexpected keys \(1\): features\.40\.weight"):
        load_backbone_weights(FeatureBackbone("vgg16"), read_backbone_state_dict(_save(state, tmp_path)))


def _save(state, tmp_path):
    path = tmp_path / "extra.pth"
    torch.save(state, path)
    return path


def test_unreadable_files(tmp_path):
    with pytest.raises(AssetError):
        read_backbone_state_dict(tmp_path / "absent.pth")
    path = tmp_path / "nofeatures.pth"
    torch.save({"classifier.0.weight": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="no 'features"):
        read_backbone_state_dict(path)
    bad = tmp_path / "weights.npz"
    bad.write_bytes(b"123")
    with pytest.raises(CheckpointError, match="unsupported"):
        read_backbone_state_dict(bad)


def test_shared_assets_load_strictly(assets_dir):
    for arch, name in [("alexnet", "alexnet"), ("vgg16", "vgg16"), ("vgg19", "vgg19_caffe")]:
        build_backbone(arch, weights=assets_dir / "backbones" / f"{name}_features.safetensors")


def test_extractor_layers_truncation_and_freezing():
    fe = FeatureExtractor(["relu1_2", "conv2_2"], arch="vgg19", weights=None,
                          generator=torch.Generator().manual_seed(0))
    assert len(fe.features) == layer_names("vgg19").index("conv2_2") + 1  # truncated
    assert all(not p.requires_grad for p in fe.parameters())
    fe.train()
    assert not fe.features.training
    x = torch.rand(2, 3, 16, 16, requires_grad=True)
    out = fe(x)
    assert set(out) == {"relu1_2", "conv2_2"} and out["conv2_2"].shape == (2, 128, 8, 8)
    assert (out["conv2_2"] < 0).any()  # before ReLU
    out["conv2_2"].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="conv5_4"):
        FeatureExtractor(["conv5_4"], arch="vgg16", weights=None)


def test_normalize_input_known_values():
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    assert torch.allclose(normalize_input(mean, "torchvision"), torch.zeros(1, 3, 1, 1), atol=1e-7)
    one = torch.ones(1, 3, 1, 1)
    expect = torch.tensor([(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225])
    assert torch.allclose(normalize_input(one, "torchvision").flatten(), expect, atol=1e-6)
    # Caffe: RGB (1, 0, 0.5) -> BGR (127.5, 0, 255) - (103.939, 116.779, 123.68)
    rgb = torch.tensor([1.0, 0.0, 0.5]).view(1, 3, 1, 1)
    expect = torch.tensor([127.5 - 103.939, 0.0 - 116.779, 255.0 - 123.68])
    assert torch.allclose(normalize_input(rgb, "caffe").flatten(), expect, atol=1e-4)
    # LPIPS ScalingLayer on [-1, 1] input
    x = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    assert torch.allclose(normalize_input(x, "lpips"), torch.zeros(1, 3, 1, 1), atol=1e-7)
    assert torch.allclose(normalize_input(one, "lpips").flatten(),
                          torch.tensor([1.030 / 0.458, 1.088 / 0.448, 1.188 / 0.450]), atol=1e-6)
    assert normalize_input(rgb, "none") is rgb
    with pytest.raises(ValueError, match="convention"):
        normalize_input(rgb, "bgr")
