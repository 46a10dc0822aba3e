"""Memorisation: are generated samples closer to the training set than fresh real images are?

For each generated sample, the distance to its nearest training image in feature space; the same for
held-out real images. ratio = median(gen -> train) / median(held-out -> train): about 1 for a model
that generalises, well below 1 for one that copies its training set. A near-copy is a generated
sample closer to a training image than `copy_quantile` of held-out images are to theirs.
"""

from __future__ import annotations

import torch


def nearest_distances(
    queries: torch.Tensor, reference: torch.Tensor, batch: int = 2048
) -> tuple[torch.Tensor, torch.Tensor]:
    """Distance to and index of the nearest reference row for each query row."""
    dists, idx = [], []
    ref = reference.float()
    for start in range(0, len(queries), batch):
        d = torch.cdist(queries[start : start + batch].float(), ref)
        m = d.min(dim=1)
        dists.append(m.values)
        idx.append(m.indices)
    return torch.cat(dists), torch.cat(idx)


def memorization(generated: torch.Tensor, heldout: torch.Tensor, train: torch.Tensor,
                 copy_quantile: float = 0.01) -> dict:  # fmt: skip
    gen_d, gen_idx = nearest_distances(generated, train)
    held_d, _ = nearest_distances(heldout, train)
    threshold = torch.quantile(held_d, copy_quantile).item()
    return {
        "ratio": (gen_d.median() / held_d.median().clamp_min(1e-12)).item(),
        "near_copy_fraction": (gen_d <= threshold).float().mean().item(),
        "copy_threshold": threshold,
        "gen_distances": gen_d,
        "gen_nearest": gen_idx,
    }
