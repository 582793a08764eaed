"""Checkpoints that are never half-written, and loading that never runs code from a file.

Writes go through :func:`bam_dense.core.atomic.atomic_write` (temporary file, fsync, rename), so a crash at any
moment leaves either the previous file or the new one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from bam_dense.core.atomic import atomic_write


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` through :func:`atomic_write`."""
    return atomic_write(path, lambda fh: torch.save(obj, fh))


def load_own(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """Load a checkpoint this project wrote (tensors, numbers, strings, lists, dicts only)."""
    return torch.load(path, map_location=map_location, weights_only=True)
