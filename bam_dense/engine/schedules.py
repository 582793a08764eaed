"""Per-iteration schedules: learning rate, weight decay, teacher momentum.

All are pure functions of the global step, so a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import math


def cosine(step: int, total: int, start: float, end: float) -> float:
    """Half-cosine from ``start`` (step 0) to ``end`` (step ``total``); ``end`` afterwards."""
    if total <= 0 or step >= total:
        return end
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * step / total))


def warmup_cosine(step: int, total: int, warmup: int, peak: float, final: float, warmup_start: float = 0.0) -> float:
    """Linear warm-up from ``warmup_start`` to ``peak`` over ``warmup`` steps, then cosine to ``final``."""
    if step < warmup:
        return warmup_start + (peak - warmup_start) * step / warmup
    return cosine(step - warmup, total - warmup, peak, final)


def peak_lr(base_lr: float, global_batch: int, batch_scaling: int | None) -> float:
    """The linear scaling rule: ``base_lr * global_batch / batch_scaling`` (``base_lr`` if scaling is None)."""
    return base_lr if batch_scaling is None else base_lr * global_batch / batch_scaling
