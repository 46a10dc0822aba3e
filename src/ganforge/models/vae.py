"""Convolutional VAE (Kingma & Welling 2014, arXiv:1312.6114): the autoencoder-family baseline.

The decoder is the DCGAN generator of the same size with its final tanh taken off (the likelihood
needs the pre-activation); the encoder is the DCGAN discriminator's feature stack with a linear head
that outputs the posterior's mean and log-variance. So a GAN and a VAE of the same name size and width
have the same sampling network, and `ganforge sample`/`eval` treat the decoder as G: z ~ N(0, I) in,
images in [-1, 1] out. The class-conditional form (a CVAE, Sohn et al. 2015) conditions the decoder
as the conditional G is conditioned and appends a class embedding to the encoder's features.

In checkpoints and the training loop the decoder sits in G's place and the encoder in D's.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from ganforge.models import register_model
from ganforge.models.dcgan import (
    Discriminator28Classic,
    Discriminator32,
    Discriminator64,
    Generator28Classic,
    Generator32,
    Generator64,
)


class Decoder(nn.Module):
    """p(x | z, c): a DCGAN G without its tanh. forward() gives the mean image tanh(a) in [-1, 1]."""

    def __init__(self, G: nn.Module):
        super().__init__()
        if not isinstance(G.net[-1], nn.Tanh):
            raise TypeError("Decoder expects a DCGAN generator whose last layer is Tanh")
        G.net[-1] = nn.Identity()
        self.G = G
        self.z_dim = G.z_dim

    def pre_activation(self, z: torch.Tensor, c: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.G(z, c)  # [N, C, H, W], unbounded

    def forward(self, z: torch.Tensor, c: Optional[torch.Tensor] = None) -> torch.Tensor:
        return torch.tanh(self.G(z, c))  # [N, C, H, W] in [-1, 1]


class Encoder(nn.Module):
    """q(z | x, c) = N(mu, diag(exp(logvar))): D's feature stack, flattened, then a linear head."""

    def __init__(self, features: nn.Module, feature_dim: int, z_dim: int, num_classes: int = 0):
        super().__init__()
        self.features = features
        self.label_dim = 16 if num_classes else 0
        self.embed = nn.Embedding(num_classes, self.label_dim) if num_classes else None
        self.head = nn.Linear(feature_dim + self.label_dim, 2 * z_dim)
        nn.init.normal_(self.head.weight, 0.0, 0.02)
        nn.init.zeros_(self.head.bias)  # q starts near N(0, I)

    def forward(
        self, x: torch.Tensor, c: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(x).flatten(1)  # [N, F]
        if self.embed is not None:
            if c is None:
                raise ValueError("this encoder is class-conditional: pass class labels c [N]")
            h = torch.cat([h, self.embed(c)], dim=1)
        mu, logvar = self.head(h).chunk(2, dim=1)  # [N, z_dim] each
        return mu, logvar.clamp(-30.0, 20.0)  # keeps exp(logvar) finite early in training


@register_model("vae28", 28, "convolutional VAE for 28x28: dcgan28-classic's G as decoder, its D as encoder",
                family="vae")  # fmt: skip
def vae28(z_dim: int, channels: int, g_channels: int, d_channels: int, dropout: float,
          num_classes: int = 0, mbstd: bool = False):  # fmt: skip
    features = Discriminator28Classic(channels, d_channels).features  # [N, 2b, 7, 7]
    return (
        Decoder(Generator28Classic(z_dim, channels, g_channels, num_classes)),
        Encoder(features, 2 * d_channels * 7 * 7, z_dim, num_classes),
    )


@register_model("vae32", 32, "convolutional VAE for 32x32: dcgan32's G as decoder, its D (no dropout) as encoder",
                family="vae")  # fmt: skip
def vae32(z_dim: int, channels: int, g_channels: int, d_channels: int, dropout: float,
          num_classes: int = 0, mbstd: bool = False):  # fmt: skip
    features = Discriminator32(channels, d_channels, dropout=0.0).features  # [N, 4b, 4, 4]
    return (
        Decoder(Generator32(z_dim, channels, g_channels, num_classes)),
        Encoder(features, 4 * d_channels * 4 * 4, z_dim, num_classes),
    )


@register_model("vae64", 64, "convolutional VAE for 64x64: dcgan64's G as decoder, its D as encoder",
                family="vae")  # fmt: skip
def vae64(z_dim: int, channels: int, g_channels: int, d_channels: int, dropout: float,
          num_classes: int = 0, mbstd: bool = False):  # fmt: skip
    features = Discriminator64(channels, d_channels).features  # [N, 8b, 4, 4]
    return (
        Decoder(Generator64(z_dim, channels, g_channels, num_classes)),
        Encoder(features, 8 * d_channels * 4 * 4, z_dim, num_classes),
    )
