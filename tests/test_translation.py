"""pix2pix: its nets, its G step's L1 term, the paired datasets, the config checks, and a short real run."""

from __future__ import annotations

import pytest
import torch

from ganforge.config import ConfigError, build_config, validate
from ganforge.losses import LOSSES
from ganforge.models import build_models
from ganforge.models.translation import receptive_field
from ganforge.steps import translation_g_step


@pytest.mark.parametrize("res, c_in, c_out, patches", [(28, 1, 1, 12), (32, 1, 3, 14)])
def test_nets_shapes_and_ranges(res, c_in, c_out, patches):
    torch.manual_seed(0)
    G, D = build_models(f"pix2pix{res}", 8, c_out, 8, 8, 0.0, in_channels=c_in)
    x = torch.rand(3, c_in, res, res) * 2 - 1
    y = G(x)
    assert y.shape == (3, c_out, res, res) and y.abs().max() <= 1
    assert D(y, x).shape == (3, patches, patches)  # one logit per 16x16 patch


def test_patchgan_receptive_field():
    assert receptive_field(1) == 16 and receptive_field(3) == 70  # n_layers=3 is the paper's 70x70


def test_the_g_step_adds_l1_weight_times_the_mean_absolute_error():
    G, D = build_models("pix2pix28", 8, 1, 4, 4, 0.0, in_channels=1)
    x, y = torch.zeros(2, 1, 28, 28), torch.full((2, 1, 28, 28), 0.5)
    fake = G(x)
    expected_l1 = (fake - y).abs().mean().item()
    opt = torch.optim.SGD(G.parameters(), lr=0.0)
    g_adv, l1 = translation_g_step(D, opt, LOSSES["non-saturating"], x, y, fake, l1_weight=100.0, adv_weight=0.0)
    assert l1.item() == pytest.approx(expected_l1) and g_adv.item() == 0.0
    # the gradient reaching G's output is l1_weight * sign(fake - y) / numel (adversarial part off)
    fake = G(x)
    fake.retain_grad()
    translation_g_step(D, opt, LOSSES["non-saturating"], x, y, fake, l1_weight=100.0, adv_weight=0.0)
    assert torch.allclose(fake.grad, 100.0 * torch.sign(fake - y).detach() / fake.numel())
    assert all(p.requires_grad for p in D.parameters())  # D unfrozen afterwards


def test_canny_edges_are_deterministic_and_binary():
    from ganforge.data import canny_edges

    images = torch.zeros(2, 1, 28, 28, dtype=torch.uint8)
    images[:, :, 8:20, 8:20] = 200
    a, b = canny_edges(images), canny_edges(images)
    assert torch.equal(a, b) and set(a.unique().tolist()) <= {0, 255}
    assert a[0, 0, 8:20, 8].any() and not a[0, 0, 12:16, 12:16].any()  # the square's outline, not its inside


def test_config_checks():
    validate(build_config(overrides={"data": {"name": "edges2fashion"}}))  # auto picks the translation model
    with pytest.raises(ConfigError, match="paired translation dataset; use a translation model for it"):
        validate(build_config(overrides={"data": {"name": "edges2fashion"}, "model": {"name": "dcgan28"}}))
    with pytest.raises(ConfigError, match="translates paired images; use a paired dataset"):
        validate(build_config(overrides={"data": {"name": "mnist"}, "model": {"name": "pix2pix28"}}))
    with pytest.raises(ConfigError, match="train.ema_beta: .* not available for image translation"):
        validate(build_config(overrides={"data": {"name": "edges2fashion"}, "train": {"ema_beta": 0.999}}))
    with pytest.raises(ConfigError, match="both are 0"):
        validate(build_config(overrides={"data": {"name": "edges2fashion"},
                                         "loss": {"l1_weight": 0.0, "adv_weight": 0.0}}))  # fmt: skip


def _colorize_run(tmp_path, steps, **train):
    from ganforge import train as run_training

    overrides = {
        "data": {"name": "cifar10-colorize", "limit": 256, "download": False},
        "model": {"g_channels": 16, "d_channels": 16},
        "train": {"batch_size": 32, "steps": steps, "log_every": 10, "checkpoint_every": 10, "n_samples": 8,
                  "device": "cpu", **train},
        "run": {"runs_dir": str(tmp_path / "runs"), "name": f"colorize{steps}"},
    }  # fmt: skip
    return run_training(build_config(overrides=overrides), progress=False)


@pytest.fixture
def cifar(data_root, monkeypatch):
    if not (data_root / "cifar10").is_dir():
        pytest.skip("CIFAR-10 not in the shared data")
    monkeypatch.setenv("GANFORGE_DATA", str(data_root))  # where the loaders look (download is off)


def test_a_short_colorisation_run_beats_its_start_and_translates(tmp_path, cifar, capsys):
    """Real CIFAR-10: after 60 steps the outputs are nearer the colour targets (MAE on test inputs) than
    the untrained G's, the grid and `ganforge translate` work, and sampling latents is refused clearly."""
    from ganforge import load
    from ganforge.cli import main
    from ganforge.metrics.translation import mae
    from ganforge.sample import encode_png

    start = load(_colorize_run(tmp_path, 1))  # one step: essentially the initial G
    trained = load(_colorize_run(tmp_path, 60))
    inputs, targets, _ = trained.test_pairs(200)
    before, after = mae(start.translate(inputs), targets), mae(trained.translate(inputs), targets)
    assert after < 0.8 * before, (before, after)
    assert (trained.path.parent.parent / "samples.png").is_file()
    with pytest.raises(ValueError, match="translates images and has no latents"):
        trained.sample(4)
    image = tmp_path / "photo.png"
    image.write_bytes(encode_png(torch.randint(0, 255, (40, 50, 3), dtype=torch.uint8).numpy()))
    assert main(["translate", str(trained.path), str(image), "--out", str(tmp_path / "out")]) == 0
    assert "resized from 50x40 to 32x32" in capsys.readouterr().out
    assert (tmp_path / "out" / "photo.png").is_file()


def test_translation_resumes_exactly(tmp_path, cifar):
    from ganforge import train as run_training
    from ganforge.checkpoint import load_checkpoint

    _colorize_run(tmp_path, 20, keep_checkpoints=10)
    part = tmp_path / "part"
    (tmp_path / "runs" / "colorize20").rename(part)
    resumed = run_training(resume=part, overrides={"train": {"steps": 20}}, progress=False,
                           resume_from="step_0000010.pt")  # fmt: skip
    full = _colorize_run(tmp_path, 20, keep_checkpoints=10)
    a = load_checkpoint(full / "checkpoints" / "final.pt")["G"]
    b = load_checkpoint(resumed / "checkpoints" / "final.pt")["G"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("preset, model", [("pix2pix-edges2fashion", "pix2pix28"), ("colorize-cifar10", "pix2pix32")])
def test_the_translation_presets_are_valid(preset, model):
    cfg = build_config(preset=preset)
    assert cfg.model.name == model and cfg.loss.l1_weight == 100.0 and cfg.optim.beta1 == 0.5
