"""Published numbers the leaderboard compares against (METHODS.md section 4, DOWNSTREAM.md section 6).

One entry per benchmark (task, data, architecture): the metric a step's ``metrics.json`` reports, how to read
it, and the published results with their sources. Every published row records the *recipe* that produced it
(:data:`RECIPES`): the fine-tuning recipe of a benchmark moves its numbers by points (iBOT's ADE20K ViT-S
recipe against MAE's, say), so the report calls a row "same recipe" only when the run's resolved config
has every value the row's recipe requires. Adding a benchmark is adding one entry here and one step kind in
:mod:`bam_dense.bench.plan` (or reusing one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Recipe:
    """A fine-tuning or evaluation recipe: where it is defined and the config values that identify it.

    ``requires`` maps dotted keys of the resolved mmengine config (what ``seg test`` / ``det test`` record as
    ``resolved_config`` in metrics.json) to the recipe's values. Empty when the source does not state its
    recipe, or when the step records no config to check (DAVIS, detectron2): such rows are never called
    "same recipe".
    """

    id: str
    source: str
    requires: dict[str, Any] = field(default_factory=dict)
    note: str = ""


RECIPES: dict[str, Recipe] = {r.id: r for r in (
    Recipe("mae-upernet-vit", "MAE paper A.4; mmseg configs/mae/mae-base_upernet_8xb2-amp-160k_ade20k-512x512.py",
           {"model.backbone.type": "MAE", "optim_wrapper.optimizer.lr": 1e-4,
            "optim_wrapper.paramwise_cfg.layer_decay_rate": 0.65, "train_cfg.max_iters": 160000,
            "model.test_cfg.mode": "slide"},
           "BEiT-style ViT with layer scale, AdamW lr 1e-4, layer decay 0.65, 160k iterations at batch 16"),
    Recipe("ibot-upernet-vits", "bytedance/ibot@da316d8 evaluation/semantic_segmentation/configs/upernet/"
           "vit_small_512_ade20k_160k.py",
           {"model.backbone.type": "VisionTransformer", "model.backbone.final_norm": False,
            "model.decode_head.channels": 384, "optim_wrapper.optimizer.lr": 3e-5,
            "optim_wrapper.paramwise_cfg.layer_decay_rate": 0.9, "train_cfg.max_iters": 160000,
            "model.test_cfg.mode": "slide"},
           "DINO-style ViT (no layer scale, no norm on the tapped blocks 3/5/7/11), UperNet channels 384, AdamW "
           "lr 3e-5, layer decay 0.9, 160k iterations at batch 16"),
    Recipe("ibot-upernet-vitb", "bytedance/ibot@da316d8 evaluation/semantic_segmentation/configs/upernet/"
           "vit_base_512_ade20k_160k.py",
           {"model.backbone.type": "VisionTransformer", "model.backbone.final_norm": False,
            "model.decode_head.channels": 768, "optim_wrapper.optimizer.lr": 7e-4,
            "optim_wrapper.paramwise_cfg.layer_decay_rate": 0.65, "train_cfg.max_iters": 160000,
            "model.test_cfg.mode": "slide"},
           "as the iBOT ViT-S recipe with ViT-B widths, AdamW lr 7e-4, layer decay 0.65"),
    Recipe("mmseg-upernet-r50", "mmseg configs/upernet/upernet_r50_4xb4-160k_ade20k-512x512.py",
           {"model.backbone.type": "ResNetV1c", "optim_wrapper.optimizer.lr": 0.01, "train_cfg.max_iters": 160000},
           "supervised ImageNet ResNetV1c (deep stem); bam-dense's config uses the 7x7-stem ResNet that SSL "
           "checkpoints have, so its runs differ in the stem"),
    Recipe("mmseg-fcn-r50-voc12aug", "mmseg configs/fcn/fcn_r50-d8_4xb4-20k_voc12aug-512x512.py",
           {"model.backbone.type": "ResNetV1c", "optim_wrapper.optimizer.lr": 0.01, "train_cfg.max_iters": 20000},
           "supervised ImageNet ResNetV1c (deep stem)"),
    Recipe("ssl-fcn-r50-voc12aug", "mmselfsup 0.x benchmarks/mmsegmentation/voc12aug/fcn_r50-d8_512x512_20k_voc12aug.py",
           {"optim_wrapper.optimizer.lr": 0.01, "train_cfg.max_iters": 20000},
           "the mmseg FCN recipe on a torchvision-style ResNet-50; the backbone variant is not re-checked here"),
    Recipe("ssl-maskrcnn-r50-fpn-1x", "LEWEL/PixPro detectron2 configs; mmselfsup 1.x "
           "benchmarks/mmdetection/coco/mask-rcnn_r50_fpn_ms-1x_coco.py",
           {"train_cfg.max_epochs": 12, "model.backbone.norm_cfg.type": "SyncBN",
            "model.roi_head.bbox_head.type": "Shared4Conv1FCBBoxHead"},
           "SyncBN everywhere, 4conv1fc box head, multi-scale 640-800, 90k iterations at batch 16"),
    Recipe("ssl-maskrcnn-r50-fpn-2x", "LEWEL README (detectron2 2x); mmselfsup 1.x mask-rcnn_r50_fpn_ms-2x_coco.py",
           {"train_cfg.max_epochs": 24, "model.backbone.norm_cfg.type": "SyncBN",
            "model.roi_head.bbox_head.type": "Shared4Conv1FCBBoxHead"}),
    Recipe("ssl-maskrcnn-r50-c4-1x", "LEWEL / MoCo detectron2 configs (C4 with the extra-norm res5 head)", {},
           "detectron2 only: its runs record no mmengine config to check"),
    Recipe("vitdet-maskrcnn-vitb", "ViTDet (detectron2 projects/ViTDet; mmdet projects/ViTDet)",
           {"model.backbone.window_size": 14},
           "window attention + relative position bias in ViTDet; bam-dense's mmdet variant uses global attention, "
           "so its runs are reported as a different recipe until that changes"),
    Recipe("dino-davis-480p", "facebookresearch/dino eval_video_segmentation.py", {},
           "propagation settings are command-line arguments, not a config: not checked"),
    Recipe("unverified", "the source does not state its fine-tuning recipe", {},
           "never reported as the same recipe as a run"),
    Recipe("bam-dense-synthetic", "bam-dense's tiny CPU configs on generated data", {}),
)}


@dataclass(frozen=True)
class Published:
    method: str
    value: float
    source: str
    note: str = ""
    recipe: str = ""  # a key of RECIPES; empty: the benchmark's own recipe


@dataclass(frozen=True)
class Benchmark:
    id: str
    title: str
    metric: str  # key in the step's metrics JSON (``metrics`` section), e.g. "mIoU", "bbox_AP", "J&F-Mean"
    unit: str  # "%" or "" (fraction)
    protocol: str
    results: tuple[Published, ...] = field(default_factory=tuple)
    recipe: str = "unverified"  # the recipe of rows that name none

    def recipe_of(self, row: Published) -> Recipe:
        return RECIPES[row.recipe or self.recipe]


BENCHMARKS: dict[str, Benchmark] = {b.id: b for b in (
    Benchmark(
        "ade20k_upernet_vitb16", "ADE20K, UperNet ViT-B/16, 160k", "mIoU", "%",
        "UperNet + aux FCN, 512 crops, 160k iterations at batch 16, AdamW lr 1e-4, layer decay 0.65, drop path 0.1, "
        "single-scale sliding window 512/341 (DOWNSTREAM.md 1.2-1.3)",
        (
            Published("BAM (ViT-B/16)", 46.1, "public benchmark listing of the BAM paper (METHODS.md 4)", "protocol details not verified",
                      recipe="unverified"),
            Published("MAE", 48.1, "MAE paper; mmseg reproduction 48.13 (configs/mae/metafile.yaml)", recipe="mae-upernet-vit"),
            Published("iBOT", 50.0, "iBOT paper / README", recipe="ibot-upernet-vitb"),
            Published("DINO", 46.8, "iBOT paper table", recipe="ibot-upernet-vitb"),
            Published("Supervised IN-1k (DeiT)", 46.6, "iBOT paper table", "47.4 in the MAE paper's setup",
                      recipe="ibot-upernet-vitb"),
            Published("MoCo v3", 47.3, "MAE paper", recipe="mae-upernet-vit"),
            Published("BEiT", 45.8, "iBOT paper table", "47.1 in the MAE paper", recipe="ibot-upernet-vitb"),
        ),
    ),
    Benchmark(
        "ade20k_upernet_vits16", "ADE20K, UperNet ViT-S/16, 160k", "mIoU", "%",
        "UperNet + aux FCN, 512 crops, 160k iterations at batch 16; two shipped recipes: iBOT's "
        "(configs/mmseg/upernet_vit-s16_ibot_ade20k-512x512_160k.py, the one its published row used) and MAE's "
        "with ViT-S widths (configs/mmseg/upernet_vit-s16_ade20k-512x512_160k.py)",
        (Published("iBOT ViT-S/16", 45.4, "iBOT paper / README", recipe="ibot-upernet-vits"),),
        recipe="ibot-upernet-vits",
    ),
    Benchmark(
        "ade20k_upernet_r50", "ADE20K, UperNet R50, 160k", "mIoU", "%",
        "UperNet R50, 512 crops, SGD lr 0.01, batch 16 (DOWNSTREAM.md 1.5)",
        (Published("Supervised (mmseg, ResNetV1c)", 42.05, "mmseg configs/upernet/metafile.yaml"),),
        recipe="mmseg-upernet-r50",
    ),
    Benchmark(
        "voc12aug_fcn_r50", "Pascal VOC 2012 aug, FCN-d8 R50, 20k", "mIoU", "%",
        "FCN-d8 R50, 512 crops, 20k iterations at batch 16, SGD lr 0.01 poly, val 1449 images (DOWNSTREAM.md 2)",
        (
            Published("LEWEL", 67.8, "benchmark aggregator listing of the LEWEL paper (METHODS.md 2.9)", "likely LEWEL_B 400 ep; confirm in the paper",
                      recipe="unverified"),
            Published("DenseCL 200ep", 69.47, "mmselfsup 0.x model zoo (69.4 in the DenseCL README)", recipe="ssl-fcn-r50-voc12aug"),
            Published("MoCo v2 200ep", 67.55, "mmselfsup 0.x model zoo", recipe="ssl-fcn-r50-voc12aug"),
            Published("BYOL 200ep", 67.16, "mmselfsup 0.x model zoo", recipe="ssl-fcn-r50-voc12aug"),
            Published("Supervised (mmseg, ResNetV1c)", 67.08, "mmseg configs/fcn/metafile.yaml", recipe="mmseg-fcn-r50-voc12aug"),
        ),
        recipe="ssl-fcn-r50-voc12aug",
    ),
    Benchmark(
        "coco_maskrcnn_r50_fpn_1x", "COCO, Mask R-CNN R50-FPN 1x (box AP)", "bbox_AP", "%",
        "SyncBN everywhere, 4conv1fc box head, multi-scale 640-800, 90k iterations at batch 16 (DOWNSTREAM.md 3a/3b)",
        (
            Published("LEWEL_B (SyncBN 400ep)", 41.9, "LEWEL README"),
            Published("LEWEL_B (EMAN 200ep)", 41.3, "LEWEL README"),
            Published("PixPro (400ep)", 41.4, "PixPro README"),
            Published("BYOL (200ep)", 40.9, "mmselfsup 0.x model zoo"),
            Published("MoCo v2 (800ep)", 40.4, "PixPro README"),
            Published("Supervised IN-1k", 39.7, "PixPro README"),
        ),
        recipe="ssl-maskrcnn-r50-fpn-1x",
    ),
    Benchmark(
        "coco_maskrcnn_r50_fpn_1x_mask", "COCO, Mask R-CNN R50-FPN 1x (mask AP)", "segm_AP", "%",
        "as the box AP row",
        (
            Published("LEWEL_B (SyncBN 400ep)", 37.9, "LEWEL README"),
            Published("LEWEL_B (EMAN 200ep)", 37.4, "LEWEL README"),
            Published("PixPro (400ep)", 37.4, "PixPro README"),
            Published("Supervised IN-1k", 35.9, "PixPro README"),
        ),
        recipe="ssl-maskrcnn-r50-fpn-1x",
    ),
    Benchmark(
        "coco_maskrcnn_r50_fpn_2x", "COCO, Mask R-CNN R50-FPN 2x (box AP)", "bbox_AP", "%",
        "the 1x recipe for 180k iterations",
        (Published("LEWEL_B (SyncBN 400ep)", 43.4, "LEWEL README"), Published("LEWEL_B (EMAN 200ep)", 42.2, "LEWEL README")),
        recipe="ssl-maskrcnn-r50-fpn-2x",
    ),
    Benchmark(
        "coco_maskrcnn_r50_c4_1x", "COCO, Mask R-CNN R50-C4 1x (box AP)", "bbox_AP", "%",
        "C4 with the extra-norm res5 head, SyncBN, 90k iterations (DOWNSTREAM.md 3a)",
        (Published("LEWEL_B (EMAN 200ep)", 38.5, "LEWEL README"), Published("Supervised IN-1k", 38.2, "PixPro README")),
        recipe="ssl-maskrcnn-r50-c4-1x",
    ),
    Benchmark(
        "coco_vitdet_b", "COCO, ViTDet Mask R-CNN ViT-B (box AP)", "bbox_AP", "%",
        "simple feature pyramid, LSJ 1024, 100 epochs (DOWNSTREAM.md 3c); bam-dense's mmdet variant uses global attention",
        (Published("MAE ViT-B", 51.6, "ViTDet README (detectron2) / mmdet projects/ViTDet"),),
        recipe="vitdet-maskrcnn-vitb",
    ),
    Benchmark(
        "davis17_val", "DAVIS-2017 val, label propagation (J&F-Mean)", "J&F-Mean", "",
        "frozen last-block patch tokens, 480p, top-5, temperature 0.1, first + 7 previous frames, radius 12 (DOWNSTREAM.md 4)",
        (
            Published("DINO ViT-S/16", 0.618, "DINO Table 5; script reference 0.6177"),
            Published("DINO ViT-B/16", 0.623, "DINO Table 5"),
            Published("Supervised IN ViT-S/8", 0.660, "DINO Table 5"),
            Published("BAM", 0.623, "public benchmark listing of the BAM paper", "listed as J mean; which measure is unverified",
                      recipe="unverified"),
        ),
        recipe="dino-davis-480p",
    ),
    Benchmark(
        "synthetic_linear_probe", "Synthetic ADE20K layout, linear per-patch probe (mIoU)", "linear_probe_miou", "",
        "bam-dense's development probe on generated data: checks the pipeline, not a benchmark", (),
        recipe="bam-dense-synthetic",
    ),
    Benchmark(
        "synthetic_davis", "Synthetic DAVIS layout, label propagation (J&F-Mean)", "J&F-Mean", "",
        "bam-dense's generated sequences: checks the pipeline, not a benchmark", (),
        recipe="bam-dense-synthetic",
    ),
    Benchmark(
        "synthetic_seg", "Synthetic ADE20K layout, tiny UperNet fine-tune (mIoU)", "mIoU", "%",
        "a few CPU iterations on generated data: checks the pipeline, not a benchmark", (),
        recipe="bam-dense-synthetic",
    ),
    Benchmark(
        "synthetic_det", "Synthetic COCO layout, tiny Mask R-CNN fine-tune (box AP)", "bbox_AP", "%",
        "a few CPU iterations on generated data: checks the pipeline, not a benchmark", (),
        recipe="bam-dense-synthetic",
    ),
)}
