"""FLOPs of one training step, and model FLOP utilisation (MFU) against the device's peak.

The engine counts once, on the first batch, with torch's ``FlopCounterMode`` (matmuls, convolutions and
attention: the operations that bound a step), over everything a step computes: the student's forward and
backward, the teacher's forward and the loss. Achieved TFLOP/s = GFLOP per image x images/s; MFU divides it
by the peak of the devices the run uses.
"""

from __future__ import annotations

import torch

# Dense bf16/fp16 tensor-core peaks in TFLOP/s (no sparsity), from the vendors' datasheets. Matched as
# substrings of torch.cuda.get_device_name(), longest first; `run.peak_tflops` overrides.
PEAK_TFLOPS: dict[str, float] = {
    "H200": 989.4,
    "H100 PCIe": 756.0,
    "H100": 989.4,
    "GH200": 989.4,
    "B200": 2250.0,
    "A100": 312.0,
    "A800": 312.0,
    "L40S": 362.1,
    "L40": 181.0,
    "L4": 121.0,
    "A6000": 154.8,
    "A40": 149.7,
    "A10": 125.0,
    "RTX 4090": 165.2,
    "RTX 3090": 71.0,
    "V100": 125.0,
    "T4": 65.0,
}


def device_peak_tflops(device: torch.device, override: float | None = None) -> float | None:
    """The bf16 peak of ``device`` (None for the CPU or an unknown GPU, unless ``override`` is given)."""
    if override is not None:
        return float(override)
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key in sorted(PEAK_TFLOPS, key=len, reverse=True):
        if key in name:
            return PEAK_TFLOPS[key]
    return None


def count_flops(step) -> int:
    """Total floating-point operations of ``step()`` (a callable running forward and backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return int(counter.get_total_flops())


def mfu(gflop_per_image: float, images_per_s: float, peak_tflops_per_device: float | None, devices: int) -> float | None:
    """Achieved over peak FLOP/s (None without a peak)."""
    if not peak_tflops_per_device:
        return None
    return gflop_per_image * images_per_s / 1e3 / (peak_tflops_per_device * devices)
