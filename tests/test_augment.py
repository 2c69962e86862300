"""Augmentations: explicit randomness, exact replay, differentiability."""

from __future__ import annotations

import pytest
import torch

from memdistill.augment import create_augmentation, list_augmentations
from memdistill.errors import ConfigError, UnknownNameError


@pytest.mark.parametrize("name", list_augmentations())
def test_replay_and_generator_determinism(name):
    aug = create_augmentation(name)
    x = torch.randn(3, 2, 9, 9, requires_grad=True)
    before = torch.get_rng_state()
    outs = []
    for _ in range(2):
        g = torch.Generator().manual_seed(7)
        params = aug.sample(x.shape, g)
        outs.append(aug.apply(x, params))
        assert torch.equal(aug.apply(x, params), outs[-1])  # replay is exact
    assert torch.equal(outs[0], outs[1])
    assert torch.equal(before, torch.get_rng_state())  # global RNG untouched
    outs[0].pow(2).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_flip_rotate_picks_both_branches_and_keeps_shape():
    aug = create_augmentation("flip_rotate")
    g = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).view(2, 1, 6, 6)
    kinds = set()
    for _ in range(50):
        p = aug.sample(x.shape, g)
        y = aug.apply(x, p)
        assert y.shape == x.shape
        assert abs(float(p["degrees"])) <= 15.0
        kinds.add((bool(p["choose_flip"]), bool(p["flip"]) if bool(p["choose_flip"]) else None))
        if bool(p["choose_flip"]):
            assert torch.equal(y, x.flip(-1) if bool(p["flip"]) else x)
    assert {(True, True), (True, False), (False, None)} <= kinds


def test_rotation_by_zero_is_identity_and_by_90_matches_rot90():
    rot = create_augmentation("rotate")
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(rot.apply(x, {"degrees": torch.tensor(0.0, dtype=torch.float64)}), x)
    y = rot.apply(x, {"degrees": torch.tensor(90.0, dtype=torch.float64)})
    torch.testing.assert_close(y, torch.rot90(x, k=1, dims=(2, 3)), atol=1e-6, rtol=0)


def test_bad_names_and_options():
    with pytest.raises(UnknownNameError, match="flip_rotate"):
        create_augmentation("mixup")
    with pytest.raises(ConfigError):
        create_augmentation("flip", p=2.0)
    with pytest.raises(ConfigError):
        create_augmentation("rotate", bogus=1)
