"""SNGAN ResNet generator and discriminator (Miyato et al. 2018, appendix B.3; Gulrajani et al. 2017).

resnet32 is the CIFAR-10 net of the SNGAN paper: G z -> 4x4 -> three up-sampling residual blocks
-> 32x32; D one "optimized" down block, one down block, two plain blocks, ReLU, global sum pooling,
a linear logit. Spectral norm in D comes from model.spectral_norm (the cifar10-sngan preset sets it).
resnet28 is the same design for 28x28 (7x7 start, two up-samplings), e.g. class-conditional MNIST.
With num_classes > 0: conditional BN in G and a projection D (Miyato & Koyama 2018).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ganforge.models import register_model
from ganforge.models.layers import CondSequential, Discriminator, batch_norm, layout_of


class GBlock(nn.Module):
    """BN ReLU up conv3x3 BN ReLU conv3x3, plus an up-sampled 1x1 shortcut."""

    takes_labels = True

    def __init__(self, cin: int, cout: int, num_classes: int = 0):
        super().__init__()
        self.bn1, self.bn2 = batch_norm(cin, num_classes), batch_norm(cout, num_classes)
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.shortcut = nn.Conv2d(cin, cout, 1)
        self.conditional = num_classes > 0

    def _bn(self, bn: nn.Module, x: torch.Tensor, c: Optional[torch.Tensor]) -> torch.Tensor:
        return bn(x, c) if self.conditional else bn(x)

    def forward(self, x: torch.Tensor, c: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = F.interpolate(F.relu(self._bn(self.bn1, x, c)), scale_factor=2)  # nearest, x2
        h = self.conv2(F.relu(self._bn(self.bn2, self.conv1(h), c)))
        return h + self.shortcut(F.interpolate(x, scale_factor=2))


class DBlock(nn.Module):
    """ReLU conv3x3 ReLU conv3x3 [avg-pool], plus a 1x1 (pooled) shortcut; `first` skips the first ReLU."""

    def __init__(self, cin: int, cout: int, down: bool, first: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.shortcut = nn.Conv2d(cin, cout, 1) if (cin != cout or down) else None
        self.down, self.first = down, first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv2(F.relu(self.conv1(x if self.first else F.relu(x))))
        if self.down:
            h = F.avg_pool2d(h, 2)
        s = x
        if self.first:  # SNGAN's optimized block: pool, then 1x1 conv
            s = self.shortcut(F.avg_pool2d(x, 2) if self.down else x)
        elif self.shortcut is not None:
            s = self.shortcut(x)
            s = F.avg_pool2d(s, 2) if self.down else s
        return h + s


class ResNetGenerator(nn.Module):
    def __init__(self, z_dim: int, channels: int, base: int, start: int, ups: int, num_classes: int = 0):
        super().__init__()
        self.z_dim, self.base, self.start = z_dim, base, start
        self.fc = nn.Linear(z_dim, start * start * base)
        self.blocks = CondSequential(*[GBlock(base, base, num_classes) for _ in range(ups)])
        self.out = nn.Sequential(
            nn.BatchNorm2d(base), nn.ReLU(), nn.Conv2d(base, channels, 3, 1, 1), nn.Tanh()
        )
        _xavier(self)

    def forward(self, z: torch.Tensor, c: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = self.fc(z).view(-1, self.base, self.start, self.start)  # [N, b, s, s]
        h = layout_of(h, self.out[2].weight)
        return self.out(self.blocks(h, c))  # [N, C, s * 2^ups, s * 2^ups]


class _ReLUSum(nn.Module):
    """ReLU then global sum pooling: [N, F, H, W] -> [N, F]."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.relu(h).sum(dim=(2, 3))


class ResNetDiscriminator(Discriminator):
    def __init__(self, channels: int, base: int, downs: int, num_classes: int = 0, mbstd: bool = False):
        blocks = [DBlock(channels, base, down=True, first=True)]
        blocks += [DBlock(base, base, down=i < downs - 1) for i in range(3)]
        features = nn.Sequential(*blocks, _ReLUSum())  # [N, b]
        head = nn.Linear(base + mbstd, 1)
        super().__init__(features, head, base, num_classes, mbstd)
        _xavier(self)


def _xavier(module: nn.Module) -> None:
    """SNGAN's init: Xavier-uniform weights (gain sqrt(2) in the residual paths would also do), zero biases."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


@register_model("resnet32", 32, "SNGAN ResNet G/D for 32x32 (CIFAR-10); widths G 256, D 128 in the paper")
def resnet32(z_dim: int, channels: int, g_channels: int, d_channels: int, dropout: float,
             num_classes: int = 0, mbstd: bool = False):  # fmt: skip
    # 32 = 4 * 2^3; D: 32 -> 16 -> 8, then two blocks at 8x8 (downs=2 down-sampling blocks after the first)
    return ResNetGenerator(z_dim, channels, g_channels, 4, 3, num_classes), ResNetDiscriminator(
        channels, d_channels, 2, num_classes, mbstd
    )


@register_model("resnet28", 28, "SNGAN-style ResNet G/D for 28x28 (MNIST-like data)")
def resnet28(z_dim: int, channels: int, g_channels: int, d_channels: int, dropout: float,
             num_classes: int = 0, mbstd: bool = False):  # fmt: skip
    # 28 = 7 * 2^2; D: 28 -> 14 -> 7, then two blocks at 7x7
    return ResNetGenerator(z_dim, channels, g_channels, 7, 2, num_classes), ResNetDiscriminator(
        channels, d_channels, 2, num_classes, mbstd
    )
