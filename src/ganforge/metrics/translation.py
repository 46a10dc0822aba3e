"""Image-to-image translation metrics (pix2pix-style evaluation: Isola et al. 2017; label preservation
for unpaired translation: Bousmalis et al. 2017).

Pure functions of uint8 images [N, C, H, W] (C = 1 or 3), each translated output compared with its
own target: MAE, PSNR and SSIM (Wang et al. 2004, computed by scikit-image); colourfulness (Hasler &
Süsstrunk 2003) of one set; and a domain classifier's accuracy on the outputs (the FCN-score
analogue). Every score is per image, then the mean over images. `PROTOCOL` states each metric's
exact settings, library version included, for the caller to record beside each number.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional

import numpy as np
import skimage
import torch
from skimage.metrics import structural_similarity

DATA_RANGE = 255.0  # uint8 intensities
PSNR_CAP_DB = 100.0  # identical images have infinite PSNR; each image's PSNR is clipped to this
SSIM_SIGMA = 1.5  # Wang et al. 2004: an 11x11 circular-symmetric Gaussian window, sigma 1.5
SSIM_TRUNCATE = 3.5  # scikit-image's default: radius int(3.5 * 1.5 + 0.5) = 5, so an 11x11 window
SSIM_WIN_SIZE = 2 * int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5) + 1  # 11

PROTOCOL: dict[str, str] = {
    "mae": "mean absolute error in [0, 1] intensity units (uint8 / 255), over all pixels and "
    "channels of all images (every image has the same size, so equal to the mean of per-image MAEs)",
    "psnr": f"per image 10*log10(255^2 / MSE) over its pixels and channels (scikit-image "
    f"{skimage.__version__} peak_signal_noise_ratio, data_range=255), clipped to {PSNR_CAP_DB:g} dB "
    f"(so identical images score {PSNR_CAP_DB:g}), then the mean over images",
    "ssim": f"per image scikit-image {skimage.__version__} structural_similarity with Wang et al. "
    f"2004 settings: gaussian_weights=True, sigma={SSIM_SIGMA:g}, truncate={SSIM_TRUNCATE:g} "
    f"({SSIM_WIN_SIZE}x{SSIM_WIN_SIZE} window), use_sample_covariance=False, data_range=255, "
    "K1=0.01, K2=0.03; colour: channel_axis, the mean over R, G, B; the SSIM map is averaged over "
    f"the interior only ({(SSIM_WIN_SIZE - 1) // 2} pixels cropped at each border: 18x18 of 28x28, "
    "22x22 of 32x32); then the mean over images",
    "colourfulness": "Hasler & Süsstrunk 2003: per image on 0..255 values, rg = R - G, "
    "yb = 0.5 (R + G) - B, M = sqrt(std_rg^2 + std_yb^2) + 0.3 sqrt(mean_rg^2 + mean_yb^2) "
    "(population std over pixels); 0 for 1-channel images; then the mean over images",
    "class_accuracy": "fraction of images whose classifier argmax(logits) equals the label "
    "(FCN-score analogue: a domain classifier's accuracy on translated images)",
    "label_preservation": "PixelDA protocol (Bousmalis et al. 2017): a SmallCNN trained only on the "
    "translated source training images with the source's labels, accuracy on the real target test images; "
    "beside it the same classifier trained on the raw source images (source only) and on real target "
    "training images (target only)",
}


def _check_images(images: torch.Tensor, name: str) -> None:
    if not isinstance(images, torch.Tensor):
        raise ValueError(
            f"{name}: expected a torch.Tensor of uint8 [N, C, H, W], got {type(images).__name__}"
        )
    if images.dtype != torch.uint8:
        raise ValueError(f"{name}: expected dtype torch.uint8 (values 0..255), got {images.dtype}")
    if images.ndim != 4 or images.shape[1] not in (1, 3) or images.shape[0] == 0:
        raise ValueError(
            f"{name}: expected shape [N, C, H, W] with N >= 1 and C = 1 or 3, got {tuple(images.shape)}"
        )


def _check_pair(outputs: torch.Tensor, targets: torch.Tensor) -> None:
    _check_images(outputs, "outputs")
    _check_images(targets, "targets")
    if outputs.shape != targets.shape:
        raise ValueError(
            f"outputs and targets must have the same shape [N, C, H, W], got outputs "
            f"{tuple(outputs.shape)} and targets {tuple(targets.shape)}"
        )


def mae(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean absolute error in [0, 1] intensity units between uint8 [N, C, H, W] images."""
    _check_pair(outputs, targets)
    diff = outputs.double() - targets.double()  # uint8 subtraction would wrap around
    return float(diff.abs().mean() / DATA_RANGE)


def psnr(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean over images of each image's PSNR in dB (data_range 255), each clipped to PSNR_CAP_DB.

    Per image, then averaged (not the PSNR of the pooled MSE). Identical images have MSE 0 and an
    infinite PSNR, which the cap turns into 100 dB; below the cap the value is exactly scikit-image's
    peak_signal_noise_ratio (vectorised here; the smallest non-zero MSE of a 28x28 uint8 image
    already gives only 77 dB, so the cap touches only identical or very large images).
    """
    _check_pair(outputs, targets)
    mse = (outputs.double() - targets.double()).pow(2).flatten(1).mean(dim=1)  # [N]
    with np.errstate(divide="ignore"):
        per_image = 10.0 * np.log10(DATA_RANGE**2 / mse.numpy())  # inf where mse == 0
    return float(np.minimum(per_image, PSNR_CAP_DB).mean())


def ssim_per_image(outputs: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    """Each image's SSIM [N] (float64) with the Wang et al. 2004 settings of PROTOCOL["ssim"]."""
    _check_pair(outputs, targets)
    if min(outputs.shape[2:]) < SSIM_WIN_SIZE:
        raise ValueError(
            f"ssim needs images at least {SSIM_WIN_SIZE}x{SSIM_WIN_SIZE} (its Gaussian window), "
            f"got {tuple(outputs.shape[2:])}"
        )
    colour = outputs.shape[1] == 3
    x = outputs.numpy().astype(np.float64)
    y = targets.numpy().astype(np.float64)
    if not colour:
        x, y = x[:, 0], y[:, 0]  # [N, H, W]
    kwargs = dict(gaussian_weights=True, sigma=SSIM_SIGMA, truncate=SSIM_TRUNCATE,
                  use_sample_covariance=False, data_range=DATA_RANGE,
                  channel_axis=0 if colour else None)  # fmt: skip
    return np.array([structural_similarity(a, b, **kwargs) for a, b in zip(x, y)])


def ssim(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean over images of scikit-image's SSIM (Wang et al. 2004 settings, 11x11 Gaussian window,
    sigma 1.5; colour: the mean over channels). Symmetric; 1.0 for identical images."""
    return float(ssim_per_image(outputs, targets).mean())


def colourfulness(images: torch.Tensor) -> float:
    """Mean over images of the Hasler & Süsstrunk 2003 colourfulness M (0..255 scale).

    M = sqrt(std_rg^2 + std_yb^2) + 0.3 sqrt(mean_rg^2 + mean_yb^2), rg = R - G, yb = 0.5 (R + G) - B,
    statistics over each image's pixels (population std). A gray image (1 channel, or R = G = B)
    scores 0; a pure red one 0.3 sqrt(255^2 + 127.5^2) = 85.5.
    """
    _check_images(images, "images")
    if images.shape[1] == 1:
        return 0.0
    r, g, b = images.double().flatten(2).unbind(1)  # each [N, H*W]
    rg, yb = r - g, 0.5 * (r + g) - b
    std = (rg.var(dim=1, correction=0) + yb.var(dim=1, correction=0)).sqrt()
    mean = (rg.mean(dim=1) ** 2 + yb.mean(dim=1) ** 2).sqrt()
    return float((std + 0.3 * mean).mean())


def class_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of rows of logits [N, K] whose argmax equals labels [N] (integer class indices)."""
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[0] == 0:
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"logits: expected a tensor [N, K] with N >= 1, got {got}")
    if (
        not isinstance(labels, torch.Tensor)
        or labels.ndim != 1
        or labels.shape[0] != logits.shape[0]
    ):
        got = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(
            f"labels: expected a tensor [N] with N = {logits.shape[0]} (as logits), got {got}"
        )
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"labels: expected integer class indices, got dtype {labels.dtype}")
    return float((logits.argmax(dim=1) == labels.to(logits.device)).double().mean())


LABEL_CLASSIFIER = "SmallCNN (2 conv + MLP), Adam 1e-3, batch 128"


def label_preservation(
    translate: Callable[[torch.Tensor], torch.Tensor],
    source_images: torch.Tensor,
    source_labels: torch.Tensor,
    target_test_images: torch.Tensor,
    target_test_labels: torch.Tensor,
    target_train_images: Optional[torch.Tensor] = None,
    target_train_labels: Optional[torch.Tensor] = None,
    epochs: int = 3,
    seed: int = 0,
) -> dict[str, Any]:
    """Pixel-level domain adaptation's protocol (Bousmalis et al. 2017, PixelDA): a classifier trained
    only on the source domain's images translated into the target domain, with the source's labels,
    then tested on real target-domain test images. Beside it the same classifier trained on the raw
    source images ("source only", the lower reference) and, when target training images are given, on
    those with their labels ("target only", the upper reference). All uint8 [N, C, H, W]; `translate`
    maps source images to target-domain images of the same count."""
    from ganforge.metrics.classifier import fit_classifier, predict_proba

    n_classes = int(max(source_labels.max(), target_test_labels.max())) + 1
    translated = translate(source_images)
    if translated.dtype != torch.uint8 or len(translated) != len(source_images):
        raise ValueError(f"translate() must return {len(source_images)} uint8 images, got {translated.dtype} "
                         f"{tuple(translated.shape)}")  # fmt: skip

    def accuracy(images: torch.Tensor, labels: torch.Tensor) -> float:
        model = fit_classifier(images, labels, epochs=epochs, seed=seed, n_classes=n_classes)
        predicted = predict_proba(model, target_test_images).argmax(dim=1)
        return float((predicted == target_test_labels).double().mean())

    wide = target_test_images.shape[1]  # the source shown with the target's channels (gray -> RGB)
    raw = source_images.expand(-1, wide, -1, -1) if source_images.shape[1] != wide else source_images
    out = {"adapted": accuracy(translated, source_labels), "source_only": accuracy(raw, source_labels)}
    if target_train_images is not None:
        out["target_only"] = accuracy(target_train_images, target_train_labels)
    out.update(train_n=len(source_images), test_n=len(target_test_images), epochs=epochs,
               classifier=LABEL_CLASSIFIER, classifier_seed=seed)  # fmt: skip
    return out
