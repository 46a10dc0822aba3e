"""Blocks shared by the model families: conditional BN, projection D head, minibatch stddev.

Conditional BN: de Vries et al. 2017 / Miyato & Koyama 2018 (cGANs with projection discriminator);
minibatch standard deviation: Karras et al. 2018 (Progressive GAN, sec. 3).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


class ConditionalBatchNorm2d(nn.Module):
    """BatchNorm without its own affine; per-class scale and shift looked up from c [N]."""

    takes_labels = True  # CondSequential passes c to it

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, affine=False)
        self.gain = nn.Embedding(num_classes, channels)
        self.bias = nn.Embedding(num_classes, channels)
        nn.init.ones_(self.gain.weight)
        nn.init.zeros_(self.bias.weight)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        if c is None:
            raise ValueError("this generator is class-conditional: pass class labels c [N]")
        h = self.bn(x)
        return h * self.gain(c)[:, :, None, None] + self.bias(c)[:, :, None, None]


def batch_norm(channels: int, num_classes: int = 0) -> nn.Module:
    """BatchNorm2d, or its class-conditional form when num_classes > 0."""
    return ConditionalBatchNorm2d(channels, num_classes) if num_classes else nn.BatchNorm2d(channels)


class LabelToLatent(nn.Module):
    """Appends a learned class embedding to z (Mirza & Osindero 2014): [N, z] -> [N, z + dim].

    With conditional BN alone, a DCGAN G picked up the class slowly on MNIST (after 1000 steps the
    domain classifier agreed with the requested class on 13 % of samples; chance is 10 %); feeding the
    class in at the input as well makes it obey from early on.
    """

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.embed = nn.Embedding(num_classes, dim)
        nn.init.normal_(self.embed.weight, 0.0, 1.0)  # the scale of z

    def forward(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        if c is None:
            raise ValueError("this generator is class-conditional: pass class labels c [N]")
        return torch.cat([z, self.embed(c)], dim=1)


class CondSequential(nn.Sequential):
    """nn.Sequential that hands the labels c to the layers that take them (`takes_labels`)."""

    takes_labels = True

    def forward(self, x: torch.Tensor, c: Optional[torch.Tensor] = None) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, c) if getattr(layer, "takes_labels", False) else layer(x)
        return x


def layout_of(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x in weight's memory format (channels_last after `model.to(memory_format=...)`), converted
    once where a dense layer's output is reshaped into feature maps. Left to the conv, the seed G's
    [N, 256, 7, 7] map was converted three times per training step (forward, and twice in the
    backward), 14.6 ms of a 300-ms step on a 2-core CPU; done here: twice, 4.3 ms (2026-11-27)."""
    if x.dim() == 4 and weight.dim() == 4 and weight.is_contiguous(memory_format=torch.channels_last):
        return x.contiguous(memory_format=torch.channels_last)
    return x


class ToContiguous(nn.Module):
    """The feature maps back in the plain (NCHW) layout, before the elementwise layers that precede a
    Flatten. Flatten copies a channels_last map anyway; done earlier, the LeakyReLU and dropout that
    follow run forward and backward on one layout: their gradient arrives from Flatten as NCHW, and
    against their channels_last inputs the seed D's [N, 128, 7, 7] LeakyReLU backward and dropout
    multiply took the slow mixed-layout path (bf16: 8.6 + 3.4 ms of a 210-ms step; the step became
    3.6 % faster, fp32 unchanged; 2-core CPU, 2026-11-27). No-op on NCHW input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous()


class FoldConvTranspose2d(nn.ConvTranspose2d):
    """nn.ConvTranspose2d (same parameters, same maths) that computes a one-channel output in
    training as a matmul and `F.fold` (col2im). oneDNN's kernel is slow for a single output
    channel: for the seed G's last layer (64 -> 1, 5x5, stride 2, batch 128, channels_last) forward
    + backward took 12.1 ms against 7.4 ms this way, +3 % on the whole fp32 step; with three output
    channels it was slower (2026-11-27, 2-core CPU). Evaluation and export use the usual kernel."""

    def forward(self, x: torch.Tensor, output_size: Optional[list[int]] = None) -> torch.Tensor:
        plain = self.out_channels != 1 or self.groups != 1 or self.dilation != (1, 1) or output_size is not None
        if plain or not self.training or x.dim() != 4:
            return super().forward(x, output_size)
        n, c, h, w = x.shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        out_hw = ((h - 1) * sh - 2 * ph + kh + self.output_padding[0], (w - 1) * sw - 2 * pw + kw + self.output_padding[1])
        weight = self.weight.reshape(c, kh * kw).to(x.dtype)  # [C_in, 1 * kh * kw]
        cols = x.permute(0, 2, 3, 1).reshape(n * h * w, c) @ weight  # [N * H * W, kh * kw]
        y = F.fold(cols.view(n, h * w, kh * kw).transpose(1, 2), out_hw, self.kernel_size, padding=self.padding, stride=self.stride)
        return y if self.bias is None else y + self.bias.to(y.dtype).view(1, -1, 1, 1)


class MinibatchStd(nn.Module):
    """Appends one feature map: the mean over features of the stddev across groups of `group` samples.

    D can then see how varied a batch is, and a collapsed G's batches stand out (Karras et al. 2018).
    [N, C, H, W] -> [N, C + 1, H, W]; works on [N, F] vectors too (-> [N, F + 1]).
    """

    def __init__(self, group: int = 4):
        super().__init__()
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        g = min(self.group, n)
        while n % g:  # largest group size <= self.group that divides the batch
            g -= 1
        y = x.reshape(g, n // g, *x.shape[1:]).float()  # [G, M, ...]
        std = (y.var(dim=0, unbiased=False) + 1e-8).sqrt()  # [M, ...]
        std = std.flatten(1).mean(dim=1)  # [M]
        std = std.repeat(g).to(x.dtype)  # [N]; sample i belongs to group i % M
        shape = (n, 1, *x.shape[2:])
        return torch.cat([x, std.view(n, *([1] * (x.dim() - 1))).expand(shape)], dim=1)

    def extra_repr(self) -> str:
        return f"group={self.group}"


class Discriminator(nn.Module):
    """features -> [minibatch std] -> head, plus a projection term <embed(c), sum-pooled features>.

    Every D family builds on this, so conditioning (Miyato & Koyama 2018) and minibatch std work
    the same everywhere. `head` must accept features + 1 channel when mbstd is on.
    """

    def __init__(
        self,
        features: nn.Module,
        head: nn.Module,
        feature_channels: int,
        num_classes: int = 0,
        mbstd: bool = False,
    ):
        super().__init__()
        self.features = features
        self.mbstd = MinibatchStd() if mbstd else None
        self.head = head
        self.embed = nn.Embedding(num_classes, feature_channels) if num_classes else None
        if self.embed is not None:
            # Xavier, as the projection paper's code: with N(0, 0.02) the class term stayed too weak to
            # steer G (MNIST, 1000 steps: the requested class in 29 % of samples vs 50 % with Xavier)
            nn.init.xavier_uniform_(self.embed.weight)

    def forward(self, x: torch.Tensor, c: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = self.features(x)  # [N, F, H, W] or [N, F]
        out = self.head(self.mbstd(h) if self.mbstd is not None else h).reshape(x.shape[0])  # [N]
        if self.embed is not None:
            if c is None:
                raise ValueError("this discriminator is class-conditional: pass class labels c [N]")
            pooled = h.sum(dim=(2, 3)) if h.dim() == 4 else h  # [N, F]
            out = out + (self.embed(c) * pooled).sum(dim=1)
        return out
