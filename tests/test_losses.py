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
        assert torch.isfinite(pair.g_loss(big))


def test_non_saturating_gradient_does_not_vanish_when_d_wins():
    fake = torch.tensor([-10.0], requires_grad=True)  # D is sure the fake is fake
    LOSSES["non-saturating"].g_loss(fake).backward()
    ns = fake.grad.abs().item()
    fake.grad = None
    LOSSES["minimax"].g_loss(fake).backward()
    mm = fake.grad.abs().item()
    assert ns > 0.99 and mm < 1e-4
