"""``bam-dense seg train`` / ``seg test``: MMSegmentation fine-tuning from a pretrained backbone.

Training converts the checkpoint on the fly when needed (report saved in the work dir), checks before
iteration 1 that every backbone tensor loaded, and trains through mmseg's own Runner (single process, or
several through ``--launcher pytorch`` under torchrun / ``--launcher slurm`` under srun). Testing writes
``metrics.json`` (mIoU, mAcc, aAcc, per-class IoU, config, checkpoint and its SHA-256); a config with
``test_time_aug = True`` is tested through mmseg's multi-scale/flip TestTimeAug.
"""

from __future__ import annotations

import copy
from pathlib import Path

from bam_dense.core.errors import UserFacingError
from bam_dense.downstream.mm_common import (
    SEG_TARGETS,
    build_runner,
    fine_tune,
    load_config,
    prepare_test,
    resolved_config,
    write_metrics,
)


def with_test_time_aug(cfg):
    """A copy of ``cfg`` that tests through mmseg's TestTimeAug when the config sets ``test_time_aug = True``
    (what mmseg's ``tools/test.py --tta`` does: the test set read with ``tta_pipeline``, the model wrapped in
    ``tta_model``); ``cfg`` itself is returned otherwise. The caller's ``cfg`` stays as written, so the
    recorded config names the segmentor, not the wrapper."""
    if not cfg.get("test_time_aug"):
        return cfg
    for key in ("tta_pipeline", "tta_model"):
        if not cfg.get(key):
            raise UserFacingError(f"test_time_aug=True needs `{key}` in the config")
    cfg = copy.deepcopy(cfg)
    cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
    cfg.tta_model.module = cfg.model
    cfg.model = cfg.tta_model
    return cfg


def _runner(cfg, testing: bool = False):
    import bam_dense.downstream.mmseg_modules  # noqa: F401  (metric and hooks registered)

    return build_runner(with_test_time_aug(cfg) if testing else cfg)


def train(config: str, checkpoint: str, work_dir: str | None = None, cfg_options: list[str] | None = None,
          amp: bool = False, resume: bool = False, launcher: str = "none", data_root: str | None = None,
          trust_source: bool = False):
    """Fine-tune; returns the mmengine Runner after training."""
    cfg = load_config(config, cfg_options or [], work_dir, launcher, data_root)
    return fine_tune(cfg, checkpoint, SEG_TARGETS, amp, resume, trust_source, _runner)


def test(config: str, checkpoint: str, work_dir: str | None = None, cfg_options: list[str] | None = None,
         out: str | None = None, launcher: str = "none", data_root: str | None = None) -> dict:
    """Evaluate a fine-tuned model; writes and returns the metrics."""
    cfg = load_config(config, cfg_options or [], work_dir, launcher, data_root)
    checkpoint = prepare_test(cfg, checkpoint)
    runner = _runner(cfg, testing=True)
    metrics = runner.test()
    from mmengine.dist import is_main_process

    if is_main_process():
        per_class = next((m.per_class_iou for m in runner.test_evaluator.metrics if hasattr(m, "per_class_iou")), {})
        per_image = next((m.per_image for m in runner.test_evaluator.metrics if hasattr(m, "per_image")), {})
        summary = dict(metrics)
        dataset = cfg.test_dataloader.dataset.get("type", "")
        path = Path(out) if out else Path(cfg.work_dir) / "metrics.json"
        write_metrics(path, "semantic_segmentation", summary, config, checkpoint,
                      {"dataset": dataset, "per_class_iou": per_class, "num_classes": len(per_class), "per_image": per_image,
                       "resolved_config": resolved_config(cfg)})
        print(f"[bam-dense] {dataset}: mIoU {summary.get('mIoU')} mAcc {summary.get('mAcc')} aAcc {summary.get('aAcc')} -> {path}")
    return metrics
