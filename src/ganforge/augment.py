"""DiffAugment (Zhao et al. 2020, "Differentiable Augmentation for Data-Efficient GAN Training").

The same random, differentiable transforms are applied to every image D sees, real and fake, in both
the D and the G step, so D cannot overfit a small dataset while G still gets gradients through them.
Random numbers come from a torch.Generator the caller owns (saved in checkpoints: exact resume), drawn
for the global batch when several processes train (draws.Draws). Images are float [N, C, H, W] in [-1, 1].
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ganforge.draws import Draws, as_draws

POLICIES = ("color", "translation", "cutout")


def _rand(n: int, gen: Draws, device: torch.device) -> torch.Tensor:
    return gen.rand(n, 1, 1, 1).to(device)


def color(x: torch.Tensor, gen: torch.Generator | Draws) -> torch.Tensor:
    """Random brightness (+-0.5), saturation (x0..2) and contrast (x0.5..1.5)."""
    gen = as_draws(gen)
    x = x + (_rand(len(x), gen, x.device) - 0.5)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (_rand(len(x), gen, x.device) * 2) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_rand(len(x), gen, x.device) + 0.5) + mean


def translation(x: torch.Tensor, gen: torch.Generator | Draws, ratio: float = 0.125) -> torch.Tensor:
    """Shift each image by up to ratio x its size in each direction, filling with zeros."""
    gen = as_draws(gen)
    n, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ty = gen.randint(-sh, sh + 1, n).to(x.device)
    tx = gen.randint(-sw, sw + 1, n).to(x.device)
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


def cutout(x: torch.Tensor, gen: torch.Generator | Draws, ratio: float = 0.5) -> torch.Tensor:
    """Zero one random square of ratio x the image size per image (it may reach past the border)."""
    gen = as_draws(gen)
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    top = gen.randint(0, h, n).to(x.device)[:, None, None] - ch // 2  # [N, 1, 1]
    left = gen.randint(0, w, n).to(x.device)[:, None, None] - cw // 2
    ys = torch.arange(h, device=x.device)[None, :, None]
    xs = torch.arange(w, device=x.device)[None, None, :]
    inside = (ys >= top) & (ys < top + ch) & (xs >= left) & (xs < left + cw)  # [N, H, W]
    return x * (~inside).unsqueeze(1).to(x.dtype)


TRANSFORMS = {"color": color, "translation": translation, "cutout": cutout}


def make_augment(
    policy: str, gen: torch.Generator | Draws
) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """'color,translation,cutout' -> a function of x; '' -> None (no augmentation). `gen`: the run's
    generator, or a Draws over it that draws for the global batch of several processes."""
    names = [p.strip() for p in policy.split(",") if p.strip()]
    if not names:
        return None
    gen = as_draws(gen)

    def augment(x: torch.Tensor) -> torch.Tensor:
        for name in names:
            x = TRANSFORMS[name](x, gen)
        return x

    return augment
