"""Bootstrap spreads and verdicts (bam_dense.bench.stats): each metric against a direct computation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bam_dense.bench import stats
from bam_dense.eval.dense_probe import miou, per_image_areas


def test_miou_from_per_image_areas_equals_the_split_miou():
    gen = torch.Generator().manual_seed(0)
    label = torch.randint(0, 6, (5, 12, 12), generator=gen)
    label[:, 0] = 255
    pred = torch.where(torch.rand(5, 12, 12, generator=gen) < 0.6, label.clamp(max=5), torch.randint(0, 8, (5, 12, 12), generator=gen))
    areas = per_image_areas(pred, label)
    value = stats.miou_metric((np.asarray(areas["intersect"]), np.asarray(areas["union"])), np.ones((1, 5)))[0]
    assert value == pytest.approx(100 * miou(pred, label), abs=1e-9)
    # an image drawn twice counts twice: the same as concatenating it
    twice = stats.miou_metric((np.asarray(areas["intersect"]), np.asarray(areas["union"])), np.array([[2.0, 1, 1, 1, 0]]))[0]
    idx = torch.tensor([0, 0, 1, 2, 3])
    assert twice == pytest.approx(100 * miou(pred[idx], label[idx]), abs=1e-9)


def test_verdicts_follow_the_interval_of_the_paired_difference():
    rng = np.random.default_rng(0)
    base = rng.random(200) * 100
    ahead = stats.compare("t", "m", stats.mean_metric, base + 5, base, 200, "images", 500)
    assert ahead.verdict == stats.AHEAD and ahead.difference.low > 0
    behind = stats.compare("t", "m", stats.mean_metric, base, base + 5, 200, "images", 500)
    assert behind.verdict == stats.BEHIND
    noise = stats.compare("t", "m", stats.mean_metric, base + rng.normal(0, 20, 200), base, 200, "images", 500)
    assert noise.verdict == stats.TIE and noise.difference.low < 0 < noise.difference.high
    assert noise.pretrained.low <= noise.pretrained.value <= noise.pretrained.high


def test_davis_jf_by_sequence_groups_equals_the_mean_over_objects(tmp_path):
    per_object = {"s0_1": {"J-Mean": 0.5, "F-Mean": 0.7}, "s0_2": {"J-Mean": 0.2, "F-Mean": 0.4},
                  "s1_1": {"J-Mean": 0.9, "F-Mean": 0.8}}
    (tmp_path / "metrics.json").write_text(json.dumps({"per_object": per_object}))
    groups = stats.davis_groups(tmp_path / "metrics.json")
    assert sorted(groups) == ["s0", "s1"]
    value = stats.davis_metric([np.asarray(groups[s]) for s in sorted(groups)], np.ones((1, 2)))[0]
    assert value == pytest.approx(100 * np.mean([(r["J-Mean"] + r["F-Mean"]) / 2 for r in per_object.values()]))


def _coco(n_images: int = 4):
    images = [{"id": i + 1, "file_name": f"{i}.jpg", "height": 64, "width": 64} for i in range(n_images)]
    anns = [{"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [10.0, 10.0, 20.0, 20.0], "area": 400.0, "iscrowd": 0}
            for i in range(n_images)]
    return {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "a"}]}


def test_coco_ap_and_its_bootstrap():
    pytest.importorskip("pycocotools")
    gt = _coco()
    perfect = [{"image_id": a["image_id"], "category_id": 1, "bbox": a["bbox"], "score": 0.9} for a in gt["annotations"]]
    assert stats.coco_ap(gt, perfect) == pytest.approx(100.0)
    assert stats.coco_ap(gt, []) == 0.0
    data = stats.CocoData(gt, perfect, [1, 2, 3, 4])
    values = stats.coco_ap_metric(data, np.array([[2.0, 0, 1, 1], [0, 0, 4, 0]]))
    assert values == pytest.approx([100.0, 100.0])
    half = stats.CocoData(gt, perfect[:2], [1, 2, 3, 4])  # two images found, two missed
    assert 0 < stats.coco_ap_metric(half, np.ones((1, 4)))[0] < 100
    assert stats.coco_ap_metric(half, np.array([[2.0, 2, 0, 0]]))[0] == pytest.approx(100.0)


def test_the_report_shows_every_value_in_percent():
    from bam_dense.bench.published import BENCHMARKS
    from bam_dense.bench.report import to_percent

    assert to_percent(BENCHMARKS["synthetic_davis"], 0.8) == pytest.approx(80.0)
    assert to_percent(BENCHMARKS["synthetic_linear_probe"], 0.25) == pytest.approx(25.0)
    assert to_percent(BENCHMARKS["synthetic_seg"], 7.5) == 7.5  # mmseg writes percent already
    assert to_percent(BENCHMARKS["davis17_val"], 0.618) == pytest.approx(61.8)
