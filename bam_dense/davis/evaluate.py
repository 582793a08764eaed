"""``bam-dense davis eval``: DAVIS-2017 scoring with the numbers of the official ``davis2017-evaluation``.

What is computed is exactly the official evaluator's (see DOWNSTREAM.md 4.3): per sequence the GT objects
are the ids of frame 0 (void 255 set to 0), the result PNGs are read for the GT frame names, object ids
become one-hot masks (fewer ids are zero-padded; more are an error), the semi-supervised task drops the
first and last frames and ignores void, the unsupervised task keeps all frames, uses void, and matches
proposals to objects with the Hungarian algorithm on (mean J + mean F) / 2. Statistics per object, then
means over objects. CSVs have the official names, columns, order and ``%.3f`` format.

Differences, all on purpose: errors are exceptions naming the sequence and frame (the official code calls
``sys.exit``), results are always recomputed (never a stale CSV), sequences run in parallel processes
(which end with the evaluator, see :mod:`bam_dense.core.procs`), and the boundary measure works on cropped
windows (identical values, see :mod:`bam_dense.davis.metrics`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from bam_dense.core import procs
from bam_dense.core.errors import UserFacingError
from bam_dense.davis.metrics import db_eval_boundary, db_eval_iou, db_statistics

GLOBAL_COLUMNS = ["J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay"]
SEQUENCE_COLUMNS = ["Sequence", "J-Mean", "F-Mean"]
MAX_PROPOSALS = 20


class DavisError(UserFacingError):
    pass


@dataclass
class SequenceScores:
    sequence: str
    objects: list[str] = field(default_factory=list)  # "<seq>_<k>"
    j: list[np.ndarray] = field(default_factory=list)  # per-frame values per object
    f: list[np.ndarray] = field(default_factory=list)


def read_sequences(davis_root: Path, subset: str, task: str) -> list[str]:
    year = "2019" if task == "unsupervised" and subset in ("test-dev", "test-challenge") else "2017"
    path = davis_root / "ImageSets" / year / f"{subset}.txt"
    if not path.is_file():
        raise DavisError(f"{path} does not exist (is {davis_root} a DAVIS-2017 folder?)")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:  # the means below would be NaN, written as a result
        raise DavisError(f"{path} lists no sequences: nothing to evaluate")
    return names


def _read_png(path: Path, sequence: str, what: str) -> np.ndarray:
    if not path.is_file():
        raise DavisError(f"sequence {sequence}: {what} frame {path.stem} is missing ({path})")
    try:
        with Image.open(path) as img:  # one copy out of PIL (np.array(img) makes two)
            array = np.frombuffer(img.tobytes(), np.uint8).reshape(img.size[1], img.size[0]) if img.mode in ("P", "L") \
                else np.asarray(img)
    except (OSError, SyntaxError, ValueError) as err:
        raise DavisError(f"sequence {sequence}: {what} frame {path.stem} is not a readable PNG ({path}: {err})") from None
    if array.ndim != 2:
        raise DavisError(f"sequence {sequence}: {what} frame {path.stem} is not an indexed (single-channel) PNG "
                         f"(shape {array.shape}, {path})")
    return array


def evaluate_sequence(davis_root: str, results: str, sequence: str, task: str) -> SequenceScores:
    root, res_root = Path(davis_root), Path(results)
    ann_dir = root / ("Annotations" if task == "semi-supervised" else "Annotations_unsupervised") / "480p" / sequence
    gt_files = sorted(ann_dir.glob("*.png"))
    if not gt_files:
        raise DavisError(f"sequence {sequence}: no annotations in {ann_dir}")
    gt = np.stack([_read_png(p, sequence, "annotation") for p in gt_files])
    first = gt[0]
    n_objects = int(first[first != 255].max(initial=0))  # void (255) is set to 0 before the official max
    frame_ids = [p.stem for p in gt_files]
    if task == "semi-supervised":
        # no void mask here: void pixels (255) equal none of the object ids 1..n_objects compared below
        gt, frame_ids = gt[1:-1], frame_ids[1:-1]
    else:
        void = gt == 255
        gt[void] = 0
    res = []
    for frame in frame_ids:
        mask = _read_png(res_root / sequence / f"{frame}.png", sequence, "result")
        if mask.shape != gt.shape[1:]:
            raise DavisError(f"sequence {sequence}: result frame {frame} is {mask.shape[1]}x{mask.shape[0]}, the annotation "
                             f"is {gt.shape[2]}x{gt.shape[1]} ({res_root / sequence / f'{frame}.png'})")
        res.append(mask)
    res = np.stack(res) if res else np.zeros((0, *gt.shape[1:]), np.uint8)
    n_res = int(res.max()) if res.size else 0
    limit = n_objects if task == "semi-supervised" else MAX_PROPOSALS
    if n_res > limit:
        t = int(np.argmax((res == n_res).any(axis=(1, 2))))
        what = f"the sequence's {n_objects} objects" if task == "semi-supervised" else f"the {MAX_PROPOSALS} proposals allowed"
        raise DavisError(f"sequence {sequence}: result frame {frame_ids[t]} has object index {n_res}, more than {what}")
    scores = SequenceScores(sequence)
    if task == "semi-supervised":  # the official code passes no void here
        for k in range(1, n_objects + 1):
            g, p = gt == k, res == k  # ids above the result's maximum are all-false: the official zero padding
            scores.objects.append(f"{sequence}_{k}")
            scores.j.append(np.asarray(db_eval_iou(g, p), dtype=float))
            scores.f.append(np.asarray(db_eval_boundary(g, p), dtype=float))
        return scores
    from scipy.optimize import linear_sum_assignment

    n_prop = max(n_res, n_objects)
    j_all = np.zeros((n_prop, n_objects, gt.shape[0]))
    f_all = np.zeros((n_prop, n_objects, gt.shape[0]))
    for i in range(n_objects):
        g = gt == i + 1
        for p in range(n_prop):
            prop = res == p + 1
            j_all[p, i] = db_eval_iou(g, prop, void)
            f_all[p, i] = db_eval_boundary(g, prop, void)
    rows, cols = linear_sum_assignment(-(np.mean(j_all, axis=2) + np.mean(f_all, axis=2)) / 2)
    j_sel, f_sel = j_all[rows, cols], f_all[rows, cols]
    for k in range(n_objects):  # the official code labels the k-th matched pair "<seq>_<k+1>"
        scores.objects.append(f"{sequence}_{k + 1}")
        scores.j.append(j_sel[k])
        scores.f.append(f_sel[k])
    return scores


@dataclass
class Results:
    global_row: list[float]
    per_object: list[tuple[str, float, float]]
    objects: dict[str, dict[str, float]]  # name -> J/F mean, recall, decay

    def table(self) -> str:
        head = " ".join(f"{c:>9}" for c in GLOBAL_COLUMNS)
        return head + "\n" + " ".join(f"{v:9.3f}" for v in self.global_row)


def _fmt(value: float) -> str:
    return "" if np.isnan(value) else f"{value:.3f}"


def aggregate(all_scores: list[SequenceScores]) -> Results:
    if not any(scores.objects for scores in all_scores):  # every mean would be NaN
        names = ", ".join(scores.sequence for scores in all_scores) or "none"
        raise DavisError(f"no object to score: the first annotation frame of every sequence ({names}) holds no object id")
    jm, jr, jd, fm, fr, fd = [], [], [], [], [], []
    per_object, objects = [], {}
    for scores in all_scores:
        for name, j, f in zip(scores.objects, scores.j, scores.f):
            j_stats, f_stats = db_statistics(j), db_statistics(f)
            for lst, v in zip((jm, jr, jd), j_stats):
                lst.append(v)
            for lst, v in zip((fm, fr, fd), f_stats):
                lst.append(v)
            per_object.append((name, j_stats[0], f_stats[0]))
            objects[name] = dict(zip(("J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay"), (*j_stats, *f_stats)))
    final = (np.mean(jm) + np.mean(fm)) / 2.0
    row = [final, np.mean(jm), np.mean(jr), np.mean(jd), np.mean(fm), np.mean(fr), np.mean(fd)]
    return Results([float(v) for v in row], per_object, objects)


def write_csvs(results: Results, out_dir: Path, subset: str) -> tuple[Path, Path]:
    """``global_results-<set>.csv`` and ``per-sequence_results-<set>.csv`` as the official script writes them."""
    from bam_dense.core.atomic import atomic_write_text

    out_dir.mkdir(parents=True, exist_ok=True)
    g = ",".join(GLOBAL_COLUMNS) + "\n" + ",".join(_fmt(v) for v in results.global_row) + "\n"
    s = ",".join(SEQUENCE_COLUMNS) + "\n" + "".join(f"{n},{_fmt(j)},{_fmt(f)}\n" for n, j, f in results.per_object)
    gp, sp = out_dir / f"global_results-{subset}.csv", out_dir / f"per-sequence_results-{subset}.csv"
    atomic_write_text(gp, g)
    atomic_write_text(sp, s)
    return gp, sp


def plot_per_sequence(results: Results, path: Path) -> Path:
    """A bar chart of J and F per object, drawn with PIL (no plotting library to import)."""
    from PIL import ImageDraw

    names = [n for n, _, _ in results.per_object]
    bar, gap, left, top, plot_h, label_h = 8, 6, 40, 30, 200, 110
    width = left + len(names) * (2 * bar + gap) + 20
    img = Image.new("RGB", (max(width, 320), top + plot_h + label_h + 8), "white")
    draw = ImageDraw.Draw(img)
    base = top + plot_h
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = base - tick * plot_h
        draw.line([(left - 4, y), (img.width - 10, y)], fill=(225, 225, 225))
        draw.text((4, y - 6), f"{tick:.2f}", fill="black")
    for i, (name, j, f) in enumerate(results.per_object):
        x = left + i * (2 * bar + gap)
        for k, (value, color) in enumerate(((j, (66, 133, 244)), (f, (244, 160, 0)))):
            if not np.isnan(value):
                draw.rectangle([x + k * bar, base - value * plot_h, x + (k + 1) * bar - 1, base], fill=color)
        label = Image.new("RGB", (label_h, 12), "white")
        ImageDraw.Draw(label).text((0, 0), name[: label_h // 6], fill="black")
        img.paste(label.rotate(90, expand=True), (x + 2, base + 4))
    draw.text((left, 8), f"DAVIS per object: J (blue), F (orange); J&F-Mean {results.global_row[0]:.3f}", fill="black")
    img.save(path)
    return path


def evaluate(davis_root: str | Path, results: str | Path, task: str = "semi-supervised", subset: str = "val",
             sequences: list[str] | None = None, workers: int | None = None) -> Results:
    davis_root, results = Path(davis_root), Path(results)
    if task not in ("semi-supervised", "unsupervised"):
        raise DavisError(f"unknown task {task!r}")
    if not results.is_dir():
        raise DavisError(f"results folder {results} does not exist")
    names = sequences or read_sequences(davis_root, subset, task)
    workers = min(len(names), workers or os.cpu_count() or 1)
    if workers > 1:
        with procs.process_pool(workers) as pool:
            scores = list(pool.map(evaluate_sequence, [str(davis_root)] * len(names), [str(results)] * len(names),
                                   names, [task] * len(names)))
    else:
        scores = [evaluate_sequence(str(davis_root), str(results), name, task) for name in names]
    return aggregate(scores)


def write_metrics_json(res: Results, path: Path, davis_root: str | Path, results: str | Path, task: str = "semi-supervised",
                       subset: str = "val") -> Path:
    """The global numbers as JSON (what ``bam-dense bench report`` reads), with the propagation's input
    resolution and parameters when ``results`` holds the ``propagation.json`` that ``davis propagate`` wrote."""
    import json

    from bam_dense.core.atomic import atomic_write_text

    payload = {"task": f"davis_{task}", "davis_root": str(davis_root), "results": str(results), "set": subset,
               "metrics": dict(zip(GLOBAL_COLUMNS, res.global_row)), "per_object": res.objects}
    record = Path(results) / "propagation.json"
    if record.is_file():
        propagation = json.loads(record.read_text())
        payload["resolution"] = propagation.get("resolution")
        payload["resolution_protocol"] = propagation.get("resolution_protocol")
        payload["propagation"] = propagation
    return atomic_write_text(path, json.dumps(payload, indent=1))
