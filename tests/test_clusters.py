"""Self-conditioning on k-means clusters (model.clusters): the clustering, the generator's cluster prior, and
a run that trains, resumes and samples like an unconditional one."""

from __future__ import annotations

import math

import pytest
import torch

from ganforge import load, train
from ganforge.checkpoint import load_checkpoint
from ganforge.clusters import kmeans, pooled
from ganforge.config import ConfigError, build_config
from ganforge.models import ClusterPrior, build_models
from tests.conftest import tiny


def blobs(n_per: int = 40, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images [3 n_per, 1, 28, 28] of three kinds (a bright left half, a bright right half, a bright
    square in the middle) with noise, and which kind each is."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 60, (3 * n_per, 1, 28, 28), generator=gen)
    kind = torch.arange(3).repeat_interleave(n_per)
    x[kind == 0, :, :, :14] += 180
    x[kind == 1, :, :, 14:] += 180
    x[kind == 2, :, 7:21, 7:21] += 180
    order = torch.randperm(len(x), generator=gen)
    return x[order].to(torch.uint8), kind[order]


def test_kmeans_finds_separated_groups_and_is_deterministic():
    images, kind = blobs()
    a, b = kmeans(images, 3, seed=0), kmeans(images, 3, seed=0)
    assert torch.equal(a.labels, b.labels) and torch.equal(a.centers, b.centers)
    # the same partition as the kinds, up to the clusters' order
    pairs = {(int(k), int(c)) for k, c in zip(kind, a.labels)}
    assert len(pairs) == 3 and len({c for _, c in pairs}) == 3
    assert torch.allclose(a.prior, torch.full((3,), 1 / 3, dtype=torch.float64))
    assert a.centers.shape == (3, 14 * 14)  # clustered at half size
    with pytest.raises(ValueError, match="cannot make 500 clusters of 120 images"):
        kmeans(images, 500)


def test_pooling_keeps_images_near_16_pixels_a_side():
    assert pooled(torch.zeros(2, 3, 28, 28, dtype=torch.uint8)).shape == (2, 3, 14, 14)
    assert pooled(torch.zeros(2, 3, 32, 32, dtype=torch.uint8)).shape == (2, 3, 16, 16)
    assert pooled(torch.zeros(2, 3, 64, 64, dtype=torch.uint8)).shape == (2, 3, 16, 16)
    img = torch.tensor([[[[0, 255], [255, 255]]]], dtype=torch.uint8).repeat(1, 1, 16, 16)  # 32x32
    assert pooled(img).unique().tolist() == [191]  # the mean of each 2x2 block, rounded
    points = torch.randn(5, 2)
    assert pooled(points) is points


def test_cluster_prior_picks_clusters_with_their_shares_and_leaves_unit_noise():
    G, D = build_models("dcgan28-classic", z_dim=3, channels=1, g_channels=4, d_channels=4, dropout=0.0, clusters=3)
    assert isinstance(G, ClusterPrior) and D.embed.num_embeddings == 3  # D: a projection on the 3 clusters
    G.set_prior(torch.tensor([0.2, 0.5, 0.3]))
    z = torch.randn(200_000, 3, generator=torch.Generator().manual_seed(0))
    k = G.cluster_of(z)
    shares = torch.bincount(k, minlength=3).double() / len(k)
    assert torch.allclose(shares, torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64), atol=0.005)
    seen = {}
    G.G.forward = lambda z_in, c: seen.update(z=z_in, c=c) or z_in  # what the conditional G receives
    G(z)
    assert torch.equal(seen["c"], k) and torch.equal(seen["z"][:, 1:], z[:, 1:])
    z0 = seen["z"][:, 0]
    assert z0.abs().max() <= math.sqrt(3) + 1e-6 and abs(float(z0.mean())) < 0.01 and abs(float(z0.var()) - 1) < 0.01
    for j in range(3):  # within each cluster the first coordinate is still uniform: independent of the cluster
        assert abs(float(z0[k == j].mean())) < 0.02
    given = torch.zeros(len(z), dtype=torch.long)
    G(z, given)
    assert torch.equal(seen["c"], given)  # a caller's cluster is used as given
    assert G.prior.dtype == torch.float32  # MPS has no float64
    with pytest.raises(ValueError, match="3 non-negative shares summing to 1"):
        G.set_prior(torch.tensor([0.5, 0.6, -0.1]))


def test_clusters_refuse_what_they_cannot_combine_with():
    for bad, match in (({"model": {"clusters": 1}}, "1 cluster is the unconditional model"),
                       ({"model": {"clusters": 8, "conditional": True}}, "does not combine with model.conditional"),
                       ({"model": {"clusters": 8, "latent_codes": 4}}, "does not combine with model.latent_codes"),
                       ({"model": {"clusters": 8, "pack": 2}}, "does not combine with model.pack"),
                       ({"model": {"clusters": 8}, "loss": {"name": "elbo"}}, "does not combine with an elbo loss"),
                       ({"model": {"clusters": 8, "name": "dcgan28"}}, "dcgan28 has no conditional variant")):  # fmt: skip
        with pytest.raises(ConfigError, match=match):
            build_config(overrides=bad)


def test_more_clusters_than_images_are_refused_before_training(tmp_path, isolated_env):
    overrides = tiny(tmp_path)
    overrides["model"]["clusters"] = 65  # the tiny set holds 64 images
    with pytest.raises(ConfigError, match="65 clusters of 64 images"):
        train(build_config(overrides=overrides), progress=False)


def test_a_self_conditioned_run_trains_resumes_exactly_and_samples_unconditionally(tmp_path, isolated_env,
                                                                                   monkeypatch):
    straight = tiny(tmp_path / "a", steps=8)
    straight["model"]["clusters"] = 4
    run_a = train(build_config(overrides=straight), progress=False)
    half = tiny(tmp_path / "b", steps=4)
    half["model"]["clusters"] = 4
    run_b = train(build_config(overrides=half), progress=False)
    train(resume=run_b, overrides={"train": {"steps": 8}}, progress=False)
    a = load_checkpoint(run_a / "checkpoints" / "final.pt")
    b = load_checkpoint(run_b / "checkpoints" / "final.pt")
    for net in ("G", "D"):
        for key in a[net]:
            assert torch.equal(a[net][key], b[net][key]), (net, key)
    assert torch.equal(a["cluster_labels"], b["cluster_labels"]) and a["cluster_labels"].shape == (64,)
    prior = a["G"]["prior"]
    assert prior.shape == (4,) and abs(float(prior.sum()) - 1) < 1e-6 and not torch.allclose(prior, prior.mean())
    shares = torch.bincount(a["cluster_labels"].long(), minlength=4).float() / 64
    assert torch.allclose(prior, shares)
    assert "embed" in " ".join(a["D"])  # D judges with the cluster (projection)
    gen = load(run_a)
    assert gen.num_classes is None  # to every command it is an unconditional generator
    images = gen.sample(16, seed=0)
    assert images.shape == (16, 1, 28, 28) and images.dtype == torch.uint8
    with pytest.raises(ValueError, match="unconditional"):
        gen.sample(4, classes=1)
    # truncation leaves the cluster-picking coordinate alone: every cluster is still drawn
    z = gen.latents(4000, seed=1, truncation=0.5)
    assert z[:, 1:].abs().max() <= 0.5 and z[:, 0].abs().max() > 2
    assert len(gen.G.cluster_of(z).unique()) == 4
    # a resume conditions on the clusters saved with the run: no k-means again (another machine's could differ)
    import ganforge.clusters

    def refuse(*args, **kwargs):
        raise AssertionError("k-means ran again at a resume")

    monkeypatch.setattr(ganforge.clusters, "kmeans", refuse)
    train(resume=run_b, overrides={"train": {"steps": 10}}, progress=False)
    assert torch.equal(load_checkpoint(run_b / "checkpoints" / "final.pt")["cluster_labels"], b["cluster_labels"])
