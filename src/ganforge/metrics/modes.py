"""Mode coverage: class histograms under a domain classifier, Stacked MNIST, and 2D Gaussian mixtures.

Stacked MNIST and the 2D-mixture protocol follow PacGAN (Lin et al. 2018, sec. 5) and VEEGAN
(Srivastava et al. 2017): 1000 modes from three stacked digits; ring-8 (radius 1, std 0.01) and
grid-25 ({-4,-2,0,2,4}^2, std 0.05), a sample being high quality within 3 standard deviations.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def kl_divergence(p: np.ndarray, q: np.ndarray, eps: float = 1e-12) -> float:
    """KL(p || q) for two histograms (normalised here); bins where p = 0 add nothing."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    p, q = p / p.sum(), q / q.sum()
    mask = p > 0
    return float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], eps))))


def class_modes(
    logits: torch.Tensor, real_counts: np.ndarray, threshold: float = 0.9
) -> dict[str, float]:
    """Class histogram of samples: classes covered, KL(generated || real label distribution), confident share."""
    proba = torch.softmax(logits.double(), dim=1)
    conf, cls = proba.max(dim=1)
    counts = np.bincount(cls.numpy(), minlength=proba.shape[1])
    return {
        "classes_covered": int((counts > 0).sum()),
        "n_classes": int(proba.shape[1]),
        "kl_to_real": kl_divergence(counts, np.asarray(real_counts) + 0.0),
        "confident_fraction": float((conf >= threshold).double().mean()),
        "histogram": counts.tolist(),
    }


def stacked_modes(channel_logits: list[torch.Tensor]) -> dict[str, float]:
    """Stacked MNIST: each of 3 channels classified separately; mode = (d1, d2, d3) of 1000.

    Returns modes covered and KL(generated mode histogram || uniform over 1000).
    """
    digits = [lg.argmax(dim=1).numpy() for lg in channel_logits]
    mode = digits[0] * 100 + digits[1] * 10 + digits[2]
    counts = np.bincount(mode, minlength=1000)
    return {
        "modes_covered": int((counts > 0).sum()),
        "kl_to_uniform": kl_divergence(counts, np.ones(1000)),
    }


def mixture_centres(name: str) -> tuple[np.ndarray, float]:
    """Centres [K, 2] and std of PacGAN's 2D mixtures."""
    if name == "ring8":
        angles = 2 * math.pi * np.arange(8) / 8
        return np.stack([np.cos(angles), np.sin(angles)], axis=1), 0.01
    if name == "grid25":
        grid = np.array([-4.0, -2.0, 0.0, 2.0, 4.0])
        return np.array([(x, y) for x in grid for y in grid]), 0.05
    raise ValueError(f"unknown mixture '{name}'; choose ring8 or grid25")


def mixture_metrics(samples: np.ndarray, name: str) -> dict[str, float]:
    """Modes with >= 1 high-quality sample, % high quality (within 3 std of a centre), reverse KL.

    Reverse KL is KL(generated mode histogram over high-quality samples || uniform over modes).
    """
    centres, std = mixture_centres(name)
    d = np.linalg.norm(samples[:, None, :] - centres[None, :, :], axis=2)  # [N, K]
    nearest = d.argmin(axis=1)
    hq = d[np.arange(len(samples)), nearest] <= 3 * std
    counts = np.bincount(nearest[hq], minlength=len(centres))
    return {
        "modes_covered": int((counts > 0).sum()),
        "n_modes": len(centres),
        "high_quality_pct": 100.0 * float(hq.mean()),
        "reverse_kl": kl_divergence(counts, np.ones(len(centres)))
        if counts.sum()
        else float("inf"),
    }


def sample_mixture(name: str, n: int, seed: int = 0) -> np.ndarray:
    """Draw n points from the true mixture (equal weights)."""
    centres, std = mixture_centres(name)
    rng = np.random.default_rng(seed)
    return centres[rng.integers(0, len(centres), n)] + rng.normal(0, std, (n, 2))
