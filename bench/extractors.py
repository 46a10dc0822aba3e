"""Test accuracy and size of the shipped domain extractors (rebuild them with `ganforge train-classifier`).

    GANFORGE_DATA=../shared/data python bench/extractors.py

Prints a markdown table for docs/benchmarks.md. Accuracy is on the test images available here
(MNIST 10,000; Fashion-MNIST 10,000; CIFAR-10: the first 1,000 of the test batch).
"""

from __future__ import annotations

import platform
from datetime import date

from ganforge.data import load_dataset
from ganforge.metrics.features import (
    DOMAIN_EXTRACTORS,
    classifier_accuracy,
    load_domain_extractor,
    weights_path,
)


def main() -> None:
    print("| date | extractor | test images | test accuracy | weights size | sha256 |")
    print("|---|---|---|---|---|---|")
    for name, spec in DOMAIN_EXTRACTORS.items():
        if not weights_path(name).is_file():
            print(f"| {date.today()} | {name} | - | not built | - | - |")
            continue
        ext = load_domain_extractor(name)
        test = load_dataset(spec.dataset, split="test")
        acc = classifier_accuracy(ext, test.images, test.labels)
        size = weights_path(name).stat().st_size / 1e6
        print(
            f"| {date.today()} | {name} | {len(test):,} | {acc:.2%} | {size:.2f} MB | `{ext.weights_sha256[:16]}` |"
        )
    print(f"\nmachine: {platform.machine()}, python {platform.python_version()}")


if __name__ == "__main__":
    main()
