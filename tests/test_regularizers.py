import math

import pytest
import torch

from ganforge.ema import update_ema
from ganforge.models import apply_spectral_norm, build_models
from ganforge.regularizers import gradient_penalty, mode_seeking_loss, r1_penalty


class Linear(torch.nn.Module):
    """D(x) = <w, x>: its input gradient is w everywhere, so the penalties are known exactly."""

    def __init__(self, w):
        super().__init__()
        self.w = torch.nn.Parameter(w)

    def forward(self, x):
        return (x.flatten(1) * self.w.flatten()).sum(1)


def test_r1_and_gradient_penalty_analytic():
    w = torch.tensor([3.0, 4.0, 0.0, 0.0]).view(1, 2, 2)  # ||w|| = 5
    D = Linear(w)
    real = torch.randn(6, 1, 2, 2)
    fake = torch.randn(6, 1, 2, 2)
    assert torch.allclose(r1_penalty(D, real), torch.full((6,), 25.0))
    gp = gradient_penalty(D, real, fake, torch.Generator().manual_seed(0))
    assert torch.allclose(gp, torch.full((6,), 16.0))  # (5 - 1)^2
    # the penalties are differentiable w.r.t. D's parameters (create_graph): d(R1)/dw = 2w
    r1_penalty(D, real).mean().backward()
    assert torch.allclose(D.w.grad, 2 * w)


def test_r1_matches_autograd_on_a_real_discriminator():
    torch.manual_seed(0)
    _, D = build_models("dcgan28-classic", 8, 1, 4, 4, 0.0)
    D.eval()  # BN on running statistics: each image's score depends on that image alone
    x = torch.randn(3, 1, 28, 28)
    ours = r1_penalty(D, x)
    for i in range(3):
        xi = x[i : i + 1].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(D(xi).sum(), xi)
        assert torch.allclose(ours[i], g.pow(2).sum(), rtol=1e-4)


def test_spectral_norm_keeps_the_top_singular_value_near_one():
    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 32)
    with torch.no_grad():
        layer.weight.mul_(10)
    net = apply_spectral_norm(torch.nn.Sequential(layer))
    for _ in range(20):  # power iterations run in training mode forwards
        net(torch.randn(4, 64))
    sigma = torch.linalg.matrix_norm(net[0].weight.detach(), ord=2)
    assert abs(sigma.item() - 1.0) < 0.05


def test_ema_beta_zero_copies_and_beta_one_freezes():
    torch.manual_seed(0)
    G, _ = build_models("dcgan28-classic", 8, 1, 4, 4, 0.0)
    G_ema, _ = build_models("dcgan28-classic", 8, 1, 4, 4, 0.0)
    frozen = {k: v.clone() for k, v in G_ema.state_dict().items()}
    update_ema(G_ema, G, beta=1.0)
    for name, p in G_ema.named_parameters():
        assert torch.equal(p, frozen[name])
    update_ema(G_ema, G, beta=0.0)
    for (_, p_ema), (_, p) in zip(G_ema.named_parameters(), G.named_parameters()):
        assert torch.equal(p_ema, p)


def test_ema_warmup_follows_g_early_and_reaches_beta():
    from ganforge.ema import ema_beta

    assert ema_beta(0.9999, 0) == 0.1  # step 0: G_ema moves 90 % of the way to G
    assert ema_beta(0.9999, 100) < 0.92
    assert ema_beta(0.999, 10**6) == 0.999


def test_recalibrate_bn_sets_statistics_of_the_generators_own_activations():
    from ganforge.ema import recalibrate_bn

    torch.manual_seed(0)
    G, _ = build_models("dcgan28-classic", 8, 1, 4, 4, 0.0)
    bn = G.net[1]
    bn.running_mean.fill_(123.0)  # stale statistics, as copied from another network
    state = torch.get_rng_state()
    recalibrate_bn(G, 8, torch.device("cpu"), batches=4, batch_size=64, seed=1)
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is untouched
    assert not G.training and bn.momentum == 0.1  # eval mode, momentum restored
    gen = torch.Generator().manual_seed(1)
    z = torch.cat([torch.randn(64, 8, generator=gen) for _ in range(4)])
    pre_bn = G.net[0](z.view(-1, 8, 1, 1))  # [256, 4b, 7, 7]: what the first BN sees
    assert torch.allclose(bn.running_mean, pre_bn.mean(dim=(0, 2, 3)), atol=1e-5)


def test_mode_seeking_loss_by_hand_and_its_gradient_spreads_the_outputs():
    z1, z2 = torch.zeros(4, 3), torch.full((4, 3), 2.0)  # mean |z1 - z2| = 2
    f1 = torch.zeros(4, 1, 2, 2)
    f2 = torch.full((4, 1, 2, 2), 0.5, requires_grad=True)  # mean |f1 - f2| = 0.5: ratio 0.25
    loss = mode_seeking_loss(f1, f2, z1, z2)
    assert loss.item() == pytest.approx(1 / (0.25 + 1e-5))
    loss.backward()
    assert (f2.grad < 0).all()  # descending the loss moves G(z2) away from G(z1)


def test_topk_schedule_decays_per_epoch_to_its_floor():
    from ganforge.steps import topk_keep

    assert topk_keep(64, 0.0, 1.0, 0.99) is None  # reg.topk = 1: off
    assert topk_keep(64, 0.0, 0.5, 0.99) == 64  # k starts at the whole batch
    assert topk_keep(64, 10.0, 0.25, 0.9) == math.ceil(64 * 0.9**10) == 23  # 0.9 ** 10 = 0.349, above the floor
    assert topk_keep(64, 10.0, 0.5, 0.9) == 32  # the floor holds once gamma ** epoch falls below it
    assert topk_keep(3, 100.0, 0.1, 0.5) == 1  # at least one fake


def test_g_step_with_topk_trains_on_the_fakes_d_rates_most_real():
    """The loss is the G loss of the k highest logits, and the dropped fakes get no gradient."""
    from ganforge.losses import LOSSES
    from ganforge.steps import g_step

    class D(Linear):  # D(x, c) as the training steps call it
        def forward(self, x, c=None):
            return super().forward(x)

    D = D(torch.tensor([1.0, 0.0, 0.0, 0.0]).view(1, 2, 2))  # logit = the first pixel
    G = torch.nn.Identity()
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.0)
    fakes = torch.tensor([0.5, -2.0, 3.0, 1.0]).view(4, 1, 1, 1).repeat(1, 1, 2, 2).requires_grad_(True)
    loss = LOSSES["non-saturating"]
    got = g_step(G, D, opt, loss, torch.zeros(4, 1), fake_img=fakes, keep=2)
    assert got.item() == pytest.approx(loss.g_loss(torch.tensor([3.0, 1.0])).item())  # logits 3 and 1 kept
    first_pixel_grad = fakes.grad.flatten(1)[:, 0]
    assert first_pixel_grad[0] == 0 and first_pixel_grad[1] == 0  # logits 0.5 and -2: dropped
    assert (first_pixel_grad[2:] < 0).all()  # the kept ones are pushed towards "real"
    fakes.grad = None
    full = g_step(G, D, opt, loss, torch.zeros(4, 1), fake_img=fakes, keep=4)  # keep = batch: the plain G step
    assert full.item() == pytest.approx(loss.g_loss(torch.tensor([0.5, -2.0, 3.0, 1.0])).item())


def test_topk_config_is_checked_and_a_run_trains_with_it(tmp_path, monkeypatch):
    import importlib

    from ganforge.config import ConfigError, build_config
    from ganforge.train import train

    objectives = importlib.import_module("ganforge.objectives")  # where the GAN objective calls g_step
    kept = []
    real_g_step = objectives.g_step

    def g_step(*args, **kwargs):
        kept.append(kwargs.get("keep"))
        return real_g_step(*args, **kwargs)

    monkeypatch.setattr(objectives, "g_step", g_step)

    from .conftest import tiny

    for bad in ({"topk": 0.0}, {"topk": 1.5}, {"topk_gamma": 0.0}):
        with pytest.raises(ConfigError, match=r"reg\.topk(_gamma)?: must be in \(0, 1\]"):
            build_config(overrides={"reg": bad})
    with pytest.raises(ConfigError, match="reg.topk: top-k training selects the fakes of the G step"):
        build_config(overrides={"reg": {"topk": 0.5}, "train": {"update": "simultaneous"}})
    cfg = tiny(tmp_path, steps=6)
    cfg["reg"] = {"topk": 0.5, "topk_gamma": 0.01}  # 64 images, batch 8: k reaches the floor within the run
    run = train(build_config(overrides=cfg), progress=False)
    assert (run / "checkpoints" / "final.pt").is_file()
    assert kept == [8, 5, 4, 4, 4, 4]  # 8 * max(0.5, 0.01 ** (8 * step / 64))


# ----------------------------------------------------------------------------------------------
# Issue #28: penalties per PacGAN pack, draws for the global batch, penalties through DiffAugment,
# the projection embedding under spectral norm.


def test_packed_penalties_are_per_pack_and_gp_is_zero_at_a_packed_critics_optimum():
    from ganforge.models import PackedD

    # a critic of packs of 2 with a unit-norm weight over the whole pack: its gradient norm is 1 per pack,
    # 1/sqrt(2) per image
    w = torch.full((1, 2, 2, 2), 0.5 / math.sqrt(2.0))  # [1, pack * C, H, W], ||w|| = 1
    D = PackedD(Linear(w), 2)
    real, fake = torch.randn(6, 1, 2, 2), torch.randn(6, 1, 2, 2)
    gp = gradient_penalty(D, real, fake, torch.Generator().manual_seed(0), pack=2)
    assert gp.shape == (3,) and torch.allclose(gp, torch.zeros(3), atol=1e-6)
    r1 = r1_penalty(D, real, pack=2)
    assert r1.shape == (3,) and torch.allclose(r1, torch.ones(3))
    # per image (the old behaviour) R1 would be 1/2 per image: gamma quietly halved
    assert torch.allclose(r1_penalty(D, real), torch.full((6,), 0.5))


def test_gp_draws_one_interpolation_weight_per_pack():
    seen = []

    def D(x):
        seen.append(x.detach().clone())
        return x.flatten(1).sum(1).view(-1, 2).sum(1)  # a critic of packs of 2

    gradient_penalty(D, torch.ones(8, 1, 1, 1), torch.zeros(8, 1, 1, 1), torch.Generator().manual_seed(1), pack=2)
    eps = seen[0].flatten()  # x_hat = eps * 1 + (1 - eps) * 0
    assert torch.equal(eps[0::2], eps[1::2]) and len(set(eps[0::2].tolist())) == 4


def test_two_ranks_draw_what_one_process_draws_for_the_global_batch():
    from ganforge.augment import make_augment
    from ganforge.draws import Draws

    x = torch.rand(8, 3, 8, 8) * 2 - 1
    whole = make_augment("color,translation,cutout", torch.Generator().manual_seed(5))(x)
    parts = [make_augment("color,translation,cutout", Draws(torch.Generator().manual_seed(5), 2, r))(x[4 * r : 4 * r + 4])
             for r in range(2)]  # fmt: skip
    assert torch.equal(torch.cat(parts), whole)
    # GP's interpolation weights alike, and each rank's generator ends where one process's does
    D = Linear(torch.randn(1, 3, 8, 8))
    fake = torch.rand(8, 3, 8, 8)
    one_gen = torch.Generator().manual_seed(7)
    one = gradient_penalty(D, x, fake, one_gen)
    gens = [torch.Generator().manual_seed(7) for _ in range(2)]
    two = torch.cat([gradient_penalty(D, x[4 * r : 4 * r + 4], fake[4 * r : 4 * r + 4], Draws(gens[r], 2, r))
                     for r in range(2)])  # fmt: skip
    assert torch.allclose(one, two)
    assert all(torch.equal(g.get_state(), one_gen.get_state()) for g in gens)


def test_penalties_differentiate_through_diffaugment_at_the_unaugmented_image():
    from ganforge.steps import make_penalty

    w = torch.tensor([3.0, 4.0, 0.0, 0.0]).view(1, 2, 2)  # ||w|| = 5
    D = Linear(w)
    D_c = lambda x, c: D(x)  # noqa: E731
    double = lambda x: 2 * x  # noqa: E731  (an "augmentation" whose input gradient is known: 2)
    real, fake = torch.randn(4, 1, 2, 2), torch.randn(4, 1, 2, 2)
    gen = torch.Generator().manual_seed(0)
    plain = make_penalty(D_c, 0, gen, r1_gamma=2.0)(real, fake, None, None)
    through = make_penalty(D_c, 0, gen, r1_gamma=2.0, augment=double)(real, fake, None, None)
    assert torch.allclose(plain, torch.tensor(25.0)) and torch.allclose(through, torch.tensor(100.0))


def test_d_step_hands_the_penalty_the_images_before_augmentation():
    from ganforge.losses import LOSSES
    from ganforge.steps import d_step

    torch.manual_seed(0)
    G, D = build_models("dcgan28-classic", 8, 1, 4, 4, 0.0)
    real, z = torch.rand(4, 1, 28, 28) * 2 - 1, torch.randn(4, 8)
    got = []
    d_step(G, D, torch.optim.SGD(D.parameters(), lr=0.0), LOSSES["non-saturating"], real, z,
           penalty=lambda r, f, c, cf: got.append(r) or torch.zeros(()), augment=lambda x: x.flip(-1))  # fmt: skip
    assert torch.equal(got[0], real)


def test_spectral_norm_normalises_the_projection_embedding():
    torch.manual_seed(0)
    _, D = build_models("dcgan28-classic", 8, 1, 4, 4, 0.0, spectral_norm=True, num_classes=10)
    x, c = torch.randn(4, 1, 28, 28), torch.arange(4)
    for _ in range(30):  # power iterations run in training mode forwards
        D(x, c)
    sigma = torch.linalg.matrix_norm(D.embed.weight.detach(), ord=2)
    assert abs(sigma.item() - 1.0) < 0.05


def test_gp_on_a_nonlinear_critic_interpolates_with_its_own_draws():
    """GP by hand on a conv critic (the linear D has the same gradient everywhere, so it never tested
    where the gradient is taken): x_hat = eps * real + (1 - eps) * fake with eps ~ U[0, 1] from the
    given generator, one per image, and (||grad D(x_hat)|| - 1)^2."""
    torch.manual_seed(0)
    _, D = build_models("dcgan32", 8, 3, 4, 4, 0.0)
    real, fake = torch.rand(4, 3, 32, 32) * 2 - 1, torch.rand(4, 3, 32, 32) * 2 - 1
    ours = gradient_penalty(D, real, fake, torch.Generator().manual_seed(5))
    eps = torch.rand(4, 1, 1, 1, generator=torch.Generator().manual_seed(5))
    assert 0 < eps.min() and eps.max() < 1 and eps.std() > 0.05  # distinct draws per image
    for i in range(4):
        x_hat = (eps[i] * real[i : i + 1] + (1 - eps[i]) * fake[i : i + 1]).requires_grad_(True)
        (g,) = torch.autograd.grad(D(x_hat).sum(), x_hat)
        assert torch.allclose(ours[i], (g.flatten().norm() - 1) ** 2, rtol=1e-4, atol=1e-7)
    at_real = gradient_penalty(D, real, real, torch.Generator().manual_seed(5))
    assert not torch.allclose(ours, at_real)  # the fakes count: the penalty is not taken at the reals


def test_r1_in_train_mode_is_the_gradient_of_what_d_scores_in_training():
    """Training runs D in train mode (dropout on): R1 is the input gradient of that D, dropout mask included."""
    _, D = build_models("dcgan32", 8, 3, 4, 4, 0.5)
    D.train()
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    torch.manual_seed(7)
    ours = r1_penalty(D, x)
    torch.manual_seed(7)  # the same dropout masks
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(D(xg).sum(), xg)
    assert torch.allclose(ours, g.pow(2).flatten(1).sum(1), rtol=1e-4)
    D.eval()
    assert not torch.allclose(ours, r1_penalty(D, x))  # eval mode (no dropout) is another penalty


def test_projection_d_adds_the_class_embedding_dot_the_pooled_features():
    """Miyato & Koyama 2018, eq. 3: D(x, c) = head(phi(x)) + <embed(c), sum-pooled phi(x)>, by hand."""
    torch.manual_seed(0)
    _, D = build_models("dcgan32", 8, 3, 4, 4, 0.0, num_classes=10)
    x, c = torch.rand(5, 3, 32, 32) * 2 - 1, torch.tensor([0, 3, 3, 9, 1])
    h = D.features(x)  # [N, F, 4, 4]
    want = D.head(h).reshape(5) + (D.embed(c) * h.sum(dim=(2, 3))).sum(1)
    assert torch.allclose(D(x, c), want, atol=1e-6)


def test_diffaugment_draws_anew_for_every_call():
    """Reals and fakes are augmented by separate calls: each gets its own shifts and cutouts (the same
    draws would let D compare them augmentation for augmentation)."""
    from ganforge.augment import make_augment

    x = torch.rand(8, 3, 32, 32)
    augment = make_augment("color,translation,cutout", torch.Generator().manual_seed(0))
    a, b = augment(x), augment(x)
    assert not torch.allclose(a, b)
    assert all(not torch.allclose(a[i], b[i]) for i in range(8))  # every image, not some
