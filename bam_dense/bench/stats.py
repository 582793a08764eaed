"""Spreads and verdicts for comparing two encoders evaluated on the same validation images.

Every comparison is a paired bootstrap over the validation units (images; objects grouped by sequence for
DAVIS): each replicate draws the units with replacement, recomputes the metric for both encoders on the same
draw, and keeps both values and their difference. The spread of a value is the 95% percentile interval of
its replicates; the verdict compares the interval of the *difference* with zero. The spread covers the
choice of validation images only, not the training seed of the encoders or of the fine-tune.

Per-unit scores come from what each step writes:

* k-NN: one correct / wrong flag per validation image (:func:`mean_metric`);
* dense probe and MMSeg fine-tune: per-image intersection and union areas per class (:func:`miou_metric`,
  mmseg's mIoU: sums over the drawn images, mean over classes with a non-empty union);
* DAVIS: per-object J-Mean and F-Mean grouped by sequence (:func:`davis_metric`);
* MMDet fine-tune: the detections and the ground truth, re-scored by pycocotools on each draw
  (:func:`coco_ap_metric`; fewer replicates, COCO evaluation is slower).

All values are in percent.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

AHEAD = "pretrained ahead beyond the spread"
BEHIND = "random init ahead beyond the spread"
TIE = "within the spread: no finding"
VERDICTS = (AHEAD, TIE, BEHIND)


@dataclass
class Interval:
    value: float
    low: float
    high: float

    def fmt(self, digits: int = 1) -> str:
        return f"{self.value:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"

    def as_dict(self) -> dict:
        return {"value": self.value, "low": self.low, "high": self.high}


@dataclass
class Comparison:
    """One task row: the pretrained and the random-init value with their spreads, their difference, a verdict."""

    task: str
    metric: str
    unit: str
    n_units: int
    unit_name: str
    replicates: int
    pretrained: Interval
    random_init: Interval
    difference: Interval
    verdict: str

    def as_dict(self) -> dict:
        return {"task": self.task, "metric": self.metric, "unit": self.unit, "n_units": self.n_units,
                "unit_name": self.unit_name, "replicates": self.replicates, "pretrained": self.pretrained.as_dict(),
                "random_init": self.random_init.as_dict(), "difference": self.difference.as_dict(), "verdict": self.verdict}


# A metric: (data, unit weights B x n) -> B values, where the weights say how often each unit was drawn.
Metric = Callable[[object, np.ndarray], np.ndarray]


def verdict(difference: Interval) -> str:
    if difference.low > 0:
        return AHEAD
    if difference.high < 0:
        return BEHIND
    return TIE


def _draws(n: int, replicates: int, seed: int) -> np.ndarray:
    """``replicates x n`` counts: how often each unit appears in each bootstrap draw."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=replicates).astype(np.float64)


def _interval(point: float, samples: np.ndarray) -> Interval:
    samples = samples[np.isfinite(samples)]
    if not samples.size:
        return Interval(point, float("nan"), float("nan"))
    low, high = np.percentile(samples, [2.5, 97.5])
    return Interval(float(point), float(low), float(high))


def compare(task: str, metric_name: str, metric: Metric, pretrained, random_init, n_units: int, unit_name: str,
            replicates: int = 1000, seed: int = 0) -> Comparison:
    """Paired bootstrap of ``metric`` over ``n_units`` units shared by both encoders."""
    ones = np.ones((1, n_units))
    weights = _draws(n_units, replicates, seed)
    a_point, b_point = float(metric(pretrained, ones)[0]), float(metric(random_init, ones)[0])
    a, b = metric(pretrained, weights), metric(random_init, weights)
    pa, pb = _interval(a_point, a), _interval(b_point, b)
    diff = _interval(a_point - b_point, a - b)
    return Comparison(task, metric_name, "%", n_units, unit_name, replicates, pa, pb, diff, verdict(diff))


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------


def mean_metric(scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted mean of per-unit scores (in percent when the scores are)."""
    scores = np.asarray(scores, dtype=np.float64)
    return weights @ scores / weights.sum(1)


def miou_metric(areas: tuple[np.ndarray, np.ndarray], weights: np.ndarray) -> np.ndarray:
    """mmseg's mIoU (percent) from per-image ``(intersection, union)`` arrays, each ``n_images x n_classes``."""
    inter, union = (np.asarray(a, dtype=np.float64) for a in areas)
    i, u = weights @ inter, weights @ union
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(u > 0, i / np.where(u > 0, u, 1.0), np.nan)
    with warnings_off():
        return 100.0 * np.nanmean(iou, axis=1)


@contextlib.contextmanager
def warnings_off():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def davis_metric(groups: Sequence[np.ndarray], weights: np.ndarray) -> np.ndarray:
    """J&F-Mean (percent): mean over the drawn sequences' objects of (J-Mean + F-Mean) / 2.

    ``groups[s]`` holds sequence ``s``'s per-object (J + F) / 2 values.
    """
    sums = np.array([float(np.sum(g)) for g in groups])
    counts = np.array([len(g) for g in groups], dtype=np.float64)
    return 100.0 * (weights @ sums) / (weights @ counts)


def davis_groups(metrics_json: Path) -> dict[str, list[float]]:
    """Per-sequence lists of per-object (J-Mean + F-Mean) / 2 from a ``bam-dense davis eval`` metrics.json."""
    payload = json.loads(Path(metrics_json).read_text())
    groups: dict[str, list[float]] = {}
    for name, row in payload.get("per_object", {}).items():
        seq = name.rsplit("_", 1)[0]
        groups.setdefault(seq, []).append((row["J-Mean"] + row["F-Mean"]) / 2.0)
    return groups


# ---------------------------------------------------------------------------------------------
# COCO box AP
# ---------------------------------------------------------------------------------------------


@dataclass
class CocoData:
    gt: dict  # the instances JSON
    detections: list[dict]  # COCO result entries (image_id, category_id, bbox, score)
    image_ids: list[int]  # the units, in a fixed order shared by both encoders


def load_coco(ann_file: Path, detections_json: Path) -> CocoData:
    gt = json.loads(Path(ann_file).read_text())
    dets = json.loads(Path(detections_json).read_text()) if Path(detections_json).is_file() else []
    return CocoData(gt, dets, sorted(img["id"] for img in gt["images"]))


def coco_ap(gt: dict, detections: list[dict], iou_type: str = "bbox") -> float:
    """COCO AP (percent, IoU 0.50:0.95) by pycocotools; 0 with no detections."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not detections:
        return 0.0
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes([dict(d) for d in detections])
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return max(0.0, 100.0 * float(ev.stats[0]))


def _resampled(data: CocoData, counts: np.ndarray) -> tuple[dict, list[dict]]:
    """The ground truth and detections of a bootstrap draw; an image drawn k times appears k times (new ids)."""
    images = {img["id"]: img for img in data.gt["images"]}
    anns: dict[int, list[dict]] = {}
    for a in data.gt["annotations"]:
        anns.setdefault(a["image_id"], []).append(a)
    dets: dict[int, list[dict]] = {}
    for d in data.detections:
        dets.setdefault(d["image_id"], []).append(d)
    new_images, new_anns, new_dets = [], [], []
    next_id = 1
    for image_id, count in zip(data.image_ids, counts):
        for _ in range(int(count)):
            new_images.append(dict(images[image_id], id=next_id))
            for a in anns.get(image_id, []):
                new_anns.append(dict(a, id=len(new_anns) + 1, image_id=next_id))
            for d in dets.get(image_id, []):
                new_dets.append(dict(d, image_id=next_id))
            next_id += 1
    gt = dict(data.gt, images=new_images, annotations=new_anns)
    return gt, new_dets


def coco_ap_metric(data: CocoData, weights: np.ndarray) -> np.ndarray:
    out = np.empty(weights.shape[0])
    for r, counts in enumerate(weights):
        if np.all(counts == 1):
            out[r] = coco_ap(data.gt, data.detections)
        else:
            out[r] = coco_ap(*_resampled(data, counts))
    return out


# ---------------------------------------------------------------------------------------------
# Reading a step's outputs
# ---------------------------------------------------------------------------------------------


def _aligned_areas(parts: list[dict]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per-image areas of several runs on the union of their class columns (a class absent from one is all zero)."""
    classes = sorted(set().union(*(p["classes"] for p in parts)))
    out = []
    for p in parts:
        cols = [classes.index(c) for c in p["classes"]]
        n = len(p["intersect"])
        inter, union = np.zeros((n, len(classes))), np.zeros((n, len(classes)))
        inter[:, cols] = np.asarray(p["intersect"], dtype=np.float64).reshape(n, -1)
        union[:, cols] = np.asarray(p["union"], dtype=np.float64).reshape(n, -1)
        out.append((inter, union))
    return out


class MissingUnits(Exception):
    """A step's output has no per-unit scores (older metrics.json, a failed step)."""


@dataclass
class Units:
    """What a step's bootstrap needs: the metric, each run's per-unit data, the number of units."""

    metric_name: str
    metric: Metric
    data: list
    n_units: int
    unit_name: str
    slow: bool = False  # COCO re-evaluation: fewer replicates


def step_units(task: str, kind: str, step_dirs: Sequence[Path]) -> Units:
    """Per-unit data of one plan step (``kind``: probe, davis, seg, det) for one or more runs' step folders
    (several: checked to be scored on the same units, in the same order)."""
    payloads = []
    for d in step_dirs:
        path = Path(d) / "metrics.json"
        if not path.is_file():
            raise MissingUnits(f"{task}: no metrics.json in {d}")
        payloads.append(json.loads(path.read_text()))
    if kind in ("probe", "seg"):
        if not all((p.get("per_image") or {}).get("intersect") for p in payloads):
            raise MissingUnits(f"{task}: metrics.json has no per-image areas")
        areas = _aligned_areas([p["per_image"] for p in payloads])
        if len({a[0].shape[0] for a in areas}) != 1:
            raise MissingUnits(f"{task}: the runs were scored on different numbers of images")
        return Units("mIoU", miou_metric, areas, areas[0][0].shape[0], "validation images")
    if kind == "davis":
        groups = [davis_groups(Path(d) / "metrics.json") for d in step_dirs]
        if not groups[0] or any(sorted(g) != sorted(groups[0]) for g in groups):
            raise MissingUnits(f"{task}: per-object scores missing or over different sequences")
        seqs = sorted(groups[0])
        return Units("J&F-Mean", davis_metric, [[np.asarray(g[s]) for s in seqs] for g in groups], len(seqs),
                     "validation sequences")
    if kind == "det":
        data = []
        for payload in payloads:
            if not payload.get("detections") or not payload.get("ann_file"):
                raise MissingUnits(f"{task}: metrics.json names no detections file")
            data.append(load_coco(Path(payload["ann_file"]), Path(payload["detections"])))
        if any(d.image_ids != data[0].image_ids for d in data):
            raise MissingUnits(f"{task}: the runs were scored on different images")
        return Units("box AP", coco_ap_metric, data, len(data[0].image_ids), "validation images", slow=True)
    raise MissingUnits(f"{task}: no per-unit scores for step kind {kind!r}")


def step_comparison(task: str, kind: str, pretrained_dir: Path, random_dir: Path, replicates: int = 1000,
                    coco_replicates: int = 200, seed: int = 0) -> Comparison:
    """The paired comparison of one plan step between two runs' step folders."""
    u = step_units(task, kind, [pretrained_dir, random_dir])
    return compare(task, u.metric_name, u.metric, u.data[0], u.data[1], u.n_units, u.unit_name,
                   coco_replicates if u.slow else replicates, seed)


def step_interval(task: str, kind: str, step_dir: Path, replicates: int = 1000, coco_replicates: int = 100,
                  seed: int = 0) -> Interval:
    """One run's value (percent) with its 95% bootstrap interval over the validation units."""
    u = step_units(task, kind, [step_dir])
    point = float(u.metric(u.data[0], np.ones((1, u.n_units)))[0])
    return _interval(point, u.metric(u.data[0], _draws(u.n_units, coco_replicates if u.slow else replicates, seed)))
