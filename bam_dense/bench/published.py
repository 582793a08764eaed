"""Published numbers the leaderboard compares against (METHODS.md section 4, DOWNSTREAM.md section 6).

One entry per benchmark protocol: the metric a step's ``metrics.json`` reports, how to read it, and the
published results of that protocol with their sources. Adding a benchmark is adding one entry here and
one step kind in :mod:`bam_dense.bench.plan` (or reusing one).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Published:
    method: str
    value: float
    source: str
    note: str = ""


@dataclass(frozen=True)
class Benchmark:
    id: str
    title: str
    metric: str  # key in the step's metrics JSON (``metrics`` section), e.g. "mIoU", "bbox_AP", "J&F-Mean"
    unit: str  # "%" or "" (fraction)
    protocol: str
    results: tuple[Published, ...] = field(default_factory=tuple)


BENCHMARKS: dict[str, Benchmark] = {b.id: b for b in (
    Benchmark(
        "ade20k_upernet_vitb16", "ADE20K, UperNet ViT-B/16, 160k", "mIoU", "%",
        "UperNet + aux FCN, 512 crops, 160k iterations at batch 16, AdamW lr 1e-4, layer decay 0.65, drop path 0.1, "
        "single-scale sliding window 512/341 (DOWNSTREAM.md 1.2-1.3)",
        (
            Published("BAM (ViT-B/16)", 46.1, "public benchmark listing of the BAM paper (METHODS.md 4)", "protocol details not verified"),
            Published("MAE", 48.1, "MAE paper; mmseg reproduction 48.13 (configs/mae/metafile.yaml)"),
            Published("iBOT", 50.0, "iBOT paper / README"),
            Published("DINO", 46.8, "iBOT paper table"),
            Published("Supervised IN-1k (DeiT)", 46.6, "iBOT paper table", "47.4 in the MAE paper's setup"),
            Published("MoCo v3", 47.3, "MAE paper"),
            Published("BEiT", 45.8, "iBOT paper table", "47.1 in the MAE paper"),
        ),
    ),
    Benchmark(
        "ade20k_upernet_vits16", "ADE20K, UperNet ViT-S/16, 160k", "mIoU", "%",
        "the ViT-B/16 recipe with ViT-S widths (DOWNSTREAM.md 1.2)",
        (Published("iBOT ViT-S/16", 45.4, "PapersWithCode page for iBOT"),),
    ),
    Benchmark(
        "ade20k_upernet_r50", "ADE20K, UperNet R50, 160k", "mIoU", "%",
        "UperNet R50, 512 crops, SGD lr 0.01, batch 16 (DOWNSTREAM.md 1.5)",
        (Published("Supervised (mmseg, ResNetV1c)", 42.05, "mmseg configs/upernet/metafile.yaml"),),
    ),
    Benchmark(
        "voc12aug_fcn_r50", "Pascal VOC 2012 aug, FCN-d8 R50, 20k", "mIoU", "%",
        "FCN-d8 R50, 512 crops, 20k iterations at batch 16, SGD lr 0.01 poly, val 1449 images (DOWNSTREAM.md 2)",
        (
            Published("LEWEL", 67.8, "benchmark aggregator listing of the LEWEL paper (METHODS.md 2.9)", "likely LEWEL_B 400 ep; confirm in the paper"),
            Published("DenseCL 200ep", 69.47, "mmselfsup 0.x model zoo (69.4 in the DenseCL README)"),
            Published("MoCo v2 200ep", 67.55, "mmselfsup 0.x model zoo"),
            Published("BYOL 200ep", 67.16, "mmselfsup 0.x model zoo"),
            Published("Supervised (mmseg, ResNetV1c)", 67.08, "mmseg configs/fcn/metafile.yaml"),
        ),
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
    ),
    Benchmark(
        "coco_maskrcnn_r50_fpn_2x", "COCO, Mask R-CNN R50-FPN 2x (box AP)", "bbox_AP", "%",
        "the 1x recipe for 180k iterations",
        (Published("LEWEL_B (SyncBN 400ep)", 43.4, "LEWEL README"), Published("LEWEL_B (EMAN 200ep)", 42.2, "LEWEL README")),
    ),
    Benchmark(
        "coco_maskrcnn_r50_c4_1x", "COCO, Mask R-CNN R50-C4 1x (box AP)", "bbox_AP", "%",
        "C4 with the extra-norm res5 head, SyncBN, 90k iterations (DOWNSTREAM.md 3a)",
        (Published("LEWEL_B (EMAN 200ep)", 38.5, "LEWEL README"), Published("Supervised IN-1k", 38.2, "PixPro README")),
    ),
    Benchmark(
        "coco_vitdet_b", "COCO, ViTDet Mask R-CNN ViT-B (box AP)", "bbox_AP", "%",
        "simple feature pyramid, LSJ 1024, 100 epochs (DOWNSTREAM.md 3c); bam-dense's mmdet variant uses global attention",
        (Published("MAE ViT-B", 51.6, "ViTDet README (detectron2) / mmdet projects/ViTDet"),),
    ),
    Benchmark(
        "davis17_val", "DAVIS-2017 val, label propagation (J&F-Mean)", "J&F-Mean", "",
        "frozen last-block patch tokens, 480p, top-5, temperature 0.1, first + 7 previous frames, radius 12 (DOWNSTREAM.md 4)",
        (
            Published("DINO ViT-S/16", 0.618, "DINO Table 5; script reference 0.6177"),
            Published("DINO ViT-B/16", 0.623, "DINO Table 5"),
            Published("Supervised IN ViT-S/8", 0.660, "DINO Table 5"),
            Published("BAM", 0.623, "public benchmark listing of the BAM paper", "listed as J mean; which measure is unverified"),
        ),
    ),
    Benchmark(
        "synthetic_linear_probe", "Synthetic ADE20K layout, linear per-patch probe (mIoU)", "linear_probe_miou", "",
        "bam-dense's development probe on generated data: checks the pipeline, not a benchmark", (),
    ),
    Benchmark(
        "synthetic_davis", "Synthetic DAVIS layout, label propagation (J&F-Mean)", "J&F-Mean", "",
        "bam-dense's generated sequences: checks the pipeline, not a benchmark", (),
    ),
    Benchmark(
        "synthetic_seg", "Synthetic ADE20K layout, tiny UperNet fine-tune (mIoU)", "mIoU", "%",
        "a few CPU iterations on generated data: checks the pipeline, not a benchmark", (),
    ),
    Benchmark(
        "synthetic_det", "Synthetic COCO layout, tiny Mask R-CNN fine-tune (box AP)", "bbox_AP", "%",
        "a few CPU iterations on generated data: checks the pipeline, not a benchmark", (),
    ),
)}
