"""PerceptualLoss: zero on identical inputs, gradients to the input only, frozen VGG, conventions."""

from __future__ import annotations

import pytest
import torch

from perceptsr.losses import PerceptualLoss


def _random_loss(**kw):
    kw.setdefault("weights", None)
    return PerceptualLoss(generator=torch.Generator().manual_seed(0), **kw)


@pytest.fixture(scope="module")
def loss54():
    return _random_loss(layer_weights={"conv5_4": 1.0})


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(1)
    return torch.rand(2, 3, 32, 32, generator=g), torch.rand(2, 3, 32, 32, generator=g)


def test_zero_for_identical_positive_otherwise(loss54, images):
    x, y = images
    assert loss54(x, x.clone()).item() == 0.0
    assert loss54(x, y).item() > 0


def test_gradients_reach_input_only(loss54, images):
    x, y = images
    x = x.clone().requires_grad_(True)
    y = y.clone().requires_grad_(True)
    loss54.train()
    assert not loss54.vgg.training and not loss54.vgg.features.training
    loss54(x, y).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert y.grad is None  # target features are computed without grad
    for p in loss54.parameters():
        assert not p.requires_grad and p.grad is None


def test_conventions_chosen_by_weights():
    assert _random_loss(convention="caffe").convention == "caffe"
    assert _random_loss().convention == "torchvision"
    assert _random_loss(use_input_norm=False).convention == "none"
    with pytest.raises(ValueError, match="criterion"):
        _random_loss(criterion="huber")
    with pytest.raises(ValueError, match="only available for vgg19"):
        PerceptualLoss(vgg_type="vgg16", weights="caffe")


def test_criteria_layers_and_range_norm(images):
    x, y = images
    layers = {"conv1_2": 0.1, "relu3_4": 1.0}
    l1 = _random_loss(layer_weights=layers)
    assert len(l1.vgg.features) == 18  # truncated after relu3_4 (index 17)
    parts = sum(w * _random_loss(layer_weights={k: 1.0})(x, y) for k, w in layers.items())
    assert torch.allclose(l1(x, y), parts, rtol=1e-5)
    l2 = _random_loss(criterion="l2", layer_weights={"conv2_2": 1.0})(x, y)
    fro = _random_loss(criterion="fro", layer_weights={"conv2_2": 1.0})(x, y)
    numel = 2 * 128 * 16 * 16
    assert torch.allclose(fro**2, l2 * numel, rtol=1e-4)
    ranged = _random_loss(layer_weights=layers, range_norm=True, loss_weight=2.0)
    assert torch.allclose(ranged(2 * x - 1, 2 * y - 1), 2 * l1(x, y), rtol=1e-5)


def test_caffe_asset(assets_dir, images):
    x, y = images
    path = assets_dir / "backbones" / "vgg19_caffe_features.safetensors"
    loss = PerceptualLoss(weights=path)  # convention inferred from the name
    assert loss.convention == "caffe"
    value = loss(x, y)
    assert value.item() > 0 and loss(x, x).item() == 0.0
    by_name = PerceptualLoss(weights="caffe")
    assert by_name.convention == "caffe"
    assert torch.allclose(by_name(x, y), value)
