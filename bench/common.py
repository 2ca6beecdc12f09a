"""What the benchmark scripts share: the machine's name as tables give it, the accelerators' peaks and
model FLOP utilisation, torchvision's models."""

from __future__ import annotations

import os
import platform
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# dense bf16 tensor-core peaks (TFLOP/s) from the vendors' data sheets, for model FLOP utilisation
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def machine(device: str) -> str:
    """The GPU's name, or the CPU's model and core count."""
    if device == "cuda":
        import torch

        return torch.cuda.get_device_name()
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores"


def peak_tflops(name: str) -> float | None:
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def mfu(macs: int, batch: int, s_per_iter: float, peak: float | None) -> float | None:
    """Model FLOP utilisation of a training step: 6 x MACs x batch FLOPs (forward 2 x MACs, backward
    twice that) over the peak, or None where the peak is unknown."""
    return 6 * macs * batch / s_per_iter / (peak * 1e12) if peak else None


def torchvision_model(name: str) -> torch.nn.Module:
    import torchvision

    return getattr(torchvision.models, name)(weights=None)
