"""A small CNN classifier for 28x28 / 32x32 images: judges whether generated samples are recognisable.

Used by the learning tests and the quick-start benchmark: "recognisable" = the classifier, trained
on real images, gives one class a probability of at least `threshold`.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ganforge.data import to_float


class SmallCNN(nn.Module):
    """Two conv blocks + an MLP head; about 98 % test accuracy on MNIST after one epoch."""

    def __init__(
        self, channels: int = 1, n_classes: int = 10, width: int = 32, resolution: int = 28
    ):
        super().__init__()
        side = resolution // 4
        self.features = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),  # [N, 2w * (R/4)^2]
        )
        self.head = nn.Sequential(
            nn.Linear(2 * width * side * side, 128), nn.ReLU(), nn.Linear(128, n_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def fit_classifier(
    images: torch.Tensor,
    labels: torch.Tensor,
    epochs: int = 2,
    batch_size: int = 128,
    seed: int = 0,
    n_classes: Optional[int] = None,
) -> SmallCNN:
    """Train a SmallCNN on uint8 images [N, C, H, W] with int labels; returns it in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = SmallCNN(
        images.shape[1], n_classes or int(labels.max()) + 1, resolution=images.shape[-1]
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=gen)
        for start in range(0, len(images), batch_size):
            idx = order[start : start + batch_size]
            loss = F.cross_entropy(model(to_float(images[idx])), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def predict_proba(model: nn.Module, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Class probabilities [N, K] for uint8 images [N, C, H, W]."""
    out = [
        F.softmax(model(to_float(images[s : s + batch_size])), dim=1)
        for s in range(0, len(images), batch_size)
    ]
    return torch.cat(out)


def recognisability(
    model: nn.Module, images: torch.Tensor, threshold: float = 0.9
) -> dict[str, float]:
    """Fraction of images classified with probability >= threshold, and how many classes those cover."""
    proba = predict_proba(model, images)
    conf, cls = proba.max(dim=1)
    confident = conf >= threshold
    counts = torch.bincount(cls[confident], minlength=proba.shape[1])
    return {
        "confident_fraction": confident.float().mean().item(),
        "classes_covered": int((counts > 0).sum()),
        "class_counts": counts.tolist(),
    }
