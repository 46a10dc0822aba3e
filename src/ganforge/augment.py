"""DiffAugment (Zhao et al. 2020, "Differentiable Augmentation for Data-Efficient GAN Training").

The same random, differentiable transforms are applied to every image D sees, real and fake, in both
the D and the G step, so D cannot overfit a small dataset while G still gets gradients through them.
Random numbers come from a torch.Generator the caller owns (saved in checkpoints: exact resume).
Images are float [N, C, H, W] in [-1, 1].
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

POLICIES = ("color", "translation", "cutout")


def _rand(n: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, 1, 1, 1, generator=gen).to(device)


def color(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random brightness (+-0.5), saturation (x0..2) and contrast (x0.5..1.5)."""
    x = x + (_rand(len(x), gen, x.device) - 0.5)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (_rand(len(x), gen, x.device) * 2) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_rand(len(x), gen, x.device) + 0.5) + mean


def translation(x: torch.Tensor, gen: torch.Generator, ratio: float = 0.125) -> torch.Tensor:
    """Shift each image by up to ratio x its size in each direction, filling with zeros."""
    n, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ty = torch.randint(-sh, sh + 1, (n,), generator=gen).to(x.device)
    tx = torch.randint(-sw, sw + 1, (n,), generator=gen).to(x.device)
    rows = (torch.arange(h, device=x.device)[None, :] + ty[:, None]).clamp(
        -1, h
    )  # [N, H]; -1 and h: padding
    cols = (torch.arange(w, device=x.device)[None, :] + tx[:, None]).clamp(-1, w)
    padded = F.pad(x, (1, 1, 1, 1))
    return padded[
        torch.arange(n, device=x.device)[:, None, None],
        :,
        (rows + 1)[:, :, None],
        (cols + 1)[:, None, :],
    ].permute(0, 3, 1, 2)


def cutout(x: torch.Tensor, gen: torch.Generator, ratio: float = 0.5) -> torch.Tensor:
    """Zero one random square of ratio x the image size per image (it may reach past the border)."""
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    top = (
        torch.randint(0, h, (n,), generator=gen).to(x.device)[:, None, None] - ch // 2
    )  # [N, 1, 1]
    left = torch.randint(0, w, (n,), generator=gen).to(x.device)[:, None, None] - cw // 2
    ys = torch.arange(h, device=x.device)[None, :, None]
    xs = torch.arange(w, device=x.device)[None, None, :]
    inside = (ys >= top) & (ys < top + ch) & (xs >= left) & (xs < left + cw)  # [N, H, W]
    return x * (~inside).unsqueeze(1).to(x.dtype)


TRANSFORMS = {"color": color, "translation": translation, "cutout": cutout}


def make_augment(
    policy: str, gen: torch.Generator
) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """'color,translation,cutout' -> a function of x; '' -> None (no augmentation)."""
    names = [p.strip() for p in policy.split(",") if p.strip()]
    if not names:
        return None

    def augment(x: torch.Tensor) -> torch.Tensor:
        for name in names:
            x = TRANSFORMS[name](x, gen)
        return x

    return augment
