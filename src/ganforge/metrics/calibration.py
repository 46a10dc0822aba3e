"""Temperature scaling (Guo et al., ICML 2017): one scalar T that makes a classifier's softmax
probabilities calibrated on held-out data, without changing its predictions or its features.

The shipped domain classifiers are trained with label smoothing (0.05), which caps their confidence
near 0.955: a threshold such as "p >= 0.9" then measures closeness to that cap more than
recognisability. Probabilities softmax(logits / T), with T fitted on real held-out images, mean what
they say.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, steps: int = 200) -> float:
    """The T > 0 minimising the negative log-likelihood of `labels` [N] under softmax(logits / T)."""
    logits, labels = logits.detach().double(), labels.detach().long()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp())


def calibrated_proba(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return torch.softmax(logits.float() / temperature, dim=1)
