"""FID, KID, IS and precision/recall from features, computed by torch-fidelity's own functions.

torch-fidelity is the engine (Obukhov et al., github.com/toshas/torch-fidelity): these wrappers only
adapt argument conventions and keep names short. FID: Heusel et al. 2017; KID: Binkowski et al.
2018 (unbiased MMD^2, cubic polynomial kernel); IS: Salimans et al. 2016; improved precision and
recall: Kynkaanniemi et al. 2019 (k-NN balls, k=3).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_isc import isc_features_to_metric
from torch_fidelity.metric_kid import kid_features_to_metric
from torch_fidelity.metric_prc import prc_features_to_metric

KID_DEFAULT_SUBSET = 1000


def statistics(features: torch.Tensor) -> dict[str, np.ndarray]:
    """Mean and covariance of features [N, D] (float64), as torch-fidelity computes them."""
    return fid_features_to_statistics(features.double())


def fid_from_statistics(stats_1: dict[str, np.ndarray], stats_2: dict[str, np.ndarray]) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))."""
    return fid_statistics_to_metric(stats_1, stats_2, verbose=False)["frechet_inception_distance"]


def fid(features_1: torch.Tensor, features_2: torch.Tensor) -> float:
    return fid_from_statistics(statistics(features_1), statistics(features_2))


def kid(features_1: torch.Tensor, features_2: torch.Tensor, subsets: int = 100, subset_size: int = KID_DEFAULT_SUBSET,
        seed: int = 2020) -> tuple[float, float, int]:  # fmt: skip
    """Unbiased KID mean and std over `subsets` random subsets; the subset size is clamped to n."""
    n = min(len(features_1), len(features_2))
    if subset_size > n:
        warnings.warn(
            f"KID subset size {subset_size} clamped to the {n} samples available", stacklevel=2
        )
        subset_size = n
    out = kid_features_to_metric(
        features_1.double(), features_2.double(), kid_subsets=subsets, kid_subset_size=subset_size,
        kid_degree=3, kid_gamma=None, kid_coef0=1, kid_kernel="poly", rng_seed=seed, verbose=False,
    )  # fmt: skip
    return out["kernel_inception_distance_mean"], out["kernel_inception_distance_std"], subset_size


def inception_score(
    logits: torch.Tensor, splits: int = 10, seed: int = 2020
) -> tuple[float, float]:
    """exp(E_x KL(p(y|x) || p(y))), mean and std over `splits` splits. Bounded by the number of classes."""
    out = isc_features_to_metric(logits.double(), splits=splits, shuffle=True, rng_seed=seed)
    return out["inception_score_mean"], out["inception_score_std"]


def precision_recall(
    generated: torch.Tensor, real: torch.Tensor, k: int = 3
) -> tuple[float, float]:
    """Improved precision (generated inside the real manifold) and recall (real inside the generated)."""
    out = prc_features_to_metric(
        generated.float(),
        real.float(),
        prc_neighborhood=k,
        prc_batch_size=10000,
        save_cpu_ram=True,
        verbose=False,
    )
    return out["precision"], out["recall"]
