"""MMSegmentation additions registered on import (configs list this module in ``custom_imports``)."""

from __future__ import annotations

import numpy as np
from mmseg.evaluation.metrics import IoUMetric
from mmseg.models.backbones import ResNet
from mmseg.models.backbones.resnet import BasicBlock
from mmseg.registry import METRICS, MODELS

import bam_dense.downstream.mm_hooks  # noqa: F401  (registers PretrainedWeightCheckHook)


@MODELS.register_module()
class ResNet10(ResNet):
    """mmseg's ResNet that also knows depth 10: one basic block per stage, the tiny ResNet of the ``*_tiny_cpu``
    pretraining configs (timm ``resnet18`` with ``layers: [1, 1, 1, 1]``; torchvision names, as ``ResNet``)."""

    arch_settings = {**ResNet.arch_settings, 10: (BasicBlock, (1, 1, 1, 1))}


@METRICS.register_module()
class IoUMetricWithClasses(IoUMetric):
    """mmseg's IoUMetric that also keeps each class's IoU (in %, like mIoU) in ``per_class_iou``.

    The per-class values stay out of the returned metrics so that logs keep one line of summary numbers;
    ``bam-dense seg test`` reads them from the evaluator for the metrics JSON (None for absent classes).
    ``per_image`` keeps each image's intersection and union per class (in the test loader's order), over the
    classes with a non-empty union: bootstrap intervals over the validation images are computed from them.
    """

    per_class_iou: dict[str, float | None] = {}
    per_image: dict = {}

    def compute_metrics(self, results: list) -> dict:
        metrics = super().compute_metrics(results)
        if results:
            inters = np.stack([np.asarray(r[0], dtype=np.int64) for r in results])
            unions = np.stack([np.asarray(r[1], dtype=np.int64) for r in results])
            classes = np.nonzero(unions.sum(0) > 0)[0]
            self.per_image = {"classes": classes.tolist(), "intersect": inters[:, classes].tolist(),
                              "union": unions[:, classes].tolist()}
            inter, union, pred, label = (sum(part) for part in zip(*results))
            per_class = self.total_area_to_metrics(inter, union, pred, label, ["mIoU"], self.nan_to_num, self.beta)["IoU"]
            self.per_class_iou = {
                name: (None if np.isnan(value) else float(np.round(value * 100, 2)))
                for name, value in zip(self.dataset_meta["classes"], np.asarray(per_class, dtype=float))
            }
        return metrics
