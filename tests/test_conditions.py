"""The words a step's conditions are recorded in: the same words the published rows state."""

from __future__ import annotations

from bam_dense.bench.conditions import differences, mm_resolution
from bam_dense.bench.published import BENCHMARKS, COCO, SLIDE, WHOLE


def _seg(mode: str) -> dict:
    """The parts of a resolved mmseg config (mmseg's ADE20K base: RandomCrop 512, test Resize (2048, 512))."""
    test_cfg = {"mode": mode, "crop_size": [512, 512], "stride": [341, 341]} if mode == "slide" else {"mode": mode}
    return {"model": {"test_cfg": test_cfg},
            "train_dataloader": {"dataset": {"pipeline": [{"type": "LoadImageFromFile"},
                                                          {"type": "RandomResize", "scale": [2048, 512]},
                                                          {"type": "RandomCrop", "crop_size": [512, 512]}]}},
            "test_dataloader": {"dataset": {"pipeline": [{"type": "Resize", "scale": [2048, 512], "keep_ratio": True}]}}}


def test_mm_configs_are_recorded_in_the_benchmarks_words():
    assert mm_resolution(_seg("slide")) == SLIDE == BENCHMARKS["ade20k_linear_vits"].resolution_of()
    assert mm_resolution(_seg("whole")) == WHOLE
    coco = {"train_dataloader": {"dataset": {"pipeline": [
        {"type": "RandomChoiceResize", "scales": [[1333, s] for s in (640, 672, 704, 736, 768, 800)]}]}},
        "test_dataloader": {"dataset": {"pipeline": [{"type": "Resize", "scale": [1333, 800]}]}}}
    assert mm_resolution(coco) == COCO


def test_each_differing_or_missing_condition_is_named_and_unstated_ones_listed():
    published = {"resolution": "short side 480", "registers": 0, "arch": "ViT-S"}
    found, unstated = differences(published, {"resolution": "short side 960", "registers": 0, "layers": "last block"}, "ours")
    assert found == ["input resolution short side 480 (published) vs short side 960 (ours)",
                     "architecture not recorded for ours"]
    assert unstated == ["layers fed to the head"]
    assert differences(published, {**published, "arch": "vit-s "}, "ours") == ([], [])  # case and spaces do not count
