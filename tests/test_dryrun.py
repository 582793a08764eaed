"""The dry-run of every recipe under configs/: each config file is found by a glob, so a new one is covered.

The full-size models run (ViT-B, CAFormer-M36, ResNet-50 with their real heads); on the 2-core CI machine only
the input size is shrunk, through the overrides a user would pass (``CI_PRETRAIN_SIZES``, ``CI_MM_SIZES``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import REPO

from bam_dense.engine.dryrun import SIZE_KEYS, dry_run

CONFIGS = REPO / "configs"
PRETRAIN = sorted(CONFIGS.glob("pretrain/*.yaml"))
MMSEG = sorted(CONFIGS.glob("mmseg/**/*.py"))
MMDET = sorted(CONFIGS.glob("mmdet/**/*.py"))
DETECTRON2 = sorted(p for p in CONFIGS.glob("detectron2/*") if p.suffix in (".yaml", ".py"))
BENCH = sorted(CONFIGS.glob("bench/*.yaml"))

# What a user on a laptop passes to keep a 224-px recipe quick (--dry-run-scale): 224 -> 64-px and 96 -> 32-px
# crops (a 4x4 / 2x2 ViT grid); 512 -> 128 px for segmentation, 800 -> 192 (1333 -> 320) for COCO R50.
CI_SCALE = 0.25
CI_LSJ_SCALE = 0.125  # ViTDet's 1024-px large-scale jitter -> 128 px


def _ids(paths):
    return [str(p.relative_to(CONFIGS)) for p in paths]


def test_every_config_file_is_enumerated_by_a_dry_run_test():
    covered = set(PRETRAIN) | set(MMSEG) | set(MMDET) | set(DETECTRON2) | set(BENCH)
    files = {p for p in CONFIGS.rglob("*") if p.is_file() and p.suffix in (".yaml", ".yml", ".py")}
    assert files - covered == set(), "config files no dry-run test enumerates"
    assert len(PRETRAIN) >= 18 and MMSEG and MMDET and BENCH


@pytest.mark.slow
@pytest.mark.parametrize("config", PRETRAIN, ids=_ids(PRETRAIN))
def test_pretraining_recipe_dry_run(config, tmp_path):
    from bam_dense.core.checkpoint import load_own
    from bam_dense.core.config import load_config
    from bam_dense.models.backbones import build_backbone

    full = load_config(config)
    scale = CI_SCALE if full.data.views.global_size > 64 else None  # the tiny configs already crop 32 px
    result = dry_run(config, [f"run.output_dir={tmp_path}"], steps=1, eval_images=8, scale=scale)
    try:
        assert result.steps == 1 and result.first_loss is not None and torch.isfinite(torch.tensor(result.first_loss))
        assert result.seconds_per_step > 0 and result.peak_memory_mb > 0
        # Only sizes (and where outputs and data go) differ from the recipe.
        assert set(result.changed) <= SIZE_KEYS | {"run.output_dir"}, set(result.changed) - SIZE_KEYS
        if full.eval.knn.enabled:
            assert 0.0 <= result.knn_top1 <= 1.0 and result.knn_images[1] > 0
        state = load_own(result.checkpoint, map_location="cpu")
        assert state["arch"] == full.model.arch and state["model_kwargs"] == full.model.kwargs
        backbone = {k[len("backbone."):]: v for k, v in state["student"].items() if k.startswith("backbone.")}
        reference = build_backbone(full.model).state_dict()
        assert {k: tuple(v.shape) for k, v in backbone.items()} == {k: tuple(v.shape) for k, v in reference.items()}
        report = json.loads((Path(result.output_dir) / "dry_run.json").read_text())
        assert report["steps"] == 1
        if full.data.path:
            assert "data.path" in result.changed  # /datasets/imagenet is absent here: synthetic images in its layout
            assert (Path(result.changed["data.path"][1]) / "train").is_dir()
    finally:
        shutil.rmtree(tmp_path / "dry-run", ignore_errors=True)  # ViT-B checkpoints are ~2 GB
