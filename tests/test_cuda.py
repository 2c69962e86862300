"""The CUDA code path: the meta step on a GPU equals the CPU's, and a distillation with its
evaluation runs there end to end. Skipped without a CUDA device (``bench/gpu_check.py``
runs these on a GPU machine and records the counts)."""

from __future__ import annotations

import math

import pytest
import torch

from memdistill.config import resolve
from memdistill.data import ImageDataset
from memdistill.distill import Distiller

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

TINY = {
    "memory": {"num_bases": 4, "downsample": 4},
    "inner": {"width": 8, "steps": 3, "n_per_class": 2},
    "outer": {"iterations": 2, "real_per_class": 4},
    "evaluation": {"every": 0, "at_start": False, "width": 8, "epochs": 2},
}


def _digits(n: int = 300) -> ImageDataset:
    """MNIST-shaped random images in 10 classes (no files needed)."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 10
    images = (torch.rand(10, 1, 28, 28, generator=g)[labels] * 128
              + torch.rand(n, 1, 28, 28, generator=g) * 127).to(torch.uint8)
    return ImageDataset(name="digits", split="train", images=images, labels=labels,
                        classes=tuple(str(c) for c in range(10)), mean=(0.5,), std=(0.25,))


def _step(device: str, data: ImageDataset):
    d = Distiller(resolve("paper", "mnist", 1, flags=TINY, flags_source="test"), data, device=device)
    mem = d.new_memory()
    res = d.meta_step(mem, 0)
    return res.loss, [g.detach().cpu() for g in res.grads], [t.device.type for t in mem.tensors.values()]


@pytest.fixture
def no_tf32():
    """Full float32 products on the GPU while comparing with the CPU (TF32 rounds to 10 bits)."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_meta_step_on_cuda_equals_the_cpu(no_tf32):
    data = _digits()
    loss_cpu, grads_cpu, _ = _step("cpu", data)
    loss_gpu, grads_gpu, devices = _step("cuda", data)
    assert set(devices) == {"cuda"}
    assert loss_gpu == pytest.approx(loss_cpu, rel=1e-4)
    for a, b in zip(grads_gpu, grads_cpu):
        assert a.shape == b.shape
        assert float((a - b).norm()) <= 1e-3 * float(b.norm()) + 1e-7


def test_distillation_and_its_evaluation_run_on_cuda():
    d = Distiller(resolve("paper", "mnist", 1, flags=TINY, flags_source="test"), _digits(), device="cuda")
    res = d.run()
    assert res.iterations == 2 and res.skipped == 0
    assert all(t.device.type == "cuda" and bool(torch.isfinite(t).all()) for t in res.memory.tensors.values())
    assert all(math.isfinite(r["loss"]) for r in res.history)
    assert 0.0 <= res.last_eval["mean"] <= 1.0  # evaluated on the validation split, on the GPU
