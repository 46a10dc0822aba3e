"""`ganforge eval` end to end: offline domain extractors, the Inception path with self-made weights."""

import json
import os
import subprocess
import sys

import pytest
import torch

from ganforge.config import build_config
from ganforge.data import load_dataset
from ganforge.metrics import fidelity
from ganforge.metrics.evaluate import EvalError, evaluate, parse_metrics
from ganforge.metrics.features import (
    DOMAIN_EXTRACTORS,
    ExtractorError,
    extract,
    file_sha256,
    load_domain_extractor,
    register_with_torch_fidelity,
    weights_path,
)
from ganforge.metrics.inception import inception_weights_path
from ganforge.train import train

from .conftest import tiny


@pytest.fixture
def tiny_run(tmp_path, isolated_env):
    return train(build_config(overrides=tiny(tmp_path, steps=4)), progress=False)


SHIPPED = [name for name, spec in DOMAIN_EXTRACTORS.items() if spec.sha256]


def test_the_mnist_extractor_ships():
    assert "mnist" in SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_extractor_weights_are_small_and_pinned(name):
    path = weights_path(name)
    assert path.is_file(), (
        f"{path} missing: run `ganforge train-classifier {DOMAIN_EXTRACTORS[name].dataset}`"
    )
    assert path.stat().st_size <= 3_000_000
    assert DOMAIN_EXTRACTORS[name].sha256 == file_sha256(path)


def test_tampered_extractor_weights_are_refused(tmp_path, monkeypatch):
    import ganforge.metrics.features as feats

    bad = tmp_path / "mnist.pt"
    bad.write_bytes(weights_path("mnist").read_bytes()[:-10] + b"0123456789")
    monkeypatch.setattr(feats, "weights_path", lambda name: bad)
    with pytest.raises(ExtractorError, match="fail their SHA-256 check"):
        feats.load_domain_extractor("mnist")


def test_eval_offline_with_the_domain_extractor(tiny_run):
    report = evaluate(tiny_run, metrics=parse_metrics("fid,kid,is,pr,modes,memorization"), n=200)
    by_name = {r["metric"]: r for r in report["results"]}
    for key in (
        "fid",
        "kid",
        "is",
        "precision",
        "recall",
        "classes_covered",
        "class_kl_to_real",
        "confident_fraction",
        "memorization_ratio",
        "near_copy_fraction",
    ):
        assert key in by_name, key
        r = by_name[key]
        assert r["n_generated"] == 200 and r["extractor"] == "mnist"
        assert r["reference"] == {"dataset": "mnist-5k", "split": "test", "n": 200}
        assert len(r["weights_sha256"]) == 64 and r["versions"]["torch_fidelity"]
    assert by_name["kid"]["subset_size"] == 200
    assert 1.0 <= by_name["is"]["value"] <= 10.0
    saved = json.loads((tiny_run / "eval.json").read_text())
    assert saved["results"][0]["metric"] == "fid"
    assert (tiny_run / "memorization_pairs.png").is_file()
    # memorisation compares with what the run trained on: the first data.limit = 64 images, not all 5,000
    for key in ("memorization_ratio", "near_copy_fraction", "memorization_ratio_features"):
        assert by_name[key]["train_reference"] == {"dataset": "mnist-5k", "split": "train", "n": 64, "limit": 64}
    assert by_name["memorization_ratio"]["space"].startswith("pixels")


def test_our_fid_equals_torch_fidelity(isolated_env):
    import torch_fidelity

    names = register_with_torch_fidelity()
    assert "ganforge-mnist" in names
    ds = load_dataset("mnist-5k", split="test", download=False)

    class Images(torch.utils.data.Dataset):
        def __init__(self, images):
            self.images = images

        def __len__(self):
            return len(self.images)

        def __getitem__(self, i):
            return self.images[i]

    a, b = ds.images[:250], ds.images[250:]
    ref = torch_fidelity.calculate_metrics(input1=Images(a), input2=Images(b), feature_extractor="ganforge-mnist",
                                           fid=True, kid=True, kid_subset_size=100, verbose=False, cuda=False,
                                           save_cpu_ram=True)  # fmt: skip
    ext = load_domain_extractor("mnist")
    fa, fb = extract(ext, a)[0], extract(ext, b)[0]
    assert fidelity.fid(fa, fb) == pytest.approx(ref["frechet_inception_distance"], rel=1e-5)
    assert fidelity.kid(fa, fb, subset_size=100)[0] == pytest.approx(
        ref["kernel_inception_distance_mean"], rel=1e-4
    )


def test_fid_orders_real_noise_and_a_repeated_image(isolated_env):
    ds = load_dataset("mnist-5k", split="train", download=False)
    test = load_dataset("mnist-5k", split="test", download=False)
    ext = load_domain_extractor("mnist")
    real = extract(ext, test.images)[0]
    pick = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[
        :500
    ]  # mnist-5k is class-sorted
    subset = extract(ext, ds.images[pick])[0]
    noise = extract(ext, torch.randint(0, 256, (500, 1, 28, 28), dtype=torch.uint8))[0]
    repeated = extract(ext, ds.images[:1].repeat(500, 1, 1, 1))[0] + 1e-6 * torch.randn(
        500, real.shape[1]
    )
    fid_real = fidelity.fid(subset, real)
    assert fid_real * 10 < fidelity.fid(noise, real)
    assert fid_real * 10 < fidelity.fid(repeated, real)


def _self_made_inception_weights(path):
    """Random weights with the right keys: the wiring is proven, the numbers mean nothing."""
    import torch_fidelity.feature_extractor_inceptionv3 as inc

    original_url, original_load = (
        inc.load_state_dict_from_url,
        inc.FeatureExtractorInceptionV3.load_state_dict,
    )
    inc.load_state_dict_from_url = lambda *a, **k: {}
    inc.FeatureExtractorInceptionV3.load_state_dict = lambda self, sd, *a, **k: None
    try:
        net = inc.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    finally:
        inc.load_state_dict_from_url, inc.FeatureExtractorInceptionV3.load_state_dict = (
            original_url,
            original_load,
        )
    torch.save(net.state_dict(), path)
    return path


def test_inception_path_offline_with_self_made_weights(tiny_run, tmp_path, monkeypatch):
    weights = _self_made_inception_weights(tmp_path / "inception.pth")
    with pytest.warns(UserWarning, match="differ from the pinned TF-FID weights"):
        report = evaluate(tiny_run, metrics=["fid", "kid", "is", "pr"], n=10, extractor="inception",
                          inception_weights=str(weights))  # fmt: skip
    by_name = {r["metric"]: r for r in report["results"]}
    assert by_name["fid"]["extractor"] == "inception-v3-compat"
    assert by_name["fid"]["weights_sha256"] == file_sha256(weights)
    assert all(torch.isfinite(torch.tensor(r["value"])) for r in report["results"])
    # the env var works too, through the CLI, with no network
    env = {**os.environ, "GANFORGE_INCEPTION_WEIGHTS": str(weights)}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "ganforge",
            "eval",
            str(tiny_run),
            "--extractor",
            "inception",
            "--n",
            "10",
            "--metrics",
            "fid,is",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "fid" in r.stdout and "inception-v3-compat" in r.stdout


def test_missing_inception_weights_say_how_to_get_them(isolated_env, monkeypatch):
    monkeypatch.delenv("GANFORGE_INCEPTION_WEIGHTS", raising=False)
    with pytest.raises(ExtractorError) as err:
        inception_weights_path(download=False)
    msg = str(err.value)
    assert (
        "--inception-weights" in msg and "GANFORGE_INCEPTION_WEIGHTS" in msg and "6726825d" in msg
    )
    with pytest.raises(ExtractorError, match="does not exist"):
        inception_weights_path("/nonexistent/weights.pth")


def test_eval_cli_table_and_bad_metric(tiny_run):
    env = {**os.environ}
    r = subprocess.run(
        [sys.executable, "-m", "ganforge", "eval", str(tiny_run), "--n", "100"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "fid" in r.stdout and "extractor mnist" in r.stdout and "eval.json" in r.stdout
    r = subprocess.run(
        [sys.executable, "-m", "ganforge", "eval", str(tiny_run), "--metrics", "fdi"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 2 and "unknown metric(s) fdi" in r.stderr and "Traceback" not in r.stderr
    with pytest.raises(EvalError):
        parse_metrics("fid,nope")


def test_eval_every_logs_fid_and_keeps_best(tmp_path, isolated_env):
    from ganforge.checkpoint import load_checkpoint

    run = train(
        build_config(overrides=tiny(tmp_path, steps=6, eval_every=2, eval_n=50)), progress=False
    )
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r.get("event") == "eval"]
    assert [r["step"] for r in evals] == [2, 4, 6]
    assert evals[0]["metric"] == "fid_mnist_50gen_vs_50test"
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert best["best"]["fid_mnist_50gen_vs_50test"] == min(r["value"] for r in evals)
    assert best["step"] == min(evals, key=lambda r: r["value"])["step"]


def test_eval_every_needs_a_domain_extractor(tmp_path):
    from ganforge.config import ConfigError

    with pytest.raises(ConfigError, match="no domain extractor for dataset 'folder:x'"):
        build_config(overrides={"data": {"name": "folder:x"}, "train": {"eval_every": 10}})


def test_modes_and_memorization_on_real_images(isolated_env):
    from ganforge.metrics import memorization, modes

    train_set = load_dataset("mnist-5k", split="train", download=False)
    test_set = load_dataset("mnist-5k", split="test", download=False)
    ext = load_domain_extractor("mnist")
    real_counts = torch.bincount(test_set.labels, minlength=10).numpy()
    test_f, test_logits = extract(ext, test_set.images)
    real = modes.class_modes(test_logits, real_counts)
    assert real["classes_covered"] == 10 and real["kl_to_real"] < 0.01
    ones = train_set.images[train_set.labels == 1][:1].repeat(
        300, 1, 1, 1
    )  # a collapsed "generator" of ones
    only_ones = modes.class_modes(extract(ext, ones)[1], real_counts)
    assert only_ones["classes_covered"] == 1 and only_ones["kl_to_real"] > 2.0

    train_f = extract(ext, train_set.images)[0]
    held_f, copy_f = (
        test_f[:250],
        train_f[torch.randperm(len(train_f), generator=torch.Generator().manual_seed(0))[:250]],
    )
    copier = memorization.memorization(copy_f, held_f, train_f)
    honest = memorization.memorization(test_f[250:], held_f, train_f)
    assert copier["ratio"] < 0.05 and copier["near_copy_fraction"] > 0.95
    assert 0.8 < honest["ratio"] < 1.25 and honest["near_copy_fraction"] < 0.1


def test_pixel_memorization_finds_shifted_and_noisy_copies_of_what_the_run_saw(isolated_env):
    """Instance-level copies: 1- and 2-pixel shifts and sigma-10 noise of the 300 training images are found
    as copies, each matched to the image it copies; honest held-out digits score about 1, against the
    300 and against all 5,000."""
    from ganforge.metrics import memorization

    train_set = load_dataset("mnist-5k", split="train", download=False)
    test_set = load_dataset("mnist-5k", split="test", download=False)
    seen, held, honest = train_set.images[:300], test_set.images[:300], test_set.images[300:600]
    noise = 10 * torch.randn(seen.shape, generator=torch.Generator().manual_seed(0))
    copies = {
        "shift 1 px": torch.roll(seen, 1, dims=2),
        "shift (2, -1) px": torch.roll(seen, (2, -1), dims=(2, 3)),
        "noise 10": (seen.float() + noise).round().clamp(0, 255).to(torch.uint8),
    }
    for name, fake in copies.items():
        m = memorization.pixel_memorization(fake, held, seen)
        assert m["ratio"] < 0.3 and m["near_copy_fraction"] > 0.9, name
        assert (m["gen_nearest"] == torch.arange(300)).float().mean() > 0.95, name  # the very image it copies
    for reference in (seen, train_set.images):
        m = memorization.pixel_memorization(honest, held, reference)
        assert 0.8 < m["ratio"] < 1.25 and m["near_copy_fraction"] < 0.05


def test_eval_warns_when_the_extractor_knows_another_domain(tiny_run, capsys):
    from ganforge.metrics.evaluate import format_table

    report = evaluate(tiny_run, metrics=["fid"], n=20, extractor="cifar10")
    warning = "the cifar10 extractor was trained on cifar10, but this run's dataset is mnist-5k"
    assert f"ganforge: warning: {warning}" in capsys.readouterr().err
    assert warning in report["protocol"]["extractor_domain_warning"]
    assert warning in report["results"][0]["extractor_domain_warning"]  # every result carries its protocol
    assert f"warning: {warning}" in format_table(report)
    plain = evaluate(tiny_run, metrics=["fid"], n=20)  # auto: the run's own extractor
    assert "extractor_domain_warning" not in plain["protocol"] and "warning" not in capsys.readouterr().err


def test_eval_seed_out_of_range_is_an_eval_error(tiny_run):
    with pytest.raises(EvalError, match="--seed must be a whole number from 0 to 4294967295"):
        evaluate(tiny_run, metrics=["fid"], n=20, seed=10**20)


def test_eval_table_gives_directions_and_the_real_vs_real_value(tiny_run, capsys):
    from ganforge.metrics.evaluate import format_table

    report = evaluate(tiny_run, n=300, metrics=["fid", "kid", "pr"], out=str(tiny_run / "e.json"))
    err = capsys.readouterr().err
    # the KID note names both counts and the reference split, not only "from N samples"
    assert "KID from 300 generated and 300 reference images (mnist-5k:test" in err
    rows = {r["metric"]: r for r in report["results"]}
    assert report["protocol"]["real_vs_real"] == {"dataset": "mnist-5k", "split": "train", "n": 300}
    assert all("real_vs_real" in rows[m] for m in ("fid", "kid", "precision", "recall"))
    assert rows["fid"]["real_vs_real"] < rows["fid"]["value"]  # real digits beat a 4-step generator
    table = format_table(report)
    assert "real vs real" in table
    fid_line = next(line for line in table.splitlines() if line.strip().startswith("fid"))
    assert "↓" in fid_line and f"{rows['fid']['real_vs_real']:.5g}" in fid_line
    assert "↑" in next(line for line in table.splitlines() if line.strip().startswith("recall"))
    kid = rows["kid"]
    if kid["std"] > abs(kid["value"]):
        assert "indistinguishable from 0" in table


def test_a_kid_within_its_error_bar_says_it_is_indistinguishable_from_zero():
    from ganforge.metrics.evaluate import format_table

    protocol = {"checkpoint": "c.pt", "n_generated": 10, "reference": {"dataset": "d", "split": "test", "n": 10},
                "extractor": "mnist", "weights_sha256": "0" * 64, "versions": {"torch_fidelity": "x"}}  # fmt: skip
    report = {"protocol": protocol, "path": "e.json", "seconds": 1.0,
              "results": [{"metric": "kid", "value": 0.001, "std": 0.004}, {"metric": "kid", "value": 0.01, "std": 0.004}]}  # fmt: skip
    lines = [line for line in format_table(report).splitlines() if "kid" in line]
    assert "indistinguishable from 0" in lines[0] and "indistinguishable" not in lines[1]


def test_pacgan_benchmarks_default_to_the_papers_sample_counts():
    from ganforge.metrics.evaluate import DEFAULT_N, PAPER_N

    # Lin et al. 2018, sec. 5: 2,500 samples for the 2D mixtures, 26,000 for Stacked MNIST
    assert PAPER_N == {"ring8": 2500, "grid25": 2500, "stacked-mnist": 26000} and DEFAULT_N == 10000


def test_the_reference_may_be_larger_than_the_sample(tiny_run):
    """--n-ref: the literature's CIFAR-10 protocol scores 10k generated against all 50k training images."""
    report = evaluate(tiny_run, metrics=["fid"], n=20, ref="mnist-5k:train", n_ref="all")
    assert report["results"][0]["reference"] == {"dataset": "mnist-5k", "split": "train", "n": 4500}
    report = evaluate(tiny_run, metrics=["fid"], n=20, ref="mnist-5k:train", n_ref=300)
    assert report["results"][0]["reference"]["n"] == 300
    assert evaluate(tiny_run, metrics=["fid"], n=20)["results"][0]["reference"]["n"] == 20  # as many as generated
    with pytest.raises(EvalError, match="--n-ref 100000: mnist-5k:train holds 4500 images; use at most 4500"):
        evaluate(tiny_run, metrics=["fid"], n=20, ref="mnist-5k:train", n_ref=100000)
    with pytest.raises(EvalError, match="--n-ref must be a whole number or 'all'"):
        evaluate(tiny_run, metrics=["fid"], n=20, n_ref="most")
