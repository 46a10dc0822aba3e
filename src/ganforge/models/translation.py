"""The translation nets, scaled to 28x28 and 32x32 images: pix2pix's (Isola et al. 2017), a U-Net
generator with skips and a PatchGAN discriminator that judges (input, output) pairs patch by patch;
and CycleGAN's (Zhu et al. 2017), two ResNet generators and two unconditional PatchGANs.

The paper's nets are for 256x256 (eight downsamplings to 1x1, a 70x70 PatchGAN). Here the U-Net
halves the image until it is 7x7 (28) or 4x4 (32), then a 3x3 bottleneck, and comes back up with a
skip from each level; C64-C128-C256 as the paper's first layers, BatchNorm everywhere but the first
and last layers, LeakyReLU 0.2 going down and ReLU going up, dropout 0.5 in the decoder's inner
layers as the paper's noise (the paper keeps it at test time; ganforge samples in eval mode, without
it), tanh out. The PatchGAN is the paper's with one strided layer (n_layers=1: C64 s2, C128 s1, then
1 channel s1, all 4x4 kernels): each output logit sees a 16x16 patch of the 28x28 or 32x32 pair, about
half the image where the paper's 70x70 sees a quarter of 256x256 (a 1/4 patch would be 7 pixels: too
little of a garment's outline to judge its shape). Weights N(0, 0.02) as the paper's code.

G(x) -> y for x [N, C_in, H, W] in [-1, 1]; D(y, x) -> logits [N, h, w] (one per patch): D reads the
input image as its condition, in the conditional D's place, so the GAN steps' D update applies as is.

CycleGAN's generator is the paper's ResNet (Johnson et al. 2016's, as the paper's code builds it):
c7s1-w, two stride-2 downsamplings (d2w, d4w), 6 residual blocks (the paper's choice below 256x256),
two upsamplings, c7s1-C and tanh; reflection padding, instance norm without affine parameters. Its
PatchGANs are pix2pix's without the condition and with instance norm (the reference code's default),
at the same 16x16 receptive field. The pair of each travels as one module (CycleG: G_ab and G_ba;
CycleD: D_a judges domain A, D_b domain B), so that the loop, optimizers and checkpoints treat them as
one G and one D (the paper's code also steps both Gs with one Adam, and both Ds with another).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from ganforge.models import register_model

DECODER_DROPOUT = 0.5  # the paper's noise: dropout in the decoder's inner layers while training
PATCH_LAYERS = 1  # strided layers of the PatchGAN: 16x16 receptive field (see the module docstring)


def _init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class UNet(nn.Module):
    """Encoder-decoder with a skip from each encoder level to the decoder level of its size."""

    def __init__(self, in_channels: int, out_channels: int, resolution: int, width: int = 64):
        super().__init__()
        levels = {28: 2, 32: 3}[resolution]  # 28 -> 14 -> 7; 32 -> 16 -> 8 -> 4
        widths = [min(width * 2**i, width * 8) for i in range(levels)]
        self.down = nn.ModuleList()
        c = in_channels
        for i, w in enumerate(widths):
            layers: list[nn.Module] = [nn.Conv2d(c, w, 4, 2, 1, bias=i == 0)]
            if i > 0:
                layers.append(nn.BatchNorm2d(w))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            self.down.append(nn.Sequential(*layers))
            c = w
        self.bottleneck = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1), nn.ReLU(inplace=True))  # no norm: innermost
        self.up = nn.ModuleList()
        for i in reversed(range(1, levels)):  # back up to the first encoder level's size
            layers = [nn.ConvTranspose2d(2 * c, widths[i - 1], 4, 2, 1, bias=False), nn.BatchNorm2d(widths[i - 1])]
            if i == levels - 1:
                layers.append(nn.Dropout(DECODER_DROPOUT))  # the innermost decoder layer
            layers.append(nn.ReLU(inplace=True))
            self.up.append(nn.Sequential(*layers))
            c = widths[i - 1]
        self.out = nn.Sequential(nn.ConvTranspose2d(2 * c, out_channels, 4, 2, 1), nn.Tanh())
        _init(self)

    def forward(self, x: torch.Tensor, c: None = None) -> torch.Tensor:
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
        h = self.bottleneck(x)
        for block in self.up:
            h = block(torch.cat([h, skips.pop()], 1))
        return self.out(torch.cat([h, skips.pop()], 1))


class PatchGAN(nn.Module):
    """pix2pix's conditional PatchGAN: the (output, input) pair stacked along channels, one logit per
    patch. in_channels=0: unconditional, D(y) (CycleGAN's); norm "instance": CycleGAN's normalisation."""

    def __init__(self, in_channels: int, out_channels: int, width: int = 64, n_layers: int = PATCH_LAYERS,
                 norm: str = "batch"):  # fmt: skip
        super().__init__()
        Norm = nn.BatchNorm2d if norm == "batch" else nn.InstanceNorm2d  # (instance: no affine, as the reference)
        c = in_channels + out_channels
        layers: list[nn.Module] = [nn.Conv2d(c, width, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
        c = width
        for i in range(1, n_layers):
            w = min(width * 2**i, width * 8)
            layers += [nn.Conv2d(c, w, 4, 2, 1, bias=False), Norm(w), nn.LeakyReLU(0.2, inplace=True)]
            c = w
        w = min(width * 2**n_layers, width * 8)
        layers += [nn.Conv2d(c, w, 4, 1, 1, bias=False), Norm(w), nn.LeakyReLU(0.2, inplace=True),
                   nn.Conv2d(w, 1, 4, 1, 1)]  # fmt: skip
        self.net = nn.Sequential(*layers)
        _init(self)

    def forward(self, y: torch.Tensor, x: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.net(y if x is None else torch.cat([y, x], 1)).squeeze(1)  # [N, h, w]


RESNET_BLOCKS = 6  # CycleGAN's generator for images below 256x256


class ResnetBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3), nn.InstanceNorm2d(c), nn.ReLU(True),
                                  nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3), nn.InstanceNorm2d(c))  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """CycleGAN's generator: [N, C_in, H, W] -> [N, C_out, H, W] in [-1, 1] (H divisible by 4)."""

    def __init__(self, in_channels: int, out_channels: int, width: int = 64, blocks: int = RESNET_BLOCKS):
        super().__init__()
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(in_channels, width, 7),
                                   nn.InstanceNorm2d(width), nn.ReLU(True)]  # fmt: skip
        c = width
        for _ in range(2):
            layers += [nn.Conv2d(c, 2 * c, 3, 2, 1), nn.InstanceNorm2d(2 * c), nn.ReLU(True)]
            c *= 2
        layers += [ResnetBlock(c) for _ in range(blocks)]
        for _ in range(2):
            layers += [nn.ConvTranspose2d(c, c // 2, 3, 2, 1, output_padding=1), nn.InstanceNorm2d(c // 2),
                       nn.ReLU(True)]  # fmt: skip
            c //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(c, out_channels, 7), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        _init(self)

    def forward(self, x: torch.Tensor, c: None = None) -> torch.Tensor:
        return self.net(x)


class CycleG(nn.Module):
    """CycleGAN's two generators as one module: G_ab (domain A -> B) and G_ba (B -> A). Called as G(x),
    it translates A -> B (what `sample`, `translate` and exports use unless told the direction)."""

    def __init__(self, G_ab: nn.Module, G_ba: nn.Module):
        super().__init__()
        self.G_ab, self.G_ba = G_ab, G_ba

    def forward(self, x: torch.Tensor, c: None = None, direction: str = "a2b") -> torch.Tensor:
        return (self.G_ab if direction == "a2b" else self.G_ba)(x)


class CycleD(nn.Module):
    """CycleGAN's two discriminators as one module: D_a judges domain A images, D_b domain B's."""

    def __init__(self, D_a: nn.Module, D_b: nn.Module):
        super().__init__()
        self.D_a, self.D_b = D_a, D_b

    def forward(self, y: torch.Tensor, domain: str = "b") -> torch.Tensor:
        return (self.D_b if domain == "b" else self.D_a)(y)


def receptive_field(n_layers: int = PATCH_LAYERS) -> int:
    """The side of the input patch one PatchGAN logit sees: 16 for n_layers=1, 34 for 2, 70 for 3 (the paper's)."""
    strides = [2] * n_layers + [1, 1]
    field, jump = 1, 1
    for s in strides:
        field += 3 * jump  # 4x4 kernels
        jump *= s
    return field


def _build(resolution: int):
    def build(channels: int, g_channels: int, d_channels: int, in_channels: int = 1, **_: object):
        return UNet(in_channels, channels, resolution, g_channels), PatchGAN(in_channels, channels, d_channels)

    return build


def _build_cycle(channels: int, g_channels: int, d_channels: int, in_channels: int = 1, **_: object):
    G = CycleG(ResnetGenerator(in_channels, channels, g_channels), ResnetGenerator(channels, in_channels, g_channels))
    D = CycleD(PatchGAN(0, in_channels, d_channels, norm="instance"), PatchGAN(0, channels, d_channels, norm="instance"))
    return G, D


for _res in (28, 32):
    register_model(f"pix2pix{_res}", _res, f"pix2pix U-Net G + 16x16 PatchGAN D for paired translation, {_res}x{_res}",
                   auto=True, conditional=False, family="translation")(_build(_res))  # fmt: skip
    register_model(f"cyclegan{_res}", _res, f"CycleGAN: two ResNet Gs + two 16x16 PatchGANs, unpaired translation, "
                   f"{_res}x{_res}", auto=True, conditional=False, family="cyclegan")(_build_cycle)  # fmt: skip
