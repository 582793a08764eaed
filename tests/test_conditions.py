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


# ---------------------------------------------------------------------------------------------
# detectron2 steps: conditions and recipe read from the config.yaml detectron2 wrote, without detectron2
# ---------------------------------------------------------------------------------------------

# detectron2@02b5c4e detectron2/config/defaults.py values the shipped YAMLs leave to the defaults
D2_DEFAULTS = {"INPUT": {"MIN_SIZE_TRAIN_SAMPLING": "choice", "MAX_SIZE_TRAIN": 1333, "MIN_SIZE_TEST": 800,
                         "MAX_SIZE_TEST": 1333}, "MODEL": {"RESNETS": {"STRIDE_IN_1X1": True}}}


def _written_config(name: str, **changes) -> dict:
    """What detectron2's default_setup writes as OUTPUT_DIR/config.yaml for a shipped YAML (its _BASE_ chain merged
    over the defaults it relies on), with ``changes`` ("SECTION.KEY": value) applied as train_net.py applies them."""
    from conftest import REPO, detectron2_yaml, merged

    config = merged(D2_DEFAULTS, detectron2_yaml(REPO / "configs" / "detectron2" / name))
    for dotted, value in changes.items():
        node = config
        *parents, last = dotted.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    return config


def _detectron2_run(tmp_path, config_text: str, benchmark: str = "coco_maskrcnn_r50_fpn_1x"):
    """A run directory whose detectron2 step finished: metrics.json as train_net.py writes it, OUTPUT_DIR/config.yaml
    (``config_text``), the conversion report of its encoder; its conditions recorded as ``bench run`` records them."""
    import json

    import yaml

    from bam_dense.bench.conditions import record

    run_dir, coco = tmp_path / "run", tmp_path / "coco"
    out = run_dir / "enc" / "coco"
    (out / "pretrained").mkdir(parents=True)
    coco.mkdir()
    (run_dir / "plan.yaml").write_text(yaml.safe_dump({"name": "p", "runs": [{"name": "enc", "method": "lewel"}], "steps": [
        {"name": "coco", "kind": "detectron2", "benchmark": benchmark, "config": "c.yaml", "coco_root": str(coco)}]}))
    (out / "config.yaml").write_text(config_text)
    (out / "pretrained" / "last_detectron2.pkl.report.json").write_text(json.dumps({"arch": "resnet50", "model_kwargs": {}}))
    (out / "metrics.json").write_text(json.dumps({"task": "instance_segmentation", "config": "c.yaml", "metrics": {
        "bbox_AP": 41.5, "segm_AP": 37.5}, "framework": "detectron2", "ap_scale": "percent"}))
    command = ["python", "downstream/detectron2/train_net.py", "--config-file", "c.yaml", "--checkpoint", "last.pth",
               "--coco-root", str(coco), "OUTPUT_DIR", str(out)]
    recorded = record("detectron2", [command], out, "last.pth", {"pretrain_data": "ImageNet-1k", "pretrain_epochs": 400})
    return run_dir, recorded


def _report_row(run_dir, method: str) -> str:
    from bam_dense.bench.report import write_report

    report = write_report([run_dir], run_dir).read_text()
    return next(line for line in report.splitlines() if line.startswith(f"| {method} |"))


def test_a_detectron2_step_records_what_its_written_config_ran_and_is_compared_with_the_lewel_rows(tmp_path):
    import yaml

    run_dir, recorded = _detectron2_run(tmp_path, yaml.safe_dump(_written_config("mask_rcnn_R_50_FPN_1x_ssl.yaml")))
    assert recorded["resolution"] == COCO == BENCHMARKS["coco_maskrcnn_r50_fpn_1x"].resolution_of()
    assert (recorded["dataset"], recorded["split"], recorded["protocol"]) == ("COCO", "val", "fine-tuned")
    assert recorded["schedule"] == "90000 iterations at batch 16, lr 0.02, steps 60000/80000"
    assert recorded["detector"] == ("GeneralizedRCNN with masks: build_resnet_fpn_backbone, StandardROIHeads, "
                                    "box head 4 conv + 1 fc")
    assert recorded["norm"] == "backbone SyncBN, FPN SyncBN, box head SyncBN, mask head SyncBN"
    assert (recorded["arch"], recorded["patch"], recorded["layers"]) == ("ResNet-50", "n/a", "stages res2/res3/res4/res5")
    row = _report_row(run_dir, "LEWEL_B (SyncBN 400ep)")  # the shipped config, as an 8-GPU run writes it
    assert "**same protocol**" in row and "same recipe (15 values checked)" in row


def test_a_detectron2_run_of_another_schedule_or_norm_names_each_difference(tmp_path):
    import yaml

    # the 2x config on one GPU (train_net.py turns SyncBN into BN there), filed under the 1x benchmark
    config = _written_config("mask_rcnn_R_50_FPN_2x_ssl.yaml", **{f"MODEL.{k}.NORM": "BN" for k in (
        "RESNETS", "FPN", "ROI_BOX_HEAD", "ROI_MASK_HEAD")})
    run_dir, recorded = _detectron2_run(tmp_path, yaml.safe_dump(config))
    assert recorded["schedule"] == "180000 iterations at batch 16, lr 0.02, steps 120000/160000"
    row = _report_row(run_dir, "LEWEL_B (SyncBN 400ep)")
    assert "not the same protocol" in row and "different recipe" in row
    assert "`SOLVER.MAX_ITER` 180000 (recipe 90000)" in row and "`MODEL.RESNETS.NORM` 'BN' (recipe 'SyncBN')" in row
    c4 = _report_row(_detectron2_run(tmp_path / "c4", yaml.safe_dump(_written_config("mask_rcnn_R_50_C4_1x_ssl.yaml")),
                                     "coco_maskrcnn_r50_c4_1x")[0], "LEWEL_B (EMAN 200ep)")
    assert "same recipe" in c4 and "pretraining epochs 200 (published) vs 400 (enc)" in c4


def test_a_lazy_detectron2_config_is_read_without_constructing_its_objects(tmp_path):
    """LazyConfig.save writes with yaml.dump: tuples and a functools.partial carry python tags."""
    import pytest

    from bam_dense.bench.conditions import read_detectron2_config
    from bam_dense.core.errors import UserFacingError

    lazy = """dataloader:
  train:
    mapper:
      augmentations:
      - {_target_: detectron2.data.transforms.augmentation_impl.RandomFlip, horizontal: true}
      - {_target_: detectron2.data.transforms.augmentation_impl.ResizeScale, max_scale: 2.0, min_scale: 0.1, target_height: 1024, target_width: 1024}
      - _target_: detectron2.data.transforms.augmentation_impl.FixedSizeCrop
        crop_size: !!python/tuple [1024, 1024]
    total_batch_size: 64
model:
  _target_: detectron2.modeling.meta_arch.rcnn.GeneralizedRCNN
  backbone:
    _target_: detectron2.modeling.backbone.vit.SimpleFeaturePyramid
    net: {_target_: detectron2.modeling.backbone.vit.ViT, window_size: 14, use_rel_pos: true,
      window_block_indexes: [0, 1, 3, 4, 6, 7, 9, 10],
      norm_layer: !!python/object/apply:functools.partial {args: [!!python/name:torch.nn.LayerNorm ''], kwds: {eps: 1.0e-06}}}
train: {max_iter: 184375}
"""
    run_dir, recorded = _detectron2_run(tmp_path, lazy, "coco_vitdet_b")
    assert recorded["resolution"] == "large-scale jitter, 1024 x 1024" == BENCHMARKS["coco_vitdet_b"].resolution_of()
    assert recorded["schedule"] == "184375 iterations at batch 64"
    assert recorded["detector"] == "GeneralizedRCNN: SimpleFeaturePyramid on ViT"
    config = read_detectron2_config(run_dir / "enc" / "coco")
    assert config["dataloader"]["train"]["mapper"]["augmentations"][2]["crop_size"] == [1024, 1024]
    assert config["model"]["backbone"]["net"]["norm_layer"] == "!!python/object/apply:functools.partial"
    row = _report_row(run_dir, "MAE ViT-B")
    assert "same recipe (5 values checked)" in row and "architecture ViT-B (published) vs ResNet-50 (enc)" in row
    (run_dir / "enc" / "coco" / "config.yaml").unlink()
    with pytest.raises(UserFacingError, match="config.yaml is missing"):
        read_detectron2_config(run_dir / "enc" / "coco")
