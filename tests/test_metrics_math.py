"""Metric maths on small hand-made inputs, against numpy/scipy references."""

import numpy as np
import pytest
import scipy.linalg
import torch

from ganforge.metrics import fidelity, memorization, modes


def _scipy_fid(a: np.ndarray, b: np.ndarray) -> float:
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def test_frechet_distance_matches_scipy_sqrtm():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 8))
    b = rng.normal(loc=0.3, scale=1.5, size=(400, 8)) @ rng.normal(size=(8, 8)) * 0.5
    ours = fidelity.fid(torch.from_numpy(a), torch.from_numpy(b))
    assert ours == pytest.approx(_scipy_fid(a, b), rel=1e-6)


def test_fid_of_a_set_against_itself_is_zero():
    f = torch.randn(300, 16, dtype=torch.float64)
    assert abs(fidelity.fid(f, f)) < 1e-6


def test_kid_is_unbiased_near_zero_for_same_distribution():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(1000, 8, generator=gen), torch.randn(1000, 8, generator=gen)
    same, _, _ = fidelity.kid(a, b, subset_size=500)
    shifted, _, _ = fidelity.kid(a, b + 1.0, subset_size=500)
    assert abs(same) < 0.01 and shifted > 0.2


def test_kid_clamps_the_subset_size_with_a_warning():
    a = torch.randn(50, 4, dtype=torch.float64)
    with pytest.warns(UserWarning, match="clamped to the 50 samples"):
        _, _, size = fidelity.kid(a, a, subset_size=1000)
    assert size == 50


def test_inception_score_bounds():
    uniform = torch.zeros(1000, 10)
    assert fidelity.inception_score(uniform)[0] == pytest.approx(1.0)
    confident = torch.full((1000, 10), -50.0)
    confident[torch.arange(1000), torch.arange(1000) % 10] = 50.0
    assert fidelity.inception_score(confident, splits=1)[0] == pytest.approx(10.0, rel=1e-3)
    assert (
        9.0 < fidelity.inception_score(confident)[0] <= 10.0
    )  # 10 splits: not exactly balanced each
    one_class = torch.full((1000, 10), -50.0)
    one_class[:, 1] = 50.0
    assert fidelity.inception_score(one_class)[0] == pytest.approx(1.0, rel=1e-3)


def test_precision_recall():
    gen = torch.Generator().manual_seed(0)
    real = torch.randn(400, 4, generator=gen)
    p, r = fidelity.precision_recall(real.clone(), real)
    assert p == 1.0 and r == 1.0
    collapsed = real[:1].repeat(400, 1) + 0.001 * torch.randn(400, 4, generator=gen)
    p, r = fidelity.precision_recall(collapsed, real)
    assert p > 0.9 and r < 0.1  # realistic but not diverse
    far = real + 10.0
    p, r = fidelity.precision_recall(far, real)
    assert p == 0.0 and r == 0.0


def _logits_for(labels: np.ndarray, k: int = 10) -> torch.Tensor:
    logits = torch.full((len(labels), k), -10.0)
    logits[torch.arange(len(labels)), torch.from_numpy(labels)] = 10.0
    return logits


def test_class_modes():
    real = np.repeat(np.arange(10), 100)
    ones = modes.class_modes(_logits_for(np.ones(500, dtype=np.int64)), np.bincount(real))
    assert ones["classes_covered"] == 1 and ones["kl_to_real"] == pytest.approx(
        np.log(10), rel=1e-6
    )
    everything = modes.class_modes(_logits_for(real), np.bincount(real))
    assert everything["classes_covered"] == 10 and everything["kl_to_real"] < 1e-9
    assert everything["confident_fraction"] == 1.0


def test_stacked_modes():
    rng = np.random.default_rng(0)
    digits = [rng.integers(0, 10, 26000) for _ in range(3)]
    full = modes.stacked_modes([_logits_for(d) for d in digits])
    assert full["modes_covered"] == 1000 and full["kl_to_uniform"] < 0.05
    collapsed = modes.stacked_modes([_logits_for(np.full(100, 3)) for _ in range(3)])
    assert collapsed["modes_covered"] == 1 and collapsed["kl_to_uniform"] == pytest.approx(
        np.log(1000)
    )


@pytest.mark.parametrize("name, k", [("ring8", 8), ("grid25", 25)])
def test_mixture_metrics_on_the_true_mixture(name, k):
    m = modes.mixture_metrics(modes.sample_mixture(name, 2500, seed=1), name)
    assert m["modes_covered"] == k
    # within 3 std in 2D (a radius): 1 - exp(-9/2) = 98.9 % of a Gaussian's mass
    assert 98.0 < m["high_quality_pct"] <= 100.0
    assert m["reverse_kl"] < 0.05
    one = modes.mixture_metrics(np.zeros((100, 2)) + modes.mixture_centres(name)[0][0], name)
    assert one["modes_covered"] == 1 and one["high_quality_pct"] == 100.0


def test_memorization_ratio():
    gen = torch.Generator().manual_seed(0)
    train = torch.randn(2000, 8, generator=gen)
    heldout = torch.randn(500, 8, generator=gen)
    copier = memorization.memorization(train[:500] + 1e-4, heldout, train)
    assert copier["ratio"] < 0.01 and copier["near_copy_fraction"] == 1.0
    honest = memorization.memorization(torch.randn(500, 8, generator=gen), heldout, train)
    assert 0.85 < honest["ratio"] < 1.15 and honest["near_copy_fraction"] < 0.05


def test_sharpness_ratio_orders_blurred_real_and_noisy_images():
    import torch.nn.functional as F

    from ganforge.metrics.sharpness import laplacian_variance, sharpness_ratio

    gen = torch.Generator().manual_seed(0)
    real = (torch.rand(16, 1, 28, 28, generator=gen) > 0.8).to(torch.uint8) * 255  # hard edges
    blurred = (F.avg_pool2d(real.float(), 3, 1, 1)).round().to(torch.uint8)
    assert sharpness_ratio(real, real) == pytest.approx(1.0)
    assert sharpness_ratio(blurred, real) < 0.5
    flat = torch.full((4, 3, 16, 16), 128, dtype=torch.uint8)
    assert laplacian_variance(flat).abs().max() == 0  # a flat image has no detail
    # hand-computed: one white pixel at (1, 1) of a black 4x4 image; the Laplacian over the 2x2
    # interior is [-4, 1, 1, 0], whose (unbiased) variance is 17 / 3
    one = torch.zeros(1, 1, 4, 4, dtype=torch.uint8)
    one[0, 0, 1, 1] = 255
    assert laplacian_variance(one).item() == pytest.approx(17 / 3)
