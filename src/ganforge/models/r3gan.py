"""R3GAN-style generator and discriminator (Huang et al. 2024, "The GAN is dead; long live the
GAN! A Modern Baseline GAN"; reference code github.com/brownvc/R3GAN, R3GAN/Networks.py), for a CPU.

What it is: a normalisation-free ResNet pair. Each residual block is an inverted bottleneck,
x + branch(x), branch = 1x1 conv (expand x2) -> bias + leaky ReLU 0.2 -> grouped 3x3 conv (16
channels a group: the cardinality of R3GAN's CIFAR-10 and FFHQ presets) -> bias + leaky ReLU 0.2 ->
1x1 conv (project back). No batch, layer or group norm anywhere, no dropout (model.dropout does not
apply); convs have no biases (they sit in the activations, as R3GAN's BiasedActivation). Two blocks
a stage at 4x4, 8x8, ...; between stages a transition layer: in G a 1x1 conv where the width
changes, then x2 up-sampling; in D x2 down-sampling, then the 1x1 conv; both resample with R3GAN's
fixed [1, 3, 3, 1] low-pass filter (bilinear interpolation with zero padding, its
InterpolativeUp/Downsampler). G starts from a learned 4x4 basis scaled channel by channel by a
linear map of z and ends with a 1x1 conv to the image; D starts with a 1x1 conv from the image and
ends with R3GAN's discriminative basis, a depthwise 4x4 conv of the 4x4 map to one number a channel
([N, F] features), then a linear logit.
Stage widths, lowest resolution first, w = model.g_channels (G) or model.d_channels (D, the list
reversed): [w, w, w/2, w/4] at 32x32, [w, w, w/2, w/4, w/8] at 64x64, so that every stage costs
about the same (R3GAN's CIFAR-10 preset: 768 at every stage). At w = 128 (G 0.53M, D 0.52M
parameters) G's forward + backward at batch 64 ran at 111 img/s on one core, resnet32's at width 128
at 39, r3gan32's at w = 256 (1.7M) at 39 (fp32, a shared 2-core CPU, 2026-12-07: indicative).
Init, fix-up style as R3GAN's: every weight N(0, gain^2 / fan_in); inside a residual branch the gain
is leaky ReLU's sqrt(2 / (1 + 0.2^2)) x L^(-1/4) (L = the net's number of residual blocks, R3GAN's
VarianceScalingParameter; -1/4 = -1 / (2m - 2), m = 3 layers a branch), elsewhere 1; every branch
ends at zero, so each residual block is exactly the identity at init.
Conditional (num_classes > 0): G appends a class embedding of z's length to z (R3GAN concatenates
one at the input); D adds layers.Discriminator's projection term (R3GAN's D is projection only).

Where it departs from R3GAN:
- G ends with tanh, as every ganforge G does (R3GAN's output is linear).
- The zero at the end of a branch is a per-channel gain (`branch_gain`, zero at init) after a 1x1
  projection with fan-in init, not R3GAN's zero-initialised projection: model.spectral_norm divides
  each conv's weight by its largest singular value, and for a zero weight that is 0 / 0 = NaN
  (torch's spectral_norm, measured). Under spectral norm the gains stay free, so D's Lipschitz bound
  is 1 + max |gain| a block, not 2; R3GAN's own recipe is R1 + R2 (loss.name=relativistic,
  reg.r1_gamma, reg.r2_gamma), without spectral norm.
- The class embedding starts at z's scale, N(0, 1), as in layers.LabelToLatent (R3GAN's one-hot
  linear layer: N(0, 1 / num_classes)).
What it is not: the paper's 768-wide (CIFAR-10) or 1536-wide (ImageNet-32) preset (about 20M
parameters a net at 32x32, here 0.5M at w = 128), nor its training recipe (batch 512, lr, gamma and
Adam's beta2 annealed over the first 20M images, EMA, augmentation, bf16 stages).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ganforge.models import register_model
from ganforge.models.layers import Discriminator, LabelToLatent, layout_of

EXPANSION = 2  # the inverted bottleneck's width factor (R3GAN's ExpansionFactor)
GROUP_WIDTH = 16  # channels a group of the 3x3 conv (R3GAN CIFAR-10: 2 x 768 / cardinality 96)
BLOCKS_PER_STAGE = 2  # R3GAN's presets
LRELU_SLOPE = 0.2
LRELU_GAIN = math.sqrt(2 / (1 + LRELU_SLOPE**2))  # keeps the variance through a leaky ReLU


def fan_in_init(layer: nn.Module, gain: float = 1.0) -> nn.Module:
    """R3GAN's MSRInitializer: weight ~ N(0, gain^2 / fan_in), fan_in = in / groups x kernel area."""
    w = layer.weight
    fan_in = w.shape[1] * w[0][0].numel()
    nn.init.normal_(w, 0.0, gain / math.sqrt(fan_in))
    return layer


def cardinality(channels: int) -> int:
    """Groups of the 3x3 conv: GROUP_WIDTH channels each where the width allows (at least 1 group)."""
    groups = max(1, channels // GROUP_WIDTH)
    while channels % groups:
        groups -= 1
    return groups


class BiasedLeakyReLU(nn.Module):
    """x + bias (per channel, zero at init), then leaky ReLU 0.2: the biases of the convs before it."""

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x + self.bias.to(x.dtype).view(1, -1, 1, 1), LRELU_SLOPE)


class ResidualBlock(nn.Module):
    """x + branch_gain * project(act(grouped conv3x3(act(expand(x))))): [N, C, H, W] -> the same.

    `blocks` is L, the number of residual blocks in the whole net, which scales the branch's init."""

    def __init__(self, channels: int, blocks: int):
        super().__init__()
        hidden = channels * EXPANSION
        gain = LRELU_GAIN * blocks ** (-1 / 4)  # L^(-1 / (2m - 2)), m = 3 layers
        self.expand = fan_in_init(nn.Conv2d(channels, hidden, 1, bias=False), gain)
        self.act1 = BiasedLeakyReLU(hidden)
        self.conv = fan_in_init(
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=cardinality(hidden), bias=False), gain
        )
        self.act2 = BiasedLeakyReLU(hidden)
        self.project = fan_in_init(nn.Conv2d(hidden, channels, 1, bias=False))
        # the zero that makes the block the identity at init (see the module docstring for why here)
        self.branch_gain = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.act2(self.conv(self.act1(self.expand(x)))))
        return x + self.branch_gain.to(y.dtype).view(1, -1, 1, 1) * y


class Resample(nn.Module):
    """x2 up- or down-sampling with the fixed [1, 3, 3, 1] low-pass filter, as a depthwise (transposed)
    conv: R3GAN's InterpolativeUpsampler / InterpolativeDownsampler (upfirdn2d, padding 1)."""

    def __init__(self, channels: int, up: bool):
        super().__init__()
        taps = torch.tensor([1.0, 3.0, 3.0, 1.0])
        # up: times 4, as each output pixel of a stride-2 transposed conv meets a quarter of the weight
        kernel = torch.outer(taps, taps) / taps.sum() ** 2 * (4 if up else 1)
        self.register_buffer("kernel", kernel.expand(channels, 1, 4, 4).clone(), persistent=False)
        self.up = up

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kernel.to(x.dtype)
        if self.up:  # [N, C, H, W] -> [N, C, 2H, 2W]
            return F.conv_transpose2d(x, k, stride=2, padding=1, groups=k.shape[0])
        return F.conv2d(x, k, stride=2, padding=1, groups=k.shape[0])  # -> [N, C, H/2, W/2]


class Up(nn.Module):
    """G's transition: a 1x1 conv where the width changes (at the lower resolution), then x2 up."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = (
            fan_in_init(nn.Conv2d(cin, cout, 1, bias=False)) if cin != cout else nn.Identity()
        )
        self.resample = Resample(cout, up=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resample(self.conv(x))


class Down(nn.Module):
    """D's transition: x2 down, then a 1x1 conv where the width changes (at the lower resolution)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.resample = Resample(cin, up=False)
        self.conv = (
            fan_in_init(nn.Conv2d(cin, cout, 1, bias=False)) if cin != cout else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.resample(x))


class GenerativeBasis(nn.Module):
    """R3GAN's G input: a learned 4x4 map a channel, scaled by a linear map of z: [N, D] -> [N, C, 4, 4]."""

    def __init__(self, in_dim: int, channels: int):
        super().__init__()
        self.basis = nn.Parameter(torch.randn(channels, 4, 4))
        self.linear = fan_in_init(nn.Linear(in_dim, channels, bias=False))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.basis.to(z.dtype).unsqueeze(0) * self.linear(z)[:, :, None, None]


class DiscriminativeBasis(nn.Module):
    """R3GAN's D output basis less its linear layer (that is D's head): a depthwise 4x4 conv,
    [N, C, 4, 4] -> [N, C]."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = fan_in_init(nn.Conv2d(channels, channels, 4, groups=channels, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).flatten(1)


def stage_widths(base: int, stages: int) -> list[int]:
    """[w, w, w/2, w/4, ...] from the 4x4 stage up: each stage costs about the same (res^2 x width^2)."""
    return [max(1, base // 2 ** max(0, i - 1)) for i in range(stages)]


class R3GANGenerator(nn.Module):
    def __init__(self, z_dim: int, channels: int, widths: list[int], num_classes: int = 0):
        super().__init__()
        self.z_dim = z_dim
        self.label = LabelToLatent(num_classes, z_dim) if num_classes else None
        blocks = BLOCKS_PER_STAGE * len(widths)
        self.basis = GenerativeBasis(z_dim * (2 if num_classes else 1), widths[0])
        stages = []
        for i, w in enumerate(widths):
            layers = [Up(widths[i - 1], w)] if i else []
            stages.append(
                nn.Sequential(*layers, *[ResidualBlock(w, blocks) for _ in range(BLOCKS_PER_STAGE)])
            )
        self.stages = nn.Sequential(*stages)
        # R3GAN's AggregationLayer (then tanh)
        self.to_image = fan_in_init(nn.Conv2d(widths[-1], channels, 1, bias=False))

    def forward(self, z: torch.Tensor, c: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.label is not None:
            z = self.label(z, c)  # [N, 2 z_dim]; raises without c
        h = self.basis(z)  # [N, w, 4, 4]
        h = layout_of(h, self.stages[0][0].conv.weight)  # a 3x3 weight: a 1x1's layout is ambiguous
        return torch.tanh(self.to_image(self.stages(h)))  # [N, C, 4 * 2^k, 4 * 2^k]


class R3GANDiscriminator(Discriminator):
    def __init__(self, channels: int, widths: list[int], num_classes: int = 0, mbstd: bool = False):
        widths = widths[::-1]  # highest resolution first
        blocks = BLOCKS_PER_STAGE * len(widths)
        layers: list[nn.Module] = [fan_in_init(nn.Conv2d(channels, widths[0], 1, bias=False))]
        for i, w in enumerate(widths):
            layers += [ResidualBlock(w, blocks) for _ in range(BLOCKS_PER_STAGE)]
            layers.append(Down(w, widths[i + 1]) if i + 1 < len(widths) else DiscriminativeBasis(w))
        features = nn.Sequential(*layers)  # [N, w]
        head = fan_in_init(nn.Linear(widths[-1] + mbstd, 1, bias=False))
        super().__init__(features, head, widths[-1], num_classes, mbstd)


def _r3gan(resolution: int, z_dim: int, channels: int, g_channels: int, d_channels: int, num_classes: int,
           mbstd: bool) -> tuple[nn.Module, nn.Module]:  # fmt: skip
    stages = int(math.log2(resolution // 4)) + 1  # 4x4, 8x8, ..., resolution
    G = R3GANGenerator(z_dim, channels, stage_widths(g_channels, stages), num_classes)
    D = R3GANDiscriminator(channels, stage_widths(d_channels, stages), num_classes, mbstd)
    return G, D


@register_model(
    "r3gan32",
    32,
    "R3GAN-style normalisation-free ResNet G/D for 32x32, CPU-sized (widths w, w, w/2, w/4)",
)
def r3gan32(z_dim: int, channels: int, g_channels: int, d_channels: int, dropout: float,
            num_classes: int = 0, mbstd: bool = False):  # fmt: skip
    return _r3gan(32, z_dim, channels, g_channels, d_channels, num_classes, mbstd)


@register_model(
    "r3gan64",
    64,
    "R3GAN-style normalisation-free ResNet G/D for 64x64, CPU-sized (widths w ... w/8)",
)
def r3gan64(z_dim: int, channels: int, g_channels: int, d_channels: int, dropout: float,
            num_classes: int = 0, mbstd: bool = False):  # fmt: skip
    return _r3gan(64, z_dim, channels, g_channels, d_channels, num_classes, mbstd)
