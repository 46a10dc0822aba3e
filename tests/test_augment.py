import pytest
import torch

from ganforge.augment import POLICIES, TRANSFORMS, cutout, make_augment, translation
from ganforge.config import ConfigError, build_config


@pytest.mark.parametrize("name", POLICIES)
def test_each_transform_keeps_shape_and_is_differentiable(name):
    x = torch.rand(5, 3, 16, 16, requires_grad=True)
    y = TRANSFORMS[name](x * 2 - 1, torch.Generator().manual_seed(0))
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_same_generator_state_gives_the_same_augmentation():
    x = torch.rand(4, 1, 8, 8)
    aug_a = make_augment("color,translation,cutout", torch.Generator().manual_seed(3))
    aug_b = make_augment("color,translation,cutout", torch.Generator().manual_seed(3))
    assert torch.equal(aug_a(x), aug_b(x))
    assert make_augment("", torch.Generator()) is None


def test_translation_shifts_and_pads_with_zeros():
    x = torch.ones(200, 1, 8, 8)
    y = translation(x, torch.Generator().manual_seed(0))
    assert (y == 0).any() and (y == 1).any()
    assert set(y.unique().tolist()) <= {0.0, 1.0}


def test_cutout_zeroes_a_square_of_half_size():
    x = torch.ones(100, 1, 16, 16)
    y = cutout(x, torch.Generator().manual_seed(0))
    zeros = (y == 0).flatten(1).sum(1)
    assert zeros.max() == 64 and zeros.min() > 0  # 8x8 when inside the image, less at the border


def test_bad_policy_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown transform.*Did you mean 'cutout'"):
        build_config(overrides={"reg": {"diffaugment": "color,cutuot"}})
