"""Generation helpers: the truncation trick and slerp interpolation."""

from __future__ import annotations

import pytest
import torch

from ganforge.sample import TrainedGenerator


class Echo(torch.nn.Module):
    """A 'generator' that writes its latent into the image, so the tests can read z back."""

    def forward(self, z, c=None):
        return (z / 8).clamp(-1, 1).view(len(z), 1, 1, -1)  # z = 8 * pixel, to 1/16 after uint8


def generator(z_dim: int = 64) -> TrainedGenerator:
    config = {"model": {"name": "dcgan28", "conditional": False, "num_classes": None}}
    return TrainedGenerator(Echo(), z_dim, config, torch.device("cpu"), path=None)


def test_truncation_bounds_the_latents_and_is_reproducible():
    g = generator()
    z = g.latents(500, seed=3, truncation=0.5)
    assert z.abs().max() <= 0.5 and z.abs().mean() > 0.2  # redrawn, not clipped to the threshold
    assert torch.equal(z, g.latents(500, seed=3, truncation=0.5))
    assert g.latents(500, seed=3).abs().max() > 2  # untruncated Gaussians reach further
    with pytest.raises(ValueError, match="positive"):
        g.latents(2, truncation=0)


def test_interpolation_runs_from_seed_a_to_seed_b_on_the_great_circle():
    g = generator(z_dim=256)
    frames = g.interpolate(1, 2, frames=5)
    assert frames.shape == (5, 1, 1, 256) and frames.dtype == torch.uint8
    assert torch.equal(frames[0], g.sample(1, seed=1)[0]) and torch.equal(frames[-1], g.sample(1, seed=2)[0])
    a, b = g.latents(1, 1)[0], g.latents(1, 2)[0]
    mid = (frames[2].float().view(-1) / 127.5 - 1) * 8  # the latent of the middle frame, read back
    assert mid.norm() > 0.95 * min(a.norm(), b.norm())  # slerp keeps the typical norm...
    assert ((a + b) / 2).norm() < 0.8 * min(a.norm(), b.norm())  # ...which the straight line loses
    cos = torch.dot(mid, a + b) / (mid.norm() * (a + b).norm())
    assert cos > 0.99  # and the middle frame lies halfway between the two
    with pytest.raises(ValueError, match="2 frames"):
        g.interpolate(1, 2, frames=1)


def test_truncation_leaves_the_latent_code_coordinate_alone(tmp_path, isolated_env):
    # from the modules, not `from ganforge import train`: once any test has imported the module ganforge.train,
    # the package's attribute `train` is that module, not the function
    from ganforge.config import build_config
    from ganforge.sample import load
    from ganforge.train import train
    from tests.conftest import tiny

    overrides = tiny(tmp_path, steps=2)
    overrides["model"]["latent_codes"] = 8
    gen = load(train(build_config(overrides=overrides), progress=False))
    z = gen.latents(20_000, seed=0, truncation=0.5)
    assert z[:, 1:].abs().max() <= 0.5  # the noise is truncated...
    assert abs(z[:, 0].std() - 1) < 0.03 and z[:, 0].abs().max() > 2  # ...the code picker is not: every code stays


@pytest.mark.parametrize("name, magic", [("g.png", b"\x89PNG"), ("g.jpg", b"\xff\xd8\xff"), ("g.JPEG", b"\xff\xd8\xff"),
                                         ("g.webp", b"RIFF"), ("g.bmp", b"BM")])  # fmt: skip
def test_a_grid_is_written_in_the_format_its_extension_names(tmp_path, name, magic):
    from ganforge.sample import write_samples

    (path,) = write_samples(generator(), 4, tmp_path / name, seed=0)
    assert path.read_bytes().startswith(magic)


@pytest.mark.parametrize("name", ["g.gaf", "grid"])
def test_an_unknown_extension_is_refused_before_sampling(tmp_path, name):
    from ganforge.sample import ImageFormatError, write_samples

    with pytest.raises(ImageFormatError, match="the extension picks the format, one of .png, .jpg"):
        write_samples(generator(), 4, tmp_path / name, seed=0)
    assert not any(tmp_path.iterdir())


def test_a_scatter_plot_follows_its_extension_too(tmp_path):
    from ganforge.sample import save_scatter

    assert save_scatter(torch.randn(20, 2), tmp_path / "p.jpg").read_bytes().startswith(b"\xff\xd8\xff")
    assert save_scatter(torch.randn(20, 2), tmp_path / "p.svg").read_bytes().lstrip().startswith(b"<?xml")
