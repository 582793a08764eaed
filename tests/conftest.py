"""Shared helpers: tiny configs and synthetic datasets sized for a 2-core CI machine."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable

# Two cores: keep torch from oversubscribing when tests start subprocesses.
os.environ.setdefault("OMP_NUM_THREADS", "2")


def tiny_pretrain_dict(out: Path, method_name: str = "bam", **sections) -> dict:
    """A pretraining config small enough for a test: a 2-block ViT on 16-px crops of synthetic images."""
    cfg = {
        "run": {"output_dir": str(out), "seed": 0, "log_every": 1, "checkpoint_every": 1000, "progress": False,
                "tensorboard": False},
        "data": {
            "batch_size_per_gpu": 8,
            "num_workers": 0,
            "synthetic": {"num_images": 32, "size": 32, "num_classes": 4, "seed": 0},
            "views": {"kind": "multicrop", "global_crops": 2, "global_size": 16, "local_crops": 2, "local_size": 8,
                      "global_scale": [0.4, 1.0], "local_scale": [0.1, 0.4], "blur_radius": [0.1, 0.3]},
        },
        "model": {"arch": "vit_small_patch16_224",
                  "kwargs": {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2}},
        "optim": {"name": "adamw", "epochs": 2, "lr": 1e-3, "warmup_epochs": 1, "weight_decay": 0.04,
                  "weight_decay_end": 0.1, "clip_grad": 3.0},
        "teacher": {"enabled": True, "momentum": 0.99},
        "method": {"name": method_name, "top_k": 4,
                   "projector": {"layers": 2, "hidden_dim": 32, "out_dim": 16, "bn": False, "bias": True, "act": "gelu"}},
    }
    for key, value in sections.items():
        section = cfg.setdefault(key, {})
        section.update(value)
    return cfg


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """Every synthetic layout, written once per test session."""
    from bam_dense.data import synthetic

    root = tmp_path_factory.mktemp("synthetic")
    for layout in ("imagenet", "ade20k", "voc", "coco", "davis"):
        synthetic.make(layout, root / layout, seed=0)
    return root
