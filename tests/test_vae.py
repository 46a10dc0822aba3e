"""The VAE baseline: its ELBO maths, models, config rules, and a run through the GAN's loop and files."""

import json
import math

import pytest
import torch
from torch.distributions import Bernoulli, Normal, kl_divergence

import ganforge
from ganforge.checkpoint import load_checkpoint
from ganforge.config import ConfigError, build_config
from ganforge.losses import gaussian_kl, reconstruction_nll
from ganforge.models import MODELS, build_models, model_for_resolution
from ganforge.steps import vae_step
from ganforge.train import train

from .conftest import tiny
from .test_train import _assert_same_state


def test_kl_matches_torch_distributions_and_is_non_negative():
    gen = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(64, 8, generator=gen) * 2, torch.randn(64, 8, generator=gen) * 3
    ours = gaussian_kl(mu, logvar)
    ref = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum(1)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    assert (ours >= 0).all()
    assert gaussian_kl(torch.zeros(3, 4), torch.zeros(3, 4)).abs().max() == 0  # q = p


def test_bernoulli_nll_is_the_cross_entropy_of_the_mean_image():
    gen = torch.Generator().manual_seed(1)
    pre = torch.randn(5, 1, 4, 4, generator=gen)
    x = torch.rand(5, 1, 4, 4, generator=gen) * 2 - 1
    p = (torch.tanh(pre) + 1) / 2  # the decoder's mean intensity in [0, 1]
    t = (x + 1) / 2
    ref = -(t * p.log() + (1 - t) * (1 - p).log()).flatten(1).sum(1)
    torch.testing.assert_close(reconstruction_nll(pre, x, "bernoulli"), ref, rtol=1e-4, atol=1e-4)
    binary = (x > 0).float() * 2 - 1  # on binary pixels it is the exact Bernoulli log-likelihood
    ref_binary = -Bernoulli(probs=p).log_prob((binary + 1) / 2).flatten(1).sum(1)
    torch.testing.assert_close(reconstruction_nll(pre, binary, "bernoulli"), ref_binary, rtol=1e-4, atol=1e-4)


def test_gaussian_nll_uses_the_optimal_shared_sigma():
    gen = torch.Generator().manual_seed(2)
    pre = torch.randn(6, 3, 4, 4, generator=gen)
    x = torch.rand(6, 3, 4, 4, generator=gen) * 2 - 1
    mean = torch.tanh(pre)
    sigma = (x - mean).square().mean().sqrt()
    ref = -Normal(mean, sigma).log_prob(x).flatten(1).sum(1)
    ours = reconstruction_nll(pre, x, "gaussian")
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-3)
    # the optimum: any other shared sigma gives a worse (larger) total NLL
    for other in (sigma * 0.8, sigma * 1.25):
        assert -Normal(mean, other).log_prob(x).sum() > ours.sum()
    with pytest.raises(ValueError, match="bernoulli or gaussian"):
        reconstruction_nll(pre, x, "laplace")


@pytest.mark.parametrize("name", ["vae28", "vae32", "vae64"])
@pytest.mark.parametrize("num_classes", [0, 10])
def test_vae_models_sample_images_and_encode_posteriors(name, num_classes):
    size = MODELS[name].resolution
    decoder, encoder = build_models(name, 8, 3, 4, 4, 0.3, num_classes=num_classes)
    c = torch.arange(5) % 10 if num_classes else None
    img = decoder(torch.randn(5, 8), c)
    assert img.shape == (5, 3, size, size)
    assert img.min() >= -1 and img.max() <= 1
    mu, logvar = encoder(img, c)
    assert mu.shape == logvar.shape == (5, 8)
    if num_classes:
        with pytest.raises(ValueError, match="class labels"):
            encoder(img)


def test_elbo_decreases_on_a_tiny_batch():
    torch.manual_seed(0)
    decoder, encoder = build_models("vae28", 8, 1, 8, 8, 0.0)
    opt_dec = torch.optim.Adam(decoder.parameters(), lr=1e-3)
    opt_enc = torch.optim.Adam(encoder.parameters(), lr=1e-3)
    x = (torch.rand(16, 1, 28, 28) > 0.7).float() * 2 - 1  # [N, 1, 28, 28] in {-1, 1}
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(30):
        stats = vae_step(decoder, encoder, opt_dec, opt_enc, x, torch.randn(16, 8, generator=gen), "bernoulli")
        assert stats["kl"] >= 0
        torch.testing.assert_close(stats["vae_loss"], stats["recon_nll"] + stats["kl"])
        losses.append(float(stats["vae_loss"]))
    assert sum(losses[-5:]) / 5 < 0.9 * sum(losses[:5]) / 5, losses  # measured: 548 -> 450


def test_config_pairs_vaes_with_the_elbo_only(tmp_path):
    assert model_for_resolution(28, "vae") == "vae28" and model_for_resolution(28) != "vae28"
    with pytest.raises(ConfigError, match="set loss.name=elbo"):
        build_config(overrides={"model": {"name": "vae28"}})
    with pytest.raises(ConfigError, match="elbo trains a VAE, but dcgan32 is a GAN"):
        build_config(overrides={"model": {"name": "dcgan32"}, "loss": {"name": "elbo"}})
    with pytest.raises(ConfigError, match="reg.r1_gamma, model.spectral_norm.*do not apply to a VAE"):
        build_config(overrides={"loss": {"name": "elbo"}, "reg": {"r1_gamma": 1.0},
                                "model": {"spectral_norm": True}})  # fmt: skip
    with pytest.raises(ConfigError, match="VAE baseline is for images"):
        build_config(overrides={"data": {"name": "ring8"}, "loss": {"name": "elbo"}})
    with pytest.raises(ConfigError, match="loss.likelihood"):
        build_config(overrides={"loss": {"name": "elbo", "likelihood": "poisson"}})
    with pytest.raises(ConfigError, match="kl_weight"):
        build_config(overrides={"loss": {"name": "elbo", "kl_weight": 0}})
    with pytest.raises(ConfigError, match="Did you mean 'elbo'"):
        build_config(overrides={"loss": {"name": "elb"}})
    assert build_config(preset="mnist-vae").model.name == "vae28"


def _vae(tmp_path, **train_kw):
    overrides = tiny(tmp_path, **train_kw)
    overrides["loss"] = {"name": "elbo"}
    return overrides


def test_vae_trains_resumes_exactly_and_samples_through_the_gan_tools(tmp_path, isolated_env):
    # conditional, with an EMA of the decoder: the run folder, resume and sampling all work unchanged
    straight = _vae(tmp_path / "a", steps=12, ema_beta=0.9)
    straight["model"]["conditional"] = True
    run_a = train(build_config(overrides=straight), progress=False)
    half = _vae(tmp_path / "b", steps=6, ema_beta=0.9)
    half["model"]["conditional"] = True
    run_b = train(build_config(overrides=half), progress=False)
    train(resume=run_b, overrides={"train": {"steps": 12}}, progress=False)
    a = load_checkpoint(run_a / "checkpoints" / "final.pt")
    b = load_checkpoint(run_b / "checkpoints" / "final.pt")
    assert a["config"]["model"]["name"] == "vae28" and a["step"] == b["step"] == 12
    _assert_same_state(a, b)
    rows = [json.loads(x) for x in (run_a / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if "vae_loss" in r]
    assert [r["step"] for r in logged] == [2, 4, 6, 8, 10, 12]
    for r in logged:
        assert r["kl"] >= 0 and math.isclose(r["vae_loss"], r["recon_nll"] + r["kl"], rel_tol=1e-5)
        assert r["enc_grad_norm"] > 0 and r["dec_grad_norm"] > 0
    assert (run_a / "losses.png").is_file() and (run_a / "samples.png").is_file()

    gen = ganforge.load(run_a)
    sevens = gen.sample(4, seed=0, classes=7)
    assert sevens.shape == (4, 1, 28, 28) and sevens.dtype == torch.uint8
