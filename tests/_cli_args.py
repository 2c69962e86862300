"""Command lines several test files share."""

from __future__ import annotations


def tiny_distill_args(data_root, out) -> list[str]:
    """``memdistill distill`` of MNIST at budget 1 in seconds (the ``cpu-quick`` preset with
    2 iterations, width 8, 4 real images per class, a 1-epoch width-8 evaluation)."""
    return ["distill", "--dataset", "mnist", "--budget-ipc", "1", "--preset", "cpu-quick", "--root", str(data_root),
            "--iterations", "2", "--inner-steps", "2", "--set", "inner.width=8", "--set", "outer.real_per_class=4",
            "--set", "evaluation.epochs=1", "--set", "evaluation.width=8", "--out", str(out), "--no-progress"]
