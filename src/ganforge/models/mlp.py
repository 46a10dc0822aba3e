"""MLP pair for 2D toy data, as in PacGAN's mixture experiments (Lin et al. 2018, sec. 5.1).

G: z -> four hidden layers (Linear, BN, ReLU; 400 units in the paper) -> a point [N, 2].
D: three hidden layers of linear maxout with 5 pieces (200 units in the paper) -> a logit.
model.g_channels and model.d_channels are the hidden widths; `channels` is the data dimension.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from ganforge.models import register_model
from ganforge.models.layers import Discriminator


class Maxout(nn.Module):
    """Linear maxout (Goodfellow et al. 2013): the max of `pieces` linear maps."""

    def __init__(self, cin: int, cout: int, pieces: int = 5):
        super().__init__()
        self.linear = nn.Linear(cin, cout * pieces)
        self.cout, self.pieces = cout, pieces

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).view(x.shape[0], self.cout, self.pieces).amax(dim=2)


class MLPGenerator(nn.Module):
    def __init__(self, z_dim: int, dim: int, width: int, layers: int = 4, batchnorm: bool = True):
        super().__init__()
        self.z_dim = z_dim
        blocks: list[nn.Module] = []
        cin = z_dim
        for _ in range(layers):
            blocks += [nn.Linear(cin, width), nn.BatchNorm1d(width) if batchnorm else nn.Identity(), nn.ReLU()]
            cin = width
        blocks.append(nn.Linear(cin, dim))  # unbounded output: points are not images in [-1, 1]
        self.net = nn.Sequential(*blocks)

    def forward(self, z: torch.Tensor, c: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.net(z)  # [N, dim]


class MLPDiscriminator(Discriminator):
    def __init__(self, dim: int, width: int, layers: int = 3, mbstd: bool = False):
        blocks: list[nn.Module] = []
        cin = dim
        for _ in range(layers):
            blocks.append(Maxout(cin, width))
            cin = width
        super().__init__(nn.Sequential(*blocks), nn.Linear(width + mbstd, 1), width, 0, mbstd)


@register_model("mlp", 0, "PacGAN's MLP pair for 2D point data (ring8, grid25)", conditional=False)
def mlp(z_dim: int, channels: int, g_channels: int, d_channels: int, dropout: float,
        num_classes: int = 0, mbstd: bool = False):  # fmt: skip
    return MLPGenerator(z_dim, channels, g_channels), MLPDiscriminator(channels, d_channels, mbstd=mbstd)


@register_model("mlp-plain", 0, "the MLP pair without batch norm in G: no statistics shared within a batch, so a "
                "data-parallel run matches a single process exactly", conditional=False)  # fmt: skip
def mlp_plain(z_dim: int, channels: int, g_channels: int, d_channels: int, dropout: float,
              num_classes: int = 0, mbstd: bool = False):  # fmt: skip
    G = MLPGenerator(z_dim, channels, g_channels, batchnorm=False)
    return G, MLPDiscriminator(channels, d_channels, mbstd=mbstd)
