"""Sharpness: the variance of the Laplacian (Pech-Pacheco et al. 2000), generated vs real.

A blurry image has little energy at high spatial frequency, so its Laplacian varies little. The
ratio of the mean over generated images to the mean over real ones is 1 for images as sharp as the
data, below 1 for blurrier ones (the classic weakness of VAE samples) and above 1 for noisier ones.
Measured on luminance in [0, 1], per image, with the 4-neighbour Laplacian.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


def laplacian_variance(images: torch.Tensor) -> torch.Tensor:
    """uint8 images [N, C, H, W] -> the variance of each image's Laplacian [N] (float64)."""
    x = images.double() / 255.0
    if x.shape[1] == 3:  # luminance (ITU-R BT.601)
        x = 0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
    lap = F.conv2d(x, LAPLACIAN.double().view(1, 1, 3, 3))  # [N, 1, H-2, W-2]
    return lap.flatten(1).var(dim=1)


def sharpness_ratio(generated: torch.Tensor, real: torch.Tensor) -> float:
    """Mean Laplacian variance of `generated` over that of `real` (both uint8 [N, C, H, W])."""
    return float(laplacian_variance(generated).mean() / laplacian_variance(real).mean().clamp_min(1e-12))
