"""The meta-gradient engine against references: torch.optim, full-graph autograd in
float64, and finite differences."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from memdistill.augment import create_augmentation
from memdistill.engine import INNER_OPTIMIZERS, create_inner_optimizer, draw_plans, meta_gradient, memory_recall
from memdistill.errors import ConfigError
from memdistill.memory import create_memory
from memdistill.models import create_model, functional_forward

SHAPE = (1, 8, 8)
L = 3


# ----------------------------------------------------------- inner optimisers
SGD_GRID = [
    dict(lr=lr, momentum=m, dampening=d, nesterov=n, weight_decay=wd)
    for lr, m, d, n, wd in itertools.product([0.01, 0.3], [0.0, 0.5, 0.9], [0.0, 0.3], [False, True], [0.0, 1e-2])
    if not (n and (m == 0 or d != 0))
]
ADAM_GRID = [
    dict(lr=lr, beta1=b1, beta2=b2, weight_decay=wd, eps=1e-8)
    for lr, b1, b2, wd in itertools.product([1e-3, 0.05], [0.0, 0.9], [0.99, 0.999], [0.0, 1e-2])
]


def _quadratic_run(ours, torch_opt_cls, torch_kwargs, steps=6):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(5, 4, generator=g, dtype=torch.float64)
    w0 = torch.randn(4, 3, generator=g, dtype=torch.float64)
    loss_fn = lambda w: (a @ w).sin().pow(2).sum()  # noqa: E731
    w_ref = w0.clone().requires_grad_()
    opt = torch_opt_cls([w_ref], **torch_kwargs)
    params, state = (w0.clone(),), ours.init((w0,))
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(w_ref).backward()
        opt.step()
        p = params[0].requires_grad_()
        (grad,) = torch.autograd.grad(loss_fn(p), p)
        params, state = ours.update((grad,), state, (p.detach(),))
        torch.testing.assert_close(params[0], w_ref.detach(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kw", SGD_GRID)
def test_inner_sgd_matches_torch_optim(kw):
    _quadratic_run(create_inner_optimizer("sgd", **kw), torch.optim.SGD, kw)


@pytest.mark.parametrize("kw", ADAM_GRID)
def test_inner_adam_matches_torch_optim(kw):
    torch_kw = dict(lr=kw["lr"], betas=(kw["beta1"], kw["beta2"]), eps=kw["eps"], weight_decay=kw["weight_decay"])
    _quadratic_run(create_inner_optimizer("adam", **kw), torch.optim.Adam, torch_kw)


def test_inner_optimizer_options_are_validated_at_construction():
    with pytest.raises(ConfigError, match="momentum"):
        create_inner_optimizer("sgd", momentum=1.5)
    with pytest.raises(ConfigError, match="valid options"):
        create_inner_optimizer("adam", betas=(0.9, 0.9))
    with pytest.raises(ConfigError, match="nesterov"):
        create_inner_optimizer("sgd", nesterov=True)
    with pytest.raises(ConfigError, match="valid choices: adam, sgd"):
        create_inner_optimizer("rmsprop")


# ------------------------------------------------------------ meta-gradients
class _FakeReal:
    """A tiny stand-in for an ImageDataset (float images already normalised)."""

    def __init__(self, n_per_class=6):
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(L * n_per_class, *SHAPE, generator=g, dtype=torch.float64)
        self.labels = torch.arange(L).repeat_interleave(n_per_class)
        self.num_classes = L
        self.classes = tuple(str(i) for i in range(L))

    def indices_of_class(self, c):
        return torch.nonzero(self.labels == c).flatten()

    def batch(self, idx):
        return self.x[idx], self.labels[idx]


def _problem(kind, optimizer, learned_labels=False, augment=None, steps=4, budget=2):
    real = _FakeReal()
    g = torch.Generator().manual_seed(0)
    opts = dict(num_bases=3, downsample=2) if kind == "bases" else {}
    mem = create_memory(kind, SHAPE, L, budget, generator=g, real=real, learned_labels=learned_labels, **opts)
    mem.tensors = {k: v.double() for k, v in mem.tensors.items()}
    model = create_model("convnet", 1, L, 8, width=4, depth=2, generator=g, dtype=torch.float64)
    names = [n for n, _ in model.named_parameters()]
    init = tuple(p.detach() for p in model.parameters())
    forward = lambda params, x: functional_forward(model, dict(zip(names, params)), x)  # noqa: E731
    aug = create_augmentation(augment) if augment else None
    plans = draw_plans(steps, L, mem.slots, 2, g, SHAPE, aug)
    outer_aug_params = aug.sample(real.x.shape, g) if aug else None

    def outer(params):
        x = aug.apply(real.x, outer_aug_params) if aug else real.x
        return F.cross_entropy(forward(params, x), real.labels)

    return mem, memory_recall(mem, aug), forward, init, optimizer, plans, outer


def _rel_err(a, b):
    num = sum(float((x - y).pow(2).sum()) for x, y in zip(a, b)) ** 0.5
    den = sum(float(y.pow(2).sum()) for y in b) ** 0.5
    return num / den


OPTIMIZERS = {
    "sgd": dict(name="sgd", lr=0.1),
    "sgd_momentum": dict(name="sgd", lr=0.05, momentum=0.9),
    "adam": dict(name="adam", lr=0.01),
}


@pytest.mark.parametrize("kind", ["images", "bases"])
@pytest.mark.parametrize("opt", list(OPTIMIZERS))
def test_checkpointed_equals_full_graph_float64(kind, opt):
    kw = dict(OPTIMIZERS[opt])
    optimizer = create_inner_optimizer(kw.pop("name"), **kw)
    mem, recall, forward, init, optimizer, plans, outer = _problem(kind, optimizer)
    full = meta_gradient(mem.parameters(), recall, forward, init, optimizer, plans, outer, mode="full")
    ckpt = meta_gradient(mem.parameters(), recall, forward, init, optimizer, plans, outer, mode="checkpointed")
    assert float(full.loss) == pytest.approx(float(ckpt.loss), rel=1e-12)
    assert _rel_err(ckpt.grads, full.grads) < 1e-8
    assert all(float(g.abs().sum()) > 0 for g in full.grads)


@pytest.mark.parametrize("kind", ["images", "bases"])
def test_checkpointed_equals_full_with_augmentation_labels_and_window(kind):
    optimizer = create_inner_optimizer("sgd", lr=0.05, momentum=0.9)
    prob = _problem(kind, optimizer, learned_labels=True, augment="flip_rotate", steps=6, budget=3)
    mem, recall, forward, init, optimizer, plans, outer = prob
    for window in (None, 2):
        full = meta_gradient(mem.parameters(), recall, forward, init, optimizer, plans, outer, "full", window)
        ckpt = meta_gradient(mem.parameters(), recall, forward, init, optimizer, plans, outer, "checkpointed", window)
        assert _rel_err(ckpt.grads, full.grads) < 1e-8
        assert ckpt.backprop_steps == (6 if window is None else 2)
    assert "label_logits" in mem.names and float(full.grads[mem.names.index("label_logits")].abs().sum()) > 0


def test_window_changes_the_gradient_but_not_the_loss():
    optimizer = create_inner_optimizer("sgd", lr=0.05, momentum=0.5)
    mem, recall, forward, init, optimizer, plans, outer = _problem("bases", optimizer, steps=5)
    a = meta_gradient(mem.parameters(), recall, forward, init, optimizer, plans, outer, window=None)
    b = meta_gradient(mem.parameters(), recall, forward, init, optimizer, plans, outer, window=1)
    assert float(a.loss) == pytest.approx(float(b.loss), rel=1e-12)
    assert _rel_err(b.grads, a.grads) > 1e-6


def test_meta_gradient_matches_finite_differences():
    optimizer = create_inner_optimizer("sgd", lr=0.1, momentum=0.9)
    mem, recall, forward, init, optimizer, plans, outer = _problem("bases", optimizer, steps=3)
    res = meta_gradient(mem.parameters(), recall, forward, init, optimizer, plans, outer)
    values = list(mem.parameters())
    g = torch.Generator().manual_seed(3)
    eps = 1e-6
    for which in range(len(values)):
        direction = torch.randn(values[which].shape, generator=g, dtype=torch.float64)

        def loss_at(sign):
            moved = list(values)
            moved[which] = values[which] + sign * eps * direction
            return float(meta_gradient(moved, recall, forward, init, optimizer, plans, outer).loss)

        numeric = (loss_at(1) - loss_at(-1)) / (2 * eps)
        analytic = float((res.grads[which] * direction).sum())
        assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-9)


def test_bad_unroll_arguments():
    optimizer = create_inner_optimizer("sgd", lr=0.1)
    mem, recall, forward, init, optimizer, plans, outer = _problem("images", optimizer, steps=3)
    with pytest.raises(ConfigError, match="valid: checkpointed, full"):
        meta_gradient(mem.parameters(), recall, forward, init, optimizer, plans, outer, mode="implicit")
    with pytest.raises(ConfigError, match="window must be in"):
        meta_gradient(mem.parameters(), recall, forward, init, optimizer, plans, outer, window=4)


@pytest.mark.parametrize("name", INNER_OPTIMIZERS.names())
def test_every_inner_optimizer_is_an_inner_optimizer(name):
    from memdistill.engine import InnerOptimizer

    opt = create_inner_optimizer(name)
    assert isinstance(opt, InnerOptimizer)
    params = (torch.ones(3, dtype=torch.float64),)
    new, state = opt.update((torch.ones(3, dtype=torch.float64),), opt.init(params), params)
    assert new[0].shape == (3,) and float(new[0].sum()) < 3


@pytest.mark.parametrize("opt", list(OPTIMIZERS))
def test_a_split_unroll_with_one_share_equals_the_plain_one_float64(opt):
    """The split skeleton (update VJP + Hessian-vector product of the share) with one
    process holding the whole batch: the same result, with the same meaning."""
    from memdistill.engine import ClassSplit

    kw = dict(OPTIMIZERS[opt])
    optimizer = create_inner_optimizer(kw.pop("name"), **kw)
    mem, recall, forward, init, optimizer, plans, outer = _problem("bases", optimizer, steps=4)
    plain = meta_gradient(mem.parameters(), recall, forward, init, optimizer, plans, outer, window=3)
    one = ClassSplit(reduce=lambda ts: list(ts))
    split = meta_gradient(mem.parameters(), recall, forward, init, optimizer, plans, outer, window=3, split=one)
    assert float(split.loss) == pytest.approx(float(plain.loss), rel=1e-12)
    assert split.inner_losses.tolist() == pytest.approx(plain.inner_losses.tolist(), rel=1e-12)
    assert _rel_err(split.grads, plain.grads) < 1e-10
    assert (split.steps, split.backprop_steps) == (plain.steps, plain.backprop_steps) == (4, 3)
    with pytest.raises(ConfigError, match="needs mode 'checkpointed'"):
        meta_gradient(mem.parameters(), recall, forward, init, optimizer, plans, outer, mode="full", split=one)
    with pytest.raises(ConfigError, match="one weight per inner step"):
        meta_gradient(mem.parameters(), recall, forward, init, optimizer, plans, outer,
                      split=ClassSplit(one.reduce, weights=[1.0]))
