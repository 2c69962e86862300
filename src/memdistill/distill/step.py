"""The meta step: one inner unroll's outer loss and meta-gradient of the memory, and
the meta batch (the mean over ``outer.meta_batch`` unrolls, summed over processes).

A meta step draws, from its own random stream: the classes of the unroll (with
``inner.classes_per_step``), a fresh inner network, the unroll length (with
``outer.random_truncation``), the plans of the inner steps, and the real batch. With
``outer.split_classes`` each process computes its share of the classes of the unroll
(:func:`class_share`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

from ..config import DistillConfig
from ..data import ImageDataset
from ..distributed import DistContext, sum_over_ranks
from ..engine import Checkpoints, ClassSplit, InnerOptimizer, draw_plans, meta_gradient, with_precision
from ..engine.chunked import chunked_mean
from ..errors import ConfigError
from ..labels import LabelSpace
from ..memory import Memory
from ..models import create_model, functional_forward
from .pool import Member

__all__ = ["StepInputs", "StepResult", "inner_model", "inner_network", "meta_step", "outer_gradient", "class_share",
           "check_class_split", "checkpoint_schedule", "real_chunk"]

Tensors = tuple[torch.Tensor, ...]


@dataclass(frozen=True)
class StepResult:
    """The outer loss and meta-gradient of one outer iteration (or one unroll of it).

    Unpacks as ``loss, grads, inner_losses``.

    Attributes:
        loss: the outer loss.
        grads: its gradient with respect to each memory tensor (ordered as
            ``memory.names``, same shapes), coefficient penalty included; identical on
            every process for :func:`outer_gradient`.
        inner_losses: the inner training loss of each inner step of the unroll (for
            the mean over several unrolls: one number, the mean last inner loss; empty
            when no unroll had one).
        final: with a model pool, the ``(params, opt_state)`` each pool unroll ended at
            (for one unroll: a list of one; for :func:`outer_gradient`: one per unroll
            of the outer step, on every rank); ``None`` without a pool.
    """

    loss: float
    grads: Tensors
    inner_losses: list[float]
    final: list[tuple[Tensors, Tensors]] | None = None

    def __iter__(self) -> Iterator[Any]:
        return iter((self.loss, self.grads, self.inner_losses))

    def __getitem__(self, i: int) -> Any:
        return (self.loss, self.grads, self.inner_losses)[i]


@dataclass(frozen=True)
class StepInputs:
    """What every meta step of a run uses (built once by the :class:`~.Distiller`).

    Attributes:
        config: the run configuration.
        train: the distillation split (shapes and classes).
        real: the same images, where the real batches are read from (maybe on the device).
        class_index: per class, the indices of its images in ``train``.
        space: the label space of the memory's rows.
        inner_optimizer: the optimiser of the unrolled inner training.
        augment: the augmentation of inner and real batches (``None``: none).
        arch_options: options of the inner network.
        device: where the unroll runs.
        dist: this process's place in the run.
        pool_forward: with a model pool, the members' pure ``forward(params, x)`` (through
            the label space, as :func:`inner_network`'s).
        class_weight: ``(L,)`` weights of the classes in the outer loss (one-hot label
            spaces; the loss is then the weighted mean ``sum_i w[y_i] ce_i / sum_i w[y_i]``);
            ``None``: the plain mean. The continual ``shared`` strategy weights its old
            classes' recalled examples against the current task's real ones with it.
        real_chunk: real images per chunk of the outer loss (:func:`real_chunk`;
            0: the whole batch at once).
    """

    config: DistillConfig
    train: ImageDataset
    real: ImageDataset
    class_index: list[torch.Tensor]
    space: LabelSpace
    inner_optimizer: InnerOptimizer
    augment: Any
    arch_options: dict[str, Any]
    device: torch.device
    dist: DistContext
    pool_forward: Callable[..., torch.Tensor] | None = None
    class_weight: torch.Tensor | None = None
    real_chunk: int = 0


def _weighted(loss_fn: Callable[..., torch.Tensor], weight: float) -> Callable[..., torch.Tensor]:
    return lambda *args: loss_fn(*args) * weight


def inner_model(inputs: StepInputs, g: torch.Generator) -> torch.nn.Module:
    """A freshly initialised inner network (one output per row of the label space)."""
    cfg, train = inputs.config, inputs.train
    return create_model(cfg.inner.arch, train.in_channels, inputs.space.width, train.image_shape[1:], generator=g,
                        device=inputs.device, **inputs.arch_options)


def inner_network(inputs: StepInputs, g: torch.Generator):
    """A freshly initialised inner network: its pure ``forward(params, x)`` (through
    the label space) and its initial parameters."""
    cfg = inputs.config
    model = inner_model(inputs, g)
    names = [n for n, _ in model.named_parameters()]
    init = tuple(p.detach() for p in model.parameters())
    channels_last = cfg.channels_last

    def forward(params, x):
        if channels_last:  # NHWC activations (oneDNN on a CPU, tensor cores on CUDA; docs/BENCHMARKS.md)
            x = x.contiguous(memory_format=torch.channels_last)
        return functional_forward(model, dict(zip(names, params)), x)

    return inputs.space.wrap_forward(with_precision(forward, cfg.inner.precision, inputs.device)), init


def _real_batch(inputs: StepInputs, cls_list, g: torch.Generator,
                per_class: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_class`` (default ``outer.real_per_class``) real images of each class of
    ``cls_list``, augmented."""
    k = inputs.config.outer.real_per_class if per_class is None else per_class
    index = inputs.class_index
    idx = torch.cat([index[c][torch.randint(len(index[c]), (k,), generator=g)] for c in cls_list])
    xr, yr = inputs.real.batch(idx, device=inputs.device)
    if inputs.augment is not None:
        xr = inputs.augment.apply(xr, inputs.augment.sample(xr.shape, g))
    return xr, yr


def _outer_loss(inputs: StepInputs, forward, xr: torch.Tensor, yr: torch.Tensor) -> Callable[[Tensors], torch.Tensor]:
    """``outer_loss(params)``: the loss of the network ``params`` on the real batch, the
    mean over its images (weighted by ``inputs.class_weight``), computed
    ``inputs.real_chunk`` images at a time where that is set."""
    weight = inputs.class_weight

    def loss(params, x, y):
        out = forward(params, x)
        if weight is not None:
            return F.cross_entropy(out, y, weight=weight.to(out))
        return inputs.space.class_loss(out, y)

    if not inputs.real_chunk:
        return lambda params: loss(params, xr, yr)
    row_weight = None if weight is None else weight.to(xr.device)[yr]
    return lambda params: chunked_mean(loss, params, xr, yr, inputs.real_chunk, row_weight)


def real_chunk(config: DistillConfig, model: torch.nn.Module, image_shape: Sequence[int], device: torch.device) -> int:
    """Real images per chunk of the outer loss for ``outer.real_chunk`` (0: the whole
    batch at once).

    Automatic (``0``): on a CPU, as many images as keep the inner network's largest
    activation within :data:`CHUNK_BYTES` (measured by one forward of one image); on other
    devices the whole batch. A network with batch norm (statistics over the batch) is
    never chunked automatically, and refused with an explicit chunk."""
    want = config.outer.real_chunk
    batch_norm = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if want > 0 and batch_norm:
        raise ConfigError(f"outer.real_chunk={want} needs a network whose images do not interact; "
                          f"inner.norm={config.inner.norm!r} normalises over the batch. Use outer.real_chunk=-1 "
                          "(or 0, automatic) with batch norm")
    if want > 0:
        return want
    if want < 0 or batch_norm or device.type != "cpu":
        return 0
    return max(1, CHUNK_BYTES // _largest_activation_bytes(model, image_shape))


CHUNK_BYTES = 16 * 2**20  # glibc serves blocks up to 32 MiB from its heap once it has freed some


def _largest_activation_bytes(model: torch.nn.Module, image_shape: Sequence[int]) -> int:
    """Bytes of the largest output of any module of ``model`` for one image (float32)."""
    sizes = [0]

    def hook(_module, _inputs, out):
        if isinstance(out, torch.Tensor):
            sizes.append(out.numel() * 4)

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        with torch.no_grad():
            model(torch.zeros(1, *image_shape, device=next(model.parameters()).device))
    finally:
        for h in handles:
            h.remove()
    return max(1, max(sizes))


def _coefficient_penalty(inputs: StepInputs, memory: Memory, grads: list[torch.Tensor], split: bool) -> None:
    """Add the gradient of ``memory.coeff_penalty`` on the addressing (in place)."""
    mc = inputs.config.memory
    if mc.kind == "bases" and mc.coeff_penalty != "none" and mc.coeff_alpha > 0 and (
            not split or inputs.dist.is_main):  # a split unroll's gradients are summed over ranks
        i = memory.names.index("addressing")
        a = memory.tensors["addressing"].detach()
        grads[i] = grads[i] + mc.coeff_alpha * (2 * a if mc.coeff_penalty == "l2" else torch.sign(a))


def meta_step(inputs: StepInputs, memory: Memory, g: torch.Generator, split: bool = False,
              member: Member | None = None) -> StepResult:
    """Outer loss and meta-gradient of ``memory`` for one inner unroll, pure in the
    memory (and ``member``), all its randomness drawn from ``g``.

    Args:
        split: compute this process's share of the unroll's classes
            (``outer.split_classes``); the memory gradient is then this process's part
            (:class:`~memdistill.engine.MetaGradient`), to be summed over processes.
        member: unroll ``outer.pool_unroll`` steps from this pool member's state (its
            end state is the result's ``final``) instead of a fresh network's
            ``inner.steps``.
    """
    ic, oc, space = inputs.config.inner, inputs.config.outer, inputs.space
    L = inputs.train.num_classes
    classes = None
    if ic.classes_per_step and ic.classes_per_step < L:
        classes = torch.randperm(L, generator=g)[: ic.classes_per_step].sort().values
    init_state = None
    if member is None:
        forward, init = inner_network(inputs, g)
        steps, window = ic.steps, (oc.window or None)
        if oc.random_truncation:
            steps = int(torch.randint(oc.window, ic.steps + 1, (), generator=g))
    else:
        forward, init, init_state = inputs.pool_forward, member.params, member.state
        steps, window = oc.pool_unroll, None
    plans = draw_plans(steps, space.rows, memory.slots, ic.n_per_class, g, inputs.train.image_shape,
                       inputs.augment, classes, device=inputs.device)
    cls_list = range(L) if classes is None else classes.tolist()
    xr, yr = _real_batch(inputs, cls_list, g)
    shares, outer_weight = None, 1.0
    if split:  # outer.split_classes: this rank's share of the classes of the unroll
        plans, xr, yr, outer_weight, shares = class_share(inputs.dist, plans, xr, yr, len(cls_list))

    outer_loss = _outer_loss(inputs, forward, xr, yr)

    if split:
        outer_loss = _weighted(outer_loss, outer_weight)
    res = meta_gradient(memory.parameters(), space.recall_rows(memory, inputs.augment), forward, init,
                        inputs.inner_optimizer, plans, outer_loss, mode=oc.unroll, window=window, split=shares,
                        init_state=init_state, checkpoints=checkpoint_schedule(inputs.config))
    grads = list(res.grads)
    _coefficient_penalty(inputs, memory, grads, split)
    # the unroll's one read-back to the host: the outer loss and the inner losses
    return StepResult(float(res.loss), tuple(grads), res.inner_losses.tolist(),
                      None if member is None else [res.final])


def checkpoint_schedule(config: DistillConfig) -> Checkpoints:
    """The checkpoint schedule of the unroll (``outer.checkpoint_segment`` /
    ``outer.checkpoint_memory_mb``)."""
    oc = config.outer
    if oc.checkpoint_memory_mb > 0:
        return Checkpoints(memory_mb=oc.checkpoint_memory_mb)
    return Checkpoints(every="auto" if oc.checkpoint_segment == 0 else oc.checkpoint_segment)


def outer_gradient(step: Callable[..., StepResult], memory: Memory, iteration: int, meta_batch: int,
                   dist: DistContext, split: bool, device: torch.device,
                   members: Sequence[Member] | None = None) -> StepResult:
    """The meta-gradient the outer step uses: the mean over ``meta_batch`` unrolls
    ``step(memory, iteration, sample=j)``, summed over all ranks (each computes unrolls
    ``j`` with ``j mod world_size == rank``; with ``split`` every rank takes part in
    every unroll). Identical on every rank; with one unroll in one process it is
    ``step(memory, iteration)`` itself.

    With a model pool, ``members[j]`` is the member unroll ``j`` starts from (passed to
    ``step`` as ``member=``), and the result's ``final`` holds every unroll's end state
    on every rank (the ranks that did not compute an unroll receive it)."""
    M = meta_batch
    extra = {} if members is None else {"member": members[0]}
    if M == 1 and not dist.distributed:
        return step(memory, iteration, **extra)
    acc: list[torch.Tensor] | None = None
    stats = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, last inner loss sum, unrolls with one
    # split classes: every rank takes part in every unroll (its losses are already totals)
    samples = range(M) if split else dist.shard(M)
    stats_scale = 1.0 / dist.world_size if split else 1.0
    finals: dict[int, tuple] = {}
    parts: dict[int, tuple[torch.Tensor, ...]] = {}  # unroll j's gradient (unrolls split over ranks)
    for j in samples:
        res = step(memory, iteration, sample=j, **({} if members is None else {"member": members[j]}))
        loss, grads, inner = res
        if split:
            acc = [g.clone() for g in grads] if acc is None else [a + g for a, g in zip(acc, grads)]
        else:
            parts[j] = tuple(grads)
        stats[0] += loss * stats_scale
        if inner:
            stats[1] += inner[-1] * stats_scale
            stats[2] += stats_scale
        if res.final is not None:
            finals[j] = res.final[0]
    acc = sum_over_ranks(dist, acc) if split else _sum_in_order(dist, parts, M, memory.parameters())
    dist.all_reduce_sum(stats)
    grads = tuple(a / M for a in acc)
    inner_last = [float(stats[1] / stats[2])] if stats[2] > 0 else []
    final = None if members is None else _gather_finals(dist, finals, members, split)
    return StepResult(float(stats[0] / M), grads, inner_last, final)


def _sum_in_order(dist: DistContext, parts: dict[int, tuple[torch.Tensor, ...]], M: int,
                  like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``sum_j parts[j]`` over all ``M`` unrolls, added in the order ``j = 0, 1, ...``
    whichever rank computed each: every unroll's gradient reaches every rank by an exact
    sum with zeros (one rank holds it, the others zeros), then the ranks add them in one
    order. So the result is bitwise that of one process, for any number of ranks (a sum
    of per-rank partial sums would add in another order and differ in the last bits)."""
    if dist.distributed:
        stacked = [torch.stack([parts[j][i] if j in parts else torch.zeros_like(p) for j in range(M)])
                   for i, p in enumerate(like)]
        stacked = sum_over_ranks(dist, stacked)
        parts = {j: tuple(t[j] for t in stacked) for j in range(M)}
    acc = [g.clone() for g in parts[0]]
    for j in range(1, M):
        acc = [a + g for a, g in zip(acc, parts[j])]
    return acc


def _gather_finals(dist: DistContext, finals: dict[int, tuple], members: Sequence[Member],
                   split: bool) -> list[tuple]:
    """Every unroll's end state on every rank: a rank that did not compute unroll ``j``
    contributes zeros to a sum over ranks (exact: ``x + 0 == x``). With ``split`` every
    rank computed every unroll, identically."""
    if split or not dist.distributed:
        return [finals[j] for j in range(len(members))]
    out = []
    for j, member in enumerate(members):
        shapes = (member.params, member.state)
        mine = finals.get(j, (tuple(torch.zeros_like(t) for t in shapes[0]),
                              tuple(torch.zeros_like(t) for t in shapes[1])))
        flat = sum_over_ranks(dist, [*mine[0], *mine[1]])
        out.append((tuple(flat[: len(shapes[0])]), tuple(flat[len(shapes[0]):])))
    return out


def class_share(dist: DistContext, plans, xr, yr, num_classes: int):
    """This rank's share of one unroll: class positions ``p`` with
    ``p mod world_size == rank`` of every inner batch and of the real batch, with the
    weights that make the ranks' losses add up to the whole batch's mean.

    Returns ``(plans, xr, yr, outer_weight, split)``: this rank's plans and real batch,
    the weight of its outer loss and the :class:`~memdistill.engine.ClassSplit`.
    """
    W, r = dist.world_size, dist.rank
    rows = len(yr) // num_classes
    keep = (torch.arange(len(yr)) // rows) % W == r
    outer_weight = float(keep.sum()) / len(yr)
    xr, yr = xr[keep.to(xr.device)], yr[keep.to(yr.device)]
    shared, weights = [], []
    for plan in plans:
        n = len(plan["classes"])
        mine = (torch.arange(n) // (n // num_classes)) % W == r
        part = {k: v[mine.to(v.device)] for k, v in plan.items() if k != "aug"}
        if "aug" in plan:  # per-image parameters follow their images; per-batch ones stay
            part["aug"] = {k: v[mine] if torch.is_tensor(v) and v.ndim >= 1 and v.shape[0] == n else v
                           for k, v in plan["aug"].items()}
        shared.append(part)
        weights.append(float(mine.sum()) / n)
    return shared, xr, yr, outer_weight, ClassSplit(lambda ts: sum_over_ranks(dist, ts), weights)


def check_class_split(config: DistillConfig, train: ImageDataset, space: LabelSpace, arch_options: dict[str, Any],
                      world_size: int) -> None:
    """``outer.split_classes`` is exact only when examples do not interact inside the
    inner network (no batch norm) and every rank gets at least one class; else
    :class:`ConfigError`."""
    cfg, W = config, world_size
    per_unroll = cfg.inner.classes_per_step or train.num_classes
    problems = []
    if not space.is_onehot:
        problems.append("memory.label_space must be onehot")
    if cfg.outer.unroll != "checkpointed":
        problems.append("outer.unroll must be checkpointed")
    if per_unroll < W:
        problems.append(f"each unroll has {per_unroll} classes, fewer than the {W} ranks")
    probe = create_model(cfg.inner.arch, train.in_channels, train.num_classes, train.image_shape[1:], **arch_options)
    if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in probe.modules()):
        problems.append(f"the inner network ({cfg.inner.arch}) uses batch norm, which mixes the "
                        "classes of a batch; use inner.norm=instance")
    if problems:
        raise ConfigError("outer.split_classes (one unroll split over ranks by class) cannot run: "
                          + "; ".join(problems) + "; or set outer.split_classes=false")
