"""Peak memory of this process, as the engine and the dry-runs report it."""

from __future__ import annotations

import torch


def peak_memory(device: torch.device | None = None) -> tuple[float, str]:
    """(MiB, what was measured): CUDA's max allocated on ``device`` (default: CUDA when available), else max RSS."""
    on_cuda = device.type == "cuda" if device is not None else torch.cuda.is_available()
    if on_cuda:
        return torch.cuda.max_memory_allocated(device) / 2**20, "torch.cuda.max_memory_allocated"
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process max RSS (getrusage)"
