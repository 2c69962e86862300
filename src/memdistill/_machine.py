"""A short description of the machine, recorded beside every result."""

from __future__ import annotations

import platform
from pathlib import Path

import torch

__all__ = ["machine_info", "describe_machine"]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, object]:
    info: dict[str, object] = {
        "cpu": _cpu_model(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def describe_machine() -> str:
    i = machine_info()
    gpu = f", GPU {i['gpu']}" if "gpu" in i else ""
    return f"{i['cpu']}, {i['torch_threads']} torch threads{gpu}, torch {i['torch']}, Python {i['python']}"
