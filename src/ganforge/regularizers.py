"""Discriminator regularizers as pure functions returning per-sample penalties [N] (per pack of
`pack` images [N / pack] for a PacGAN D, which scores a pack as one sample).

gradient_penalty: WGAN-GP (Gulrajani et al. 2017), (||grad D(x_hat)|| - 1)^2 on random interpolates.
r1_penalty: R1 (Mescheder et al. 2018), ||grad D(x)||^2 on real images; applied lazily every
r1_interval steps with the weight scaled by the interval (Karras et al. 2020, StyleGAN2 sec. B).
mode_seeking_loss: MSGAN's term for G (Mao et al. 2019), the inverse of how far apart two latents' outputs
are relative to the latents.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ganforge.draws import Draws, as_draws


def _input_grad_norm_sq(D: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, pack: int = 1) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    scores = D(x)
    (grad,) = torch.autograd.grad(scores.sum(), x, create_graph=True)
    per_image = grad.pow(2).flatten(1).sum(1)  # [N]
    # a pack's gradient is its images' gradients side by side: its squared norm is their sum
    return per_image if pack == 1 else per_image.view(-1, pack).sum(1)  # [N / pack]


def r1_penalty(D: Callable[[torch.Tensor], torch.Tensor], real_img: torch.Tensor, pack: int = 1) -> torch.Tensor:
    """||grad_x D(x)||^2 per real image (per pack of `pack` consecutive images, as PackedD groups them)."""
    return _input_grad_norm_sq(D, real_img, pack)


def gradient_penalty(
    D: Callable[[torch.Tensor], torch.Tensor],
    real_img: torch.Tensor,
    fake_img: torch.Tensor,
    generator: torch.Generator | Draws,
    pack: int = 1,
) -> torch.Tensor:
    """(||grad D(x_hat)||_2 - 1)^2 per sample, x_hat = eps * real + (1 - eps) * fake, eps ~ U[0, 1]. With
    `pack` > 1, per pack: one eps per pack, and the norm of the whole pack's gradient (the critic's input
    is the pack), so that the penalty is 0 at the WGAN-GP optimum of a packed critic."""
    n = real_img.shape[0] // pack
    eps = as_draws(generator).rand(n, *(1,) * (real_img.dim() - 1))  # [N / pack, 1, 1, 1], or [N / pack, 1]
    eps = (eps if pack == 1 else eps.repeat_interleave(pack, dim=0)).to(real_img.device)
    x_hat = eps * real_img.detach() + (1.0 - eps) * fake_img.detach()
    return (_input_grad_norm_sq(D, x_hat, pack).add(1e-12).sqrt() - 1.0).pow(2)


def mode_seeking_loss(
    fake1: torch.Tensor, fake2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor, eps: float = 1e-5
) -> torch.Tensor:
    """1 / (mean |fake1 - fake2| / mean |z1 - z2| + eps): small when G(z1) and G(z2) differ as much as
    their latents do (MSGAN's official form, Mao et al. 2019, eq. 3 and their code). A scalar."""
    ratio = (fake1.float() - fake2.float()).abs().mean() / (z1 - z2).abs().mean()
    return 1.0 / (ratio + eps)
