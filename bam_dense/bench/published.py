"""Published numbers the leaderboard compares against (METHODS.md sections 3-4, DOWNSTREAM.md sections 6 and 8).

One entry per benchmark (task, data, architecture): the step kinds that measure it, its dataset and the
encoder families it applies to (what ``bench run`` checks a plan against), the metric a step's ``metrics.json``
reports, how to read it, and the published results with their sources. Every published row states the
conditions it holds under (:meth:`Benchmark.conditions_of`, in the words of :mod:`bam_dense.bench.conditions`):
the benchmark's dataset, protocol kind (:data:`PROTOCOLS`), input resolution and shared conditions, then the row's
own (position-embedding rule, registers, head recipe, ...), its encoder's architecture and patch size and its
pretraining data and epochs; and the *recipe* that produced it (:data:`RECIPES`): the recipe of a benchmark moves
its numbers by points (iBOT's ADE20K ViT-S recipe against MAE's, say), so the report calls a row "same recipe"
only when the run's resolved config has every value the row's recipe requires (or, for steps that record no
config, when the recipe is one their recorded conditions identify), and "same protocol" only when that holds and
every condition the row states equals what the run recorded. Adding a benchmark is adding one entry here and one
step kind in :mod:`bam_dense.bench.plan` (or reusing one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bam_dense.bench.conditions import IMAGENET_VAL_LABELS, memory_words, propagation_words, short_side

# The protocol kinds a number can come from; numbers of two kinds are never comparable.
PROTOCOLS = {
    "fine-tuned": "the encoder fine-tuned together with a task head (UperNet, FCN, Mask R-CNN)",
    "frozen linear": "a linear (BatchNorm + 1x1) head trained on the frozen encoder's features",
    "retrieval": "no training: validation patches labelled by their nearest neighbours in a memory bank of training patches",
    "propagation": "no training: labels carried from frame to frame by the frozen features' affinities",
}


@dataclass(frozen=True)
class Recipe:
    """A fine-tuning or evaluation recipe: where it is defined and the config values that identify it.

    ``requires`` maps dotted keys of the resolved mmengine config (what ``seg test`` / ``det test`` record as
    ``resolved_config`` in metrics.json) to the recipe's values; ``detectron2`` maps dotted keys of the config a
    detectron2 step ran (its ``config.yaml``, recorded the same way; YAML ``SOLVER.MAX_ITER`` or LazyConfig
    ``train.max_iter``) to the values of the source's detectron2 config. A run is checked against the set of its
    framework; where that set is empty (the source states no config values for it, or the step records no config:
    DAVIS, retrieval, linear probe) the row is called "same recipe" only through ``by_conditions``.
    """

    id: str
    source: str
    requires: dict[str, Any] = field(default_factory=dict)
    note: str = ""
    resolution: str = ""  # when the recipe's input resolution is not its benchmark's
    # True where the step's recorded conditions (bam_dense.bench.conditions) state everything the recipe fixes: steps
    # that record no mmengine config (DAVIS, retrieval, linear probe) can then be the same protocol.
    by_conditions: bool = False
    detectron2: dict[str, Any] = field(default_factory=dict)


# The MoCo / InfoMin detectron2 setting LEWEL follows (LayneH/LEWEL@4ee47eb det_configs/coco_R_50_FPN_1x.yaml on
# Base-RCNN-FPN.yaml, with coco_R_50_FPN_1x_infomin.yaml's torchvision-style stride): SyncBN everywhere, nothing
# frozen, 4conv1fc box head, precise BN, multi-scale training 640-800 (detectron2's test default 800, max 1333).
_D2_TRAIN_SIZES = [640, 672, 704, 736, 768, 800]
_D2_SSL = {"MODEL.BACKBONE.FREEZE_AT": 0, "MODEL.RESNETS.NORM": "SyncBN", "TEST.PRECISE_BN.ENABLED": True,
           "SOLVER.IMS_PER_BATCH": 16, "SOLVER.BASE_LR": 0.02, "INPUT.MIN_SIZE_TRAIN": _D2_TRAIN_SIZES}
_D2_FPN = {**_D2_SSL, "MODEL.BACKBONE.NAME": "build_resnet_fpn_backbone", "MODEL.RESNETS.STRIDE_IN_1X1": False,
           "MODEL.FPN.NORM": "SyncBN", "MODEL.ROI_BOX_HEAD.NUM_CONV": 4, "MODEL.ROI_BOX_HEAD.NUM_FC": 1,
           "MODEL.ROI_BOX_HEAD.NORM": "SyncBN", "MODEL.ROI_MASK_HEAD.NORM": "SyncBN"}
_D2_1X = {"SOLVER.MAX_ITER": 90000, "SOLVER.STEPS": [60000, 80000]}
_D2_2X = {"SOLVER.MAX_ITER": 180000, "SOLVER.STEPS": [120000, 160000]}


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
    Recipe("ssl-maskrcnn-r50-fpn-1x", "LayneH/LEWEL@4ee47eb det_configs/coco_R_50_FPN_1x_infomin.yaml (on "
           "coco_R_50_FPN_1x.yaml, Base-RCNN-FPN.yaml); PixPro detectron2 configs; mmselfsup 1.x "
           "benchmarks/mmdetection/coco/mask-rcnn_r50_fpn_ms-1x_coco.py",
           {"train_cfg.max_epochs": 12, "model.backbone.norm_cfg.type": "SyncBN",
            "model.roi_head.bbox_head.type": "Shared4Conv1FCBBoxHead"},
           "SyncBN everywhere, 4conv1fc box head, multi-scale 640-800, 90k iterations at batch 16",
           detectron2={**_D2_FPN, **_D2_1X}),
    Recipe("ssl-maskrcnn-r50-fpn-2x", "LEWEL README (detectron2 2x: LayneH/LEWEL@4ee47eb det_configs/"
           "coco_R_50_FPN_2x_infomin.yaml, the 1x config at 180k iterations, steps 120k/160k); mmselfsup 1.x "
           "mask-rcnn_r50_fpn_ms-2x_coco.py",
           {"train_cfg.max_epochs": 24, "model.backbone.norm_cfg.type": "SyncBN",
            "model.roi_head.bbox_head.type": "Shared4Conv1FCBBoxHead"}, detectron2={**_D2_FPN, **_D2_2X}),
    Recipe("ssl-maskrcnn-r50-c4-1x", "LayneH/LEWEL@4ee47eb det_configs/coco_R_50_C4_1x.yaml and Base-RCNN-C4-BN.yaml "
           "on facebookresearch/moco@3402035 detection/configs/coco_R_50_C4_2x.yaml (C4 with the extra-norm res5 head)",
           {}, "detectron2 only: mmdet runs are never called the same recipe",
           detectron2={**_D2_SSL, **_D2_1X, "MODEL.BACKBONE.NAME": "build_resnet_backbone",
                       "MODEL.ROI_HEADS.NAME": "Res5ROIHeadsExtraNorm"}),
    Recipe("vitdet-maskrcnn-vitb", "ViTDet (facebookresearch/detectron2@02b5c4e projects/ViTDet/configs/COCO/"
           "mask_rcnn_vitdet_b_100ep.py, common/models/mask_rcnn_vitdet.py, coco_loader_lsj.py; mmdet projects/ViTDet)",
           {"model.backbone.window_size": 14},
           "window attention + relative position bias in ViTDet; bam-dense's mmdet variant uses global attention, "
           "so its runs are reported as a different recipe until that changes",
           detectron2={"model.backbone.net.window_size": 14, "model.backbone.net.window_block_indexes": [0, 1, 3, 4, 6, 7, 9, 10],
                       "model.backbone.net.use_rel_pos": True, "train.max_iter": 184375,
                       "dataloader.train.total_batch_size": 64}),
    Recipe("dino-davis-480p", "facebookresearch/dino eval_video_segmentation.py", {},
           "propagation settings are command-line arguments: compared as recorded conditions", by_conditions=True),
    Recipe("dinov3-davis-960", "DINOv3 paper Tab. 14 (no evaluation code released): DINO's propagation at short side 960",
           {}, "the propagation parameters are assumed to be DINO's (the paper states only the resolution)",
           resolution=short_side(960), by_conditions=True),
    Recipe("dinov3-linear-seg", "facebookresearch/dinov3@6876159 dinov3/eval/segmentation/configs/"
           "config-ade20k-linear-training.yaml (+ config.py defaults, models/heads/linear_head.py); DINOv3 paper Tab. 14",
           {"model.backbone.type": "FrozenTimmEncoder", "model.backbone.out_indices": [-1],
            "model.backbone.final_norm": True, "model.decode_head.type": "BNLinearHead",
            "model.decode_head.dropout_ratio": 0.1, "optim_wrapper.optimizer.type": "AdamW",
            "optim_wrapper.optimizer.lr": 1e-3, "optim_wrapper.optimizer.weight_decay": 1e-3,
            "train_cfg.max_iters": 40000, "train_dataloader.batch_size": 2, "model.test_cfg.mode": "slide",
            "model.test_cfg.crop_size": [512, 512], "model.test_cfg.stride": [341, 341]},
           "frozen encoder, last block's normed patch tokens, Dropout2d 0.1 + BatchNorm + 1x1 conv, AdamW lr 1e-3 wd 1e-3, "
           "warm-up 1500 then cosine, 40k iterations at batch 16 (8 x 2), 512 crops, sliding window 512/341"),
    Recipe("dinov2-linear-seg", "DINOv2 paper Tab. 10 (\"lin.\"); released config dl.fbaipublicfiles.com/dinov2/"
           "<model>/<model>_ade20k_linear_config.py (mmseg 0.x, a download, not read)", {},
           "DINOv2's own run of the linear protocol; its config was not read, so runs are never called the same recipe. "
           "Its head (dinov2@b8931f7 eval/segmentation/models/decode_heads/linear_head.py BNHead) applies BatchNorm "
           "before the dropout, DINOv3's (and bam-dense's default) the dropout first: model.decode_head.dropout_first="
           "False gives DINOv2's order. DINOv3 re-ran DINOv2 under its recipe (rows with recipe dinov3-linear-seg)"),
    Recipe("dinov2-linear-ms-seg", "DINOv2 paper Tab. 10 (\"+ms\"); released config <model>_ade20k_ms_config.py (a download, "
           "not read)", {},
           "the last four blocks concatenated, 640-px training, multi-scale test (DOWNSTREAM.md 8); config not read",
           resolution="640 px crops, multi-scale test"),
    Recipe("ibot-linear-seg", "bytedance/ibot@da316d8 evaluation/semantic_segmentation/configs/linear/"
           "vit_base_512_ade20k_160k.py + evaluation/README.md (ade20k_dense_linear: 4 GPUs x 4, lr 8e-4, out_with_norm)",
           {"model.backbone.out_indices": [3, 5, 7, 11], "model.decode_head.type": "FCNHead",
            "model.decode_head.num_convs": 0, "optim_wrapper.optimizer.lr": 8e-4,
            "optim_wrapper.optimizer.weight_decay": 0.05, "train_cfg.max_iters": 160000},
           "frozen encoder, blocks 3/5/7/11 normed and concatenated, a 1x1 conv without BatchNorm (FCNHead with no "
           "convs), AdamW lr 8e-4 wd 0.05, poly, 160k iterations at batch 16: not the DINOv2/DINOv3 linear recipe"),
    Recipe("hummingbird-retrieval", "Balazevic et al. 2023 (Hummingbird); vpariza/open-hummingbird-eval@5e79da2 README "
           "(memory bank 1024 x 10^4 patches, 2 augmentation epochs, scann)", {},
           "the retrieval step's parameters are compared as recorded conditions. The reference searches the memory bank "
           "with ScaNN (approximate nearest neighbours); bam-dense searches exactly (faiss IndexFlatIP or a matrix "
           "product), which can only find neighbours at least as near", resolution="512 x 512", by_conditions=True),
    Recipe("cribo-retrieval", "tileb1/CrIBo@311f569 README (dense NN retrieval, Hummingbird protocol)", {},
           "the retrieval step records no mmengine config: not checked; the README and eval_launcher.py state no input "
           "size or memory-bank size", resolution="not stated by CrIBo (Hummingbird's 512 x 512 likely, unverified)"),
    Recipe("lewel-lincls-r50", "LayneH/LEWEL@4ee47eb main_lincls.py run by scripts/srun_lin.sh (lr 0.4, batch 256, "
           "50 epochs, x0.1 at 30 and 40; main_lincls.py's own defaults, 100 epochs at lr 30, are not what it runs)", {},
           "image-level linear classification; compared as recorded conditions", by_conditions=True),
    Recipe("dino-lincls", "facebookresearch/dino@7c446df eval_linear.py + README (SGD, 100 epochs, random-resized crops "
           "and flips)", {}, "compared as recorded conditions", by_conditions=True),
    Recipe("bam-lincls", "DanielShalam/BAM@fd85871 scripts/linear/linear.slurm + README", {},
           "compared as recorded conditions", by_conditions=True),
    Recipe("mocov3-lincls", "facebookresearch/moco-v3@c349e6e main_lincls.py, CONFIG.md (SGD lr 3 x batch/256 for ViT, "
           "90 epochs, random-resized crops and flips)", {}, "compared as recorded conditions", by_conditions=True),
    Recipe("dinov2-lincls", "facebookresearch/dinov2@b8931f7 README; eval/linear.py (a grid of heads over n_last_blocks x "
           "avgpool x lr trained in one pass on augmented images)", {}, "compared as recorded conditions",
           by_conditions=True),
    Recipe("dinov3-lincls", "facebookresearch/dinov3@6876159 MODEL_CARD.md (Evaluation, first table: IN-ReaL; \"a linear "
           "layer applied on the class token and the average of the patch tokens\") and dinov3/eval/linear.py (random-"
           "resized crops and flips, a grid of learning rates); the DINOv3 paper's settings not read here", {},
           "the input size, epochs and blocks behind the published numbers are in no file read here, and the numbers "
           "are top-1 on the ImageNet-ReaL labels: never the same protocol as a run scored on ImageNet's val labels"),
    Recipe("unverified", "the source does not state its fine-tuning recipe", {},
           "never reported as the same recipe as a run"),
    Recipe("bam-dense-synthetic", "bam-dense's tiny CPU configs on generated data", {}),
)}


IN1K = "ImageNet-1k"


@dataclass(frozen=True)
class Published:
    """A published number with the conditions it holds under. ``epochs`` is an epoch count, or words where the
    source counts otherwise ("625k iterations") or does not say ("not stated"); ``patch`` is None only for
    convolutional encoders. ``resolution`` is set only where the row's differs from its recipe's / benchmark's."""

    method: str
    value: float
    source: str
    data: str  # pretraining data of the encoder
    epochs: int | str  # pretraining epochs
    arch: str  # "ViT-B", "ResNet-50", ...
    patch: int | None  # ViT patch size; None for CNNs
    note: str = ""
    recipe: str = ""  # a key of RECIPES; empty: the benchmark's own recipe
    resolution: str = ""
    # Conditions of this row that differ from its benchmark's (keys of bam_dense.bench.conditions.LABELS), e.g.
    # the position-embedding rule or register tokens of its encoder.
    conditions: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Benchmark:
    id: str
    title: str
    metric: str  # key in the step's metrics JSON (``metrics`` section), e.g. "mIoU", "bbox_AP", "J&F-Mean"
    unit: str  # "%" or "" (fraction)
    protocol: str  # the recipe in words
    results: tuple[Published, ...] = field(default_factory=tuple)
    recipe: str = "unverified"  # the recipe of rows that name none
    kind: str = "fine-tuned"  # a key of PROTOCOLS
    resolution: str = "512 crops; test short side 512"
    dataset: str = ""  # the evaluation data, in bam_dense.bench.conditions.DATASETS' words
    step_kinds: tuple[str, ...] = ()  # the plan step kinds that measure it (bench run refuses any other)
    families: tuple[str, ...] | None = None  # encoder families it applies to (vit, cnn); None: any
    # The step conditions every row of this benchmark shares (keys of bam_dense.bench.conditions.LABELS), beside
    # dataset, split, protocol and resolution; a row's own ``conditions`` override them.
    conditions: dict = field(default_factory=dict)

    def recipe_of(self, row: Published) -> Recipe:
        return RECIPES[row.recipe or self.recipe]

    def resolution_of(self, row: Published | None = None) -> str:
        if row is not None and row.resolution:
            return row.resolution
        recipe = self.recipe_of(row) if row is not None else RECIPES[self.recipe]
        return recipe.resolution or self.resolution

    def conditions_of(self, row: Published) -> dict:
        """Every condition ``row`` holds under, in the words a step records them (bam_dense.bench.conditions)."""
        return {"dataset": self.dataset, "split": "val", "protocol": self.kind, "resolution": self.resolution_of(row),
                "registers": 0, **self.conditions, **row.conditions, "arch": row.arch,
                "patch": "n/a" if row.patch is None else row.patch, "pretrain_data": row.data, "pretrain_epochs": row.epochs}


def missing_fields(bench: Benchmark, row: Published) -> list[str]:
    """The conditions ``row`` (of ``bench``) leaves empty: the leaderboard needs every one to compare numbers."""
    missing = [name for name in ("source", "data", "epochs", "arch") if getattr(row, name) in (None, "")]
    if row.patch is None and "vit" in row.arch.lower():
        missing.append("patch")
    if bench.kind not in PROTOCOLS:
        missing.append(f"protocol ({bench.kind!r} is not one of {', '.join(PROTOCOLS)})")
    if not bench.resolution_of(row):
        missing.append("resolution")
    if not bench.dataset or not bench.step_kinds:
        missing.append("dataset and step kinds of the benchmark")
    return missing


_R = "[R: recalled, not re-read]"
# DINO's label propagation (eval_video_segmentation.py defaults; DOWNSTREAM.md 4): last block's normed patch tokens.
DAVIS_DINO = {"layers": "last block, normed patch tokens", "propagation": propagation_words(5, 0.1, 7, 12)}
# Hummingbird: the paper's ScaNN search (open-hummingbird-eval's README, which also uses scann), memory 1024 x 10^4
# patches, 2 augmentation epochs, 30 neighbours; bam-dense's search is exact (a stated difference, docs/protocols.md).
HUMMINGBIRD = {"layers": "last block, normed patch tokens", "search": "approximate (ScaNN)",
               "memory": memory_words(1024 * 10**4, 2, True, 30)}
# The linear-classification sources (DINO eval_linear.py, BAM scripts/linear, LEWEL and MoCo v3 main_lincls.py,
# DINOv2 eval/linear.py) all train on random-resized crops and flips drawn afresh every epoch, and report top-1 on
# ImageNet's own validation labels (DINOv3's rows, on the ImageNet-ReaL labels, state theirs).
LINCLS = {"labels": IMAGENET_VAL_LABELS, "augmentation": "random-resized crop 224 + flip, every epoch"}
DINO_POS = {"pos_embed_rule": "dino"}  # DINO's interpolate_pos_encoding (bam_dense.models.pos_embed)
LVD1689 = "LVD-1689M (distilled from ViT-7B)"
LVD142 = "LVD-142M (distilled from ViT-g)"
DINOV3_ENCODER = {"registers": 4, "pos_embed_rule": "rope"}  # no table: RoPE follows the grid
# DINOv3's published ImageNet linear rows: the model card gives top-1 on the ImageNet-ReaL labels only (no ImageNet
# val number for the distilled ViTs) and the pooling; eval/linear.py's training crops have no stated size for them.
DINOV3_REAL = {**DINOV3_ENCODER, "labels": "ImageNet-ReaL", "pooling": "class token + mean of patch tokens",
               "augmentation": "random-resized crop + flip, every epoch (size not stated)"}
# The heads of the ViT linear-classification sources (bam_dense.eval.linear_probe.RECIPES names where one exists).
DINO_VITS_HEAD = {"head_recipe": "dino-vits", "layers": "last 4 blocks", "pooling": "class token", "head_epochs": "100 epochs"}
DINO_VITB_HEAD = {"head_recipe": "dino-vitb", "layers": "last block", "pooling": "class token + mean of patch tokens",
                  "head_epochs": "100 epochs"}
BAM_HEAD = {"head_recipe": "bam", "layers": "last block", "pooling": "class token + mean of patch tokens",
            "head_epochs": "100 epochs"}
MOCOV3_HEAD = {"head_recipe": "mocov3-vit", "layers": "last block", "pooling": "class token", "head_epochs": "90 epochs"}
SLIDE = "512 crops; test short side 512, sliding window 512/341"
WHOLE = "512 crops; test short side 512, whole image"
COCO = "multi-scale train 640-800, test 800 (max 1333)"


def _lewel(value: float, epochs: int = 400) -> Published:
    """A row of the LEWEL README: LEWEL_B's ResNet-50 at 400 epochs (SyncBN) or 200 epochs (EMAN)."""
    variant = "SyncBN" if epochs == 400 else "EMAN"
    return Published(f"LEWEL_B ({variant} {epochs}ep)", value, "LEWEL README", IN1K, epochs, "ResNet-50", None)


def _distilled_linear_seg(size: str, dinov3: float, rerun: float, dinov2: float, dinov2_ms: float) -> tuple[Published, ...]:
    """The DINOv3 and DINOv2 rows of the ADE20K linear benchmark of ViT-``size``: DINOv3's, DINOv2's re-run by DINOv3
    (both DINOv3 paper Tab. 14) and DINOv2's own linear and multi-scale ones (DINOv2 paper Tab. 10)."""
    distilled, arch = "not stated (distilled)", f"ViT-{size}"
    return (
        Published(f"DINOv3 {arch}/16", dinov3, "DINOv3 paper Tab. 14; dinov3 model card", LVD1689, distilled, arch, 16,
                  "RoPE, 4 storage tokens", conditions=DINOV3_ENCODER),
        Published(f"DINOv2 {arch}/14 (DINOv3's re-run)", rerun, "DINOv3 paper Tab. 14", LVD142, distilled, arch, 14),
        Published(f"DINOv2 {arch}/14", dinov2, "DINOv2 paper Tab. 10 (lin.)", LVD142, distilled, arch, 14,
                  recipe="dinov2-linear-seg"),
        Published(f"DINOv2 {arch}/14 +ms", dinov2_ms, "DINOv2 paper Tab. 10 (+ms)", LVD142, distilled, arch, 14,
                  "last four blocks, 640 px, multi-scale test", recipe="dinov2-linear-ms-seg"),
    )


def _distilled_lincls(size: str, dinov2: float, dinov2_registers: float, dinov3_real: float) -> tuple[Published, ...]:
    """The distilled DINOv2 (ImageNet val top-1, with and without registers) and DINOv3 (ImageNet-ReaL top-1) rows of
    the ImageNet linear benchmark of ViT-``size``."""
    distilled, arch = "not stated (distilled)", f"ViT-{size}"
    dinov2_readme = "facebookresearch/dinov2@b8931f7 README"
    return (
        Published(f"DINOv2 {arch}/14", dinov2, dinov2_readme, LVD142, distilled, arch, 14, recipe="dinov2-lincls"),
        Published(f"DINOv2 {arch}/14 with registers", dinov2_registers, dinov2_readme, LVD142, distilled, arch, 14,
                  "4 register tokens", recipe="dinov2-lincls", conditions={"registers": 4}),
        Published(f"DINOv3 {arch}/16 (ImageNet-ReaL labels)", dinov3_real, "facebookresearch/dinov3@6876159 MODEL_CARD.md, "
                  "Evaluation, results of the ViTs distilled on LVD-1689M, column IN-ReaL (the paper's table not read here)", LVD1689,
                  distilled, arch, 16, "ImageNet-ReaL top-1: neither the model card nor the README gives an ImageNet val "
                  "number for the distilled ViTs", recipe="dinov3-lincls", resolution="not stated by the source",
                  conditions=DINOV3_REAL),
    )


def _synthetic(id: str, title: str, metric: str, unit: str, step_kind: str, kind: str, dataset: str,
               protocol: str) -> Benchmark:
    """A benchmark on bam-dense's generated data: it checks a pipeline and has no published row."""
    return Benchmark(id, title, metric, unit, protocol, (), recipe="bam-dense-synthetic", kind=kind, resolution="synthetic",
                     dataset=dataset, step_kinds=(step_kind,))


# bam-dense's benchmarks on generated data (checks of a pipeline, no published row):
# (id, title, metric, unit, step kind, kind, dataset, protocol)
SYNTHETIC = (
    ("synthetic_linear_probe", "Synthetic ADE20K layout, linear per-patch probe (mIoU)", "linear_probe_miou", "", "probe",
     "frozen linear", "synthetic ADE20K layout",
     "bam-dense's development probe on generated data: checks the pipeline, not a benchmark"),
    ("synthetic_davis", "Synthetic DAVIS layout, label propagation (J&F-Mean)", "J&F-Mean", "", "davis", "propagation",
     "synthetic DAVIS-2017 layout", "bam-dense's generated sequences: checks the pipeline, not a benchmark"),
    ("synthetic_retrieval", "Synthetic VOC layout, in-context retrieval (mIoU)", "mIoU", "%", "retrieval", "retrieval",
     "synthetic Pascal VOC 2012 layout", "the retrieval protocol on generated data: checks the pipeline, not a benchmark"),
    ("synthetic_linear", "Synthetic ImageNet layout, linear classification (top-1)", "top1", "%", "linear",
     "frozen linear", "synthetic ImageNet-1k layout", "the linear probe on generated data: checks the pipeline, not a benchmark"),
    ("synthetic_seg", "Synthetic ADE20K layout, tiny UperNet fine-tune (mIoU)", "mIoU", "%", "seg", "fine-tuned",
     "synthetic ADE20K layout", "a few CPU iterations on generated data: checks the pipeline, not a benchmark"),
    ("synthetic_det", "Synthetic COCO layout, tiny Mask R-CNN fine-tune (box AP)", "bbox_AP", "%", "det", "fine-tuned",
     "synthetic COCO layout", "a few CPU iterations on generated data: checks the pipeline, not a benchmark"),
)


# What the benchmarks of one family share (their task, data, input sizes, step kinds and encoder families).
COCO_R50 = {"resolution": COCO, "dataset": "COCO", "step_kinds": ("det", "detectron2"), "families": ("cnn",)}
LINEAR_SEG_VIT = {"recipe": "dinov3-linear-seg", "kind": "frozen linear", "resolution": SLIDE, "step_kinds": ("seg",),
                  "families": ("vit",)}
IN1K_LINEAR_VIT = {"recipe": "dino-lincls", "kind": "frozen linear", "resolution": "224 (center crop)",
                   "dataset": "ImageNet-1k", "step_kinds": ("linear",), "families": ("vit",), "conditions": LINCLS}

BENCHMARKS: dict[str, Benchmark] = {b.id: b for b in (
    Benchmark(
        "ade20k_upernet_vitb16", "ADE20K, UperNet ViT-B/16, 160k", "mIoU", "%",
        "UperNet + aux FCN, 512 crops, 160k iterations at batch 16, AdamW lr 1e-4, layer decay 0.65, drop path 0.1, "
        "single-scale sliding window 512/341 (DOWNSTREAM.md 1.2-1.3)",
        (
            Published("BAM (ViT-B/16)", 46.1, "public benchmark listing of the BAM paper (METHODS.md 4)", IN1K, 400, "ViT-B", 16,
                      "protocol details not verified; 400 epochs: BAM's released ViT-B script", recipe="unverified"),
            Published("MAE", 48.1, "MAE paper; mmseg reproduction 48.13 (configs/mae/metafile.yaml)", IN1K, 1600, "ViT-B", 16,
                      f"epochs {_R}", recipe="mae-upernet-vit"),
            Published("iBOT", 50.0, "iBOT paper / README", IN1K, 400, "ViT-B", 16, f"epochs {_R}", recipe="ibot-upernet-vitb"),
            Published("DINO", 46.8, "iBOT paper table", IN1K, 400, "ViT-B", 16, f"epochs {_R}", recipe="ibot-upernet-vitb"),
            Published("Supervised IN-1k (DeiT)", 46.6, "iBOT paper table", IN1K + " (labels)", 300, "ViT-B", 16,
                      "47.4 in the MAE paper's setup", recipe="ibot-upernet-vitb"),
            Published("MoCo v3", 47.3, "MAE paper", IN1K, 300, "ViT-B", 16, f"epochs {_R}", recipe="mae-upernet-vit"),
            Published("BEiT", 45.8, "iBOT paper table", IN1K, 800, "ViT-B", 16, f"47.1 in the MAE paper; epochs {_R}",
                      recipe="ibot-upernet-vitb"),
        ),
        resolution=SLIDE,
        dataset="ADE20K", step_kinds=("seg",), families=("vit",),
    ),
    Benchmark(
        "ade20k_upernet_vits16", "ADE20K, UperNet ViT-S/16, 160k", "mIoU", "%",
        "UperNet + aux FCN, 512 crops, 160k iterations at batch 16; two shipped recipes: iBOT's "
        "(configs/mmseg/upernet_vit-s16_ibot_ade20k-512x512_160k.py, the one its published row used) and MAE's "
        "with ViT-S widths (configs/mmseg/upernet_vit-s16_ade20k-512x512_160k.py)",
        (Published("iBOT ViT-S/16", 45.4, "iBOT paper / README", IN1K, 800, "ViT-S", 16, "800 epochs: iBOT README's ViT-S/16 "
                   "checkpoint", recipe="ibot-upernet-vits"),),
        recipe="ibot-upernet-vits", resolution=SLIDE,
        dataset="ADE20K", step_kinds=("seg",), families=("vit",),
    ),
    Benchmark(
        "ade20k_upernet_r50", "ADE20K, UperNet R50, 160k", "mIoU", "%",
        "UperNet R50, 512 crops, SGD lr 0.01, batch 16 (DOWNSTREAM.md 1.5)",
        (Published("Supervised (mmseg, ResNetV1c)", 42.05, "mmseg configs/upernet/metafile.yaml", IN1K + " (labels)",
                   "not stated", "ResNet-50 (V1c)", None),),
        recipe="mmseg-upernet-r50", resolution=WHOLE,
        dataset="ADE20K", step_kinds=("seg",), families=("cnn",),
    ),
    Benchmark(
        "voc12aug_fcn_r50", "Pascal VOC 2012 aug, FCN-d8 R50, 20k", "mIoU", "%",
        "FCN-d8 R50, 512 crops, 20k iterations at batch 16, SGD lr 0.01 poly, val 1449 images (DOWNSTREAM.md 2)",
        (
            Published("LEWEL", 67.8, "benchmark aggregator listing of the LEWEL paper (METHODS.md 2.9)", IN1K, 400, "ResNet-50",
                      None, "likely LEWEL_B 400 ep; confirm in the paper", recipe="unverified"),
            Published("DenseCL 200ep", 69.47, "mmselfsup 0.x model zoo (69.4 in the DenseCL README)", IN1K, 200, "ResNet-50",
                      None, recipe="ssl-fcn-r50-voc12aug"),
            Published("MoCo v2 200ep", 67.55, "mmselfsup 0.x model zoo", IN1K, 200, "ResNet-50", None, recipe="ssl-fcn-r50-voc12aug"),
            Published("BYOL 200ep", 67.16, "mmselfsup 0.x model zoo", IN1K, 200, "ResNet-50", None, recipe="ssl-fcn-r50-voc12aug"),
            Published("Supervised (mmseg, ResNetV1c)", 67.08, "mmseg configs/fcn/metafile.yaml", IN1K + " (labels)", "not stated",
                      "ResNet-50 (V1c)", None, recipe="mmseg-fcn-r50-voc12aug"),
        ),
        recipe="ssl-fcn-r50-voc12aug", resolution=WHOLE,
        dataset="Pascal VOC 2012", step_kinds=("seg",), families=("cnn",),
    ),
    Benchmark(
        "coco_maskrcnn_r50_fpn_1x", "COCO, Mask R-CNN R50-FPN 1x (box AP)", "bbox_AP", "%",
        "SyncBN everywhere, 4conv1fc box head, multi-scale 640-800, 90k iterations at batch 16 (DOWNSTREAM.md 3a/3b)",
        (
            _lewel(41.9),
            _lewel(41.3, 200),
            Published("PixPro (400ep)", 41.4, "PixPro README", IN1K, 400, "ResNet-50", None),
            Published("BYOL (200ep)", 40.9, "mmselfsup 0.x model zoo", IN1K, 200, "ResNet-50", None),
            Published("MoCo v2 (800ep)", 40.4, "PixPro README", IN1K, 800, "ResNet-50", None),
            Published("Supervised IN-1k", 39.7, "PixPro README", IN1K + " (labels)", "not stated", "ResNet-50", None),
        ),
        recipe="ssl-maskrcnn-r50-fpn-1x", **COCO_R50,
    ),
    Benchmark(
        "coco_maskrcnn_r50_fpn_1x_mask", "COCO, Mask R-CNN R50-FPN 1x (mask AP)", "segm_AP", "%",
        "as the box AP row",
        (
            _lewel(37.9),
            _lewel(37.4, 200),
            Published("PixPro (400ep)", 37.4, "PixPro README", IN1K, 400, "ResNet-50", None),
            Published("Supervised IN-1k", 35.9, "PixPro README", IN1K + " (labels)", "not stated", "ResNet-50", None),
        ),
        recipe="ssl-maskrcnn-r50-fpn-1x", **COCO_R50,
    ),
    Benchmark(
        "coco_maskrcnn_r50_fpn_2x", "COCO, Mask R-CNN R50-FPN 2x (box AP)", "bbox_AP", "%",
        "the 1x recipe for 180k iterations",
        (_lewel(43.4),
         _lewel(42.2, 200)),
        recipe="ssl-maskrcnn-r50-fpn-2x", **COCO_R50,
    ),
    Benchmark(
        "coco_maskrcnn_r50_c4_1x", "COCO, Mask R-CNN R50-C4 1x (box AP)", "bbox_AP", "%",
        "C4 with the extra-norm res5 head, SyncBN, 90k iterations (DOWNSTREAM.md 3a)",
        (_lewel(38.5, 200),
         Published("Supervised IN-1k", 38.2, "PixPro README", IN1K + " (labels)", "not stated", "ResNet-50", None)),
        recipe="ssl-maskrcnn-r50-c4-1x", **COCO_R50,
    ),
    Benchmark(
        "coco_vitdet_b", "COCO, ViTDet Mask R-CNN ViT-B (box AP)", "bbox_AP", "%",
        "simple feature pyramid, LSJ 1024, 100 epochs (DOWNSTREAM.md 3c); bam-dense's mmdet variant uses global attention",
        (Published("MAE ViT-B", 51.6, "ViTDet README (detectron2) / mmdet projects/ViTDet", IN1K, 1600, "ViT-B", 16,
                   f"epochs {_R}"),),
        recipe="vitdet-maskrcnn-vitb", resolution="large-scale jitter, 1024 x 1024",
        dataset="COCO", step_kinds=("det", "detectron2"), families=("vit",),
    ),
    Benchmark(
        "davis17_val", "DAVIS-2017 val, label propagation (J&F-Mean)", "J&F-Mean", "",
        "frozen last-block patch tokens, 480p, top-5, temperature 0.1, first + 7 previous frames, radius 12 (DOWNSTREAM.md 4)",
        (
            Published("DINO ViT-S/16", 0.618, "DINO Table 5; script reference 0.6177", IN1K, 800, "ViT-S", 16,
                      f"epochs {_R}", conditions=DINO_POS),
            Published("DINO ViT-B/16", 0.623, "DINO Table 5", IN1K, 400, "ViT-B", 16, f"epochs {_R}", conditions=DINO_POS),
            Published("Supervised IN ViT-S/8", 0.660, "DINO Table 5", IN1K + " (labels)", 300, "ViT-S", 8, f"epochs {_R}",
                      conditions=DINO_POS),
            Published("DINOv3 ViT-S/16 (short side 960)", 0.727, "DINOv3 paper Tab. 14; facebookresearch/dinov3@6876159 "
                      "MODEL_CARD.md (DAVIS 72.7)", LVD1689, "not stated (distilled)", "ViT-S", 16, "RoPE, 4 storage tokens",
                      recipe="dinov3-davis-960", conditions=DINOV3_ENCODER),
            Published("DINOv3 ViT-B/16 (short side 960)", 0.772, "DINOv3 paper Tab. 14; facebookresearch/dinov3@6876159 "
                      "MODEL_CARD.md (DAVIS 77.2)", LVD1689, "not stated (distilled)", "ViT-B", 16, "RoPE, 4 storage tokens",
                      recipe="dinov3-davis-960", conditions=DINOV3_ENCODER),
            Published("DINOv2 ViT-S/14 (DINOv3's re-run, short side 960)", 0.736, "DINOv3 paper Tab. 14 (DOWNSTREAM.md 8; "
                      "not in a repository file)", LVD142, "not stated (distilled)", "ViT-S", 14, recipe="dinov3-davis-960"),
            Published("DINOv2 ViT-B/14 (DINOv3's re-run, short side 960)", 0.729, "DINOv3 paper Tab. 14 (DOWNSTREAM.md 8; "
                      "not in a repository file)", LVD142, "not stated (distilled)", "ViT-B", 14, recipe="dinov3-davis-960"),
            Published("BAM", 0.623, "public benchmark listing of the BAM paper", IN1K, 400, "ViT-B", 16,
                      "listed as J mean; which measure and which encoder are unverified", recipe="unverified"),
        ),
        recipe="dino-davis-480p", kind="propagation", resolution=short_side(480),
        dataset="DAVIS-2017", step_kinds=("davis",), conditions=DAVIS_DINO,
    ),
    Benchmark(
        "ade20k_linear_vits", "ADE20K, frozen linear (BN + 1x1) on ViT-S patch tokens, 40k", "mIoU", "%",
        "frozen encoder, last block's normed patch tokens, BatchNorm + 1x1 head, AdamW lr 1e-3, 40k iterations at batch 16, "
        "512 crops, sliding window 512/341 (configs/mmseg/linear_vit_ade20k-512x512_40k.py; docs/linear_segmentation.md)",
        (
            *_distilled_linear_seg("S", 47.0, 45.5, 44.3, 47.2),
        ),
        dataset="ADE20K", **LINEAR_SEG_VIT,
    ),
    Benchmark(
        "ade20k_linear_vitb", "ADE20K, frozen linear (BN + 1x1) on ViT-B patch tokens, 40k", "mIoU", "%",
        "as the ViT-S entry",
        (
            *_distilled_linear_seg("B", 51.8, 48.4, 47.3, 51.3),
            Published("iBOT ViT-B/16", 38.3, "iBOT paper / bytedance/ibot README (linear head on frozen features)", IN1K, 400,
                      "ViT-B", 16, f"bytedance/ibot#18: 18-20 without position-embedding resampling; epochs {_R}",
                      recipe="ibot-linear-seg"),
            Published("DINO ViT-B/16", 34.5, "iBOT paper table (iBOT's linear recipe)", IN1K, 400, "ViT-B", 16, f"epochs {_R}",
                      recipe="ibot-linear-seg"),
        ),
        dataset="ADE20K", **LINEAR_SEG_VIT,
    ),
    Benchmark(
        "voc12aug_linear", "Pascal VOC 2012 aug, frozen linear (BN + 1x1) on ViT patch tokens, 40k", "mIoU", "%",
        "the ADE20K linear recipe on VOC 2012 aug (configs/mmseg/linear_vit_voc12aug-512x512_40k.py); no published "
        "row is listed: DINOv2's VOC numbers come from a config this project has not read",
        (), dataset="Pascal VOC 2012", **LINEAR_SEG_VIT,
    ),
    Benchmark(
        "voc12_retrieval_vitb16", "Pascal VOC 2012, in-context retrieval (Hummingbird) on ViT-B/16", "mIoU", "%",
        "memory bank of training patch features and labels, nearest-neighbour attention labels the validation patches "
        "(Balazevic et al. 2023; open-hummingbird-eval)",
        (
            Published("DINO ViT-B/16", 55.9, "Hummingbird paper (as quoted by open-hummingbird-eval's README)", IN1K, 400,
                      "ViT-B", 16, f"memory 1024 x 10^4; epochs {_R}"),
            Published("DINO ViT-B/16 (open-hummingbird-eval)", 55.7, "vpariza/open-hummingbird-eval@5e79da2 README", IN1K, 400,
                      "ViT-B", 16, f"their reproduction: scann, 2 augmentation epochs, memory 1024 x 10^4; epochs {_R}"),
            Published("CrIBo ViT-B/16", 74.9, "tileb1/CrIBo@311f569 README", IN1K, 400, "ViT-B", 16,
                      "epochs from checkpoints/vitb16-in_args.json; ADE20K 30.0", recipe="cribo-retrieval"),
        ),
        recipe="hummingbird-retrieval", kind="retrieval", resolution="512 x 512",
        dataset="Pascal VOC 2012", step_kinds=("retrieval",), families=("vit",), conditions=HUMMINGBIRD,
    ),
    Benchmark(
        "voc12_retrieval_vits16", "Pascal VOC 2012, in-context retrieval (Hummingbird) on ViT-S/16", "mIoU", "%",
        "as the ViT-B/16 entry",
        (Published("CrIBo ViT-S/16", 73.2, "tileb1/CrIBo@311f569 README", IN1K, 800, "ViT-S", 16,
                   "epochs from checkpoints/vits16-in_args.json; ADE20K 28.3", recipe="cribo-retrieval"),),
        recipe="hummingbird-retrieval", kind="retrieval", resolution="512 x 512",
        dataset="Pascal VOC 2012", step_kinds=("retrieval",), families=("vit",), conditions=HUMMINGBIRD,
    ),
    Benchmark(
        "imagenet_linear_r50", "ImageNet-1k, linear classification on a frozen ResNet-50 (top-1)", "top1", "%",
        "image-level linear probe on the pooled features: a classification protocol, not a dense one",
        (
            Published("LEWEL_B (SyncBN 400ep)", 73.8, "LEWEL README (METHODS.md 2.9)", IN1K, 400, "ResNet-50", None),
            Published("CO-SSL (CO-BYOL)", 71.5, "CO-SSL abstract (arXiv 2501.02860; METHODS.md 3.2)", IN1K, 100,
                      "ResNet-50 or RF99-ResNet50 (unverified)", None,
                      "the paper's encoder and probe recipe could not be read (METHODS.md 3.4-3.7): a different protocol "
                      "until they are", recipe="unverified"),
        ),
        recipe="lewel-lincls-r50", kind="frozen linear", resolution="224 (center crop)",
        dataset="ImageNet-1k", step_kinds=("linear",), families=("cnn",), conditions=LINCLS,
    ),
    Benchmark(
        "imagenet_linear_vits", "ImageNet-1k, linear classification on a frozen ViT-S (top-1)", "top1", "%",
        "image-level linear probe on the class token (and pooled patch tokens, per recipe): a classification protocol",
        (
            Published("DINO ViT-S/16", 77.0, "facebookresearch/dino@7c446df README", IN1K, 800, "ViT-S", 16,
                      f"epochs {_R}", recipe="dino-lincls", conditions=DINO_VITS_HEAD),
            Published("MoCo v3 ViT-S", 73.2, "facebookresearch/moco-v3@c349e6e README (ViT, linear classification)", IN1K,
                      300, "ViT-S", 16, "patch 16 (ViT-Small of moco-v3 vits.py)", recipe="mocov3-lincls",
                      conditions=MOCOV3_HEAD),
            *_distilled_lincls("S", 81.1, 80.9, 87.0),
        ),
        **IN1K_LINEAR_VIT,
    ),
    Benchmark(
        "imagenet_linear_vitb", "ImageNet-1k, linear classification on a frozen ViT-B (top-1)", "top1", "%",
        "as the ViT-S entry",
        (
            Published("DINO ViT-B/16", 78.2, "facebookresearch/dino@7c446df README", IN1K, 400, "ViT-B", 16,
                      f"epochs {_R}", recipe="dino-lincls", conditions=DINO_VITB_HEAD),
            Published("BAM ViT-B/16", 78.1, "DanielShalam/BAM@fd85871 README (METHODS.md 1.11)", IN1K, 400, "ViT-B", 16,
                      recipe="bam-lincls", conditions=BAM_HEAD),
            Published("MoCo v3 ViT-B", 76.7, "facebookresearch/moco-v3@c349e6e README (ViT, linear classification)", IN1K,
                      300, "ViT-B", 16, "patch 16 (ViT-Base of moco-v3 vits.py)", recipe="mocov3-lincls",
                      conditions=MOCOV3_HEAD),
            *_distilled_lincls("B", 84.5, 84.6, 89.3),
        ),
        **IN1K_LINEAR_VIT,
    ),
    Benchmark(
        "imagenet_linear_vitl", "ImageNet-1k, linear classification on a frozen ViT-L (top-1)", "top1", "%",
        "as the ViT-S entry",
        _distilled_lincls("L", 86.3, 86.7, 90.2),
        **IN1K_LINEAR_VIT,
    ),
    *(_synthetic(*row) for row in SYNTHETIC),
)}
