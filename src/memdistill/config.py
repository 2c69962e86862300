"""The configuration tree of a distillation run, presets, TOML files and overrides.

Each component owns a small dataclass of options with defaults; :class:`DistillConfig`
combines them. Overrides (from a TOML file or the command line) must name existing keys
and are type-checked; the resolved configuration is written next to the run's outputs.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterable, Mapping

from .errors import ConfigError

__all__ = [
    "MemoryConfig",
    "InnerConfig",
    "OuterConfig",
    "TrainOptions",
    "EvalConfig",
    "DistillConfig",
    "PRESETS",
    "BUDGET10_SETTINGS",
    "PRESET_DATASET_SETTINGS",
    "resolve",
    "from_record",
    "base_schedule",
    "preset_values",
    "parse_sets",
    "apply_overrides",
    "load_toml",
    "config_to_dict",
]


@dataclass
class MemoryConfig:
    kind: str = "bases"
    budget_ipc: float = 1.0
    num_bases: int = 16
    downsample: int = 2
    learned_labels: bool = False  # label logits per recalled example, recalled as softmax(logits / T)
    label_temperature: float = 1.0  # T > 0 (see docs/CONFIG.md: with Adam, T only rescales outer.label_lr)
    label_space: str = "onehot"  # onehot | smooth | parity | coarse (see labels.py)
    init: str = "real"
    coeff_penalty: str = "l2"  # none | l1 | l2, on the addressing coefficients
    coeff_alpha: float = 1e-4


@dataclass
class InnerConfig:
    arch: str = "convnet"
    width: int = 128
    depth: int = 0  # 0: the network's default
    norm: str = "instance"
    first_pad: int = -1  # convnet's first-convolution padding; -1: the network's default (3 for 1 channel, else 1)
    steps: int = 150
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    n_per_class: int = 32
    classes_per_step: int = 0  # 0: all classes
    augment: str = "flip_rotate"
    # float32 (default) | bfloat16: the inner network's convolutions and matrix products in
    # bfloat16 (autocast), parameters, optimiser state and memory kept in float32; opt-in,
    # refused on a device without bfloat16 kernels (docs/CONFIG.md, docs/BENCHMARKS.md)
    precision: str = "float32"


@dataclass
class OuterConfig:
    iterations: int = 500_000
    optimizer: str = "sgd"
    lr: float = 0.1
    label_lr: float = 0.1  # outer learning rate of the label logits (memory.learned_labels; docs/RESULTS.md)
    momentum: float = 0.5
    clip: float = 2.0
    schedule: str = "none"  # none | cosine
    real_per_class: int = 64
    # real images per chunk of the outer loss's forward and backward (the same loss and
    # gradient, computed a chunk at a time: less memory; engine/chunked.py); 0: automatic
    # (chunks of at most 16 MiB per feature map on a CPU, the whole batch on a GPU), -1: never
    real_chunk: int = 0
    unroll: str = "checkpointed"  # checkpointed | full
    window: int = 0  # back-propagate through the last W steps (0: all)
    random_truncation: bool = False  # unroll to N ~ U[W, T] (RaT-BPTT)
    # which inner states the checkpointed reverse pass keeps (same result; docs/CONFIG.md):
    # every k-th, recomputing the rest (1: all of them, no recomputation; 0: k = ceil(sqrt(W)));
    # or, with checkpoint_memory_mb > 0, as many as fit in that many MiB (a binomial schedule:
    # memory flat in the unroll length)
    checkpoint_segment: int = 1
    checkpoint_memory_mb: float = 0.0
    max_failures: int = 3  # consecutive NaN/Inf meta-gradients before a rollback
    meta_batch: int = 1  # inner unrolls per outer step, spread over the ranks of a torchrun job
    split_classes: bool = False  # every rank takes part in every unroll, on its share of the classes
    # model pool (0: off, a fresh network unrolled inner.steps steps per outer step): P inner
    # networks that live on between outer steps; each step advances one by pool_unroll steps
    # with the exact meta-gradient through them; a member re-starts past pool_max_steps
    pool_size: int = 0
    pool_unroll: int = 10
    pool_max_steps: int = 200
    # feature regression (distill/regression.py): the first regression_steps outer steps score
    # the memory by a kernel ridge regression on the features of networks of a pool of
    # regression_pool members trained on the memory (re-started past regression_max_steps
    # steps), against regression_real_per_class real images per class; then the unrolled
    # objective takes over with a fresh outer optimiser. 0: off.
    regression_steps: int = 0
    regression_pool: int = 10
    regression_max_steps: int = 300
    regression_reg: float = 0.01
    regression_real_per_class: int = 32
    # exponential moving average of the memory over the outer updates (0: off): the run
    # evaluates and returns the average, with decay min(average, (1 + n) / (10 + n)) after
    # n updates (a short warm-up); the last iterate is kept beside it (DistillResult)
    average: float = 0.0


@dataclass
class TrainOptions:
    """How a classifier is trained on a set of images: the options shared by evaluation
    during distillation (:class:`EvalConfig`), the continual learner (``LearnerConfig``)
    and, through :meth:`memdistill.evaluate.TrainConfig.from_options`, ``evaluate``.

    Attributes:
        arch: a registered network (:func:`memdistill.models.list_models`).
        width: its width (networks without one, such as ``lenet``, ignore it).
        lr: SGD learning rate.
        batch_size: examples per optimiser step.
        first_pad: padding of ``convnet``'s first convolution (-1: its default, 3 for
            1-channel inputs as in DC/DSA/MTT, else 1; 1 gives the compact geometry of
            earlier versions); networks without the option ignore it.
    """

    arch: str = "convnet"
    width: int = 128
    lr: float = 0.01
    batch_size: int = 640
    first_pad: int = -1
    depth: ClassVar[int] = 0  # a field only of the options that let users choose it

    def arch_options(self) -> dict[str, Any]:
        """The network options of ``arch`` these options set (width, first_pad, and depth
        where the options have one; 0 and -1 mean the network's default): the one place
        they are translated into :func:`memdistill.models.create_model` keywords."""
        from .models import supported_options

        return supported_options(self.arch, width=self.width, depth=self.depth or None,
                                 first_pad=None if self.first_pad < 0 else self.first_pad)


@dataclass
class EvalConfig(TrainOptions):
    """Evaluation during distillation: ``runs`` networks retrained on the memory every
    ``every`` outer iterations, tested on a validation split of ``val_fraction`` of the
    training set."""

    every: int = 200  # outer iterations between evaluations (0: only at the end)
    at_start: bool = True  # also evaluate the starting point, before the first outer step
    epochs: int = 300
    runs: int = 1
    augment: str = "flip_rotate"
    # constant | step (lr / 10 from half the epochs on, as DC/DSA/MTT evaluate) | cosine
    lr_schedule: str = "constant"
    val_fraction: float = 0.1  # evaluation during distillation uses a validation split


@dataclass
class DistillConfig:
    dataset: str = "mnist"
    seed: int = 0
    device: str = "cpu"
    data_on_device: str = "auto"  # auto | always | never: real uint8 images kept on the device
    tf32: bool = False  # TF32 matmuls/convolutions on CUDA (unmeasured; see docs/SCALING.md)
    channels_last: bool = False  # channels-last inner-network inputs (CPU: docs/BENCHMARKS.md; CUDA: unmeasured)
    # the command line's process keeps the memory it frees (glibc mallopt: no mmap, no trim),
    # so an unroll's large blocks are reused without page faults: 1.27-1.30x faster outer
    # steps at width 128 for 8-13% more peak resident memory, once the outer loss is chunked
    # (docs/BENCHMARKS.md, "Chunking the outer loss"); the library never changes its host
    # process's allocator itself. False: glibc's defaults
    keep_freed_memory: bool = True
    zca: float = 0.0  # ZCA whitening regularisation (0: off; 0.1 on CIFAR in the reference)
    checkpoint_every: int = 50
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    inner: InnerConfig = field(default_factory=InnerConfig)
    outer: OuterConfig = field(default_factory=OuterConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)

    def validate(self) -> "DistillConfig":
        from .augment import create_augmentation
        from .engine import INNER_OPTIMIZERS, INNER_PRECISIONS, UNROLL_MODES
        from .evaluate import LR_SCHEDULES
        from .labels import LABEL_SPACES
        from .memory import MEMORIES
        from .models import MODELS

        MEMORIES.get(self.memory.kind)
        LABEL_SPACES.get(self.memory.label_space)
        MODELS.get(self.inner.arch)
        MODELS.get(self.evaluation.arch)
        INNER_OPTIMIZERS.get(self.inner.optimizer)
        create_augmentation(self.inner.augment)  # a registered name or a '+' chain of them
        create_augmentation(self.evaluation.augment)
        checks = [
            (self.memory.budget_ipc > 0, "memory.budget_ipc must be > 0"),
            (math.isfinite(self.memory.label_temperature) and self.memory.label_temperature > 0,
             f"memory.label_temperature must be > 0 (valid range (0, inf)), got {self.memory.label_temperature}"),
            (math.isfinite(self.outer.label_lr) and self.outer.label_lr >= 0,
             f"outer.label_lr must be >= 0 (valid range [0, inf); 0 keeps the labels at their start), "
             f"got {self.outer.label_lr}"),
            (self.memory.init in ("real", "random"), "memory.init must be real or random"),
            (self.memory.coeff_penalty in ("none", "l1", "l2"), "memory.coeff_penalty must be none, l1 or l2"),
            (self.inner.steps >= 1, "inner.steps must be >= 1"),
            (self.inner.n_per_class >= 1, "inner.n_per_class must be >= 1"),
            (self.inner.precision in INNER_PRECISIONS,
             f"inner.precision must be one of {', '.join(INNER_PRECISIONS)} (float32: the default; bfloat16: "
             f"the inner network's convolutions in bfloat16), got {self.inner.precision!r}"),
            (self.outer.iterations >= 0, "outer.iterations must be >= 0"),
            (self.outer.optimizer in ("sgd", "adam"), "outer.optimizer must be sgd or adam"),
            (self.outer.schedule in ("none", "cosine"), "outer.schedule must be none or cosine"),
            (self.evaluation.lr_schedule in LR_SCHEDULES,
             f"evaluation.lr_schedule must be one of {', '.join(LR_SCHEDULES)} (constant: the lr throughout; "
             f"step: lr / 10 from half the epochs on, as DC/DSA/MTT evaluate; cosine: decayed to 0), "
             f"got {self.evaluation.lr_schedule!r}"),
            (self.outer.unroll in UNROLL_MODES, f"outer.unroll must be one of {', '.join(UNROLL_MODES)}"),
            (0 <= self.outer.window <= self.inner.steps,
             f"outer.window must be in [0, inner.steps={self.inner.steps}], got {self.outer.window} (at budget >= 10 "
             "the cpu presets set outer.window=20: with fewer inner steps also set outer.window, 0 for all of "
             "them, and outer.random_truncation=false)"),
            (not self.outer.random_truncation or self.outer.window > 0, "outer.random_truncation needs outer.window > 0"),
            *self._checkpoint_checks(),
            (self.outer.real_per_class >= 1, "outer.real_per_class must be >= 1"),
            (self.outer.real_chunk >= -1,
             f"outer.real_chunk (real images per chunk of the outer loss) must be >= 1, or 0 for automatic, "
             f"-1 for the whole batch at once; got {self.outer.real_chunk}"),
            (self.outer.clip >= 0, "outer.clip must be >= 0 (0 disables clipping)"),
            (0 <= self.outer.average < 1,
             f"outer.average (the decay of the memory's moving average) must be in [0, 1), 0 for off; "
             f"got {self.outer.average}"),
            (self.checkpoint_every >= 1, "checkpoint_every must be >= 1"),
            (self.outer.meta_batch >= 1, "outer.meta_batch (inner unrolls per outer step) must be >= 1"),
            (self.data_on_device in ("auto", "always", "never"), "data_on_device must be auto, always or never"),
            (self.zca >= 0, "zca (the whitening regularisation) must be >= 0; 0 turns it off"),
            (self.inner.first_pad >= -1, "inner.first_pad must be >= 0, or -1 for the network's default"),
            (self.evaluation.first_pad >= -1, "evaluation.first_pad must be >= 0, or -1 for the network's default"),
            (self.evaluation.every >= 0, "evaluation.every must be >= 0"),
            *self._pool_checks(),
            *self._regression_checks(),
            (0 < self.evaluation.val_fraction < 1, "evaluation.val_fraction must be in (0, 1)"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)
        return self

    def _checkpoint_checks(self) -> list[tuple[bool, str]]:
        oc = self.outer
        sparse = oc.checkpoint_segment != 1 or oc.checkpoint_memory_mb != 0
        return [
            (oc.checkpoint_segment >= 0, "outer.checkpoint_segment must be >= 1 (keep every k-th inner state), "
             f"or 0 (k = ceil(sqrt(W))), got {oc.checkpoint_segment}"),
            (math.isfinite(oc.checkpoint_memory_mb) and oc.checkpoint_memory_mb >= 0,
             f"outer.checkpoint_memory_mb must be >= 0 (0: off), got {oc.checkpoint_memory_mb}"),
            (oc.checkpoint_segment == 1 or oc.checkpoint_memory_mb == 0,
             "set outer.checkpoint_segment or outer.checkpoint_memory_mb, not both (the memory budget "
             "chooses the schedule itself)"),
            (oc.unroll == "checkpointed" or not sparse,
             "outer.checkpoint_segment / outer.checkpoint_memory_mb need outer.unroll=checkpointed"),
        ]

    def _regression_checks(self) -> list[tuple[bool, str]]:
        oc = self.outer
        if oc.regression_steps == 0:
            return [(True, "")]
        return [
            (oc.regression_steps >= 0, f"outer.regression_steps must be >= 0 (0: off), got {oc.regression_steps}"),
            (oc.regression_pool >= oc.meta_batch,
             f"outer.regression_pool must be >= outer.meta_batch ({oc.meta_batch}): each regression of an outer "
             f"step takes its own network; got {oc.regression_pool}"),
            (oc.regression_max_steps >= 1, f"outer.regression_max_steps must be >= 1, got {oc.regression_max_steps}"),
            (math.isfinite(oc.regression_reg) and oc.regression_reg > 0,
             f"outer.regression_reg must be > 0 (the ridge relative to the mean kernel diagonal; e.g. 0.01), "
             f"got {oc.regression_reg}"),
            (oc.regression_real_per_class >= 1,
             f"outer.regression_real_per_class must be >= 1, got {oc.regression_real_per_class}"),
            (not self.memory.learned_labels and self.memory.label_space == "onehot" and not self.inner.classes_per_step,
             "outer.regression_steps regresses on one-hot targets of every class: it cannot be combined with "
             "memory.learned_labels, a memory.label_space other than onehot, or inner.classes_per_step; set "
             "outer.regression_steps=0 or turn those off"),
            (not oc.split_classes, "outer.regression_steps cannot be combined with outer.split_classes; "
             "spread the regressions over processes with outer.meta_batch instead"),
        ]

    def _pool_checks(self) -> list[tuple[bool, str]]:
        oc = self.outer
        if oc.pool_size == 0:
            return [(True, "")]
        return [
            (oc.pool_size >= 1, f"outer.pool_size must be >= 0 (0: no pool), got {oc.pool_size}"),
            (oc.pool_max_steps >= 1, f"outer.pool_max_steps must be >= 1, got {oc.pool_max_steps}"),
            (1 <= oc.pool_unroll <= oc.pool_max_steps,
             f"outer.pool_unroll must be in [1, outer.pool_max_steps={oc.pool_max_steps}], got {oc.pool_unroll}"),
            (oc.pool_size >= oc.meta_batch,
             f"outer.pool_size ({oc.pool_size}) must be >= outer.meta_batch ({oc.meta_batch}): each unroll of an "
             "outer step takes its own member"),
            (oc.window == 0 and not oc.random_truncation,
             "a model pool differentiates through all outer.pool_unroll steps: set outer.window=0 and "
             "outer.random_truncation=false (they shorten fresh-network unrolls only)"),
        ]


def config_to_dict(cfg: DistillConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _set(obj: Any, dotted: str, value: Any, source: str) -> None:
    parts = dotted.split(".")
    target = obj
    for i, part in enumerate(parts):
        valid = [f.name for f in dataclasses.fields(target)]
        if part not in valid:
            where = ".".join(parts[:i]) or "top level"
            raise ConfigError(
                f"{source}: unknown option {dotted!r} ({part!r} is not a key of {where}); "
                f"valid keys there: {', '.join(valid)}"
            )
        if i == len(parts) - 1:
            current = getattr(target, part)
            setattr(target, part, _coerce(current, value, dotted, source))
        else:
            target = getattr(target, part)
            if not dataclasses.is_dataclass(target):
                raise ConfigError(f"{source}: {'.'.join(parts[:i + 1])!r} is a value, not a section")


def _coerce(current: Any, value: Any, key: str, source: str) -> Any:
    if dataclasses.is_dataclass(current):
        raise ConfigError(f"{source}: {key!r} is a section; set its keys, e.g. {key}.<name>")
    kind = type(current)
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
    elif kind in (int, float):
        exact = isinstance(value, int) or (kind is float and isinstance(value, float))
        if exact and not isinstance(value, bool):
            return kind(value)
        if isinstance(value, str):
            try:
                return kind(value)
            except ValueError:
                pass
    elif kind is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{source}: {key!r} must be a {kind.__name__} (like {current!r}), got {value!r}")


def apply_overrides(cfg: DistillConfig, overrides: dict[str, Any], source: str = "override") -> DistillConfig:
    """Set dotted keys (``{"inner.steps": 20}``) or nested dicts on ``cfg`` in place."""
    def walk(prefix: str, d: dict[str, Any]) -> None:
        for k, v in d.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict):
                walk(key + ".", v)
            else:
                _set(cfg, key, v, source)

    walk("", overrides)
    return cfg


def load_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"configuration file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"configuration file {path} is not valid TOML: {exc}") from None


# Presets: the settings of each named preset, per dataset family and budget. ``paper``
# is METHOD.md's reference protocol (for a GPU); ``cpu`` aims at the best quality in
# about 30 minutes on 2 cores; ``cpu-quick`` at a few minutes (README, CI).
ZCA_DATASETS = ("cifar10", "cifar100")  # whitened in the reference protocol

# Defaults that suit the data, applied before the preset (a preset's own choice wins): a
# horizontally flipped digit is another digit or none, so digit datasets rotate only, in
# the inner loop, the real outer batch and validation training alike. (Clothes, objects
# and scenes stay the same class when flipped: the default ``flip_rotate`` holds there.)
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    name: {"inner.augment": "rotate", "evaluation.augment": "rotate"} for name in ("mnist", "svhn")
}

PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "inner": {"width": 128, "steps": 150, "n_per_class": 32, "lr": 0.01, "momentum": 0.9},
        "outer": {"iterations": 500_000, "lr": 0.1, "momentum": 0.5, "clip": 2.0, "real_per_class": 64},
        "evaluation": {"every": 200, "width": 128, "epochs": 300, "runs": 1},
        "checkpoint_every": 200,
    },
    # chosen by bench/tune.py on MNIST's validation split (docs/RESULTS.md): T = 80 beat
    # T = 10/20/40, learned labels and a larger outer lr at an equal wall time; 75
    # iterations keep the distillation under 30 minutes on one core (docs/RESULTS.md). Kept
    # against the model pool: in 600 s on the validation split these unrolls reached 93.07%,
    # the pool 92.05% (bench/curves.py --preset cpu; docs/RESULTS.md, "Time to quality").
    # 128 real images per class in the outer loss, not 32: ahead at all 3 slices of 600 s on
    # both datasets' validation split (at 600 s MNIST 93.55% vs 93.24%, Fashion-MNIST 78.52%
    # vs 76.77%; docs/RESULTS.md, "Time to quality: more real images in the outer loss");
    # 256 was level on Fashion-MNIST at 900 s (80.60 against 80.80%; "256 real images").
    # 120 outer steps, not 75: on the validation split the memory still rose after 75 (at
    # 75 / 125 / 150 steps, Fashion-MNIST 79.75 / 81.41 / 81.93%, MNIST 94.50 / 94.80 /
    # 95.08%), and two threads run an outer step 1.46x faster than one (docs/SCALING.md),
    # so 120 fit in 30 minutes on 2 cores (docs/RESULTS.md, "More outer steps"); 200 since
    # the inner batch fell to 5 per class (below).
    # K = 16 bases at 14 x 14 and outer lr 0.01 (chosen on MNIST) kept on Fashion-MNIST: in
    # 900 s K = 8 (at 14 x 14 or 28 x 28) fell 5-6 points behind, K = 32 and lr 0.02 were level,
    # lr 0.005 behind (validation split, width 128; docs/RESULTS.md, "the number of bases").
    # 5 recalled examples per class per inner step, not 10: cheaper outer steps, and in 900 s
    # on the validation split (width 128) the memory reached 81.80% against 80.63% on
    # Fashion-MNIST (83 against 46 steps) and 95.03% against 94.33% on MNIST after about
    # 450 s; 20 per class fell behind (77.57%), 3 was level with 5 (docs/RESULTS.md,
    # "recalled examples per inner step"). 200 outer steps took 1 586 s (Fashion-MNIST) and
    # 1 507 s (MNIST), each alone at two threads, validation evaluations included
    # (docs/RESULTS.md, "Targets").
    # No augmentation and a constant outer rate kept: flip_rotate (Fashion-MNIST) and a cosine
    # decay did not help on the validation split (docs/RESULTS.md, "augmentation on
    # Fashion-MNIST", "cosine decay"). Inner lr 0.01 kept: 0.03 and 0.005 were behind on both
    # datasets at both slices of 900 s (at 900 s Fashion-MNIST 78.82 / 81.03 against 81.52%,
    # MNIST 94.92 / 93.72 against 95.37%; docs/RESULTS.md, "the inner learning rate").
    # Learned labels kept off: at 900 s on the validation split (width 128) level on
    # Fashion-MNIST (81.45 against 81.52%) and 0.19 behind on MNIST (95.18 against 95.37%),
    # from a start 3.6 points lower (18 slots a class instead of 29; docs/RESULTS.md,
    # "learned labels at the `cpu` preset"); at budget 10 on Fashion-MNIST 0.47 behind.
    # No feature-regression phase (outer.regression_steps=0): 480 regression steps before the
    # unrolls were +0.80 at 900 s on Fashion-MNIST (82.32 against 81.52%) and -0.34 on MNIST
    # (95.03 against 95.37%), one run each (docs/RESULTS.md, "Feature regression first").
    # No ZCA whitening: zca=0.1 on Fashion-MNIST ended 0.89 below at 900 s (80.13 against
    # 81.02%, validation, width 128, one run each) from a start 17 points lower
    # (docs/RESULTS.md, "ZCA whitening on Fashion-MNIST").
    # No model pool: on Fashion-MNIST pools of 4 unrolling W = 20 / 40 / 80 steps (T_max 300
    # / 300 / 320) ended 80.27 to 81.52% at 900 s against 81.02% for these fresh unrolls
    # (validation, width 128, one run each): W = 20 led at 450 s and then stalled
    # (docs/RESULTS.md, "a model pool at the `cpu` preset").
    "cpu": {
        "inner": {"width": 32, "steps": 80, "n_per_class": 5, "augment": "none"},
        "outer": {"iterations": 200, "optimizer": "adam", "lr": 0.01, "real_per_class": 128},
        "evaluation": {"every": 25, "width": 32, "epochs": 200, "runs": 1, "augment": "none"},
        "checkpoint_every": 5,
    },
    # a model pool (docs/CONFIG.md): on MNIST's validation split at budget 1, 30 outer steps of
    # a 4-network pool unrolling 20 of 200 steps at outer lr 0.003 took the memory from its
    # starting point's 86.9% to 90.6%, where the fresh 10-step unrolls of the preset before
    # (lr 0.01, 40 steps) left it at 80.5% (docs/RESULTS.md, "Model pool")
    "cpu-quick": {
        "inner": {"width": 32, "steps": 10, "n_per_class": 10, "augment": "none"},
        "outer": {"iterations": 40, "optimizer": "adam", "lr": 0.003, "real_per_class": 20,
                  "pool_size": 4, "pool_unroll": 20, "pool_max_steps": 200},
        "evaluation": {"every": 0, "width": 32, "epochs": 100, "runs": 1, "augment": "none"},
        "checkpoint_every": 10,
    },
}


# A preset's settings for one dataset, applied over the preset (and under its budget-10
# settings, the TOML, flags and --set). The `cpu` preset's evaluator rotates and rescales
# MNIST's recalled digits while it trains, at every budget (its other datasets keep
# "none"). Chosen on the validation split (docs/RESULTS.md, "The evaluator's
# augmentation at budget 1"): first rotations against none, side by side in 900 s of the
# preset's distillation (95.28 / 95.22% at 450 / 900 s against 94.73 / 94.90%, width 128,
# one run each; rotating the inner loop as well added nothing); then, on one distilled
# memory, eight augmentations and chains (bench/eval_augment.py), where rotate+scale led
# at width 32 (95.20 against 94.78% for rotate, 2 runs) and was level with rotate at
# width 128 (96.05 against 95.86%, 2 runs; within the runs' spread). On Fashion-MNIST no
# augmentation or chain beat none. At budget 10 (MNIST, the preset's starting point, which
# its distillation leaves level; width 32, 2 runs) rotate+scale led too: 96.51% against
# 95.90 (none), 96.26 (rotate), 96.17 (scale); docs/RESULTS.md, "... at budget 10".
#
# On MNIST the `cpu` preset also delivers the moving average of its memory
# (outer.average=0.95; the last iterate is written beside it, .last.safetensors), at budget 1
# only (BUDGET10_SETTINGS turns it off: not measured there). Chosen on the validation split
# at the targets' evaluator (width 128, 300 epochs, 4 runs with the same seeds): 96.47 against
# 96.38% for the last iterate of the same run, ahead in all 4 paired runs (+0.04 to +0.15);
# at the run's own width-32 evaluator the two were level (95.73 against 95.69%, 3 runs).
# Not on Fashion-MNIST: there the average ended 0.38 behind its last iterate on the validation
# split at width 128 (82.17 against 82.55%, 2 paired runs; docs/RESULTS.md, "The memory's moving average").
# 225 outer steps on MNIST at budget 1, not 200: the same averaged run taken on to 225 and 250
# steps (--resume) scored 96.56 and 96.60% against 96.47% at 200 (validation, width 128, 4
# runs with the same seeds; 225 ahead or level in all 4 paired runs); 225 fits the 30 minutes
# on 2 cores, 250 would not (docs/RESULTS.md, "More outer steps on MNIST with the average").
# BUDGET10_SETTINGS set their own step count (Fashion-MNIST: below).
# The targets cell's run of these 225 steps took 1 804 s with a validation evaluation every
# 25 steps (9 after the start's, 281 s), so MNIST evaluates every 75 steps (3 after the
# start's at budget 1: about 1 620 s; at budget 10's 75 steps, once at the end); evaluations
# never change the memory (tests/test_distill.py).
#
# On Fashion-MNIST the `cpu` preset starts with 480 feature-regression steps (a kernel ridge
# regression on pool networks' features, no unroll: 0.28 s a step at 2 threads) and then
# unrolls as before, 700 outer steps in all (220 unrolls, not 200). Chosen on the validation
# split against the preset as it was (the targets cell's memory: 200 unrolls, 1 730 s):
# 480 + 160 steps, in 1 322 s at 2 threads, scored 83.10% against 82.55% at the targets'
# evaluator (width 128, 300 epochs, 2 runs with the same seeds: +0.40, +0.70) and 82.78%
# against 82.10% at the run's own (width 32); taken on to 480 + 220 (--resume), 83.38%
# (+0.98, +0.67 paired with the preset before) in about 1 700 s in all, still inside the 30
# minutes (docs/RESULTS.md, "Feature regression first, the whole run"). One seed. Evaluated
# every 175 steps. On the test split (targets cell, 5 runs, 1 661 s end to end at 2 threads)
# 83.07% against 82.44% (5 runs) before.
# Since 2026-12-06, 750 steps (270 unrolls): the engine got faster, and the whole run took
# 1 450 s at 2 threads; validation (width 128, 2 runs) 83.91% against 83.38% for 700 steps,
# test (5 runs) 83.44% against 83.07% (docs/RESULTS.md, "More unrolls in the same 30 minutes");
# the targets cell, the preset's own run on the AMD EPYC machine (1 787 s), 83.21% (5 runs).
# Evaluated every 250 steps since 2026-12-06 (was 175: 2 evaluations fewer, about 37 s on the
# AMD EPYC machine, where an unroll takes 5.7 s against 4.7 s on the Intel Xeon and the
# 750 steps came within about a minute of the 30). 800 steps: 2 000 s there, and 0.40 below
# 750 on the validation split (docs/RESULTS.md, "More unrolls in the same 30 minutes").
# Not at budget 10 (BUDGET10_SETTINGS: 300 regression steps left Fashion-MNIST 1.3 behind
# there) nor on MNIST (-0.34 at 900 s).
# All of these were chosen with ``bases`` memories: an ``images`` memory (a `memdistill distill
# --memory images` run, the continual learner's `images` task memories) gets the preset alone.
PRESET_DATASET_SETTINGS: dict[tuple[str, str], dict[str, Any]] = {
    ("cpu", "mnist"): {"evaluation.augment": "rotate+scale", "outer.average": 0.95, "outer.iterations": 225,
                       "evaluation.every": 75},
    ("cpu", "fashion-mnist"): {"outer.regression_steps": 480, "outer.iterations": 750, "evaluation.every": 250},
}


# Budget >= 10 (470 recalled slots per class with K = 16): chosen by bench/tune.py on MNIST's
# validation split at budget 10 (docs/RESULTS.md). K = 16 puts every slot in a
# 16-dimensional image space; with K = 64 the starting point alone (principal directions,
# least-squares addressing) scored 95.67% against 83.53% for the old distilled K = 16
# (and K = 40, 96, 128 at 14 x 14 or K = 32, 48 at 28 x 28 started lower than K = 64).
# Short unrolls (T = 10 or 40) make the memory worse than its start: short-horizon bias, not
# noise (docs/RESULTS.md, "Budget 10"; bench/horizon.py). So the unrolls are long and
# truncated (RaT-BPTT): a fresh network trained a uniform 20-300 steps on the memory,
# back-propagating the last 20, Adam at 0.003. On MNIST's validation split 20 such steps
# ended +0.17 / +0.07 / +0.28 points above the start (seeds 0 / 1 / 2; the T = 40 setting
# before: -0.1 after 10 steps, -0.69 after 20): level with the start, not a gain worth the
# name; SGD, a larger real batch, 60 steps, Adam 0.01 or distribution matching did no
# better. On Fashion-MNIST it learns: +3.67 / +1.74 / +3.56 in 20 steps (seeds 0 / 1 / 2), +5.27 with
# the cpu preset's 75 (docs/RESULTS.md, "Budget 10").
# At budget 10 the cpu preset keeps 32 real images per class in the outer loss (its budget-1
# choice of 128 was measured at budget 1 only; at budget 10, 100 did no better than 20 with
# the cpu-quick settings on MNIST, docs/RESULTS.md "Budget 10"), and 75 outer steps: taken
# to 125 on Fashion-MNIST's validation split the memory was flat after 50 (83.01 / 82.72 /
# 83.14 / 81.88% at 50 / 75 / 100 / 125, two-run spread up to 1.77; docs/RESULTS.md, "More
# outer steps: budget 10"), so budget 1's 120 are not carried over.
# No feature-regression phase at budget 10 either: 300 regression steps first left
# Fashion-MNIST at 83.00% after 900 s against 84.30% for these unrolls, and MNIST *below* its
# start (96.08 against 96.60%; validation split, width 128, one run each; docs/RESULTS.md,
# "Feature regression first, budget 10").
# Fashion-MNIST's plateau near 83% (validation, width 32) after about 50 outer steps is not
# noise the moving average (outer.average=0.95) or 128 real images per class remove: level,
# and 0.9-1.3 behind, after 1 200 s (docs/RESULTS.md, "The plateau at budget 10").
# outer.average = 0 and outer.regression_steps = 0 at budget 10 undo the cpu preset's MNIST
# averaging and Fashion-MNIST regression phase (measured at budget 1 only); being keys here,
# they are also among base_schedule's flags, so the continual learner's task memories and
# bench/tune.py run without averaging or regression, as before, on every dataset (continual
# tasks of 10 or more classes at budget 10 take these settings themselves: task_schedule).
BUDGET10_SETTINGS: dict[str, dict[str, Any]] = {
    "cpu-quick": {"memory.num_bases": 64, "inner.steps": 300, "outer.window": 20, "outer.random_truncation": True,
                  "outer.lr": 0.003, "outer.iterations": 20, "outer.pool_size": 0},
    "cpu": {"memory.num_bases": 64, "inner.steps": 300, "outer.window": 20, "outer.random_truncation": True,
            "outer.lr": 0.003, "outer.real_per_class": 32, "outer.iterations": 75, "outer.average": 0.0,
            "outer.regression_steps": 0},
}


def base_schedule(preset: str) -> dict[str, Any]:
    """The preset's own values of the keys its :data:`BUDGET10_SETTINGS` change (``{}``
    when it has none): what a budget-1 run of the preset uses.

    A caller that sizes its memories itself at every budget (the continual learner's task
    memories of at most 16 bases, :func:`memdistill.continual.strategies.task_schedule`) or
    that chooses these settings (``bench/tune.py``) passes them as ``flags`` to
    :func:`resolve`, where they win over the budget settings."""
    return preset_values(preset, BUDGET10_SETTINGS.get(preset, {}))


def preset_values(preset: str, keys: Iterable[str]) -> dict[str, Any]:
    """``{key: value}``: what the preset itself (at budget 1, before any override) gives
    each dotted key (``"evaluation.epochs"``)."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; valid: {', '.join(PRESETS)}")
    return {key: _preset_value(preset, key) for key in keys}


def _preset_value(preset: str, dotted: str) -> Any:
    """The preset's value of ``dotted``, else the option's default (read off the
    dataclass fields: no configuration is built)."""
    found = _lookup(PRESETS[preset], dotted)
    if found is not None:  # no preset sets an option to None
        return found
    section: Any = DistillConfig
    for part in dotted.split("."):
        fld = {f.name: f for f in dataclasses.fields(section)}[part]
        if fld.default is not dataclasses.MISSING:
            return fld.default
        section = fld.default_factory()


def resolve(
    preset: str,
    dataset: str,
    budget_ipc: float = 1.0,
    *,
    kind: str | None = None,
    toml: str | Path | Mapping[str, Any] | None = None,
    flags: Mapping[str, Any] | None = None,
    sets: Iterable[tuple[str, Any]] = (),
    flags_source: str = "command line",
    toml_source: str = "TOML",
    sets_source: str = "--set",
) -> DistillConfig:
    """The validated configuration of a distillation run: the one place it is assembled.

    The memory kind is decided first: the last of ``sets``, ``flags``, ``toml`` that sets
    ``memory.kind``, else ``kind``, else ``"bases"``. Then, each step overriding the last:

    1. the defaults of :class:`DistillConfig`, the dataset's (``zca = 0.1`` on CIFAR,
       :data:`DATASET_DEFAULTS`), then the preset (:data:`PRESETS`) with its settings
       for the dataset (:data:`PRESET_DATASET_SETTINGS`, for a ``bases`` memory: they were
       chosen for that kind alone);
    2. at ``budget_ipc >= 10`` (not ``paper``): 20 recalled examples per class per inner
       step and, for a ``bases`` memory, the preset's :data:`BUDGET10_SETTINGS`;
    3. ``toml``: a TOML file's path or its parsed tree;
    4. ``flags``: dotted keys (``{"inner.steps": 20}``); ``None`` values are skipped
       (flags the user did not give);
    5. ``sets``: ``(key, value)`` pairs in order (``--set key=value``, see :func:`parse_sets`).

    ``dataset`` and ``budget_ipc`` are then set from the arguments and the result is
    validated once. Unknown keys, values of the wrong type and invalid settings raise
    :class:`ConfigError` naming their source (``flags_source``, ``sets_source``, the TOML path or
    ``toml_source`` for a parsed tree).
    """
    if isinstance(toml, (str, Path)):
        toml_source, toml = str(toml), load_toml(toml)
    else:
        toml = dict(toml or {})
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    sets = list(sets)
    cfg = DistillConfig(dataset=dataset, memory=MemoryConfig(kind=kind or "bases"))
    kind = _decided_kind(kind, toml, flags, sets)
    if dataset in ZCA_DATASETS:
        cfg.zca = 0.1
    apply_overrides(cfg, DATASET_DEFAULTS.get(dataset, {}), source=f"defaults of {dataset!r}")
    _preset_layers(preset, cfg, budget_ipc, kind)
    apply_overrides(cfg, toml, source=toml_source)
    apply_overrides(cfg, flags, source=flags_source)
    for key, value in sets:
        apply_overrides(cfg, {key: value}, source=sets_source)
    cfg.dataset = dataset
    cfg.memory.budget_ipc = float(budget_ipc)
    return cfg.validate()


def from_record(record: Mapping[str, Any]) -> DistillConfig:
    """The configuration a run recorded (:func:`config_to_dict`, e.g. a memory file's
    ``config``), rebuilt through :func:`resolve`: every recorded key is applied over the
    ``paper`` preset, so the result equals the recording (options added since it was
    written take the ``paper`` preset's value)."""
    try:
        dataset, budget = record["dataset"], record["memory"]["budget_ipc"]
    except (KeyError, TypeError):
        raise ConfigError("the recorded configuration names no dataset or memory.budget_ipc") from None
    return resolve("paper", dataset, budget, toml=record, toml_source="recorded configuration")


def parse_sets(items: Iterable[str] | None, example: str = "inner.lr=0.02") -> list[tuple[str, str]]:
    """``["inner.lr=0.02", ...]`` (``--set`` arguments) as ``[("inner.lr", "0.02"), ...]``,
    in order, key and value stripped; values stay strings (:func:`apply_overrides` coerces)."""
    pairs = []
    for item in items or ():
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE (e.g. {example}), got {item!r}")
        key, value = item.split("=", 1)
        pairs.append((key.strip(), value.strip()))
    return pairs


def _preset_layers(preset: str, cfg: DistillConfig, budget_ipc: float, kind: str) -> DistillConfig:
    """Steps 1-2 of :func:`resolve` on ``cfg``: the preset, then its budget settings."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; valid: {', '.join(PRESETS)}")
    apply_overrides(cfg, PRESETS[preset], source=f"preset {preset!r}")
    if kind == "bases":  # chosen for ``bases`` memories only, like BUDGET10_SETTINGS
        apply_overrides(cfg, PRESET_DATASET_SETTINGS.get((preset, cfg.dataset), {}),
                        source=f"preset {preset!r} on {cfg.dataset!r}")
    if budget_ipc >= 10 and preset != "paper":
        # more recalled slots per class: draw more of them per inner step
        apply_overrides(cfg, {"inner.n_per_class": 20}, source=f"preset {preset!r}")
        if kind == "bases" and preset in BUDGET10_SETTINGS:  # tuned for ``bases`` memories only
            apply_overrides(cfg, BUDGET10_SETTINGS[preset], source=f"preset {preset!r} at budget >= 10")
    return cfg


def _decided_kind(kind: str | None, toml: Mapping[str, Any], flags: Mapping[str, Any],
                  sets: list[tuple[str, Any]]) -> Any:
    """The memory kind the layers of :func:`resolve` end with (the last one naming it)."""
    for key, value in reversed(sets):
        if key == "memory.kind":
            return value
    for layer in (flags, toml):
        found = _lookup(layer, "memory.kind")
        if found is not None:
            return found
    return kind or "bases"


def _lookup(tree: Mapping[str, Any], dotted: str) -> Any:
    """The value of ``dotted`` in an override tree of nested dicts and/or dotted keys."""
    if dotted in tree:
        return tree[dotted]
    head, _, rest = dotted.partition(".")
    sub = tree.get(head)
    return _lookup(sub, rest) if rest and isinstance(sub, Mapping) else None
