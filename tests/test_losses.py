import math

import torch

from ganforge.losses import LOSSES


def test_non_saturating_on_hand_computed_logits():
    real = torch.tensor([0.0, 2.0])
    fake = torch.tensor([0.0, -1.0])
    pair = LOSSES["non-saturating"]
    # D: mean(-log sigmoid(real)) + mean(-log(1 - sigmoid(fake)))
    expected_d = (math.log(2) + math.log(1 + math.exp(-2))) / 2 + (
        math.log(2) + math.log(1 + math.exp(-1))
    ) / 2
    assert math.isclose(pair.d_loss(real, fake).item(), expected_d, rel_tol=1e-6)
    # G: mean(-log sigmoid(fake))
    expected_g = (math.log(2) + math.log(1 + math.exp(1))) / 2
    assert math.isclose(pair.g_loss(fake).item(), expected_g, rel_tol=1e-6)


def test_minimax_g_loss_is_log_one_minus_d():
    fake = torch.tensor([0.5, -3.0])
    d = torch.sigmoid(fake)
    expected = torch.log(1 - d).mean().item()
    assert math.isclose(LOSSES["minimax"].g_loss(fake).item(), expected, rel_tol=1e-5)


def test_losses_stay_finite_where_sigmoid_saturates():
    big = torch.tensor([100.0, -100.0])
    for pair in LOSSES.values():
        assert torch.isfinite(pair.d_loss(big, -big))
        assert torch.isfinite(pair.g(big, -big))


def test_non_saturating_gradient_does_not_vanish_when_d_wins():
    fake = torch.tensor([-10.0], requires_grad=True)  # D is sure the fake is fake
    LOSSES["non-saturating"].g_loss(fake).backward()
    ns = fake.grad.abs().item()
    fake.grad = None
    LOSSES["minimax"].g_loss(fake).backward()
    mm = fake.grad.abs().item()
    assert ns > 0.99 and mm < 1e-4


def test_wgan_hinge_and_least_squares_values():
    real = torch.tensor([2.0, 0.5])
    fake = torch.tensor([-1.0, 0.5])
    assert math.isclose(LOSSES["wgan"].d_loss(real, fake).item(), (-0.25) - 1.25)
    assert math.isclose(LOSSES["wgan"].g_loss(fake).item(), 0.25)
    # hinge: mean(relu(1 - real)) + mean(relu(1 + fake)) = (0 + 0.5)/2 + (0 + 1.5)/2
    assert math.isclose(LOSSES["hinge"].d_loss(real, fake).item(), 1.0)
    assert math.isclose(LOSSES["hinge"].g_loss(fake).item(), 0.25)
    # least squares: 0.5 mean((real-1)^2) + 0.5 mean(fake^2) = 0.5*(1 + 0.25)/2 + 0.5*(1 + 0.25)/2
    assert math.isclose(LOSSES["least-squares"].d_loss(real, fake).item(), 0.625)
    assert math.isclose(LOSSES["least-squares"].g_loss(fake).item(), 0.5 * (4 + 0.25) / 2)


def test_every_loss_pushes_the_right_way():
    """D's loss falls when real scores rise and fake scores fall; G's loss falls when fake scores rise."""
    for name, pair in LOSSES.items():
        real = torch.tensor([0.3, 0.6], requires_grad=True)  # scores in (0, 1): inside every margin
        fake = torch.tensor([0.1, 0.4], requires_grad=True)
        pair.d_loss(real, fake).backward()
        assert (real.grad <= 0).all() and (real.grad < 0).any(), name
        assert (fake.grad >= 0).all() and (fake.grad > 0).any(), name
        fake2 = torch.tensor([0.1, 0.4], requires_grad=True)
        pair.g(fake2, real.detach()).backward()
        assert (fake2.grad < 0).all(), name


def test_relativistic_pairs_each_fake_with_a_real():
    real = torch.tensor([2.0, 0.5])
    fake = torch.tensor([-1.0, 0.5])
    pair = LOSSES["relativistic"]
    assert pair.paired and not pair.probabilistic
    sp = lambda t: math.log1p(math.exp(t))  # noqa: E731  softplus
    # D: mean softplus(fake_i - real_i); G: mean softplus(real_i - fake_i)
    assert math.isclose(pair.d_loss(real, fake).item(), (sp(-3.0) + sp(0.0)) / 2, rel_tol=1e-6)
    assert math.isclose(pair.g_loss(fake, real).item(), (sp(3.0) + sp(0.0)) / 2, rel_tol=1e-6)
    # only the differences count: a shift of every score changes nothing ...
    assert math.isclose(pair.d_loss(real + 7.0, fake + 7.0).item(), pair.d_loss(real, fake).item(), rel_tol=1e-6)
    # ... and the pairing does: real i is compared with fake i, not with the batch's mean
    assert not math.isclose(pair.d_loss(real, fake.flip(0)).item(), pair.d_loss(real, fake).item())
    # the gradient on fake i comes from its own pair only: sigmoid(real_i - fake_i) / N
    f = fake.clone().requires_grad_(True)
    pair.g_loss(f, real).backward()
    torch.testing.assert_close(f.grad, -torch.sigmoid(real - fake) / 2)
