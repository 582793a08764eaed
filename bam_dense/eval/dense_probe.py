"""Cheap dense evaluations for development and the demo: the signal spatially aligned methods exist for.

* :func:`linear_seg_probe`: a linear per-patch classifier trained to convergence (full-batch Adam, 1500
  steps by default: at 300 the ranking of encoders still changed with the step count) on frozen dense
  features of an ADE20K-layout folder (labels reduced as mmseg does: 0 ignored, 1..150 -> 0..149), scored by mIoU on the
  validation split after bilinear upsampling of the logits to the label resolution (IoU summed over the
  split, mean over classes present in the ground truth or the prediction, as mmseg's IoUMetric).
* :func:`davis_probe`: label propagation on a DAVIS-layout folder, scored by J&F-Mean.

``bam-dense probe`` runs both for a checkpoint and, with ``--random-baseline``, for the same encoder at
its random initialisation, and prints them side by side.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from bam_dense.core.errors import UserFacingError
from bam_dense.eval.features import FeatureCache, square_dense_features

NUM_CLASSES = 150
PROBE_STEPS = 1500  # full-batch Adam steps: converged (at 300 the ranking of encoders still moved)


@dataclass
class ProbeResult:
    miou: float | None = None
    davis_jf: float | None = None
    areas: dict | None = None  # per validation image: intersection and union per class (per_image_areas)

    def as_dict(self) -> dict:
        return {"linear_probe_miou": self.miou, "davis_jf": self.davis_jf}


def split_files(root: Path, split: str) -> list[Path]:
    files = sorted((root / "images" / split).glob("*.jpg"))
    if not files:
        raise UserFacingError(f"no images in {root / 'images' / split} (an ADE20K-layout folder: ADEChallengeData2016/)")
    return files


def _load_labels(root: Path, split: str, files: list[Path], size: int) -> torch.Tensor:
    labels = []
    for path in files:
        label = np.asarray(Image.open(root / "annotations" / split / f"{path.stem}.png").resize((size, size), Image.NEAREST))
        label = np.where(label == 0, 255, label.astype(np.int64) - 1)  # reduce_zero_label
        labels.append(torch.from_numpy(label))
    return torch.stack(labels)


def _grid_labels(labels: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return F.interpolate(labels[:, None].float(), size=(h, w), mode="nearest")[:, 0].long()


def miou(pred: torch.Tensor, label: torch.Tensor, num_classes: int = NUM_CLASSES) -> float:
    """mmseg-style mIoU: intersections and unions summed over the split, nanmean over classes, 255 ignored."""
    keep = label != 255
    p, g = pred[keep], label[keep]
    inter = torch.bincount(g[p == g], minlength=num_classes).double()
    area_p = torch.bincount(p, minlength=num_classes).double()
    area_g = torch.bincount(g, minlength=num_classes).double()
    union = area_p + area_g - inter
    iou = inter / union
    return float(np.nanmean(iou.numpy()))


def per_image_areas(pred: torch.Tensor, label: torch.Tensor, num_classes: int = NUM_CLASSES) -> dict:
    """Per image, the intersection and the union of every class (255 ignored): what :func:`miou` sums.

    ``{"classes": ids, "intersect": n_images x len(ids), "union": ...}`` (ints) over the classes present in a
    prediction or a label (the others have an empty union and do not enter the mIoU), for bootstrap
    intervals over the validation images."""
    inters, unions = [], []
    for p_img, g_img in zip(pred, label):
        keep = g_img != 255
        p, g = p_img[keep], g_img[keep]
        inter = torch.bincount(g[p == g], minlength=num_classes)
        unions.append(torch.bincount(p, minlength=num_classes) + torch.bincount(g, minlength=num_classes) - inter)
        inters.append(inter)
    inter_t, union_t = torch.stack(inters), torch.stack(unions)
    classes = torch.nonzero(union_t.sum(0) > 0).flatten()
    return {"classes": classes.tolist(), "intersect": inter_t[:, classes].tolist(), "union": union_t[:, classes].tolist()}


def linear_seg_probe(backbone, ade_root: str | Path, image_size: int = 64, steps: int = PROBE_STEPS, lr: float = 0.01,
                     seed: int = 0, return_areas: bool = False, feature_cache: FeatureCache | None = None):
    """mIoU (in [0, 1]) of a linear per-patch classifier on frozen features (with ``return_areas``: and the
    per-image areas of :func:`per_image_areas`). ``feature_cache``: the checkpoint's shared features."""
    from bam_dense.encoders import FeatureExtractor

    root = Path(ade_root)
    extractor = FeatureExtractor(backbone, torch.device("cpu"))
    tr_files, va_files = split_files(root, "training"), split_files(root, "validation")
    tr_f = square_dense_features(extractor, tr_files, image_size, feature_cache)
    va_f = square_dense_features(extractor, va_files, image_size, feature_cache)
    tr_y = _load_labels(root, "training", tr_files, image_size)
    va_y = _load_labels(root, "validation", va_files, image_size)
    h, w = tr_f.shape[-2:]
    x = tr_f.permute(0, 2, 3, 1).reshape(-1, tr_f.shape[1])
    y = _grid_labels(tr_y, h, w).reshape(-1)
    keep = y != 255
    x, y = x[keep], y[keep]
    mean, std = x.mean(0), x.std(0) + 1e-6
    x = (x - mean) / std
    torch.manual_seed(seed)
    clf = torch.nn.Linear(x.shape[1], NUM_CLASSES)
    opt = torch.optim.Adam(clf.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(clf(x), y).backward()
        opt.step()
    with torch.no_grad():
        v = (va_f.permute(0, 2, 3, 1) - mean) / std
        logits = clf(v).permute(0, 3, 1, 2)
        logits = F.interpolate(logits, size=va_y.shape[-2:], mode="bilinear", align_corners=False)
        pred = logits.argmax(1)
        value = miou(pred, va_y)
        return (value, per_image_areas(pred, va_y)) if return_areas else value


def davis_probe(backbone, davis_root: str | Path, resolution: int = 96) -> float:
    from bam_dense.davis.evaluate import evaluate
    from bam_dense.davis.propagate import PropagationParams, run
    from bam_dense.encoders import FeatureExtractor

    extractor = FeatureExtractor(backbone, torch.device("cpu"))
    with tempfile.TemporaryDirectory() as tmp:
        run("probe", str(davis_root), tmp, params=PropagationParams(resolution=resolution), extractor=extractor)
        return evaluate(davis_root, tmp, workers=1).global_row[0]


def probe(backbone, ade_root: str | None, davis_root: str | None, image_size: int = 64, davis_resolution: int = 96,
          steps: int = PROBE_STEPS, feature_cache: FeatureCache | None = None) -> ProbeResult:
    result = ProbeResult()
    if ade_root:
        result.miou, result.areas = linear_seg_probe(backbone, ade_root, image_size, steps=steps, return_areas=True,
                                                     feature_cache=feature_cache)
    if davis_root:
        result.davis_jf = davis_probe(backbone, davis_root, davis_resolution)
    return result


def random_init_like(checkpoint: str) -> torch.nn.Module:
    """The encoder a bam-dense run started from: its config's backbone, built with its seed."""
    from bam_dense.core.config import load_config
    from bam_dense.models.backbones import build_backbone

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if state.get("format") != "bam-dense":
        raise UserFacingError(f"--random-baseline needs a bam-dense pretraining checkpoint, {checkpoint} is not one")
    cfg = load_config(data=state["config"])
    torch.manual_seed(cfg.run.seed)
    return build_backbone(cfg.model)


__all__ = ["ProbeResult", "davis_probe", "linear_seg_probe", "miou", "probe"]
