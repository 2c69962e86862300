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


# ---- contract checks over every registered augmentation --------------------------------

PER_IMAGE = ["color", "crop", "cutout", "scale"]


def _draw(aug, shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    params = aug.sample(shape, g)
    return torch.randn(shape, generator=g, dtype=dtype), params


@pytest.mark.parametrize("name", list_augmentations())
def test_keeps_shape_and_float64(name):
    aug = create_augmentation(name)
    for seed in range(3):
        x, params = _draw(aug, (3, 3, 8, 8), seed)
        y = aug.apply(x, params)
        assert y.shape == x.shape and y.dtype == torch.float64
        assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", [n for n in list_augmentations() if n != "none"])
def test_changes_the_input_for_some_draw(name):
    aug = create_augmentation(name)
    changed = []
    for seed in range(10):
        x, params = _draw(aug, (3, 3, 8, 8), seed)
        changed.append(not torch.allclose(aug.apply(x, params), x))
    assert any(changed)


@pytest.mark.parametrize("name", list_augmentations())
def test_double_backward(name):
    """Second derivatives through the augmentation, as the distillation engine takes
    them: the gradient w.r.t. the images of a function of gradients w.r.t. weights."""
    aug = create_augmentation(name)
    x, params = _draw(aug, (2, 3, 4, 4), seed=1)
    x.requires_grad_(True)
    weights = torch.randn(3 * 4 * 4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))

    def weight_grad(images):
        w = weights.clone().requires_grad_(True)
        loss = (aug.apply(images, params).flatten(1) @ w).tanh().pow(2).sum()
        return torch.autograd.grad(loss, w, create_graph=True)[0]

    assert torch.autograd.gradcheck(weight_grad, (x,), fast_mode=True)
    assert torch.autograd.gradgradcheck(lambda images: aug.apply(images, params), (x,), fast_mode=True)
    (gx,) = torch.autograd.grad(weight_grad(x).pow(2).sum(), x)
    assert torch.isfinite(gx).all() and gx.abs().sum() > 0


@pytest.mark.parametrize("name", PER_IMAGE)
@pytest.mark.parametrize("n", [1, 5])
def test_per_image_params_have_leading_batch_dim(name, n):
    aug = create_augmentation(name)
    params = aug.sample((n, 3, 8, 8), torch.Generator().manual_seed(0))
    assert params and all(v.shape[0] == n for v in params.values())
    assert all(v.device.type == "cpu" for v in params.values())


@pytest.mark.parametrize("name", PER_IMAGE)
def test_per_image_draws_differ_across_the_batch(name):
    aug = create_augmentation(name)
    params = aug.sample((16, 3, 8, 8), torch.Generator().manual_seed(0))
    assert all(len(torch.unique(v.flatten(1) if v.dim() > 1 else v, dim=0)) > 1 for v in params.values())


# ---- scale --------------------------------------------------------------------------------


def test_scale_factors_span_their_range_and_ratio_one_is_identity():
    s = create_augmentation("scale", ratio=1.5).sample((500, 1, 4, 4), torch.Generator().manual_seed(0))["scale"]
    assert s.min() >= 1 / 1.5 and s.max() <= 1.5
    assert s.min() < 1 / 1.5 + 0.05 and s.max() > 1.5 - 0.05

    aug = create_augmentation("scale", ratio=1.0)
    x, params = _draw(aug, (4, 2, 7, 9))
    torch.testing.assert_close(aug.apply(x, params), x)


def test_scale_acts_along_the_named_axis():
    x = torch.zeros(1, 1, 9, 9, dtype=torch.float64)
    x[..., 4, :] = 1.0  # a horizontal line through the centre
    aug = create_augmentation("scale")
    # Shrinking along the width only leaves a shorter line on the same row.
    y = aug.apply(x, {"scale": torch.tensor([[1.0, 3.0]], dtype=torch.float64)})
    assert y[..., [0, 1, 2, 3, 5, 6, 7, 8], :].abs().max() < 1e-12
    assert y[0, 0, 4, 4] == pytest.approx(1.0) and y[0, 0, 4, 0] == pytest.approx(0.0)


# ---- crop ---------------------------------------------------------------------------------


def _shift_reference(x, dy, dx):
    """Output pixel (i, j) is input pixel (i + dy, j + dx), zero outside."""
    h, w = x.shape[-2:]
    out = torch.zeros_like(x)
    for i in range(h):
        for j in range(w):
            if 0 <= i + dy < h and 0 <= j + dx < w:
                out[..., i, j] = x[..., i + dy, j + dx]
    return out


def test_crop_matches_a_reference_shift_per_image():
    aug = create_augmentation("crop")
    x = torch.randn(4, 2, 6, 7, dtype=torch.float64)
    shift = torch.tensor([[0, 0], [1, -2], [-3, 2], [6, 0]])
    y = aug.apply(x, {"shift": shift})
    for n, (dy, dx) in enumerate(shift.tolist()):
        assert torch.equal(y[n], _shift_reference(x[n], dy, dx))


def test_crop_shifts_are_bounded_and_fraction_zero_is_identity():
    g = torch.Generator().manual_seed(0)
    shift = create_augmentation("crop", fraction=0.25).sample((400, 1, 8, 12), g)["shift"]
    assert shift.dtype == torch.int64
    assert set(shift[:, 0].tolist()) == set(range(-2, 3)) and set(shift[:, 1].tolist()) == set(range(-3, 4))

    aug = create_augmentation("crop", fraction=0.0)
    x, params = _draw(aug, (4, 2, 7, 9))
    assert torch.equal(aug.apply(x, params), x)


# ---- color --------------------------------------------------------------------------------


def test_color_matches_the_formulas_and_skips_saturation_on_one_channel():
    aug = create_augmentation("color")
    one = {"brightness": torch.zeros(2), "saturation": torch.ones(2), "contrast": torch.ones(2)}
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(aug.apply(x, one), x)
    torch.testing.assert_close(aug.apply(x, {**one, "brightness": torch.tensor([0.3, -0.2])}),
                               x + torch.tensor([0.3, -0.2], dtype=x.dtype).view(2, 1, 1, 1))
    gray = x.mean(1, keepdim=True)
    torch.testing.assert_close(aug.apply(x, {**one, "saturation": torch.tensor([0.0, 2.0])}),
                               torch.stack([gray[0].expand(3, 5, 5), 2 * x[1] - gray[1]]))
    mean = x.mean((1, 2, 3), keepdim=True)
    torch.testing.assert_close(aug.apply(x, {**one, "contrast": torch.tensor([0.5, 1.5])}),
                               mean + (x - mean) * torch.tensor([0.5, 1.5], dtype=x.dtype).view(2, 1, 1, 1))
    x1 = x[:, :1]
    torch.testing.assert_close(aug.apply(x1, {**one, "saturation": torch.tensor([0.0, 2.0])}), x1)


def test_color_draws_follow_the_strengths():
    aug = create_augmentation("color", brightness=0.4, saturation=3.0, contrast=0.2)
    p = aug.sample((2000, 3, 1, 1), torch.Generator().manual_seed(0))
    assert p["brightness"].abs().max() <= 0.2 and p["brightness"].abs().max() > 0.19
    assert 0 <= p["saturation"].min() < 0.05 and 2.95 < p["saturation"].max() <= 3.0
    assert 0.2 <= p["contrast"].min() < 0.25 and 1.15 < p["contrast"].max() <= 1.2


# ---- cutout -------------------------------------------------------------------------------


def test_cutout_zeroes_about_fraction_squared_of_every_channel():
    aug = create_augmentation("cutout", fraction=0.5)
    x = torch.rand(300, 2, 16, 16, dtype=torch.float64) + 1.0  # no zeros of its own
    params = aug.sample(x.shape, torch.Generator().manual_seed(0))
    y = aug.apply(x, params)
    zero = y == 0
    assert torch.equal(zero[:, 0], zero[:, 1])  # the same mask in every channel
    assert torch.equal(y[~zero], x[~zero])  # the rest is untouched
    frac = zero[:, 0].flatten(1).double().mean(1)
    assert frac.max() == 0.25  # an 8 x 8 square when it lies inside the image
    assert 0.6 * 0.25 < frac.mean() < 0.25  # clipped at the border otherwise
    rows, cols = zero[:, 0].any(2), zero[:, 0].any(1)  # the zeros form one rectangle
    assert torch.equal(zero[:, 0], rows[:, :, None] & cols[:, None, :])


def test_cutout_fraction_zero_is_identity():
    aug = create_augmentation("cutout", fraction=0.0)
    x, params = _draw(aug, (3, 2, 7, 7))
    assert torch.equal(aug.apply(x, params), x)


# ---- compose and dsa ----------------------------------------------------------------------


def test_dsa_is_the_reference_strategy_with_prefixed_flat_params():
    aug = create_augmentation("dsa")
    assert aug.names == ("color", "crop", "cutout", "flip", "scale", "rotate")
    params = aug.sample((4, 3, 8, 8), torch.Generator().manual_seed(0))
    assert set(params) == {
        "color.brightness", "color.saturation", "color.contrast", "crop.shift",
        "cutout.centre", "flip.flip", "scale.scale", "rotate.degrees",
    }
    assert all(isinstance(v, torch.Tensor) for v in params.values())


def test_compose_equals_its_members_applied_in_order():
    names = ("crop", "color", "flip", "scale")
    aug = create_augmentation("compose", names=names, options={"scale": {"ratio": 1.5}})
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    for seed in range(4):
        params = aug.sample(x.shape, torch.Generator().manual_seed(seed))
        g = torch.Generator().manual_seed(seed)
        expected = x
        for name in names:
            member = create_augmentation(name, **({"ratio": 1.5} if name == "scale" else {}))
            expected = member.apply(expected, member.sample(x.shape, g))
        assert torch.equal(aug.apply(x, params), expected)


def test_nested_compose_keeps_keys_apart():
    aug = create_augmentation("compose", names=("flip", "dsa"))
    params = aug.sample((2, 1, 6, 6), torch.Generator().manual_seed(0))
    assert {"flip.flip", "dsa.flip.flip", "dsa.crop.shift"} <= set(params)
    assert aug.apply(torch.randn(2, 1, 6, 6), params).shape == (2, 1, 6, 6)


@pytest.mark.parametrize(
    "name, options",
    [
        ("scale", {"ratio": 0.9}),
        ("scale", {"ratio": float("inf")}),
        ("crop", {"fraction": -0.1}),
        ("crop", {"fraction": "0.1"}),
        ("cutout", {"fraction": 1.5}),
        ("color", {"saturation": -1.0}),
        ("color", {"contrast": float("nan")}),
        ("compose", {"names": "color_crop"}),
        ("compose", {"names": 3}),
        ("compose", {"names": ("flip", "flip")}),
        ("compose", {"names": ("crop",), "options": {"scale": {"ratio": 1.1}}}),
        ("compose", {"names": ("crop",), "options": {"crop": {"fraction": 2.0}}}),
        ("compose", {"names": ("crop",), "options": {"crop": {"bogus": 1}}}),
        ("dsa", {"options": {"scale": 1.1}}),
    ],
)
def test_bad_options_fail_at_construction(name, options):
    with pytest.raises(ConfigError, match=name):
        create_augmentation(name, **options)


def test_compose_unknown_member_lists_valid_names():
    with pytest.raises(UnknownNameError, match="cutout"):
        create_augmentation("compose", names=("crop", "mixup"))


def test_a_plus_chain_is_compose_of_its_members_in_order():
    chained = create_augmentation("Crop+scale+rotate")
    composed = create_augmentation("compose", names=("crop", "scale", "rotate"))
    x = torch.randn(3, 1, 10, 10, dtype=torch.float64)
    params = chained.sample(x.shape, torch.Generator().manual_seed(1))
    assert params.keys() == composed.sample(x.shape, torch.Generator().manual_seed(1)).keys()
    assert torch.equal(chained.apply(x, params), composed.apply(x, params))
    assert not torch.equal(chained.apply(x, params), x)


@pytest.mark.parametrize("name, error, match", [
    ("crop+", ConfigError, "empty name"),
    ("crop+mixup", UnknownNameError, "mixup"),
    ("crop+crop", ConfigError, "once"),
])
def test_bad_plus_chains_name_the_problem(name, error, match):
    with pytest.raises(error, match=match):
        create_augmentation(name)
    with pytest.raises(ConfigError, match="takes no options"):
        create_augmentation("crop+scale", ratio=1.1)


def test_a_configuration_accepts_a_plus_chain_and_rejects_a_bad_one():
    from memdistill.config import DistillConfig

    cfg = DistillConfig()
    cfg.evaluation.augment = "crop+rotate"
    cfg.validate()
    cfg.evaluation.augment = "crop+warp"
    with pytest.raises(UnknownNameError, match="warp"):
        cfg.validate()
