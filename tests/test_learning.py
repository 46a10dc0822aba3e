"""Integration: a short real training on real MNIST digits makes recognisable digits of several classes.

"Recognisable" is judged by a small CNN fitted here on real MNIST: it must be confident (p >= 0.9)
on the trained generator's samples far more often than on the untrained generator's.
"""

import torch

from ganforge.config import build_config
from ganforge.data import load_dataset, to_uint8
from ganforge.metrics.classifier import fit_classifier, predict_proba, recognisability
from ganforge.models import build_models
from ganforge.sample import load
from ganforge.train import train


def test_short_mnist_training_learns_digits(tmp_path, data_root):
    real = load_dataset("mnist", root=str(data_root / "mnist"), download=False)
    test = load_dataset("mnist", root=str(data_root / "mnist"), split="test", download=False)
    clf = fit_classifier(real.images[:20000], real.labels[:20000], epochs=2, batch_size=64)
    accuracy = (
        (predict_proba(clf, test.images[:2000]).argmax(1) == test.labels[:2000]).float().mean()
    )
    assert accuracy > 0.95, f"the judge itself is too weak ({accuracy:.3f})"

    cfg = build_config(
        overrides={
            "data": {"name": "mnist", "root": str(data_root / "mnist"), "download": False},
            "train": {"steps": 500, "batch_size": 64, "seed": 0, "device": "cpu", "log_every": 100},
            "run": {"runs_dir": str(tmp_path), "name": "learn"},
        }
    )
    run = train(cfg, progress=False)
    trained = recognisability(clf, load(run).sample(1000, seed=123))

    # The same generator before training: train() seeds torch with train.seed before building.
    m = cfg.model
    torch.manual_seed(cfg.train.seed)
    G0, _ = build_models("dcgan28-classic", m.z_dim, 1, m.g_channels, m.d_channels, m.dropout)
    with torch.no_grad():
        untrained_imgs = to_uint8(
            G0.eval()(torch.randn(1000, m.z_dim, generator=torch.Generator().manual_seed(123)))
        )
    untrained = recognisability(clf, untrained_imgs)

    print(
        f"confident: step 0 {untrained['confident_fraction']:.3f}, step 500 {trained['confident_fraction']:.3f}; "
        f"classes {trained['class_counts']}"
    )
    assert trained["confident_fraction"] >= 0.15
    assert trained["confident_fraction"] >= 3 * untrained["confident_fraction"] + 0.05
    assert trained["classes_covered"] >= 5, trained["class_counts"]
