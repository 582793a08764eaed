"""Semantic-segmentation areas and mIoU, with mmseg's ``IoUMetric`` conventions.

Per class, intersection and union are summed over the whole split; IoU is their ratio and mIoU the
``nanmean`` over classes (a class with an empty union, absent from both ground truth and prediction,
does not enter the mean). Ground-truth pixels equal to ``ignore_index`` are left out; predictions outside
``0..num_classes-1`` count for no class (they add to no class's predicted area, and the ground-truth class
of such a pixel loses it as a false negative), as mmseg's ``intersect_and_union`` does with ``torch.histc``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class SegmentationAreas:
    """Running intersection / union / predicted / labelled areas per class (int64)."""

    num_classes: int
    ignore_index: int = 255
    intersect: torch.Tensor = field(init=False)
    area_pred: torch.Tensor = field(init=False)
    area_label: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        zeros = torch.zeros(self.num_classes, dtype=torch.int64)
        self.intersect, self.area_pred, self.area_label = zeros.clone(), zeros.clone(), zeros.clone()

    def update(self, pred: torch.Tensor, label: torch.Tensor) -> None:
        """``pred`` and ``label``: integer maps of the same shape (any batch layout)."""
        if pred.shape != label.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and label {tuple(label.shape)} differ in shape")
        pred, label = pred.reshape(-1).long().cpu(), label.reshape(-1).long().cpu()
        keep = label != self.ignore_index
        pred, label = pred[keep], label[keep]
        if label.numel() and (int(label.min()) < 0 or int(label.max()) >= self.num_classes):
            raise ValueError(f"label values must be in 0..{self.num_classes - 1} or {self.ignore_index}, "
                             f"got {int(label.min())}..{int(label.max())}")
        n = self.num_classes
        valid_pred = (pred >= 0) & (pred < n)
        self.intersect += torch.bincount(label[valid_pred & (pred == label)], minlength=n)
        self.area_pred += torch.bincount(pred[valid_pred], minlength=n)
        self.area_label += torch.bincount(label, minlength=n)

    @property
    def union(self) -> torch.Tensor:
        return self.area_pred + self.area_label - self.intersect

    def iou(self) -> np.ndarray:
        """Per-class IoU, NaN where the union is empty."""
        inter, union = self.intersect.double().numpy(), self.union.double().numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, inter / np.maximum(union, 1), np.nan)

    def miou(self) -> float:
        iou = self.iou()
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")


__all__ = ["SegmentationAreas"]
