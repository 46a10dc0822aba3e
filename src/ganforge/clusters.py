"""k-means clusters of a training set, the classes of a self-conditioned GAN (model.clusters).

Labels are not needed to condition a GAN: clusters of the training images serve as pseudo-classes
(Sage et al. 2018, "Logo synthesis and manipulation with clustered generative adversarial networks";
Liu et al. 2020, "Diverse image generation via self-conditioned GANs", which cluster D's features and
report all 1,000 Stacked MNIST modes). G and D are conditioned on the cluster as they would be on a
class, and G draws its cluster with the clusters' frequencies in the data (ClusterPrior), so the
mixture it samples is the data's. ganforge clusters the pixels once, before training: deterministic
for a seed, cheap (seconds for 100,000 images), and independent of D.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

CHUNK = 8192  # images per distance block (a [CHUNK, K] matrix, and the chunk as float)
SIDE = 16  # images are clustered at about this size: pooled by the smallest integer factor that reaches it


@dataclass(frozen=True)
class Clustering:
    labels: torch.Tensor  # [N] int64, cluster of each image
    centers: torch.Tensor  # [K, D] float32, of the pooled images (see pooled); uint8 images in [0, 1] units
    inertia: float  # mean squared distance of an image to its center (per image, summed over pixels)
    iterations: int
    seconds: float

    @property
    def prior(self) -> torch.Tensor:
        """[K] float64: the share of the images in each cluster."""
        return shares(self.labels, self.centers.shape[0])


def shares(labels: torch.Tensor, k: int) -> torch.Tensor:
    """[k] float64: the share of `labels` [N] (cluster indices) in each of k clusters."""
    return torch.bincount(labels.long(), minlength=k).double() / len(labels)


def _flat(images: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Images [start:stop] as float rows in [0, 1] (uint8 images) or as they are (float data)."""
    x = images[start:stop].reshape(stop - start, -1)
    return x.float() / 255 if x.dtype == torch.uint8 else x.float()


def pooled(images: torch.Tensor) -> torch.Tensor:
    """uint8 images [N, C, H, W] average-pooled by the smallest integer factor f with H / f <= SIDE
    (28x28 -> 14x14, 32x32 -> 16x16), still uint8: what k-means compares. Small details do not decide
    a cluster, and every pass over the data is f^2 times cheaper. Other data (points) as it is."""
    if images.dim() != 4 or images.dtype != torch.uint8:
        return images
    f = max(1, -(-max(images.shape[2:]) // SIDE))
    if f == 1:
        return images
    out = [torch.nn.functional.avg_pool2d(images[s : s + CHUNK].float(), f, ceil_mode=True).round().to(torch.uint8)
           for s in range(0, len(images), CHUNK)]  # fmt: skip
    return torch.cat(out)


def _assign(images: torch.Tensor, centers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(nearest center [N], its squared distance [N]) for every image, in chunks."""
    c_sq = (centers * centers).sum(1)  # [K]
    labels, dist = [], []
    for s in range(0, len(images), CHUNK):
        x = _flat(images, s, min(s + CHUNK, len(images)))  # [n, D]
        d = (x * x).sum(1, keepdim=True) - 2 * x @ centers.T + c_sq  # [n, K]
        best, idx = d.min(1)
        labels.append(idx)
        dist.append(best.clamp_min(0))
    return torch.cat(labels), torch.cat(dist)


def kmeans(images: torch.Tensor, k: int, seed: int = 0, iterations: int = 15, init_sample: int = 20_000,
           tol: float = 1e-4) -> Clustering:  # fmt: skip
    """Lloyd's k-means of `images` [N, ...] (uint8 or float; images pooled first, see pooled) into k clusters, k-means++ seeding
    (Arthur & Vassilvitskii 2007) on a seeded sample of `init_sample` images. Stops after `iterations`
    rounds or when the inertia improves by less than `tol` (relative). An emptied cluster is reseeded
    with the image farthest from its center. Deterministic for a seed and a thread count."""
    n = len(images)
    if not 1 <= k <= n:
        raise ValueError(f"k-means: cannot make {k} clusters of {n} images; choose 1 <= k <= {n}.")
    t0 = time.perf_counter()
    images = pooled(images)
    gen = torch.Generator().manual_seed(seed)
    pool_idx = torch.randperm(n, generator=gen)[: max(k, min(n, init_sample))]
    pool = torch.cat([_flat(images[pool_idx], s, min(s + CHUNK, len(pool_idx)))
                      for s in range(0, len(pool_idx), CHUNK)])  # fmt: skip
    # k-means++: each next center drawn with probability proportional to the squared distance to the nearest
    pool_sq = (pool * pool).sum(1)
    first = int(torch.randint(len(pool), (1,), generator=gen))
    chosen = [first]
    nearest = (pool_sq - 2 * pool @ pool[first] + pool_sq[first]).clamp_min(0)
    for _ in range(1, k):
        probs = nearest.double()
        i = int(torch.multinomial(probs / probs.sum(), 1, generator=gen)) if probs.sum() > 0 else 0
        chosen.append(i)
        nearest = torch.minimum(nearest, (pool_sq - 2 * pool @ pool[i] + pool_sq[i]).clamp_min(0))
    c = pool[chosen].clone()  # [k, D]
    del pool
    last, done = float("inf"), 0
    while done < iterations:
        done += 1
        labels, dist = _assign(images, c)
        inertia = float(dist.double().mean())
        sums = torch.zeros_like(c, dtype=torch.float64)
        for s in range(0, n, CHUNK):  # float32 within a chunk, float64 across chunks
            x = _flat(images, s, min(s + CHUNK, n))
            sums += torch.zeros_like(c).index_add_(0, labels[s : s + CHUNK], x).double()
        counts = torch.bincount(labels, minlength=k)
        c = (sums / counts.clamp_min(1).unsqueeze(1)).float()
        for e in torch.nonzero(counts == 0).flatten().tolist():  # an empty cluster takes the worst-fit image
            far = int(dist.argmax())
            c[e] = _flat(images, far, far + 1)[0]
            dist[far] = 0
        if last - inertia <= tol * inertia:
            break
        last = inertia
    labels, dist = _assign(images, c)
    return Clustering(labels, c, float(dist.double().mean()), done, time.perf_counter() - t0)
