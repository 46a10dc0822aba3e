"""CycleGAN: its nets, its losses on hand-computed values, the history pool, mnist2mnistm, the config
checks, exact resume, sampling/translating/exporting both directions, eval, and a short real run."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from ganforge.config import ConfigError, build_config, resolve, validate
from ganforge.losses import LOSSES
from ganforge.models import build_models
from ganforge.models.translation import CycleD, CycleG
from ganforge.steps import HistoryPool, cycle_step


@pytest.mark.parametrize("res, c_a, c_b, patches", [(28, 3, 3, 12), (32, 1, 3, 14)])
def test_nets_shapes_and_ranges(res, c_a, c_b, patches):
    torch.manual_seed(0)
    G, D = build_models(f"cyclegan{res}", 8, c_b, 8, 8, 0.0, in_channels=c_a)
    a = torch.rand(3, c_a, res, res) * 2 - 1
    b = torch.rand(3, c_b, res, res) * 2 - 1
    fake_b, fake_a = G(a), G(b, direction="b2a")
    assert fake_b.shape == b.shape and fake_a.shape == a.shape
    assert fake_b.abs().max() <= 1 and fake_a.abs().max() <= 1
    assert D(fake_b).shape == (3, patches, patches) and D(fake_a, "a").shape == (3, patches, patches)
    # instance norm: each image's output is its own (no batch statistics couple the samples)
    assert torch.allclose(G(a[:1]), fake_b[:1], atol=1e-5)


class Scale(nn.Module):
    def __init__(self, w: float):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w))

    def forward(self, x):
        return self.w * x


class MeanD(nn.Module):
    """A 'PatchGAN' with a 2x2 map: each logit is the mean of one quadrant of the first channel, plus k."""

    def __init__(self, k: float):
        super().__init__()
        self.k = nn.Parameter(torch.tensor(k))

    def forward(self, y):
        q = y[:, 0].unfold(1, 2, 2).unfold(2, 2, 2).mean((-1, -2))  # [N, 2, 2]
        return q + self.k


def test_cycle_step_losses_on_hand_computed_values():
    torch.manual_seed(0)
    a, b = torch.rand(2, 1, 4, 4), torch.rand(2, 1, 4, 4)
    G, D = CycleG(Scale(0.5), Scale(3.0)), CycleD(MeanD(0.1), MeanD(-0.2))
    opt_G = torch.optim.SGD(G.parameters(), lr=0.0)  # no update: the losses are read at these weights
    opt_D = torch.optim.SGD(D.parameters(), lr=0.0)
    lsgan = LOSSES["least-squares"]
    stats, real_logits, fake_logits = cycle_step(G, D, opt_G, opt_D, lsgan, a, b, (HistoryPool(0), HistoryPool(0)),
                                                 torch.Generator().manual_seed(0), adv_weight=2.0, cycle_weight=10.0,
                                                 identity_weight=0.5)  # fmt: skip
    fake_b, fake_a = 0.5 * a, 3.0 * b
    cycle = (1.5 * a - a).abs().mean() + (1.5 * b - b).abs().mean()  # G_ba(G_ab(a)) = 3 * 0.5 * a
    identity = (0.5 * b - b).abs().mean() + (3.0 * a - a).abs().mean()
    quad = lambda y: y[:, 0].unfold(1, 2, 2).unfold(2, 2, 2).mean((-1, -2))  # noqa: E731
    g_adv = 0.5 * ((quad(fake_b) - 0.2 - 1) ** 2).mean() + 0.5 * ((quad(fake_a) + 0.1 - 1) ** 2).mean()
    d_b = 0.5 * ((quad(b) - 0.2 - 1) ** 2).mean() + 0.5 * ((quad(fake_b) - 0.2) ** 2).mean()
    d_a = 0.5 * ((quad(a) + 0.1 - 1) ** 2).mean() + 0.5 * ((quad(fake_a) + 0.1) ** 2).mean()
    assert torch.allclose(stats["cycle"], cycle) and torch.allclose(stats["identity"], identity)
    assert torch.allclose(stats["g_loss"], g_adv) and torch.allclose(stats["d_b"], d_b)
    assert torch.allclose(stats["d_a"], d_a) and torch.allclose(stats["d_loss"], d_a + d_b)
    assert real_logits.shape == (8,) and fake_logits.shape == (8,)  # D_b's, flattened over the 2x2 patches
    # G's gradient is that of the weighted total: 2 x adversarial + 10 x cycle + 0.5 x 10 x identity
    w = torch.tensor(0.5, requires_grad=True)
    v = torch.tensor(3.0)
    total = (2 * 0.5 * ((quad(w * a) - 0.2 - 1) ** 2).mean() + 10 * ((v * w * a - a).abs().mean()
             + (w * v * b - b).abs().mean()) + 5 * (w * b - b).abs().mean())  # fmt: skip
    total.backward()
    assert torch.allclose(G.G_ab.w.grad, w.grad)
    assert all(p.requires_grad for p in D.parameters())  # D unfrozen after the G phase


def test_identity_weight_zero_skips_the_identity_term():
    a, b = torch.rand(2, 1, 4, 4), torch.rand(2, 1, 4, 4)
    G, D = CycleG(Scale(0.5), Scale(3.0)), CycleD(MeanD(0.1), MeanD(-0.2))
    opt = torch.optim.SGD([*G.parameters(), *D.parameters()], lr=0.0)
    stats, _, _ = cycle_step(G, D, opt, opt, LOSSES["least-squares"], a, b, (HistoryPool(0), HistoryPool(0)),
                             torch.Generator(), identity_weight=0.0)  # fmt: skip
    assert "identity" not in stats


def test_history_pool_semantics():
    gen = torch.Generator().manual_seed(0)
    pool = HistoryPool(4)
    first = torch.arange(3.0).view(3, 1, 1, 1)
    assert torch.equal(pool.query(first, gen), first)  # filling: every fake passes through and is stored
    state = gen.get_state()
    second = torch.arange(10.0, 13.0).view(3, 1, 1, 1)
    out = pool.query(second, gen)
    assert torch.equal(out[0], second[0])  # the 4th fake fills the pool and passes through
    assert len(pool.images) == 4
    used = torch.Generator().set_state(state)
    torch.rand(3, generator=used), torch.rand(3, generator=used)
    assert torch.equal(gen.get_state(), used.get_state())  # two draws per image, whatever the pool did
    # once full: about half the fakes come back as stored images (each swapped in for the new one), and
    # a batch never holds the same current fake twice
    swapped = 0
    for step in range(200):
        fakes = (100.0 + 10 * step + torch.arange(8.0)).view(8, 1, 1, 1)
        before = set(pool.images.flatten().tolist()) | set(fakes.flatten().tolist())  # stored, or swapped in now
        out = pool.query(fakes, gen)
        swapped += int((out != fakes).sum())  # image i came back as a stored one (perhaps swapped in this batch)
        assert len(out.unique()) == len(out)  # never one image twice in D's batch
        assert set(out.flatten().tolist()) <= before
    assert 0.4 < swapped / 1600 < 0.6
    assert torch.equal(HistoryPool(0).query(first, gen), first)  # size 0: no history


@pytest.fixture
def mnistm_data(data_root, monkeypatch):
    if not (data_root / "cifar10").is_dir():
        pytest.skip("CIFAR-10 not in the shared data")
    monkeypatch.setenv("GANFORGE_DATA", str(data_root))


def test_mnist2mnistm_is_deterministic_unpaired_and_labelled(mnistm_data):
    from ganforge.data import MNISTM_SPLITS, load_dataset, load_mnist

    a = load_dataset("mnist2mnistm", limit=300)
    b = load_dataset("mnist2mnistm", limit=300)
    assert torch.equal(a.images, b.images) and torch.equal(a.inputs, b.inputs)
    assert a.unpaired and a.images.shape == (300, 3, 28, 28) and a.inputs.shape == (300, 3, 28, 28)
    mnist = load_mnist(None, "train")
    _, (a0, a1), (b0, b1), _ = MNISTM_SPLITS["train"]
    assert a1 <= b0  # disjoint MNIST indices: no digit of A has its counterpart in B
    assert torch.equal(a.input_labels, mnist.labels[a0 : a0 + 300]) and torch.equal(a.labels, mnist.labels[b0 : b0 + 300])
    assert torch.equal(a.inputs[:, 0], mnist.images[a0 : a0 + 300, 0])  # domain A: the digit as RGB
    # domain B: |photo - digit|: where the digit is, the colour is far from the photo's, so the digit stands out
    digit = mnist.images[b0 : b0 + 300, 0] > 0
    assert (a.images.float().std(dim=(2, 3)) > 10).all() and digit.any()
    bigger = load_dataset("mnist2mnistm", limit=400)
    assert torch.equal(bigger.images[:300], a.images)  # a limit does not change the first images' crops
    test = load_dataset("mnist2mnistm", split="test", limit=50)
    assert not torch.equal(test.images[:50], a.images[:50])


def test_config_checks_for_unpaired_data():
    validate(build_config(overrides={"data": {"name": "mnist2mnistm"}}))  # auto: the CycleGAN model
    with pytest.raises(ConfigError, match="unpaired translation dataset; use a translation model for it"):
        validate(build_config(overrides={"data": {"name": "mnist2mnistm"}, "model": {"name": "pix2pix28"}}))
    with pytest.raises(ConfigError, match="is a paired translation dataset; use a translation model for it \\(pix2pix28"):
        validate(build_config(overrides={"data": {"name": "edges2fashion"}, "model": {"name": "cyclegan28"}}))
    with pytest.raises(ConfigError, match="unpaired translation dataset"):
        validate(build_config(overrides={"data": {"name": "mnist2mnistm"}, "model": {"name": "dcgan28"}}))
    with pytest.raises(ConfigError, match="train.eval_every"):
        validate(build_config(overrides={"data": {"name": "mnist2mnistm"}, "train": {"eval_every": 100}}))
    with pytest.raises(ConfigError, match="loss.adv_weight: CycleGAN without"):
        validate(build_config(overrides={"data": {"name": "mnist2mnistm"}, "loss": {"adv_weight": 0.0}}))
    cfg = resolve(build_config(overrides={"data": {"name": "mnist2mnistm"}}), "mnist2mnistm", 3, 1000, in_channels=1)
    assert cfg.model.name == "cyclegan28" and cfg.loss.identity_weight == 0.0  # G_ab(b) and b differ in channels
    assert cfg.monitor.every is None and cfg.model.in_channels == 1
    preset = build_config(preset="cyclegan-mnist2mnistm")
    assert preset.loss.name == "least-squares" and preset.loss.cycle_weight == 10 and preset.loss.pool_size == 50


def _cycle_run(tmp_path, steps, name=None, **train):
    from ganforge import train as run_training

    overrides = {
        "data": {"name": "mnist2mnistm", "limit": 256, "download": False},
        "model": {"g_channels": 8, "d_channels": 8},
        "loss": {"name": "least-squares", "pool_size": 6},
        "train": {"batch_size": 8, "steps": steps, "log_every": 5, "checkpoint_every": 5, "n_samples": 8,
                  "device": "cpu", **train},
        "run": {"runs_dir": str(tmp_path / "runs"), "name": name or f"cycle{steps}"},
    }  # fmt: skip
    return run_training(build_config(overrides=overrides), progress=False)


def test_cyclegan_resumes_exactly_with_its_pools(tmp_path, mnistm_data):
    from ganforge import train as run_training
    from ganforge.checkpoint import load_checkpoint

    _cycle_run(tmp_path, 12, keep_checkpoints=10)
    part = tmp_path / "part"
    (tmp_path / "runs" / "cycle12").rename(part)
    mid = load_checkpoint(part / "checkpoints" / "step_0000005.pt")
    assert mid["pool_a"].shape == (6, 3, 28, 28) and mid["pool_b"].shape == (6, 3, 28, 28)  # full after 5 x 8 fakes
    resumed = run_training(resume=part, progress=False, resume_from="step_0000005.pt")
    full = _cycle_run(tmp_path, 12, keep_checkpoints=10)
    a, b = (load_checkpoint(r / "checkpoints" / "final.pt") for r in (full, resumed))
    for key in ("G", "D"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    assert torch.equal(a["pool_a"], b["pool_a"]) and torch.equal(a["pool_b"], b["pool_b"])


def test_cyclegan_samples_translates_exports_and_evaluates_both_ways(tmp_path, mnistm_data, capsys):
    from ganforge import load
    from ganforge.cli import main
    from ganforge.sample import encode_png

    run = _cycle_run(tmp_path, 3)
    gen = load(run)
    assert gen.unpaired and gen.channels_of("b2a") == (3, 3)
    inputs, targets, labels = gen.test_pairs(5, "b2a")
    assert targets is None and inputs.shape == (5, 3, 28, 28) and labels.shape == (5,)
    assert gen.translate(inputs, direction="b2a").shape == (5, 3, 28, 28)
    assert main(["sample", str(run), "--n", "4", "--out", str(tmp_path / "g.png"), "--direction", "b2a"]) == 0
    image = tmp_path / "digit.png"
    image.write_bytes(encode_png(torch.randint(0, 255, (30, 30, 1), dtype=torch.uint8).numpy()))
    assert main(["translate", str(run), str(image), "--out", str(tmp_path / "out"), "--direction", "b2a"]) == 0
    assert (tmp_path / "out" / "digit.png").is_file()
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    assert main(["export", str(run), "--format", "onnx", "--out", str(tmp_path / "g.onnx")]) == 0
    assert "inputs x [N, 3, 28, 28]" in capsys.readouterr().out
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(tmp_path / "g.onnx"))
    x = torch.rand(2, 3, 28, 28) * 2 - 1
    (y,) = session.run(None, {"x": x.numpy()})
    assert torch.allclose(torch.from_numpy(y), gen.G.G_ab(x), atol=1e-4)


def test_a_paired_model_has_one_direction(tmp_path, data_root, monkeypatch, capsys):
    from ganforge import load
    from ganforge import train as run_training
    from ganforge.cli import main

    monkeypatch.setenv("GANFORGE_DATA", str(data_root))
    run = run_training(build_config(overrides={
        "data": {"name": "edges2fashion", "limit": 32, "download": False}, "model": {"g_channels": 4, "d_channels": 4},
        "train": {"batch_size": 8, "steps": 1, "n_samples": 4}, "run": {"runs_dir": str(tmp_path), "name": "p"}}),
        progress=False)  # fmt: skip
    with pytest.raises(ValueError, match="a2b only"):
        load(run).translate(torch.zeros(1, 1, 28, 28, dtype=torch.uint8), direction="b2a")
    assert main(["sample", str(run), "--n", "4", "--out", str(tmp_path / "g.png"), "--direction", "b2a"]) == 2
    assert "a2b only" in capsys.readouterr().err


def test_a_short_real_cyclegan_run_keeps_the_digits(tmp_path, mnistm_data):
    """Real data: after 150 steps the mnistm classifier reads the digit of more translated MNIST test
    digits than after 1 step, and `ganforge eval` reports FID, class accuracy and label preservation."""
    from ganforge import load
    from ganforge.metrics.evaluate import evaluate, format_table
    from ganforge.metrics.features import classifier_accuracy, load_domain_extractor

    ext = load_domain_extractor("mnistm")
    over = dict(batch_size=16)
    start = load(_cycle_run(tmp_path, 1, name="start", **over))
    run = _cycle_run(tmp_path, 150, name="trained", **over)
    trained = load(run)
    inputs, _, labels = trained.test_pairs(300)
    before = classifier_accuracy(ext, start.translate(inputs), labels)
    after = classifier_accuracy(ext, trained.translate(inputs), labels)
    assert after > before + 0.2 and after > 0.5, (before, after)
    report = evaluate(run, n=200)
    rows = {r["metric"]: r for r in report["results"]}
    assert set(rows) == {"fid", "class_accuracy", "label_preservation"}
    assert rows["fid"]["floor"] < rows["fid"]["value"] and rows["label_preservation"]["train_n"] == 256
    assert rows["fid"]["reference"] == {"dataset": "mnist2mnistm", "split": "test", "n": 200}
    assert "label_preservation" in format_table(report)


def test_a_cyclegan_model_on_gan_data_is_refused():
    with pytest.raises(ConfigError, match="cyclegan28 translates unpaired images; use an unpaired dataset"):
        validate(build_config(overrides={"data": {"name": "mnist"}, "model": {"name": "cyclegan28"}}))
