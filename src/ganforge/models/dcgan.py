"""DCGAN generators and discriminators (Radford, Metz & Chintala 2016, arXiv:1511.06434).

dcgan28 is the seed's section 4.1 net (the TensorFlow/Keras DCGAN tutorial), dcgan28-classic the
paper's topology at 28x28 (the default for 28x28 data: it learns digits much faster), dcgan32 the
seed's section 4.2 CIFAR-10 net with the scalar output it lacked, dcgan64 the paper's 64x64 net.
G maps z [N, z_dim] to images [N, C, H, W] in [-1, 1]; D maps images to logits [N].
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from ganforge.models import register_model
from ganforge.models.layers import (
    CondSequential,
    Discriminator,
    FoldConvTranspose2d,
    LabelToLatent,
    ToContiguous,
    batch_norm,
    layout_of,
)


class FastDropout(nn.Module):
    """Inverted dropout with a cheap mask.

    Same maths as nn.Dropout / nn.Dropout2d, but `bernoulli_` is single-threaded and was measured
    at 17-21 % of a whole dcgan28 training step on a 2-core CPU. Here each element keeps with
    probability 1 - p (p rounded to a multiple of 1/65536) by comparing 16 random bits: one 64-bit
    draw serves four elements, which made forward + backward of the seed D's two dropouts 1.8-2x
    faster than `uniform_` + compare (2026-11-27, this 2-core CPU). `channelwise=True` drops whole
    feature maps, as nn.Dropout2d does.
    """

    def __init__(self, p: float, channelwise: bool = False):
        super().__init__()
        self.p = p
        self.channelwise = channelwise

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if self.channelwise or torch.compiler.is_compiling():  # (dynamo breaks its graph on random_(from, to))
            shape = (x.shape[0], x.shape[1], 1, 1) if self.channelwise else x.shape
            keep, scale = torch.rand(shape, device=x.device) >= self.p, 1.0 / (1.0 - self.p)
        else:
            keep, scale = self._keep(x)
        return x * keep.to(x.dtype).mul_(scale)  # 0 or 1/P(keep): one multiply of x

    def _keep(self, x: torch.Tensor) -> tuple[torch.Tensor, float]:
        """A bool mask shaped and laid out as x (channels_last too: a mixed-layout multiply was
        measured 2-3x slower) from 16-bit uniform integers v, kept where v >= the p-quantile; and
        the inverse of the exact keep probability (p rounded to a multiple of 1/65536)."""
        dropped = min(round(self.p * 65536), 65536)  # of the 65536 values of v
        if dropped == 65536:  # p within 2^-17 of 1: nothing is kept
            return torch.zeros_like(x, dtype=torch.bool), 0.0
        n = x.numel()
        words = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_(-(2**63), 2**63 - 1)
        keep = words.view(torch.int16)[:n] >= dropped - 32768
        dense = x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last))
        keep = keep.as_strided(x.shape, x.stride()) if dense else keep.view(x.shape)
        return keep, 65536 / (65536 - dropped)

    def extra_repr(self) -> str:
        return f"p={self.p}, channelwise={self.channelwise}"


def dcgan_init(module: nn.Module) -> None:
    """DCGAN init: conv/linear weights ~ N(0, 0.02); BN scale ~ N(1, 0.02), shift 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d) and m.affine:
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class Generator28(nn.Module):
    """Keras-tutorial G: Dense(7*7*4b) BN LReLU -> ConvT 5x5 s1 (2b) -> s2 (b) -> s2 (C), tanh."""

    def __init__(self, z_dim: int = 100, channels: int = 1, base: int = 64, slope: float = 0.3):
        super().__init__()
        self.z_dim, self.base = z_dim, base
        self.fc = nn.Sequential(
            nn.Linear(z_dim, 7 * 7 * 4 * base, bias=False),
            nn.BatchNorm1d(7 * 7 * 4 * base),
            nn.LeakyReLU(slope, inplace=True),
        )
        # Keras 'same' padding: k=5, s=1 -> p=2; k=5, s=2 -> p=2 + output_padding=1 (doubles H, W).
        self.net = nn.Sequential(
            nn.ConvTranspose2d(4 * base, 2 * base, 5, 1, 2, bias=False),  # [N, 2b, 7, 7]
            nn.BatchNorm2d(2 * base),
            nn.LeakyReLU(slope, inplace=True),
            nn.ConvTranspose2d(
                2 * base, base, 5, 2, 2, output_padding=1, bias=False
            ),  # [N, b, 14, 14]
            nn.BatchNorm2d(base),
            nn.LeakyReLU(slope, inplace=True),
            FoldConvTranspose2d(
                base, channels, 5, 2, 2, output_padding=1, bias=False
            ),  # [N, C, 28, 28]
            nn.Tanh(),
        )
        dcgan_init(self)

    def forward(self, z: torch.Tensor, c: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = self.fc(z).view(-1, 4 * self.base, 7, 7)
        return self.net(layout_of(x, self.net[0].weight))


class Discriminator28(Discriminator):
    """Keras-tutorial D: Conv 5x5 s2 (b) LReLU Dropout -> Conv s2 (2b) LReLU Dropout -> Linear(1)."""

    def __init__(
        self, channels: int = 1, base: int = 64, dropout: float = 0.3, slope: float = 0.3,
        num_classes: int = 0, mbstd: bool = False,
    ):  # fmt: skip
        features = nn.Sequential(
            nn.Conv2d(channels, base, 5, 2, 2),  # [N, b, 14, 14]
            nn.LeakyReLU(slope, inplace=True),
            FastDropout(dropout),
            nn.Conv2d(base, 2 * base, 5, 2, 2),  # [N, 2b, 7, 7]
            ToContiguous(),  # the layout Flatten needs, before the elementwise layers (parameter names unchanged)
            nn.LeakyReLU(slope, inplace=True),
            FastDropout(dropout),
        )
        # a raw logit; no sigmoid (the loss works on logits)
        head = nn.Sequential(nn.Flatten(), nn.Linear((2 * base + mbstd) * 7 * 7, 1))
        super().__init__(features, head, 2 * base, num_classes, mbstd)
        dcgan_init(self)


class Generator28Classic(nn.Module):
    """Radford et al.'s topology at 28x28: ConvT 7x7 from z to 7x7x4b, two stride-2 ConvT 4x4, BN, ReLU."""

    def __init__(self, z_dim: int = 100, channels: int = 1, base: int = 32, num_classes: int = 0):
        super().__init__()
        self.z_dim = z_dim
        self.label_dim = 16 if num_classes else 0  # class embedding appended to z
        self.to_latent = LabelToLatent(num_classes, self.label_dim) if num_classes else None
        self.net = CondSequential(
            nn.ConvTranspose2d(z_dim + self.label_dim, 4 * base, 7, 1, 0, bias=False),  # [N, 4b, 7, 7]
            batch_norm(4 * base, num_classes),
            nn.ReLU(True),
            nn.ConvTranspose2d(4 * base, 2 * base, 4, 2, 1, bias=False),  # [N, 2b, 14, 14]
            batch_norm(2 * base, num_classes),
            nn.ReLU(True),
            FoldConvTranspose2d(2 * base, channels, 4, 2, 1, bias=False),  # [N, C, 28, 28]
            nn.Tanh(),
        )
        dcgan_init(self)

    def forward(self, z: torch.Tensor, c: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.to_latent is not None:
            z = self.to_latent(z, c)  # [N, z_dim + label_dim]
        return self.net(z.view(z.shape[0], -1, 1, 1), c)


class Discriminator28Classic(Discriminator):
    """Radford et al.'s D at 28x28: Conv 4x4 s2, LeakyReLU 0.2; Conv s2 + BN; a 7x7 conv to the logit.
    `depth` > 0 adds that many 3x3 convs (LeakyReLU) at 7x7 before the logit (dcgan28-deep-d)."""

    def __init__(self, channels: int = 1, base: int = 32, num_classes: int = 0, mbstd: bool = False,
                 depth: int = 0):  # fmt: skip
        features = nn.Sequential(
            nn.Conv2d(channels, base, 4, 2, 1),  # [N, b, 14, 14]
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(base, 2 * base, 4, 2, 1, bias=False),  # [N, 2b, 7, 7]
            nn.BatchNorm2d(2 * base),
            nn.LeakyReLU(0.2, inplace=True),
        )
        for _ in range(depth):
            features.extend([nn.Conv2d(2 * base, 2 * base, 3, 1, 1), nn.LeakyReLU(0.2, inplace=True)])
        head = nn.Conv2d(2 * base + mbstd, 1, 7, 1, 0)  # [N, 1, 1, 1]
        super().__init__(features, head, 2 * base, num_classes, mbstd)
        dcgan_init(self)


class Generator32(nn.Module):
    """Seed 4.2 G: ConvT 4x4 from z (1x1) to 4x4x4b, then three stride-2 ConvTs to 32x32."""

    def __init__(self, z_dim: int = 100, channels: int = 3, base: int = 64, num_classes: int = 0):
        super().__init__()
        self.z_dim = z_dim
        self.label_dim = 16 if num_classes else 0  # class embedding appended to z
        self.to_latent = LabelToLatent(num_classes, self.label_dim) if num_classes else None
        self.net = CondSequential(
            nn.ConvTranspose2d(z_dim + self.label_dim, 4 * base, 4, 1, 0, bias=False),  # [N, 4b, 4, 4]
            batch_norm(4 * base, num_classes),
            nn.ReLU(True),
            nn.ConvTranspose2d(4 * base, 2 * base, 4, 2, 1, bias=False),  # [N, 2b, 8, 8]
            batch_norm(2 * base, num_classes),
            nn.ReLU(True),
            nn.ConvTranspose2d(2 * base, base, 4, 2, 1, bias=False),  # [N, b, 16, 16]
            batch_norm(base, num_classes),
            nn.ReLU(True),
            nn.ConvTranspose2d(base, channels, 4, 2, 1, bias=False),  # [N, C, 32, 32]
            nn.Tanh(),
        )
        dcgan_init(self)

    def forward(self, z: torch.Tensor, c: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.to_latent is not None:
            z = self.to_latent(z, c)  # [N, z_dim + label_dim]
        return self.net(z.view(z.shape[0], -1, 1, 1), c)


class Discriminator32(Discriminator):
    """Seed 4.2 D, completed: its 4b x 4 x 4 map goes through Conv(4b -> 1, 4x4) to one logit.

    The seed's convolutions have no bias. Without biases or normalisation D is positively
    homogeneous (D(a * x) = a * D(x) for a > 0), so the all-grey image x = 0 always gets logit 0:
    G learned to park there (uniform grey grids within 150 steps on CIFAR-10). Biases fix it.
    """

    def __init__(
        self, channels: int = 3, base: int = 64, dropout: float = 0.3, num_classes: int = 0,
        mbstd: bool = False,
    ):  # fmt: skip
        features = nn.Sequential(
            nn.Conv2d(channels, base, 4, 2, 1),  # [N, b, 16, 16]
            nn.LeakyReLU(0.2, inplace=True),
            FastDropout(dropout, channelwise=True),
            nn.Conv2d(base, 2 * base, 4, 2, 1),  # [N, 2b, 8, 8]
            nn.LeakyReLU(0.2, inplace=True),
            FastDropout(dropout, channelwise=True),
            nn.Conv2d(2 * base, 4 * base, 4, 2, 1),  # [N, 4b, 4, 4]
            nn.LeakyReLU(0.2, inplace=True),
        )
        head = nn.Conv2d(4 * base + mbstd, 1, 4, 1, 0)  # [N, 1, 1, 1]
        super().__init__(features, head, 4 * base, num_classes, mbstd)
        dcgan_init(self)


class Generator64(nn.Module):
    """Radford et al. G: z -> 4x4x8b, four stride-2 ConvTs (BN, ReLU) to 64x64, tanh."""

    def __init__(self, z_dim: int = 100, channels: int = 3, base: int = 64, num_classes: int = 0):
        super().__init__()
        self.z_dim = z_dim
        self.label_dim = 16 if num_classes else 0  # class embedding appended to z
        self.to_latent = LabelToLatent(num_classes, self.label_dim) if num_classes else None
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(z_dim + self.label_dim, 8 * base, 4, 1, 0, bias=False),  # [N, 8b, 4, 4]
            batch_norm(8 * base, num_classes),
            nn.ReLU(True),
        ]
        for mult in (8, 4, 2):  # 4 -> 8 -> 16 -> 32
            layers += [
                nn.ConvTranspose2d(mult * base, mult * base // 2, 4, 2, 1, bias=False),
                batch_norm(mult * base // 2, num_classes),
                nn.ReLU(True),
            ]
        layers += [
            nn.ConvTranspose2d(base, channels, 4, 2, 1, bias=False),
            nn.Tanh(),
        ]  # [N, C, 64, 64]
        self.net = CondSequential(*layers)
        dcgan_init(self)

    def forward(self, z: torch.Tensor, c: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.to_latent is not None:
            z = self.to_latent(z, c)  # [N, z_dim + label_dim]
        return self.net(z.view(z.shape[0], -1, 1, 1), c)


class Discriminator64(Discriminator):
    """Radford et al. D: four stride-2 convs (BN after the first, LeakyReLU 0.2), 4x4 conv to a logit."""

    def __init__(self, channels: int = 3, base: int = 64, num_classes: int = 0, mbstd: bool = False):
        layers: list[nn.Module] = [
            nn.Conv2d(channels, base, 4, 2, 1, bias=False),  # [N, b, 32, 32]
            nn.LeakyReLU(0.2, inplace=True),
        ]
        for mult in (1, 2, 4):  # 32 -> 16 -> 8 -> 4
            layers += [
                nn.Conv2d(mult * base, 2 * mult * base, 4, 2, 1, bias=False),
                nn.BatchNorm2d(2 * mult * base),
                nn.LeakyReLU(0.2, inplace=True),
            ]
        head = nn.Conv2d(8 * base + mbstd, 1, 4, 1, 0, bias=False)  # [N, 1, 1, 1]
        super().__init__(nn.Sequential(*layers), head, 8 * base, num_classes, mbstd)
        dcgan_init(self)


@register_model("dcgan28", 28, "seed 4.1 / Keras-tutorial DCGAN for 28x28 (MNIST)", conditional=False)
def dcgan28(z_dim: int, channels: int, g_channels: int, d_channels: int, dropout: float,
            num_classes: int = 0, mbstd: bool = False):  # fmt: skip
    # Seed-faithful: its G's first BN is 1-D, so there is no class-conditional variant.
    return Generator28(z_dim, channels, g_channels), Discriminator28(
        channels, d_channels, dropout, mbstd=mbstd
    )


@register_model(
    "dcgan28-classic",
    28,
    "Radford et al. DCGAN topology at 28x28 (BN in D): fast to good digits",
    auto=True,
)
def dcgan28_classic(z_dim: int, channels: int, g_channels: int, d_channels: int, dropout: float,
                    num_classes: int = 0, mbstd: bool = False):  # fmt: skip
    # Measured on MNIST (2-core CPU, width 32, batch 64, 3000 steps): clearly better digits than
    # dcgan28 after the same time; dcgan28's dropout-regularised D without normalisation learns slowly.
    # No dropout here.
    return Generator28Classic(z_dim, channels, g_channels, num_classes), Discriminator28Classic(
        channels, d_channels, num_classes, mbstd
    )


@register_model(
    "dcgan28-deep-d",
    28,
    "dcgan28-classic with a deeper D: two 3x3 convs at 7x7 before the logit",
)
def dcgan28_deep_d(z_dim: int, channels: int, g_channels: int, d_channels: int, dropout: float,
                   num_classes: int = 0, mbstd: bool = False):  # fmt: skip
    # dcgan28-classic's D is two convs and a linear read-out of its 7x7 map: whether a stroke makes a digit
    # is judged by one linear layer. Two more layers let D judge shapes made of several strokes.
    return Generator28Classic(z_dim, channels, g_channels, num_classes), Discriminator28Classic(
        channels, d_channels, num_classes, mbstd, depth=2
    )


@register_model(
    "dcgan32", 32, "seed 4.2 PyTorch DCGAN for 32x32 (CIFAR-10), with a scalar D output"
)
def dcgan32(z_dim: int, channels: int, g_channels: int, d_channels: int, dropout: float,
            num_classes: int = 0, mbstd: bool = False):  # fmt: skip
    return Generator32(z_dim, channels, g_channels, num_classes), Discriminator32(
        channels, d_channels, dropout, num_classes, mbstd
    )


@register_model("dcgan64", 64, "classic DCGAN of Radford et al. 2016 for 64x64")
def dcgan64(z_dim: int, channels: int, g_channels: int, d_channels: int, dropout: float,
            num_classes: int = 0, mbstd: bool = False):  # fmt: skip
    # The paper's D has no dropout, so model.dropout does not apply here.
    return Generator64(z_dim, channels, g_channels, num_classes), Discriminator64(
        channels, d_channels, num_classes, mbstd
    )
