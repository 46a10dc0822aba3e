"""Classification Accuracy Score (Ravuri & Vinyals 2019, arXiv:1905.10887): does G's output work as data?

A fixed small classifier is trained only on images a class-conditional generator makes for the
labels it was asked for (balanced classes, a fixed budget), then tested on the real test split.
The same classifier trained on the same number of real training images, with the same budget, gives
the reference: CAS / real accuracy near 1 means the samples carry what a classifier needs of each
class; near 1/K, that they carry nothing of it. Only class-conditional generators have a CAS: for an
unconditional one the labels would have to come from a classifier, which would grade its own labels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ganforge.metrics.classifier import fit_classifier, predict_proba

NOT_APPLICABLE = (
    "CAS needs a class-conditional generator: an unconditional one has no requested labels, and "
    "labels taken from a classifier would make CAS grade that classifier's own labels. Train with "
    "--set model.conditional=true."
)
CLASSIFIER = "SmallCNN (2 conv + MLP), Adam 1e-3, batch 128"


def balanced_indices(labels: torch.Tensor, per_class: int, num_classes: int, seed: int = 0) -> torch.Tensor:
    """`per_class` random indices of each class (fewer where a class has fewer)."""
    gen = torch.Generator().manual_seed(seed)
    picks = []
    for k in range(num_classes):
        where = (labels == k).nonzero().view(-1)
        picks.append(where[torch.randperm(len(where), generator=gen)[:per_class]])
    return torch.cat(picks)


def accuracy_per_class(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                       num_classes: int) -> tuple[float, list[float]]:  # fmt: skip
    predicted = predict_proba(model, images).argmax(dim=1)
    right = (predicted == labels).float()
    per_class = [float(right[labels == k].mean()) if (labels == k).any() else float("nan")
                 for k in range(num_classes)]  # fmt: skip
    return float(right.mean()), per_class


def classification_accuracy_score(
    generate: Callable[[torch.Tensor], torch.Tensor],
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    per_class: int = 1000,
    epochs: int = 3,
    seed: int = 0,
) -> dict[str, Any]:
    """CAS of `generate(c) -> uint8 images [n, C, H, W]` for the labels c [n] it is given.

    Returns the accuracy on the real test images of the classifier trained on generated images
    ("cas") and of the same classifier trained on as many real training images ("real_accuracy"),
    per class too, with the protocol. `per_class` is capped at the smallest real class's count.
    """
    # as many generated as real training images: capped by the smallest real class
    per_class = min(per_class, int(torch.bincount(train_labels, minlength=num_classes).min()))
    if per_class < 1:
        raise ValueError("CAS needs real training images of every class; one class has none.")
    c = torch.arange(num_classes).repeat_interleave(per_class)  # [K * per_class], balanced
    fake = generate(c)
    if fake.dtype != torch.uint8 or fake.shape[0] != len(c):
        raise ValueError(f"generate() must return {len(c)} uint8 images, got {fake.dtype} {tuple(fake.shape)}")
    on_fake = fit_classifier(fake, c, epochs=epochs, seed=seed, n_classes=num_classes)
    idx = balanced_indices(train_labels, per_class, num_classes, seed)
    on_real = fit_classifier(train_images[idx], train_labels[idx], epochs=epochs, seed=seed,
                             n_classes=num_classes)  # fmt: skip
    cas, cas_per_class = accuracy_per_class(on_fake, test_images, test_labels, num_classes)
    real, real_per_class = accuracy_per_class(on_real, test_images, test_labels, num_classes)
    return {
        "cas": cas,
        "real_accuracy": real,
        "cas_per_class": cas_per_class,
        "real_per_class": real_per_class,
        "chance": 1.0 / num_classes,
        "train_n": len(c),
        "real_train_n": len(idx),
        "test_n": len(test_labels),
        "epochs": epochs,
        "classifier": CLASSIFIER,
        "classifier_seed": seed,
    }
