"""Translation metrics on hand-made images, against hand-computed values and scikit-image."""

import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from ganforge.metrics import translation as T


def _const(value: int, shape=(2, 1, 28, 28)) -> torch.Tensor:
    return torch.full(shape, value, dtype=torch.uint8)


def _random(shape, seed: int = 0) -> torch.Tensor:
    return torch.randint(
        0, 256, shape, generator=torch.Generator().manual_seed(seed), dtype=torch.uint8
    )


def _noisy(images: torch.Tensor, std: float, seed: int = 1) -> torch.Tensor:
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed)) * std
    return (images.double() + noise).round().clamp(0, 255).to(torch.uint8)


def _smooth(shape=(3, 1, 28, 28)) -> torch.Tensor:
    """Images with structure (a ramp plus a square), so SSIM has something to lose."""
    n, c, h, w = shape
    ramp = torch.linspace(30, 200, w).expand(h, w).clone()
    ramp[8:20, 8:20] += 40
    return ramp.expand(n, c, h, w).round().to(torch.uint8).contiguous()


def test_mae_of_a_constant_offset():
    assert T.mae(_const(10), _const(20)) == pytest.approx(10 / 255)
    assert T.mae(_const(20), _const(10)) == pytest.approx(10 / 255)  # no uint8 wrap-around
    assert T.mae(_const(0), _const(255)) == pytest.approx(1.0)


def test_psnr_of_a_one_pixel_difference():
    a = _const(100, (1, 1, 28, 28))
    b = a.clone()
    b[0, 0, 3, 4] = 110  # MSE = 10^2 / 784
    expected = 10 * math.log10(255**2 / (100 / 784))
    assert T.psnr(a, b) == pytest.approx(expected)
    assert T.psnr(a, b) == pytest.approx(
        peak_signal_noise_ratio(a.numpy(), b.numpy(), data_range=255)
    )


def test_psnr_is_the_mean_of_per_image_values_and_matches_skimage():
    x, y = _random((4, 3, 32, 32), 0), _random((4, 3, 32, 32), 1)
    per_image = [
        peak_signal_noise_ratio(a, b, data_range=255) for a, b in zip(x.numpy(), y.numpy())
    ]
    assert T.psnr(x, y) == pytest.approx(np.mean(per_image))


def test_identical_images_give_ssim_one_and_the_psnr_cap():
    x = _random((3, 3, 32, 32))
    assert T.psnr(x, x) == T.PSNR_CAP_DB == 100.0
    assert T.ssim(x, x) == pytest.approx(1.0)
    assert T.mae(x, x) == 0.0
    # one identical pair among others: the cap enters the mean as 100, not inf
    y = _noisy(x, 10.0)
    y[0] = x[0]
    assert math.isfinite(T.psnr(x, y)) and T.psnr(x, y) > T.psnr(x, _noisy(x, 10.0))


def test_ssim_decreases_with_noise_and_is_symmetric():
    for shape in [(3, 1, 28, 28), (3, 3, 32, 32)]:
        x = _smooth(shape)
        low, high = _noisy(x, 5.0), _noisy(x, 40.0)
        s_low, s_high = T.ssim(x, low), T.ssim(x, high)
        assert 1.0 > s_low > s_high
        assert T.ssim(low, x) == pytest.approx(s_low)
        assert T.ssim(high, x) == pytest.approx(s_high)


def test_ssim_matches_skimage_with_wang_settings():
    x = _smooth((2, 3, 32, 32))
    y = _noisy(x, 20.0)
    kwargs = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)
    grey = [structural_similarity(a[0], b[0], **kwargs) for a, b in zip(x.numpy(), y.numpy())]
    assert T.ssim(x[:, :1], y[:, :1]) == pytest.approx(np.mean(grey))
    colour = [  # HWC, as skimage's docs show it: the channel axis must not matter
        structural_similarity(a.transpose(1, 2, 0), b.transpose(1, 2, 0), channel_axis=-1, **kwargs)
        for a, b in zip(x.numpy(), y.numpy())
    ]
    assert T.ssim(x, y) == pytest.approx(np.mean(colour))
    assert T.SSIM_WIN_SIZE == 11


def test_ssim_rejects_images_smaller_than_its_window():
    with pytest.raises(ValueError, match="at least 11x11"):
        T.ssim(_const(1, (1, 1, 8, 8)), _const(2, (1, 1, 8, 8)))


def test_colourfulness_of_gray_and_pure_red():
    assert T.colourfulness(_const(128, (2, 1, 28, 28))) == 0.0
    assert T.colourfulness(_random((2, 1, 28, 28))) == 0.0
    gray_rgb = _random((2, 1, 32, 32)).expand(2, 3, 32, 32).contiguous()  # R = G = B
    assert T.colourfulness(gray_rgb) == pytest.approx(0.0, abs=1e-12)
    red = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    red[:, 0] = 255  # rg = 255, yb = 127.5 everywhere: both std are 0
    assert T.colourfulness(red) == pytest.approx(0.3 * math.sqrt(255**2 + 127.5**2))


def test_colourfulness_matches_a_numpy_reference_per_image_mean():
    x = _random((3, 3, 16, 16))

    def reference(img: np.ndarray) -> float:
        r, g, b = img.astype(np.float64)
        rg, yb = r - g, 0.5 * (r + g) - b
        return math.hypot(rg.std(), yb.std()) + 0.3 * math.hypot(rg.mean(), yb.mean())

    assert T.colourfulness(x) == pytest.approx(np.mean([reference(im) for im in x.numpy()]))


def test_class_accuracy():
    logits = torch.tensor([[2.0, 0.1, 0.0], [0.0, 3.0, 1.0], [0.5, 0.2, 0.9], [1.0, 0.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 2])  # right, right, wrong (argmax 2), wrong (argmax 0)
    assert T.class_accuracy(logits, labels) == 0.5
    assert T.class_accuracy(logits, torch.tensor([0, 1, 2, 0])) == 1.0


def test_class_accuracy_rejects_bad_inputs():
    logits = torch.zeros(4, 3)
    with pytest.raises(ValueError, match=r"N = 4.*got \(3,\)"):
        T.class_accuracy(logits, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="integer class indices, got dtype torch.float32"):
        T.class_accuracy(logits, torch.zeros(4))
    with pytest.raises(ValueError, match=r"\[N, K\].*got \(4,\)"):
        T.class_accuracy(torch.zeros(4), torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize("fn", [T.mae, T.psnr, T.ssim])
def test_paired_metrics_accept_1_and_3_channels_and_reject_mismatches(fn):
    for c in (1, 3):
        assert math.isfinite(fn(_random((2, c, 28, 28), 0), _random((2, c, 28, 28), 1)))
    with pytest.raises(ValueError, match=r"same shape.*\(2, 1, 28, 28\).*\(2, 3, 28, 28\)"):
        fn(_random((2, 1, 28, 28)), _random((2, 3, 28, 28)))
    with pytest.raises(ValueError, match=r"same shape.*\(2, 1, 28, 28\).*\(3, 1, 28, 28\)"):
        fn(_random((2, 1, 28, 28)), _random((3, 1, 28, 28)))
    with pytest.raises(ValueError, match=r"targets: expected dtype torch.uint8.*got torch.float32"):
        fn(_random((2, 1, 28, 28)), torch.zeros(2, 1, 28, 28))
    with pytest.raises(
        ValueError, match=r"outputs: expected shape \[N, C, H, W\].*got \(2, 4, 28, 28\)"
    ):
        fn(_random((2, 4, 28, 28)), _random((2, 4, 28, 28)))
    with pytest.raises(ValueError, match=r"expected a torch.Tensor.*got ndarray"):
        fn(np.zeros((2, 1, 28, 28), np.uint8), _random((2, 1, 28, 28)))


def test_colourfulness_rejects_non_uint8():
    with pytest.raises(ValueError, match=r"images: expected dtype torch.uint8.*got torch.float32"):
        T.colourfulness(torch.zeros(1, 3, 8, 8))
