"""DAVIS region (J) and boundary (F) measures with the official evaluator's exact semantics, faster.

Same names and results as ``davis2017-evaluation`` (davis2017/metrics.py, utils.py):

* ``db_eval_iou``: |P & G| / |P | G| per frame, void pixels excluded, and 1 where the union is empty.
* ``db_eval_boundary``: boundary F-measure with a tolerance of ``ceil(0.008 * ||(H, W)||)`` pixels; the
  1-pixel boundaries of ``_seg2bmap`` (a pixel differs from its E, S or SE neighbour), each dilated with
  ``skimage.morphology.disk``; empty cases as in the official code.
* ``db_statistics``: mean, recall (> 0.5) and decay over 4 bins (bin edges cast to uint8 as there).

Speed comes from where the work is done, not from changing it: boundaries and dilations are computed only
inside the bounding box of the two masks grown by the tolerance (outside it every map is zero, so the
counts are identical), bounding boxes of all frames come from two vectorised reductions, the disk is built
once per radius (the same array as ``skimage.morphology.disk``), and frames where both masks are empty take
no image operations at all.
"""

from __future__ import annotations

import math
import warnings
from functools import lru_cache

import cv2
import numpy as np


def _pixels_per_frame(mask: np.ndarray) -> np.ndarray | np.int64:
    """``np.sum(mask, axis=(-2, -1))`` of a boolean ``H x W`` or ``T x H x W`` mask, counted by OpenCV's
    ``countNonZero`` frame by frame (numpy sums booleans through an integer cast, several times slower)."""
    frames = np.ascontiguousarray(mask).view(np.uint8)
    if frames.ndim == 2:
        return np.int64(cv2.countNonZero(frames))
    return np.fromiter((cv2.countNonZero(f) for f in frames), dtype=np.int64, count=frames.shape[0])


def db_eval_iou(annotation: np.ndarray, segmentation: np.ndarray, void_pixels: np.ndarray | None = None):
    """Jaccard index of binary masks (``H x W`` or ``T x H x W``); 1 where both are empty."""
    if annotation.shape != segmentation.shape:
        raise ValueError(f"annotation {annotation.shape} and segmentation {segmentation.shape} dimensions do not match")
    annotation = np.asarray(annotation, dtype=bool)
    segmentation = np.asarray(segmentation, dtype=bool)
    if void_pixels is not None:
        if annotation.shape != void_pixels.shape:
            raise ValueError(f"annotation {annotation.shape} and void pixels {void_pixels.shape} dimensions do not match")
        keep = ~void_pixels.astype(bool)
        inters = _pixels_per_frame((segmentation & annotation) & keep)
        union = _pixels_per_frame((segmentation | annotation) & keep)
    else:
        inters = _pixels_per_frame(segmentation & annotation)
        union = _pixels_per_frame(segmentation | annotation)
    with np.errstate(invalid="ignore", divide="ignore"):
        j = inters / union
    if j.ndim == 0:
        return 1 if np.isclose(union, 0) else j
    j[np.isclose(union, 0)] = 1
    return j


@lru_cache(maxsize=64)
def disk(radius: float) -> np.ndarray:
    """``skimage.morphology.disk(radius)`` (strict radius), built here to spare the skimage import."""
    span = np.arange(-radius, radius + 1)
    x, y = np.meshgrid(span, span)
    return np.array((x**2 + y**2) <= radius**2, dtype=np.uint8)


def _seg2bmap_crop(seg: np.ndarray, bottom_is_edge: bool, right_is_edge: bool) -> np.ndarray:
    """``_seg2bmap`` on a crop: the last row/column follow the image-edge rule only where the crop
    touches the image's bottom/right edge (elsewhere the caller guarantees zeros beyond the crop)."""
    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = (seg ^ e) | (seg ^ s) | (seg ^ se)
    if bottom_is_edge:
        b[-1, :] = seg[-1, :] ^ e[-1, :]
    if right_is_edge:
        b[:, -1] = seg[:, -1] ^ s[:, -1]
    if bottom_is_edge and right_is_edge:
        b[-1, -1] = 0
    return b


def _seg2bmap(seg: np.ndarray) -> np.ndarray:
    """The official 1-pixel boundary map of a whole mask."""
    return _seg2bmap_crop(seg.astype(bool), True, True)


def _f_from_boundaries(fg_b: np.ndarray, gt_b: np.ndarray, bound_pix: float) -> float:
    n_fg = int(np.count_nonzero(fg_b))
    n_gt = int(np.count_nonzero(gt_b))
    if n_fg == 0 and n_gt > 0:
        precision, recall = 1, 0
    elif n_fg > 0 and n_gt == 0:
        precision, recall = 0, 1
    elif n_fg == 0 and n_gt == 0:
        precision, recall = 1, 1
    else:
        kernel = disk(bound_pix)
        fg_dil = cv2.dilate(fg_b.view(np.uint8), kernel)
        gt_dil = cv2.dilate(gt_b.view(np.uint8), kernel)
        precision = np.count_nonzero(fg_b & gt_dil.view(bool)) / float(n_fg)
        recall = np.count_nonzero(gt_b & fg_dil.view(bool)) / float(n_gt)
    if precision + recall == 0:
        return 0
    return 2 * precision * recall / (precision + recall)


def _boundary_f_frames(fg: np.ndarray, gt: np.ndarray, bound_th: float) -> np.ndarray:
    """F for each frame of boolean ``T x H x W`` stacks (void already removed)."""
    height, width = fg.shape[1:]
    bound_pix = bound_th if bound_th >= 1 else np.ceil(bound_th * np.linalg.norm((height, width)))
    pad = int(math.ceil(bound_pix)) + 1
    union = fg | gt
    rows_any = union.any(axis=2)
    cols_any = union.any(axis=1)
    out = np.ones(fg.shape[0])  # frames where both masks are empty score 1
    for t in np.flatnonzero(rows_any.any(axis=1)):
        rows, cols = np.flatnonzero(rows_any[t]), np.flatnonzero(cols_any[t])
        y0, y1 = max(0, rows[0] - pad), min(height, rows[-1] + pad + 1)
        x0, x1 = max(0, cols[0] - pad), min(width, cols[-1] + pad + 1)
        bottom, right = y1 == height, x1 == width
        fg_b = _seg2bmap_crop(fg[t, y0:y1, x0:x1], bottom, right)
        gt_b = _seg2bmap_crop(gt[t, y0:y1, x0:x1], bottom, right)
        out[t] = _f_from_boundaries(fg_b, gt_b, bound_pix)
    return out


def f_measure(foreground_mask: np.ndarray, gt_mask: np.ndarray, void_pixels: np.ndarray | None = None,
              bound_th: float = 0.008) -> float:
    """Boundary F-measure of one frame (official ``f_measure``)."""
    fg = foreground_mask.astype(bool)
    gt = gt_mask.astype(bool)
    if void_pixels is not None:
        keep = ~void_pixels.astype(bool)
        fg, gt = fg & keep, gt & keep
    return float(_boundary_f_frames(fg[None], gt[None], bound_th)[0])


def db_eval_boundary(annotation: np.ndarray, segmentation: np.ndarray, void_pixels: np.ndarray | None = None,
                     bound_th: float = 0.008):
    """Boundary F per frame (``T x H x W`` -> ``T``) or for one frame (``H x W`` -> float)."""
    if annotation.shape != segmentation.shape:
        raise ValueError(f"annotation {annotation.shape} and segmentation {segmentation.shape} dimensions do not match")
    if void_pixels is not None and annotation.shape != void_pixels.shape:
        raise ValueError(f"annotation {annotation.shape} and void pixels {void_pixels.shape} dimensions do not match")
    if annotation.ndim not in (2, 3):
        raise ValueError(f"db_eval_boundary does not support tensors with {annotation.ndim} dimensions")
    gt = np.asarray(annotation, dtype=bool)
    fg = np.asarray(segmentation, dtype=bool)
    if void_pixels is not None:
        keep = ~np.asarray(void_pixels, dtype=bool)
        fg, gt = fg & keep, gt & keep
    if annotation.ndim == 2:
        return float(_boundary_f_frames(fg[None], gt[None], bound_th)[0])
    return _boundary_f_frames(fg, gt, bound_th)


def db_statistics(per_frame_values: np.ndarray) -> tuple[float, float, float]:
    """(mean, recall, decay) of per-frame values, exactly as the official ``utils.db_statistics``."""
    per_frame_values = np.asarray(per_frame_values)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        mean = np.nanmean(per_frame_values)
        recall = np.nanmean(per_frame_values > 0.5)
    n_bins = 4
    ids = np.round(np.linspace(1, len(per_frame_values), n_bins + 1) + 1e-10) - 1
    ids = ids.astype(np.uint8)  # as the official code (wraps above 256 frames)
    bins = [per_frame_values[ids[i]: ids[i + 1] + 1] for i in range(n_bins)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        decay = np.nanmean(bins[0]) - np.nanmean(bins[3])
    return mean, recall, decay
