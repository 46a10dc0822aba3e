"""Classification Accuracy Score: real images score like real data, noise like chance; eval's rules."""

import pytest
import torch

from ganforge.config import build_config
from ganforge.data import load_dataset
from ganforge.metrics.cas import balanced_indices, classification_accuracy_score
from ganforge.metrics.evaluate import EvalError, evaluate, format_table
from ganforge.train import train

from .conftest import tiny


@pytest.fixture(scope="module")
def mnist(request):
    from .conftest import shared_data

    root = shared_data()
    if root is None:
        pytest.skip("real data not found: set GANFORGE_DATA to a folder holding mnist/ (see README)")
    train_set = load_dataset("mnist", root=str(root), split="train", download=False)
    test_set = load_dataset("mnist", root=str(root), split="test", download=False)
    return train_set, test_set


def test_balanced_indices_take_each_class_equally():
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    idx = balanced_indices(labels, 2, 3)
    assert torch.bincount(labels[idx]).tolist() == [2, 2, 2]
    assert len(set(idx.tolist())) == 6


def _cas(mnist, generate, per_class=500):
    train_set, test_set = mnist
    return classification_accuracy_score(
        generate, train_set.images, train_set.labels, test_set.images[:2000], test_set.labels[:2000],
        num_classes=10, per_class=per_class, epochs=2, seed=0,
    )  # fmt: skip


def test_a_generator_of_real_images_scores_like_real_data(mnist):
    train_set, _ = mnist
    pool = torch.arange(len(train_set) // 2, len(train_set))  # the baseline draws from the whole split

    def real_images_of(c: torch.Tensor) -> torch.Tensor:
        out = torch.empty(len(c), 1, 28, 28, dtype=torch.uint8)
        for k in range(10):
            where = (c == k).nonzero().view(-1)
            of_k = pool[train_set.labels[pool] == k][: len(where)]
            out[where] = train_set.images[of_k]
        return out

    result = _cas(mnist, real_images_of)
    assert result["real_accuracy"] > 0.85  # 200 per class gave 0.83: too few images for a stable ceiling
    assert abs(result["cas"] - result["real_accuracy"]) < 0.05, result
    assert result["train_n"] == result["real_train_n"] == 5000 and result["test_n"] == 2000
    assert len(result["cas_per_class"]) == 10


def test_a_generator_of_noise_scores_near_chance(mnist):
    gen = torch.Generator().manual_seed(0)
    noise = lambda c: torch.randint(0, 256, (len(c), 1, 28, 28), generator=gen, dtype=torch.uint8)  # noqa: E731
    result = _cas(mnist, noise)
    assert result["cas"] < 0.2, result  # chance is 0.1
    assert result["real_accuracy"] > 0.85


def test_eval_reports_cas_for_conditional_runs_and_explains_why_not_otherwise(tmp_path, isolated_env):
    overrides = tiny(tmp_path)
    overrides["model"]["conditional"] = True
    run = train(build_config(overrides=overrides), progress=False)
    report = evaluate(run, metrics=["cas"], n=20, cas_per_class=5)
    (cas,) = report["results"]
    assert cas["metric"] == "cas" and 0.0 <= cas["value"] <= 1.0
    assert cas["train_n"] == 50 and cas["reference"]["split"] == "test" and "classifier" in cas
    assert "real-data classifier" in format_table(report)

    plain = train(build_config(overrides=tiny(tmp_path / "plain")), progress=False)
    with pytest.raises(EvalError, match="unconditional generator.*labels taken from a classifier"):
        evaluate(plain, metrics=["fid", "cas"], n=20)
