"""Exponential moving average of G's weights (Yazici et al. 2019; Karras et al. 2018).

G_ema = beta * G_ema + (1 - beta) * G after every G step; buffers (BN statistics) are copied.
Sampling and evaluation use G_ema when a run has one.
"""

from __future__ import annotations

import torch
import torch.nn as nn


@torch.no_grad()
def update_ema(G_ema: nn.Module, G: nn.Module, beta: float) -> None:
    """beta = 0 copies G; beta = 1 freezes G_ema."""
    ema_params = list(G_ema.parameters())
    params = list(G.parameters())
    torch._foreach_lerp_(ema_params, params, 1.0 - beta)
    for b_ema, b in zip(G_ema.buffers(), G.buffers()):
        b_ema.copy_(b)
