import math

import pytest
import torch

from perceptsr.losses import discriminator_loss, generator_loss


def test_vanilla_matches_bce_by_hand():
    fake = torch.tensor([0.3, -1.2])
    expected = -torch.log(torch.sigmoid(fake)).mean()
    assert torch.allclose(generator_loss("vanilla", fake), expected, atol=1e-6)
    real = torch.tensor([2.0, 0.5])
    d = -torch.log(torch.sigmoid(real)).mean() - torch.log(1 - torch.sigmoid(fake)).mean()
    assert torch.allclose(discriminator_loss("vanilla", real, fake), d, atol=1e-6)


def test_ragan_is_relative_to_other_side_mean():
    real = torch.tensor([1.0, 3.0])
    fake = torch.tensor([0.0, 2.0])
    # shifting both sides by the same constant leaves relativistic losses unchanged
    for fn in (generator_loss, discriminator_loss):
        a = fn("ragan", fake, real) if fn is generator_loss else fn("ragan", real, fake)
        b = fn("ragan", fake + 5, real + 5) if fn is generator_loss else fn("ragan", real + 5, fake + 5)
        assert torch.allclose(a, b, atol=1e-6)
    # at equal logits each term is log 2
    same = torch.zeros(4)
    assert math.isclose(float(generator_loss("ragan", same, same)), math.log(2), rel_tol=1e-6)


def test_generator_gradient_pushes_fake_towards_real():
    fake = torch.zeros(3, requires_grad=True)
    generator_loss("vanilla", fake).backward()
    assert (fake.grad < 0).all()  # minimising raises the fake logits


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown GAN loss 'wgan'"):
        generator_loss("wgan", torch.zeros(1))
    with pytest.raises(ValueError, match="needs the discriminator's logits on real images"):
        generator_loss("ragan", torch.zeros(1))


def test_ragan_discriminator_loss_detaches_the_other_sides_mean():
    """As ESRGAN / BasicSR / the EA-Adam RRDB release: D(hr) - mean D(sr).detach() and
    D(sr) - mean D(hr).detach(), so each term reaches D only through its own side's logits."""
    real = torch.tensor([1.0, -0.5, 2.0], requires_grad=True)
    fake = torch.tensor([0.3, -1.0, 0.0], requires_grad=True)
    discriminator_loss("ragan", real, fake).backward()
    ref_real = real.detach().clone().requires_grad_()
    ref_fake = fake.detach().clone().requires_grad_()
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    loss = 0.5 * (bce(ref_real - fake.detach().mean(), torch.ones(3))
                  + bce(ref_fake - real.detach().mean(), torch.zeros(3)))
    loss.backward()
    torch.testing.assert_close(real.grad, ref_real.grad)
    torch.testing.assert_close(fake.grad, ref_fake.grad)
    assert bool((real.grad < 0).all()) and bool((fake.grad > 0).all())  # each side pushed its own way only
