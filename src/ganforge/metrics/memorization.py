"""Memorisation: are generated samples closer to the training set than fresh real images are?

For each generated sample, the distance to its nearest training image; the same for held-out real
images. ratio = median(gen -> train) / median(held-out -> train): about 1 for a model that generalises,
well below 1 for one that copies its training set. A near copy is a generated sample closer to a
training image than `copy_quantile` of held-out images are to theirs.

Two distances, because they answer different questions:
- `aligned_pixel_nearest` (instance level, the copy detector): RMS pixel distance minimised over
  shifts of up to `shift` pixels, so a translated or noisy copy of a training image is found as one. Candidates come from a coarse search (average-pooled
  images), then every shift of the query is compared with each candidate (cf. the pixel-space nearest
  neighbours of Webster et al. 2019, "Detecting overfitting of deep generative networks via latent
  recovery", which notes that small translations defeat plain pixel distances).
- `nearest_distances` on a domain classifier's penultimate features (class level): close to a training
  image means "a digit of the same class drawn alike", not a copy: a classifier's features are built to
  ignore the differences between instances of a class.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


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


def _as_float(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 255.0 if images.dtype == torch.uint8 else images.float()


def _coarse(x: torch.Tensor, pool: int) -> torch.Tensor:
    """The coarse-search vector of images x [B, C, H, W] in [0, 1]: each moved by whole pixels so that its
    intensity centroid sits at the centre (zeros shifted in), then average-pooled by `pool`: a copy moved
    by a few pixels lands on nearly the same vector as its original."""
    n, _, h, w = x.shape
    m = x.mean(1)  # [B, H, W]
    mass = m.sum((1, 2)).clamp_min(1e-8)
    cy = (m.sum(2) * torch.arange(h, dtype=m.dtype)).sum(1) / mass
    cx = (m.sum(1) * torch.arange(w, dtype=m.dtype)).sum(1) / mass
    p = max(h, w) // 4
    dy = ((h - 1) / 2 - cy).round().clamp(-p, p).long()
    dx = ((w - 1) / 2 - cx).round().clamp(-p, p).long()
    padded = F.pad(x, (p, p, p, p))
    out = torch.empty_like(x)
    for oy, ox in torch.unique(torch.stack([dy, dx], 1), dim=0).tolist():
        sel = (dy == oy) & (dx == ox)
        out[sel] = padded[sel, :, p - oy : p - oy + h, p - ox : p - ox + w]
    return F.avg_pool2d(out, pool).flatten(1)


def _windows(x: torch.Tensor, s: int) -> torch.Tensor:
    """Every crop of x [B, C, H, W] to its central (H - 2s) x (W - 2s) moved by -s..s pixels in each
    direction (so no pixel is invented at the edges): [B, (2s+1)^2, C * (H - 2s) * (W - 2s)]."""
    h, w = x.shape[-2:]
    views = [x[:, :, dy : h - 2 * s + dy, dx : w - 2 * s + dx] for dy in range(2 * s + 1) for dx in range(2 * s + 1)]
    return torch.stack(views, 1).flatten(2)


def aligned_pixel_nearest(queries: torch.Tensor, reference: torch.Tensor, shift: int = 2, candidates: int = 32,
                          batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """For each query image [N, C, H, W] (uint8, or float in [0, 1]), the RMS pixel distance (0..1) to its
    nearest reference image and that image's index: the reference's central crop (`shift` pixels off
    each side) against the query's crop of the same size at every offset up to `shift` pixels. The
    nearest is sought among the `candidates` closest reference images by `_coarse` (centred on the
    intensity centroid, average-pooled to about 7 pixels a side), so a shifted copy is among them."""
    if queries.shape[1:] != reference.shape[1:]:
        raise ValueError(f"queries {tuple(queries.shape[1:])} and reference {tuple(reference.shape[1:])} "
                         "images differ in size")  # fmt: skip
    s = shift
    ref = _as_float(reference)
    pool = max(1, min(ref.shape[-2:]) // 7)
    ref_small = torch.cat([_coarse(ref[i : i + 4096], pool) for i in range(0, len(ref), 4096)])
    ref_crop = ref[:, :, s : ref.shape[2] - s, s : ref.shape[3] - s].flatten(1)
    k = min(candidates, len(ref))
    dists, idx = [], []
    for start in range(0, len(queries), batch):
        q = _as_float(queries[start : start + batch])
        near = torch.cdist(_coarse(q, pool), ref_small).topk(k, largest=False).indices  # [B, k]
        d = torch.cdist(_windows(q, s), ref_crop[near])  # [B, shifts, k]
        best, at = d.min(1).values.min(1)  # [B]
        dists.append(best / ref_crop.shape[1] ** 0.5)
        idx.append(near.gather(1, at[:, None]).squeeze(1))
    return torch.cat(dists), torch.cat(idx)


def ratio_and_copies(gen_d: torch.Tensor, held_d: torch.Tensor, copy_quantile: float = 0.01) -> dict:
    """The memorisation ratio and near-copy fraction from nearest-training distances of generated and of
    held-out real samples."""
    threshold = torch.quantile(held_d.float(), copy_quantile).item()
    return {
        "ratio": (gen_d.median() / held_d.median().clamp_min(1e-12)).item(),
        "near_copy_fraction": (gen_d <= threshold).float().mean().item(),
        "copy_threshold": threshold,
    }


def _scored(nearest, generated: torch.Tensor, heldout: torch.Tensor, train: torch.Tensor,
            copy_quantile: float) -> dict:  # fmt: skip
    """Ratio and near copies by the distance `nearest(queries, train) -> (distances, indices)`."""
    gen_d, gen_idx = nearest(generated, train)
    held_d, _ = nearest(heldout, train)
    return {**ratio_and_copies(gen_d, held_d, copy_quantile), "gen_distances": gen_d, "gen_nearest": gen_idx}


def memorization(generated: torch.Tensor, heldout: torch.Tensor, train: torch.Tensor,
                 copy_quantile: float = 0.01) -> dict:  # fmt: skip
    """Ratio and near copies of feature vectors [N, F] (class level: see the module's docstring)."""
    return _scored(nearest_distances, generated, heldout, train, copy_quantile)


def pixel_memorization(generated: torch.Tensor, heldout: torch.Tensor, train: torch.Tensor, shift: int = 2,
                       copy_quantile: float = 0.01) -> dict:  # fmt: skip
    """Ratio and near copies of images [N, C, H, W] by `aligned_pixel_nearest` (instance level)."""
    return _scored(lambda q, r: aligned_pixel_nearest(q, r, shift), generated, heldout, train, copy_quantile)
