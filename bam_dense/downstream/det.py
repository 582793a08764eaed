"""``bam-dense det train`` / ``det test``: MMDetection fine-tuning from a pretrained backbone.

The same guarantees as segmentation (on-the-fly conversion with a coverage report, the pretrained-weight
check before iteration 1, tensor-only checkpoints); ``det test`` writes ``metrics.json`` with box and mask
AP, AP50, AP75, APs/m/l, the config, the checkpoint and its SHA-256.
"""

from __future__ import annotations

import os
from pathlib import Path

from bam_dense.downstream.mm_common import (
    DET_TARGETS,
    build_runner,
    fine_tune,
    load_config,
    prepare_test,
    resolved_config,
    write_metrics,
)

COCO_KEYS = ("mAP", "mAP_50", "mAP_75", "mAP_s", "mAP_m", "mAP_l")


def _coco_root(cfg, data_root: str | None) -> None:
    """``--data-root``: datasets and the COCO evaluators' annotation files under ``data_root``."""
    if not data_root:
        return
    from bam_dense.downstream.mm_common import set_data_root

    set_data_root(cfg, data_root)
    for name, loader in (("val_evaluator", "val_dataloader"), ("test_evaluator", "test_dataloader")):
        ev = cfg.get(name)
        if isinstance(ev, dict) and "ann_file" in ev:
            ev["ann_file"] = os.path.join(data_root, cfg[loader]["dataset"]["ann_file"])


def _runner(cfg):
    import bam_dense.downstream.mmdet_modules  # noqa: F401  (backbone, neck, constructor, hooks registered)

    return build_runner(cfg)


def train(config: str, checkpoint: str, work_dir: str | None = None, cfg_options: list[str] | None = None,
          amp: bool = False, resume: bool = False, launcher: str = "none", data_root: str | None = None,
          trust_source: bool = False):
    cfg = load_config(config, cfg_options or [], work_dir, launcher)
    _coco_root(cfg, data_root)
    return fine_tune(cfg, checkpoint, DET_TARGETS, amp, resume, trust_source, _runner)


def test(config: str, checkpoint: str, work_dir: str | None = None, cfg_options: list[str] | None = None,
         out: str | None = None, launcher: str = "none", data_root: str | None = None) -> dict:
    cfg = load_config(config, cfg_options or [], work_dir, launcher)
    _coco_root(cfg, data_root)
    checkpoint = prepare_test(cfg, checkpoint)
    evaluator = cfg.get("test_evaluator")
    prefix = Path(cfg.work_dir) / "detections"
    if isinstance(evaluator, dict) and "CocoMetric" in str(evaluator.get("type", "")) and not evaluator.get("outfile_prefix"):
        evaluator["outfile_prefix"] = str(prefix)  # detections.bbox.json: per-image boxes for bootstrap intervals
    runner = _runner(cfg)
    metrics = runner.test()
    from mmengine.dist import is_main_process

    if is_main_process():
        summary = {}
        for kind in ("bbox", "segm"):
            for key in COCO_KEYS:
                value = metrics.get(f"coco/{kind}_{key}")
                if value is not None:
                    summary[f"{kind}_{key.replace('mAP', 'AP')}"] = float(value) * 100.0
        path = Path(out) if out else Path(cfg.work_dir) / "metrics.json"
        extra = {"dataset": cfg.test_dataloader.dataset.get("type", ""), "ap_scale": "percent",
                 "resolved_config": resolved_config(cfg)}
        if isinstance(evaluator, dict) and evaluator.get("outfile_prefix"):
            extra["detections"] = f"{evaluator['outfile_prefix']}.bbox.json"
            extra["ann_file"] = evaluator.get("ann_file")
        write_metrics(path, "instance_segmentation", summary, config, checkpoint, extra)
        print(f"[bam-dense] COCO: box AP {summary.get('bbox_AP', float('nan')):.2f}, mask AP "
              f"{summary.get('segm_AP', float('nan')):.2f} -> {path}")
    return metrics
