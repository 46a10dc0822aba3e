"""Live health monitor: cheap signals during training that turn into `collapse` and `divergence` events.

Every `monitor.every` steps the monitor looks at a fixed batch of samples (fixed latents, G in eval
mode, no effect on training) and a fixed real batch:
- diversity: mean pairwise distance of the samples' features over the same for the real batch
  (features: the domain classifier's when the dataset has one, else 8x8 average-pooled pixels, or
  the points themselves for 2D data); a collapsed G scores near 0;
- class entropy: entropy of the samples' predicted-class histogram over the real batch's (domain
  classifier, or nearest mixture centre for ring8/grid25); dropping classes lowers it;
- D's accuracy on the last real and fake batches at the loss's decision boundary (0 for logits and hinge,
  0.5 for LSGAN), or, for a loss with no absolute boundary (WGAN critic, relativistic), the fraction of
  (real, fake) pairs that D orders right; and the gradient norms (logged, not thresholded).
Each check is healthy or not; `patience` unhealthy checks in a row after `warmup` steps make a
collapse event. NaN/Inf in the losses or weights is a divergence event at the step it happens. The
first unhealthy check of a run of them is also said on the terminal (`notice`), warm-up or not: the
log has every check, the terminal one line per run of them.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ganforge.config import MonitorConfig
from ganforge.data import ImageDataset, to_uint8


def mean_pairwise_distance(x: torch.Tensor) -> float:
    """Mean L2 distance over all pairs of rows of x [N, F]."""
    return float(torch.pdist(x.double().flatten(1)).mean())


def class_entropy(classes: torch.Tensor, num_classes: int) -> float:
    """Entropy (nats) of the histogram of class ids [N]."""
    p = torch.bincount(classes, minlength=num_classes).double()
    p = p[p > 0] / p.sum()
    return float(-(p * p.log()).sum())


def all_finite(*tensors: torch.Tensor) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def weights_finite(*modules: nn.Module) -> bool:
    """True when every parameter of the modules is finite (one fused norm per module)."""
    for module in modules:
        params = [p for p in module.parameters()]
        if params and not math.isfinite(torch.stack(torch._foreach_norm(params)).sum().item()):
            return False
    return True


class Featurizer:
    """Maps a batch (float, as G makes it) to (features [N, F], class ids [N] or None)."""

    def __init__(self, dataset: ImageDataset):
        from ganforge.metrics.features import EXTRACTOR_FOR_DATASET, load_domain_extractor

        self.points = dataset.is_points
        self.extractor = None
        self.centres: Optional[torch.Tensor] = None
        self.num_classes = dataset.num_classes
        if self.points and dataset.name in ("ring8", "grid25"):
            from ganforge.metrics.modes import mixture_centres

            self.centres = torch.from_numpy(mixture_centres(dataset.name)[0]).float()
        elif not self.points and dataset.name in EXTRACTOR_FOR_DATASET:
            self.extractor = load_domain_extractor(EXTRACTOR_FOR_DATASET[dataset.name])
            self.num_classes = 10

    @property
    def has_classes(self) -> bool:
        return self.extractor is not None or self.centres is not None

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        x = x.float().cpu()
        if self.points:
            classes = torch.cdist(x, self.centres).argmin(1) if self.centres is not None else None
            return x, classes
        if self.extractor is not None:
            features, logits = self.extractor(to_uint8(x))
            return features, logits.argmax(1)
        side = min(8, x.shape[-1])
        return F.adaptive_avg_pool2d(x, side).flatten(1), None


def d_accuracy(real_logits: torch.Tensor, fake_logits: torch.Tensor, boundary: Optional[float]) -> dict[str, float]:
    """D's accuracy on a real and a fake batch: each side of `boundary` (d_acc_real, d_acc_fake), or with
    no boundary the fraction of (real_i, fake_i) pairs scored real > fake (d_acc_pairs)."""
    real, fake = real_logits.detach().float().flatten(), fake_logits.detach().float().flatten()
    if boundary is None:
        k = min(len(real), len(fake))
        return {"d_acc_pairs": float((real[:k] > fake[:k]).float().mean())}
    return {"d_acc_real": float((real > boundary).float().mean()), "d_acc_fake": float((fake < boundary).float().mean())}


class HealthMonitor:
    def __init__(self, cfg: MonitorConfig, dataset: ImageDataset, z: torch.Tensor,
                 c: Optional[torch.Tensor] = None, d_boundary: Optional[float] = 0.0):  # fmt: skip
        """z [n, z_dim] (and c [n] for conditional G): the fixed latents every check samples. `d_boundary`:
        the loss's decision boundary on D's output (losses.LossPair.boundary)."""
        from ganforge.data import to_float

        self.cfg, self.d_boundary = cfg, d_boundary
        self.z, self.c = z, c
        self.featurize = Featurizer(dataset)
        gen = torch.Generator().manual_seed(12345)
        idx = torch.randperm(len(dataset), generator=gen)[: cfg.n]
        real_f, real_cls = self.featurize(to_float(dataset.images[idx]))
        self.real_diversity = mean_pairwise_distance(real_f)
        self.real_entropy = (
            class_entropy(real_cls, self.featurize.num_classes) if real_cls is not None else None
        )
        self.unhealthy_streak = 0
        self.noticed = False  # the current run of unhealthy checks was said on the terminal

    def reset(self) -> None:
        """After a rollback: the restored state starts a new count (and a new notice)."""
        self.unhealthy_streak = 0
        self.noticed = False

    @torch.no_grad()
    def check(self, G: nn.Module, step: int, real_logits: Optional[torch.Tensor], fake_logits: Optional[torch.Tensor],
              device: torch.device) -> dict[str, Any]:  # fmt: skip
        """One health check; returns the record for metrics.jsonl (event 'health')."""
        was_training = G.training
        G.eval()
        fake = G(self.z.to(device), None if self.c is None else self.c.to(device))
        G.train(was_training)
        record: dict[str, Any] = {"event": "health", "step": step}
        if not all_finite(fake):
            record.update(healthy=False, reasons=["samples contain NaN/Inf"])
            return record
        feats, classes = self.featurize(fake)
        diversity = mean_pairwise_distance(feats) / max(self.real_diversity, 1e-12)
        record["diversity_ratio"] = diversity
        reasons = []
        if diversity < self.cfg.diversity_threshold:
            reasons.append(
                f"sample diversity is {diversity:.2f} of the real data's (threshold {self.cfg.diversity_threshold})"
            )
        if classes is not None and self.real_entropy:
            entropy = max(0.0, class_entropy(classes, self.featurize.num_classes) / self.real_entropy)
            record["class_entropy_ratio"] = entropy
            record["classes_present"] = int(torch.unique(classes).numel())
            if entropy < self.cfg.entropy_threshold:
                reasons.append(
                    f"class entropy is {entropy:.2f} of the real data's (threshold {self.cfg.entropy_threshold}); "
                    f"{record['classes_present']} of {self.featurize.num_classes} classes present"
                )
        if real_logits is not None:  # a GAN's D on its last batches (a VAE has none)
            record.update(d_accuracy(real_logits, fake_logits, self.d_boundary))
        record["healthy"] = not reasons
        record["reasons"] = reasons
        return record

    def collapse_due(self, record: dict[str, Any]) -> bool:
        """Count unhealthy checks; True when `patience` in a row have happened after warmup."""
        if record["healthy"]:
            self.unhealthy_streak = 0
            return False
        self.unhealthy_streak += 1
        return record["step"] >= self.cfg.warmup and self.unhealthy_streak >= self.cfg.patience

    def notice(self, record: dict[str, Any]) -> Optional[str]:
        """One line for the terminal at the first unhealthy check of a run of them (None otherwise): what
        failed, and when the collapse policy would act. The policy itself is not changed by it."""
        if record["healthy"]:
            self.noticed = False
            return None
        if self.noticed:
            return None
        self.noticed = True
        cfg = self.cfg
        later = f" from step {cfg.warmup} on" if record["step"] < cfg.warmup else ""
        return (f"ganforge: health check at step {record['step']} failed: {'; '.join(record['reasons'])}. "
                f"monitor.on_collapse={cfg.on_collapse} acts after {cfg.patience} failed check(s) in a row{later}; "
                "metrics.jsonl has every check.")  # fmt: skip
