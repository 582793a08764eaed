# COCO instance segmentation, Mask R-CNN R50-FPN 1x in the SSL transfer setting (DOWNSTREAM.md 3b; mmselfsup 1.x
# benchmarks/mmdetection/coco/mask-rcnn_r50_fpn_ms-1x_coco.py; the MoCo/LEWEL detectron2 protocol):
# SyncBN in backbone, FPN and heads, norm_eval=False, nothing frozen (frozen_stages=-1), 4conv-1fc box head,
# multi-scale training 640-800 (short side, long side <= 1333), SGD lr 0.02 at batch 16 (8 GPUs x 2), 12 epochs.
# Backbone: torchvision-style ResNet-50 loaded through init_cfg (prefix 'backbone.', set by `bam-dense det train`).
_base_ = ["mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py"]
custom_imports = dict(imports=["bam_dense.downstream.mmdet_modules"], allow_failed_imports=False)

norm_cfg = dict(type="SyncBN", requires_grad=True)

model = dict(
    backbone=dict(
        frozen_stages=-1,
        norm_cfg=norm_cfg,
        norm_eval=False,
        init_cfg=dict(type="Pretrained", checkpoint=None, prefix="backbone."),
    ),
    neck=dict(norm_cfg=norm_cfg),
    roi_head=dict(
        bbox_head=dict(type="Shared4Conv1FCBBoxHead", conv_out_channels=256, norm_cfg=norm_cfg),
        mask_head=dict(norm_cfg=norm_cfg),
    ),
)

train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations", with_bbox=True, with_mask=True),
    dict(type="RandomChoiceResize", scales=[(1333, s) for s in (640, 672, 704, 736, 768, 800)], keep_ratio=True),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PackDetInputs"),
]
# The data and the evaluator are mmdet's COCO base's (data/coco/, or: bam-dense det train ... --data-root DIR).
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
custom_hooks = [dict(type="PretrainedWeightCheckHook"), dict(type="TensorOnlyCheckpointHook")]
