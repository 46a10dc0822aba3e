"""Model registry: each family registers (G, D) builders under a name with the size it makes."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn

from ganforge.config import TRANSLATION_FAMILIES


@dataclass
class ModelSpec:
    build: Callable[..., tuple[nn.Module, nn.Module]]  # keyword args -> (G, D)
    resolution: int  # side length of the images G makes and D reads; 0 = points (vectors), not images
    description: str
    auto: bool = False  # what model.name=auto picks for this resolution (else the first registered)
    conditional: bool = True  # has a class-conditional variant (num_classes > 0)
    # "gan": (G, D) trained adversarially; "vae": (decoder, encoder) trained on the ELBO; "translation":
    # G(x) -> y and D(y, x) on a paired dataset (pix2pix); "cyclegan": G = (G_ab, G_ba), D = (D_a, D_b)
    # on an unpaired one
    family: str = "gan"


MODELS: dict[str, ModelSpec] = {}


def register_model(
    name: str, resolution: int, description: str, auto: bool = False, conditional: bool = True,
    family: str = "gan",
):  # fmt: skip
    def wrap(fn: Callable[..., tuple[nn.Module, nn.Module]]):
        MODELS[name] = ModelSpec(fn, resolution, description, auto, conditional, family)
        return fn

    return wrap


def is_vae(name: str) -> bool:
    return name in MODELS and MODELS[name].family == "vae"


def model_for_resolution(resolution: int, family: str = "gan") -> str:
    """The model `auto` picks for `resolution`x`resolution` images (a VAE with family="vae")."""
    fits = [name for name, spec in MODELS.items() if spec.resolution == resolution and spec.family == family]
    preferred = [name for name in fits if MODELS[name].auto]
    if fits:
        return (preferred or fits)[0]
    from ganforge.config import ConfigError

    sizes = ", ".join(f"{s.resolution} ({n})" for n, s in MODELS.items() if s.family == family)
    raise ConfigError(
        f"data.resolution: no model makes {resolution}x{resolution} images; available sizes: {sizes}."
    )


def build_models(
    name: str,
    z_dim: int,
    channels: int,
    g_channels: int,
    d_channels: int,
    dropout: float,
    spectral_norm: bool = False,
    pack: int = 1,
    num_classes: int = 0,
    mbstd: bool = False,
    latent_codes: int = 0,
    clusters: int = 0,
    in_channels: int = 0,
) -> tuple[nn.Module, nn.Module]:
    """G and D of model `name`; class-conditional when num_classes > 0 (G(z, c), D(x, c)); with
    latent_codes K > 1, G reads a disconnected latent (LatentCodes) and still takes z [N, z_dim]; with
    clusters K > 1, G and D are conditioned on K data clusters and G picks its cluster from z (ClusterPrior)."""
    if clusters > 1:
        num_classes = clusters
    kwargs = dict(g_channels=g_channels, d_channels=d_channels, dropout=dropout, z_dim=z_dim,
                  num_classes=num_classes, mbstd=mbstd)  # fmt: skip
    if MODELS[name].family in TRANSLATION_FAMILIES:  # G(x) -> y: `in_channels` are x's
        kwargs["in_channels"] = in_channels
    G, D = MODELS[name].build(channels=channels, **kwargs)
    if clusters > 1:
        G = ClusterPrior(G, clusters)
    if latent_codes > 1:
        G = LatentCodes(MODELS[name].build(channels=channels, **{**kwargs, "z_dim": z_dim + CODE_DIM})[0],
                        z_dim, latent_codes)  # fmt: skip
    if pack > 1:  # D reads `pack` images stacked along channels
        D = PackedD(MODELS[name].build(channels=channels * pack, **kwargs)[1], pack)
    if spectral_norm:
        apply_spectral_norm(D)
    return G, D


CODE_DIM = 16  # length of LatentCodes' code vectors


class LatentCodes(nn.Module):
    """A disconnected latent space in front of a generator `G` that reads z_dim + CODE_DIM numbers.

    z [N, z_dim] ~ N(0, I) as everywhere; u = Phi(z_0) picks code k = floor(u K) of K fixed random
    vectors (N(0, I) of CODE_DIM, seeded, a buffer kept in checkpoints), and z_0 is replaced by
    frac(u K), uniform on [0, 1) and independent of k, scaled to mean 0 and variance 1 (no inverse CDF:
    the map exports to ONNX). G then reads (z_0', z_1.., code_k).
    The map is a function of z alone, so sampling, exports and every command treat G as any other
    (truncation leaves z_0 alone, see TrainedGenerator.latents; an interpolation passes through the codes
    between its ends); G can send each code to its own mode with nothing in between, which a continuous G of a
    connected Gaussian latent cannot (Khayatkhoei et al. 2018, "Disconnected manifold learning").
    """

    def __init__(self, G: nn.Module, z_dim: int, k: int):
        super().__init__()
        self.G, self.z_dim, self.k = G, z_dim, k
        self.register_buffer("codes", torch.randn(k, CODE_DIM, generator=torch.Generator().manual_seed(0)))

    def _bucket(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(Phi(z_0) K, the code index k = its floor), both float [N, 1]: the one place codes are picked."""
        u = 0.5 * (1 + torch.erf(z[:, :1].float() / math.sqrt(2))) * self.k  # in [0, K]
        return u, u.floor().clamp(0, self.k - 1)

    def same_code(self, z: torch.Tensor, fresh: torch.Tensor) -> torch.Tensor:
        """Latents like `fresh` [N, z_dim] (N(0, I)), each with the code of the same row of `z`: the
        first coordinate moves into z's bucket, still N(0, 1) given the code (pairs for reg.mode_seeking)."""
        _, k = self._bucket(z)
        u_fresh = torch.special.ndtr(fresh[:, :1].float())  # uniform on (0, 1)
        first = torch.special.ndtri(((k + u_fresh) / self.k).clamp(1e-7, 1 - 1e-7))
        return torch.cat([first.to(fresh.dtype), fresh[:, 1:]], dim=1)

    def forward(self, z: torch.Tensor, c: Optional[torch.Tensor] = None) -> torch.Tensor:
        u, k = self._bucket(z)
        z0 = (u - k - 0.5) * math.sqrt(12)  # uniform, mean 0, variance 1, independent of k
        code = self.codes[k.long().squeeze(1)]  # [N, CODE_DIM]
        return self.G(torch.cat([z0.to(z.dtype), z[:, 1:], code.to(z.dtype)], dim=1), c)


class ClusterPrior(nn.Module):
    """A generator conditioned on K data clusters (model.clusters, see ganforge.clusters) that picks its
    cluster from z, so that it samples like an unconditional G: G(z) [N, z_dim] -> images.

    u = Phi(z_0) picks cluster k with the clusters' shares in the training data (`prior`, a buffer kept
    in checkpoints: the cumulative shares split [0, 1)), and z_0 is replaced by u's place within k's
    interval, uniform and independent of k, scaled to mean 0 and variance 1 (as LatentCodes does). A
    caller that knows the cluster passes it as c (the training loop passes cluster_of(z), the same).
    Every command that samples an unconditional G works unchanged (the map is a function of z: no
    inverse CDF, no search, so it exports to ONNX).
    """

    def __init__(self, G: nn.Module, k: int):
        super().__init__()
        self.G, self.k = G, k
        self.register_buffer("prior", torch.full((k,), 1.0 / k))  # float32: MPS has no float64

    def set_prior(self, prior: torch.Tensor) -> None:
        """The clusters' shares [K] (non-negative, summing to 1) in the training data."""
        prior = torch.as_tensor(prior, dtype=torch.float64).flatten()
        if prior.numel() != self.k or bool((prior < 0).any()) or abs(float(prior.sum()) - 1) > 1e-6:
            raise ValueError(f"a cluster prior must be {self.k} non-negative shares summing to 1.")
        self.prior.copy_(prior.to(self.prior.dtype))

    def _bucket(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(u = Phi(z_0) [N], cluster index k [N] long = the number of cumulative shares <= u, where k's
        interval starts [N], its width [N])."""
        u = 0.5 * (1 + torch.erf(z[:, 0].float() / math.sqrt(2)))  # in [0, 1]; float32 (ONNX has no float64 erf)
        share = self.prior.float()
        ends = torch.cumsum(share, 0)  # [K] where each interval ends
        k = (u.unsqueeze(1) >= ends[:-1].unsqueeze(0)).sum(1).clamp(max=self.k - 1)
        return u, k, ends[k] - share[k], share[k]

    def cluster_of(self, z: torch.Tensor) -> torch.Tensor:
        """The cluster [N] (long) that latents z [N, z_dim] ask for."""
        return self._bucket(z)[1]

    def forward(self, z: torch.Tensor, c: Optional[torch.Tensor] = None) -> torch.Tensor:
        u, k, low, width = self._bucket(z)
        v = ((u - low) / width.clamp_min(1e-12)).clamp(0, 1)  # uniform within the interval
        z0 = ((v - 0.5) * math.sqrt(12)).to(z.dtype).unsqueeze(1)
        return self.G(torch.cat([z0, z[:, 1:]], dim=1), k if c is None else c)


class PackedD(nn.Module):
    """PacGAN (Lin et al. 2018): D judges `pack` samples at once, concatenated along channels.

    [N, C, H, W] -> [N / pack, pack * C, H, W] -> one logit per pack of images ([N, F] points alike).
    """

    def __init__(self, D: nn.Module, pack: int):
        super().__init__()
        self.D = D
        self.pack = pack

    def forward(self, x: torch.Tensor, c: Optional[torch.Tensor] = None) -> torch.Tensor:
        n = x.shape[0]
        return self.D(x.reshape(n // self.pack, self.pack * x.shape[1], *x.shape[2:]))


def per_sample(D: nn.Module) -> bool:
    """True when each of D's outputs depends on its own input alone in training mode: no batch
    statistics (batch norm), packing or minibatch stddev couples the samples of a batch."""
    from ganforge.models.layers import MinibatchStd

    return not any(
        isinstance(m, nn.modules.batchnorm._BatchNorm | PackedD | MinibatchStd) for m in D.modules()
    )


def apply_spectral_norm(module: nn.Module) -> nn.Module:
    """Spectral normalisation (Miyato et al. 2018) on every conv and linear layer of `module`, and on a
    projection D's class embedding (Miyato & Koyama 2018 normalise it too: their SNEmbedID)."""
    from torch.nn.utils.parametrizations import spectral_norm

    for name, child in list(module.named_children()):
        if isinstance(child, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.Embedding)):
            setattr(module, name, spectral_norm(child))
        else:
            apply_spectral_norm(child)
    return module


from ganforge.models import dcgan, mlp, r3gan, resnet, translation, vae  # noqa: E402,F401  (fill the registry)
