"""LPIPS (published example distances) and DISTS (torchmetrics doctest value, properties)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from perceptsr.errors import CheckpointError, ConfigError, MetricInputError
from perceptsr.metrics.dists import DISTS, L2Pool2d
from perceptsr.metrics.lpips import LPIPS


def _load(path):
    arr = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous()


@pytest.fixture(scope="module")
def examples(references_dir):
    d = references_dir / "lpips_examples"
    return tuple(_load(d / f"{n}.png") for n in ("ex_ref", "ex_p0", "ex_p1"))


@pytest.fixture(scope="module")
def lpips_alex(assets_dir):
    return LPIPS("alex")


@pytest.fixture(scope="module")
def dists(assets_dir):
    return DISTS()


# ----------------------------------------------------------------------------- LPIPS

def test_lpips_alex_published_values(lpips_alex, examples):
    ref, p0, p1 = examples
    d = lpips_alex(torch.cat([p0, p1]), torch.cat([ref, ref]))
    assert d.shape == (2,)
    assert round(d[0].item(), 3) == 0.722  # official LPIPS-alex v0.1 example
    assert round(d[1].item(), 3) == 0.138
    assert torch.allclose(lpips_alex(p0, ref), d[:1], atol=1e-6)  # batched == single
    assert lpips_alex(ref, ref).item() == 0.0


def test_lpips_vgg_self_consistent(assets_dir, examples):
    ref, p0, p1 = examples
    m = LPIPS("vgg")
    d = m(torch.cat([p0, p1, ref]), torch.cat([ref, ref, ref]))
    assert d[2].item() == 0.0 and 0 < d[1] < d[0] < 1  # p1 is the closer patch, as with alex
    assert torch.allclose(m(ref, p0), d[:1], atol=1e-6)  # symmetric
    assert "[-1,1] internally" in m.protocol


def test_lpips_options_and_errors(tmp_path):
    with pytest.raises(ConfigError, match="SqueezeNet"):
        LPIPS("squeeze")
    with pytest.raises(ConfigError, match="unknown net"):
        LPIPS("resnet")
    bad = tmp_path / "lin.pth"
    torch.save({f"lin{k}.model.1.weight": torch.ones(1, 8, 1, 1) for k in range(5)}, bad)
    with pytest.raises(CheckpointError, match="shape mismatches"):
        LPIPS("alex", pretrained=False, lin_weights=bad)
    m = LPIPS("alex", pretrained=False)
    x = torch.rand(1, 3, 32, 32)
    with pytest.raises(MetricInputError, match=r"\[-1, 1\]"):
        m(x * 2 - 1, x)
    with pytest.raises(MetricInputError, match="too small"):
        m(torch.rand(1, 3, 24, 24), torch.rand(1, 3, 24, 24))


def test_lpips_as_loss_gradients():
    torch.manual_seed(0)
    x, y = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    plain = LPIPS("alex", pretrained=False)
    assert plain(x.requires_grad_(True), y).grad_fn is None
    m = LPIPS("alex", pretrained=False, as_loss=True)
    m.train()
    assert not m.net.training
    x = x.detach().requires_grad_(True)
    d = m(x, y)
    assert d.shape == (2,) and d.requires_grad
    d.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in m.parameters())


# ----------------------------------------------------------------------------- DISTS

def test_l2pool_filter():
    pool = L2Pool2d(2)
    expect = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16
    assert torch.allclose(pool.filter[1, 0], expect)
    out = pool(torch.ones(1, 2, 8, 8))
    assert out.shape == (1, 2, 4, 4) and torch.allclose(out[..., 1:, 1:], torch.ones(1, 2, 3, 3))


def test_dists_matches_torchmetrics_doctest(dists):
    # torchmetrics' DISTS doctest (seed 42, the official weights): mean 0.1882.
    torch.manual_seed(42)
    preds, target = torch.rand(10, 3, 100, 100), torch.rand(10, 3, 100, 100)
    assert round(dists(preds, target).mean().item(), 4) == 0.1882


def test_dists_properties(dists, examples):
    ref, p0, p1 = examples
    d = dists(torch.cat([p0, p1, ref]), torch.cat([ref, ref, ref]))
    assert abs(d[2].item()) < 1e-6
    assert 0 < d[1] < d[0] < 1  # ex_p1 is closer to ex_ref than ex_p0
    assert torch.allclose(dists(torch.cat([ref, ref]), torch.cat([p0, p1])), d[:2], atol=1e-6)


def test_dists_as_loss_and_weights_errors(tmp_path):
    torch.manual_seed(0)
    m = DISTS(pretrained=False, as_loss=True)
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    d = m(x, torch.rand(2, 3, 32, 32))
    assert d.shape == (2,)
    d.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in m.parameters())
    assert abs(m(x.detach(), x.detach()).max().item()) < 1e-6
    bad = tmp_path / "weights.pt"
    torch.save({"alpha": torch.ones(1, 1475, 1, 1), "beta": torch.ones(1, 1000)}, bad)
    with pytest.raises(CheckpointError, match="'beta' must hold 1475"):
        DISTS(pretrained=False, weights=bad)
    torch.save({"alpha": torch.ones(1475)}, bad)
    with pytest.raises(CheckpointError, match="expected keys"):
        DISTS(pretrained=False, weights=bad)
