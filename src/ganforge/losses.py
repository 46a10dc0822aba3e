"""Adversarial loss pairs as pure functions of D's raw logits (never sigmoid + BCELoss).

With D(x) = sigmoid(logit): -log D(x) = softplus(-logit) and -log(1 - D(x)) = softplus(logit),
which stay finite where sigmoid saturates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class LossPair:
    d_loss: Callable[
        [torch.Tensor, torch.Tensor], torch.Tensor
    ]  # (real_logits, fake_logits) -> scalar
    g_loss: Callable[[torch.Tensor], torch.Tensor]  # fake_logits -> scalar
    description: str


LOSSES: dict[str, LossPair] = {}


def d_loss_bce(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """D maximises log D(x) + log(1 - D(G(z))): the standard GAN discriminator loss."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def g_loss_non_saturating(fake_logits: torch.Tensor) -> torch.Tensor:
    """G maximises log D(G(z)) (Goodfellow et al. 2014, sec. 3): strong gradients early on."""
    return F.softplus(-fake_logits).mean()


def g_loss_minimax(fake_logits: torch.Tensor) -> torch.Tensor:
    """G minimises log(1 - D(G(z))): the literal minimax game; its gradient vanishes when D wins."""
    return -F.softplus(fake_logits).mean()


LOSSES["non-saturating"] = LossPair(
    d_loss_bce, g_loss_non_saturating, "Goodfellow et al. 2014, -log D(G(z))"
)
LOSSES["minimax"] = LossPair(d_loss_bce, g_loss_minimax, "Goodfellow et al. 2014, log(1 - D(G(z)))")
