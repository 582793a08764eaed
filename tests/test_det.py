"""Detection through the real MMDetection Runner on the synthetic COCO layout; detectron2 configs."""

from __future__ import annotations

import json
import math

import pytest
import timm
import torch
from conftest import REPO, detectron2_yaml

from bam_dense.core.paths import bundled
from bam_dense.downstream import det
from bam_dense.downstream.weight_check import PretrainedWeightsNotLoaded

CONFIGS = bundled("configs/mmdet", required=True)


def test_mask_rcnn_r50_fpn_trains_and_scores_with_coco_metrics(resnet_checkpoint, synthetic_root, tmp_path):
    config = CONFIGS / "tiny" / "mask-rcnn_r50_fpn_coco.py"
    root = synthetic_root / "coco"
    runner = det.train(str(config), str(resnet_checkpoint), str(tmp_path), data_root=str(root))
    losses = [float(v) for v in runner.message_hub.get_scalar("train/loss").data[0]]
    assert losses and all(math.isfinite(v) for v in losses)
    check = json.loads((tmp_path / "pretrained_weight_check.json").read_text())
    assert check["ok"] and check["prefix"] == "backbone." and check["checked"] == 318
    pretrained = torch.load(check["checkpoint"], weights_only=True)["state_dict"]
    backbone = runner.model.backbone.state_dict()
    assert any(not torch.equal(backbone[k[len("backbone."):]], v) for k, v in pretrained.items())
    det.test(str(config), str(tmp_path / "iter_4.pth"), str(tmp_path), data_root=str(root))
    saved = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("bbox_AP", "bbox_AP_50", "bbox_AP_75", "bbox_AP_s", "bbox_AP_m", "bbox_AP_l",
                "segm_AP", "segm_AP_50", "segm_AP_75", "segm_AP_s", "segm_AP_m", "segm_AP_l"):
        assert key in saved["metrics"], key
    assert len(saved["checkpoint_sha256"]) == 64


def test_weight_check_catches_a_wrong_prefix(resnet_checkpoint, synthetic_root, tmp_path):
    from bam_dense.convert import convert

    converted = tmp_path / "r50_mmdet.pth"
    convert(resnet_checkpoint, "mmdet", converted)  # keys under 'backbone.'
    with pytest.raises(PretrainedWeightsNotLoaded, match=r"not in the checkpoint .*conv1\.weight"):
        det.train(str(CONFIGS / "tiny" / "mask-rcnn_r50_fpn_coco.py"), str(converted), str(tmp_path / "w"),
                  cfg_options=["model.backbone.init_cfg.prefix=None"], data_root=str(synthetic_root / "coco"))


def test_vit_detector_builds_and_runs_forward_and_backward(tmp_path):
    from mmdet.registry import MODELS
    from mmdet.structures import DetDataSample
    from mmdet.utils import register_all_modules
    from mmengine.config import Config
    from mmengine.structures import InstanceData

    import bam_dense.downstream.mmdet_modules  # noqa: F401

    register_all_modules()
    cfg = Config.fromfile(CONFIGS / "tiny" / "mask-rcnn_vit_sfp_coco.py")
    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model)
    model.init_weights()
    sample = DetDataSample(metainfo=dict(img_shape=(128, 128), pad_shape=(128, 128), ori_shape=(128, 128), scale_factor=(1.0, 1.0)))
    from mmdet.structures.mask import BitmapMasks

    mask = torch.zeros(1, 128, 128, dtype=torch.uint8)
    mask[0, 20:60, 30:80] = 1
    sample.gt_instances = InstanceData(bboxes=torch.tensor([[30.0, 20.0, 80.0, 60.0]]), labels=torch.tensor([2]),
                                       masks=BitmapMasks(mask.numpy(), 128, 128))
    data = model.data_preprocessor({"inputs": [torch.randint(0, 255, (3, 128, 128), dtype=torch.uint8)],
                                    "data_samples": [sample]}, training=True)
    total, _ = model.parse_losses(model(**data, mode="loss"))
    total.backward()
    assert math.isfinite(total.item())
    assert model.backbone.blocks[0].attn.qkv.weight.grad is not None
    assert model.neck.stages[0][0].weight.grad is not None


def _cfg(name: str):
    from mmengine.config import Config

    return Config.fromfile(CONFIGS / name)


def test_vit_detector_pads_to_1024_at_test_as_in_training(tmp_path):
    """ViTDet pads every image to 1024 x 1024 at test too: the position table sees the training grid."""
    import numpy as np
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.dataset import Compose
    from PIL import Image

    import bam_dense.downstream.mmdet_modules  # noqa: F401

    register_all_modules()
    cfg = _cfg("mask-rcnn_vit-b16_sfp_lsj-100e_coco.py")
    Image.fromarray(np.full((480, 640, 3), 90, np.uint8)).save(tmp_path / "a.jpg")
    steps = [t for t in cfg.test_dataloader.dataset.pipeline if t["type"] != "LoadAnnotations"]
    packed = Compose(steps)(dict(img_path=str(tmp_path / "a.jpg"), img_id=0))
    assert packed["data_samples"].img_shape == (768, 1024)  # the image itself: boxes are clipped to it
    pre = MODELS.build(cfg.model.data_preprocessor)
    out = pre({"inputs": [packed["inputs"]], "data_samples": [packed["data_samples"]]}, training=False)
    assert tuple(out["inputs"].shape[-2:]) == (1024, 1024)  # the training grid, not 1024 x 768
    assert out["data_samples"][0].img_shape == (768, 1024)
    # training: the same 1024 x 1024 (with the masks padded to match)
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData

    sample = packed["data_samples"]
    sample.gt_instances = InstanceData(bboxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.long),
                                       masks=BitmapMasks(np.zeros((0, 768, 1024), np.uint8), 768, 1024))
    out = pre({"inputs": [packed["inputs"]], "data_samples": [sample]}, training=True)
    assert tuple(out["inputs"].shape[-2:]) == (1024, 1024)


def test_vit_detector_test_forward_on_cpu_pads_and_pastes_masks_at_the_original_size():
    from mmdet.registry import MODELS
    from mmdet.structures import DetDataSample
    from mmdet.utils import register_all_modules

    import bam_dense.downstream.mmdet_modules  # noqa: F401

    register_all_modules()
    cfg = _cfg("tiny/mask-rcnn_vit_sfp_coco.py")  # the full config's pad, at 128 px
    cfg.model.backbone.init_cfg = None
    cfg.model.test_cfg.rcnn.score_thr = 0.0  # keep the random model's detections, wherever they are
    torch.manual_seed(0)
    model = MODELS.build(cfg.model).eval()
    model.init_weights()
    sample = DetDataSample(metainfo=dict(img_shape=(64, 128), ori_shape=(48, 96), scale_factor=(128 / 96, 64 / 48)))
    data = model.data_preprocessor({"inputs": [torch.randint(0, 255, (3, 64, 128), dtype=torch.uint8)],
                                    "data_samples": [sample]}, training=False)
    assert tuple(data["inputs"].shape[-2:]) == (128, 128)
    with torch.no_grad():
        (result,) = model(**data, mode="predict")
    pred = result.pred_instances
    assert len(pred) > 0
    assert tuple(pred.masks.shape[-2:]) == (48, 96)
    assert float(pred.bboxes[:, 2].max()) <= 96 + 1e-3 and float(pred.bboxes[:, 3].max()) <= 48 + 1e-3


def test_mask_rcnn_recipe_settings_and_the_model_builds():
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    cfg = _cfg("mask-rcnn_r50_fpn_1x_coco.py")
    b = cfg.model.backbone
    assert (b.type, b.depth, b.frozen_stages, b.norm_eval, b.norm_cfg.type, b.style) == ("ResNet", 50, -1, False, "SyncBN", "pytorch")
    assert cfg.model.neck.norm_cfg.type == "SyncBN" and cfg.model.roi_head.mask_head.norm_cfg.type == "SyncBN"
    assert cfg.model.roi_head.bbox_head.type == "Shared4Conv1FCBBoxHead"
    assert cfg.train_cfg.max_epochs == 12 and cfg.optim_wrapper.optimizer.lr == 0.02
    scales = cfg.train_dataloader.dataset.pipeline[2].scales
    assert [s[1] for s in scales] == [640, 672, 704, 736, 768, 800]
    assert cfg.model.data_preprocessor.mean == [123.675, 116.28, 103.53] and cfg.model.data_preprocessor.bgr_to_rgb
    two = _cfg("mask-rcnn_r50_fpn_2x_coco.py")
    assert two.train_cfg.max_epochs == 24 and two.param_scheduler[1].milestones == [16, 22]
    register_all_modules()
    cfg.model.backbone.init_cfg = None
    MODELS.build(cfg.model)


def test_mask_rcnn_2x_config_schedule_equals_mmselfsup():
    # mmselfsup 1.x (commit db861f30487c9a0b0cb3e35e176d6058887660bc)
    # configs/benchmarks/mmdetection/coco/mask-rcnn_r50_fpn_ms-2x_coco.py: the whole param_scheduler list
    # (mmengine replaces the _base_ list wholesale, so the child must hold both entries).
    source = [
        dict(type="LinearLR", start_factor=0.001, by_epoch=False, begin=0, end=1000),
        dict(type="MultiStepLR", begin=0, end=24, by_epoch=True, milestones=[16, 22], gamma=0.1),
    ]
    two = _cfg("mask-rcnn_r50_fpn_2x_coco.py")
    assert [dict(s) for s in two.param_scheduler] == source
    assert two.train_cfg.type == "EpochBasedTrainLoop" and two.train_cfg.max_epochs == 24


def test_vit_detector_recipe_settings_and_the_model_builds():
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    import bam_dense.downstream.mmdet_modules  # noqa: F401

    cfg = _cfg("mask-rcnn_vit-b16_sfp_lsj-100e_coco.py")
    assert cfg.model.backbone.type == "TimmViT" and cfg.model.backbone.arch == "vit_base_patch16_224"
    assert cfg.model.neck.type == "SimpleFeaturePyramid" and cfg.model.neck.scale_factors == (4.0, 2.0, 1.0, 0.5)
    assert cfg.optim_wrapper.paramwise_cfg.decay_rate == 0.7 and cfg.optim_wrapper.optimizer.weight_decay == 0.1
    assert cfg.train_cfg.max_iters == 184375 and cfg.train_dataloader.batch_size * 16 == 64
    register_all_modules()
    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model)
    model.init_weights()
    assert sum(p.numel() for p in model.backbone.parameters()) > 85e6


D2_CONFIGS = bundled("configs/detectron2", required=True)


def _d2_yaml(name: str) -> dict:
    return detectron2_yaml(D2_CONFIGS / name)


@pytest.mark.parametrize(("name", "max_iter", "steps"), [
    ("mask_rcnn_R_50_FPN_1x_ssl.yaml", 90000, [60000, 80000]),
    ("mask_rcnn_R_50_FPN_2x_ssl.yaml", 180000, [120000, 160000]),
    ("mask_rcnn_R_50_C4_1x_ssl.yaml", 90000, [60000, 80000]),
])
def test_detectron2_yaml_configs_hold_the_moco_lewel_settings(name, max_iter, steps):
    cfg = _d2_yaml(name)
    m = cfg["MODEL"]
    assert m["PIXEL_MEAN"] == [123.675, 116.28, 103.53] and m["PIXEL_STD"] == [58.395, 57.12, 57.375]
    assert m["RESNETS"]["STRIDE_IN_1X1"] is False and m["RESNETS"]["NORM"] == "SyncBN" and m["BACKBONE"]["FREEZE_AT"] == 0
    assert cfg["INPUT"]["FORMAT"] == "RGB" and m["MASK_ON"] is True
    assert cfg["SOLVER"]["MAX_ITER"] == max_iter and cfg["SOLVER"]["STEPS"] == steps
    assert cfg["SOLVER"]["IMS_PER_BATCH"] == 16 and cfg["SOLVER"]["BASE_LR"] == 0.02
    assert cfg["INPUT"]["MIN_SIZE_TRAIN"] == [640, 672, 704, 736, 768, 800]
    if "C4" in name:
        assert m["ROI_HEADS"]["NAME"] == "Res5ROIHeadsExtraNorm"
    else:
        assert m["ROI_BOX_HEAD"]["NUM_CONV"] == 4 and m["ROI_BOX_HEAD"]["NORM"] == "SyncBN" and m["FPN"]["NORM"] == "SyncBN"


def test_detectron2_configs_parse_in_detectron2_and_train_net_registers_its_head():
    pytest.importorskip("detectron2")
    import importlib.util

    from detectron2.config import get_cfg

    spec = importlib.util.spec_from_file_location("bam_train_net", REPO / "downstream" / "detectron2" / "train_net.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from detectron2.modeling import ROI_HEADS_REGISTRY

    assert "Res5ROIHeadsExtraNorm" in ROI_HEADS_REGISTRY
    for name in ("mask_rcnn_R_50_FPN_1x_ssl.yaml", "mask_rcnn_R_50_C4_1x_ssl.yaml"):
        cfg = get_cfg()
        cfg.merge_from_file(str(D2_CONFIGS / name))
        assert cfg.MODEL.RESNETS.STRIDE_IN_1X1 is False and cfg.INPUT.FORMAT == "RGB"


def test_detectron2_train_net_trains_checks_weights_and_scores(synthetic_root, tmp_path):
    pytest.importorskip("detectron2")
    import os
    import subprocess

    from conftest import PYTHON

    torch.manual_seed(0)
    ckpt = tmp_path / "r50.pth"
    torch.save(timm.create_model("resnet50", num_classes=0).state_dict(), ckpt)
    out = tmp_path / "d2"
    cmd = [PYTHON, str(REPO / "downstream" / "detectron2" / "train_net.py"), "--config-file",
           str(D2_CONFIGS / "mask_rcnn_R_50_FPN_1x_ssl.yaml"), "--checkpoint", str(ckpt), "--coco-root", str(synthetic_root / "coco"),
           "SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2", "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "256",
           "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "256", "TEST.PRECISE_BN.ENABLED", "False",
           "DATALOADER.NUM_WORKERS", "0", "MODEL.ROI_HEADS.NUM_CLASSES", "10", "OUTPUT_DIR", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "pretrained-weight check: all 318 backbone tensors hold" in proc.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"bbox_AP", "segm_AP", "bbox_AP_50"} <= set(metrics["metrics"])
