import pytest
import torch

from ganforge.config import ConfigError, build_config
from ganforge.models import CODE_DIM, MODELS, build_models, model_for_resolution
from ganforge.models.dcgan import FastDropout

IMAGE_MODELS = [name for name, spec in MODELS.items() if spec.resolution > 0 and spec.family == "gan"]  # VAEs: test_vae.py


@pytest.mark.parametrize("name", IMAGE_MODELS)
@pytest.mark.parametrize("channels", [1, 3])
def test_model_maps_z_to_images_and_logits(name, channels):
    torch.manual_seed(0)
    G, D = build_models(name, z_dim=8, channels=channels, g_channels=4, d_channels=4, dropout=0.3)
    z = torch.randn(5, 8)
    x = G(z)
    r = MODELS[name].resolution
    assert x.shape == (5, channels, r, r)
    assert x.min() >= -1 and x.max() <= 1
    logits = D(x)
    assert logits.shape == (5,)
    assert torch.isfinite(logits).all()
    # D returns raw logits, not probabilities: scaled-up inputs push them outside [0, 1].
    assert D(x * 50).abs().max() > 0


def test_dcgan_init_statistics():
    torch.manual_seed(0)
    G, D = build_models("dcgan32", z_dim=100, channels=3, g_channels=64, d_channels=64, dropout=0.3)
    w = G.net[0].weight
    assert abs(w.std().item() - 0.02) < 0.002 and abs(w.mean().item()) < 0.002
    bn = G.net[1]
    assert abs(bn.weight.mean().item() - 1.0) < 0.01 and bn.bias.abs().max() == 0


def test_dcgan28_matches_the_seed_layers():
    G, D = build_models("dcgan28", z_dim=100, channels=1, g_channels=64, d_channels=64, dropout=0.3)
    assert G.fc[0].out_features == 7 * 7 * 256 and G.fc[0].bias is None
    convs = [m for m in G.net if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (256, 128, (5, 5), (1, 1)),
        (128, 64, (5, 5), (2, 2)),
        (64, 1, (5, 5), (2, 2)),
    ]
    assert sum(isinstance(m, FastDropout) for m in D.modules()) == 2
    assert D.head[-1].out_features == 1


def test_fast_dropout_matches_dropout_statistics():
    torch.manual_seed(0)
    x = torch.ones(200, 8, 16, 16)
    drop = FastDropout(0.3).train()
    y = drop(x)
    assert abs((y == 0).float().mean().item() - 0.3) < 0.01
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1 / 0.7))
    assert abs(y.mean().item() - 1.0) < 0.02  # inverted dropout keeps the expectation
    y2 = FastDropout(0.3, channelwise=True).train()(x)
    per_map = y2.view(200, 8, -1)
    assert (per_map.min(-1).values == per_map.max(-1).values).all()  # whole maps dropped
    assert torch.equal(drop.eval()(x), x)
    # the mask follows x's memory layout (channels_last), is independent across elements and
    # positions, and the gradient is the same mask
    xl = torch.ones(64, 16, 8, 8).contiguous(memory_format=torch.channels_last).requires_grad_()
    yl = FastDropout(0.5).train()(xl)
    kept = (yl != 0).float()
    assert yl.is_contiguous(memory_format=torch.channels_last)
    for dim in (0, 1, 2, 3):  # no position or channel always kept / dropped
        assert (kept.transpose(0, dim).flatten(1).mean(1) - 0.5).abs().max() < 0.05
    assert abs(torch.corrcoef(torch.stack([kept[:, :, :, :-1].flatten(), kept[:, :, :, 1:].flatten()]))[0, 1]) < 0.03
    yl.sum().backward()
    assert torch.equal(xl.grad, yl.detach())  # d(x * mask)/dx = mask, and x = 1
    odd = torch.ones(5, 3, 7).transpose(1, 2)  # neither contiguous nor channels_last; odd length
    assert FastDropout(0.3).train()(odd).shape == odd.shape
    for p in (0.99999, 0.999995, 1 - 2**-20):  # the scale is 1 / the quantised keep probability
        y = FastDropout(p).train()(torch.ones(1000, 1000))
        assert y.max() <= 65536 and (y != 0).float().mean() < 5e-5
    # under torch.compile it draws with torch.rand (dynamo cannot trace random_(from, to))
    compiled = torch.compile(FastDropout(0.3).train(), backend="eager", fullgraph=True)
    assert abs((compiled(torch.ones(100, 100)) == 0).float().mean().item() - 0.3) < 0.03


def test_model_for_resolution():
    assert model_for_resolution(28) == "dcgan28-classic"
    assert model_for_resolution(32) == "dcgan32"
    with pytest.raises(ValueError, match="no model makes 48x48"):
        model_for_resolution(48)


def test_pacgan_packing_shapes():
    from ganforge.models import PackedD

    torch.manual_seed(0)
    G, D = build_models(
        "dcgan28-classic", z_dim=8, channels=1, g_channels=4, d_channels=4, dropout=0.0, pack=2
    )
    assert isinstance(D, PackedD) and D.D.features[0].in_channels == 2
    x = G(torch.randn(6, 8))
    assert D(x).shape == (3,)  # one logit per pack of two images


def test_pack_must_divide_the_batch():
    from ganforge.config import ConfigError, build_config

    with pytest.raises(ConfigError, match="must be a multiple of the pack size"):
        build_config(overrides={"model": {"pack": 3}, "train": {"batch_size": 64}})


def test_training_with_packing_runs(tmp_path, isolated_env):
    from ganforge.config import build_config
    from ganforge.train import train

    from .conftest import tiny

    o = tiny(tmp_path)
    o["model"]["pack"] = 2
    run = train(build_config(overrides=o), progress=False)
    assert (run / "checkpoints" / "final.pt").is_file()


def test_mlp_maps_z_to_points():
    G, D = build_models("mlp", z_dim=2, channels=2, g_channels=16, d_channels=8, dropout=0.0)
    x = G(torch.randn(6, 2))
    assert x.shape == (6, 2)
    assert D(x).shape == (6,)
    maxout = D.features[0]
    assert maxout.linear.out_features == 8 * 5  # 5 maxout pieces


def test_latent_codes_split_z_into_an_even_code_and_independent_unit_noise():
    torch.manual_seed(0)
    G, _ = build_models("mlp", z_dim=3, channels=2, g_channels=16, d_channels=8, dropout=0.0, latent_codes=10)
    seen = []
    G.G.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    z = torch.randn(50_000, 3)
    assert G(z).shape == (50_000, 2)
    (inner,) = seen
    assert inner.shape == (50_000, 3 + CODE_DIM)
    codes, k = torch.unique(inner[:, 3:], dim=0, return_inverse=True)
    assert codes.shape[0] == 10 and torch.equal(codes.sort(0).values, G.codes.sort(0).values)
    share = torch.bincount(k, minlength=10).float() / len(k)
    assert (share - 0.1).abs().max() < 0.01  # each code as likely as the others
    assert torch.equal(inner[:, 1:3], z[:, 1:])  # the other coordinates pass through
    z0 = inner[:, 0]
    assert abs(z0.mean()) < 0.02 and abs(z0.var() - 1) < 0.02 and z0.abs().max() <= 3**0.5 + 1e-5
    for j in range(10):  # the fresh coordinate does not tell the code: the same spread within each code
        assert abs(z0[k == j].mean()) < 0.05 and abs(z0[k == j].var() - 1) < 0.06
    # the code is a function of z alone: equal z, equal points; and it is kept in G's state
    assert torch.equal(G(z[:8]), G(z[:8].clone())) and "codes" in G.state_dict()


def test_same_code_pairs_share_the_code_and_keep_unit_noise():
    G, _ = build_models("mlp", z_dim=2, channels=2, g_channels=16, d_channels=8, dropout=0.0, latent_codes=10)
    seen = []
    G.G.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    z, fresh = torch.randn(20_000, 2), torch.randn(20_000, 2)
    pair = G.same_code(z, fresh)
    G(z), G(pair)
    assert torch.equal(seen[0][:, 2:], seen[1][:, 2:])  # the same code row by row
    assert torch.equal(pair[:, 1:], fresh[:, 1:])
    assert abs(pair[:, 0].mean()) < 0.03 and abs(pair[:, 0].var() - 1) < 0.03  # still N(0, 1) overall


def test_latent_codes_are_refused_where_they_mean_nothing():
    with pytest.raises(ConfigError, match="1 code is the plain latent"):
        build_config(overrides={"model": {"latent_codes": 1}})
    with pytest.raises(ConfigError, match="latent codes are for GANs"):
        build_config(overrides={"model": {"latent_codes": 8}, "loss": {"name": "elbo"}})


@pytest.mark.parametrize("name", [n for n in IMAGE_MODELS if MODELS[n].conditional])
def test_conditional_models_depend_on_the_label(name):
    torch.manual_seed(0)
    G, D = build_models(name, 8, 1, 4, 4, 0.0, num_classes=10)
    G.eval()
    z = torch.randn(1, 8).repeat(2, 1)
    c = torch.tensor([3, 7])
    with torch.no_grad():  # conditional BN starts as plain BN: give the classes different gains
        for m in G.modules():
            if hasattr(m, "gain"):
                m.gain.weight.normal_(1.0, 0.5)
    x = G(z, c)
    assert not torch.allclose(x[0], x[1])  # same z, different class -> different image
    logits = D(x[:1].repeat(2, 1, 1, 1), c)
    assert logits[0] != logits[1]  # projection term: same image judged against two classes
    with pytest.raises(ValueError, match="class-conditional"):
        G(z)


def test_seed_dcgan28_has_no_conditional_variant():
    from ganforge.config import ConfigError, build_config

    with pytest.raises(ConfigError, match="no class-conditional variant"):
        build_config(overrides={"model": {"name": "dcgan28", "conditional": True}})


def test_resnet32_follows_sngan():
    G, D = build_models("resnet32", 128, 3, 256, 128, 0.0)  # the paper's widths: G 256, D 128
    assert len(G.blocks) == 3 and G.fc.out_features == 4 * 4 * 256
    blocks = [m for m in D.features if m.__class__.__name__ == "DBlock"]
    assert [b.down for b in blocks] == [True, True, False, False]
    n_params = sum(p.numel() for p in G.parameters()) + sum(p.numel() for p in D.parameters())
    assert 4e6 < n_params < 6e6  # SNGAN's CIFAR ResNet: about 4.3M (G) + 1.1M (D)


def test_minibatch_std_adds_the_batch_spread():
    from ganforge.models.layers import MinibatchStd

    layer = MinibatchStd(group=4)
    same = torch.ones(8, 3, 2, 2)
    out = layer(same)
    assert out.shape == (8, 4, 2, 2)
    assert out[:, 3].abs().max() < 1e-3  # identical samples: no spread
    varied = torch.randn(8, 3, 2, 2)
    assert layer(varied)[:, 3].min() > 0.1
    assert layer(torch.randn(6, 5)).shape == (6, 6)  # vectors; batch 6 -> groups of 3


def test_mbstd_lets_d_see_a_collapsed_batch():
    torch.manual_seed(0)
    G, D = build_models("dcgan28-classic", 8, 1, 4, 4, 0.0, mbstd=True)
    assert D.head.in_channels == 2 * 4 + 1
    x = torch.rand(8, 1, 28, 28) * 2 - 1
    collapsed = x[:1].repeat(8, 1, 1, 1)
    D.eval()
    assert not torch.allclose(D(x)[:1], D(collapsed)[:1])


@pytest.mark.parametrize("name", ["dcgan28", "resnet32"])
def test_generators_give_the_same_images_in_channels_last(name):
    """layout_of converts the reshaped dense output once for a channels_last G; the maths is unchanged."""
    from ganforge.models.layers import layout_of

    torch.manual_seed(0)
    G, _ = build_models(name, 8, 1, 8, 8, 0.0)
    z = torch.randn(4, 8)
    G.eval()
    plain = G(z)
    G.to(memory_format=torch.channels_last)
    torch.testing.assert_close(G(z), plain, rtol=1e-4, atol=1e-5)
    x = torch.randn(2, 3, 4, 4)
    assert layout_of(x, torch.empty(5, 3, 3, 3).to(memory_format=torch.channels_last)).is_contiguous(
        memory_format=torch.channels_last
    )
    assert layout_of(x, torch.empty(5, 3, 3, 3)) is x


def test_seed_discriminator_gives_the_same_scores_and_gradients_in_channels_last():
    """ToContiguous moves the seed D's last feature maps to NCHW before its LeakyReLU and dropout (fewer
    mixed-layout kernels); scores, input and weight gradients match the NCHW D, and its parameter
    names are those of checkpoints written before it (features.0, features.3, head.1)."""
    torch.manual_seed(0)
    _, D = build_models("dcgan28", 8, 1, 8, 8, 0.0)
    assert [k for k in D.state_dict()] == ["features.0.weight", "features.0.bias", "features.3.weight",
                                           "features.3.bias", "head.1.weight", "head.1.bias"]  # fmt: skip
    x = torch.randn(4, 1, 28, 28)
    results = []
    for layout in (torch.contiguous_format, torch.channels_last):
        D.zero_grad(set_to_none=True)
        D.to(memory_format=layout)
        xi = x.contiguous(memory_format=layout).requires_grad_()
        assert D.features(xi).is_contiguous()  # NCHW before the LeakyReLU, dropout and Flatten, whatever came in
        out = D(xi)
        out.backward(torch.tensor([1.0, -2.0, 0.5, 3.0]))
        results.append([out, xi.grad, *[p.grad for p in D.parameters()]])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape", [(64, 1, 5, 2, 2, 1, False), (32, 1, 4, 2, 1, 0, True), (16, 3, 4, 2, 1, 0, False)])
def test_fold_conv_transpose_matches_conv_transpose(shape, channels_last):
    """The matmul + col2im path of a one-channel ConvT gives nn.ConvTranspose2d's output and
    gradients (and the usual kernel runs for more channels and in eval mode)."""
    from ganforge.models.layers import FoldConvTranspose2d

    cin, cout, k, s, p, op, bias = shape
    torch.manual_seed(0)
    fold = FoldConvTranspose2d(cin, cout, k, s, p, output_padding=op, bias=bias)
    ref = torch.nn.ConvTranspose2d(cin, cout, k, s, p, output_padding=op, bias=bias)
    ref.load_state_dict(fold.state_dict())
    x = torch.randn(3, cin, 7, 7)
    if channels_last:
        fold, ref = fold.to(memory_format=torch.channels_last), ref.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    outs, grads = [], []
    for m in (fold, ref):
        xi = x.clone().requires_grad_()
        y = m(xi)
        y.backward(torch.linspace(-1, 1, y.numel()).view_as(y))
        outs.append(y)
        grads.append([xi.grad, *[q.grad for q in m.parameters()]])
    assert outs[0].shape == outs[1].shape == (3, cout, 7 * s + op + k - s - 2 * p, 7 * s + op + k - s - 2 * p)
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-4, atol=1e-5)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    fold.eval()
    torch.testing.assert_close(fold(x), ref(x), rtol=1e-4, atol=1e-5)
