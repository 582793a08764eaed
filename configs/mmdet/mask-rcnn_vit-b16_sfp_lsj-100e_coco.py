# COCO Mask R-CNN on a plain ViT-B/16 with a simple feature pyramid, following ViTDet (DOWNSTREAM.md 3c; Li et
# al. 2022): features of the last block only, turned into strides 4/8/16/32 (deconv x2, deconv x1, identity,
# max-pool) plus a max-pooled stride 64, LayerNorm in the pyramid and heads, 2-conv RPN head, 4conv-1fc box head,
# AdamW lr 1e-4 wd 0.1 with layer-wise lr decay 0.7, large-scale jitter at 1024, 184,375 iterations at batch 64.
# Input size: every image is padded to 1024 x 1024, in training and at test, as ViTDet does (detectron2's
# `square_pad=1024` in the model), so the position table is resampled to the same 64 x 64 grid in both. The pad is
# done by the data preprocessor (`pad_size_divisor=1024`, zeros after normalisation as in ViTDet), not by a
# pipeline `Pad`: a pipeline pad would set img_shape to the padded size, boxes would be clipped to the padding
# instead of the image, and pasting their masks back at the original size broke on the CPU.
# Where this model still differs from ViTDet: global attention in every block (ViTDet: windowed attention with
# 4 global blocks, and relative position biases); the cls token is kept and takes part in attention (ViTDet drops
# it); the ViT is timm's, fed the converted checkpoint's {'model': timm names}.
_base_ = [
    "mmdet::_base_/models/mask-rcnn_r50_fpn.py",
    "mmdet::_base_/datasets/coco_instance.py",
    "mmdet::_base_/default_runtime.py",
]
custom_imports = dict(imports=["bam_dense.downstream.mmdet_modules"], allow_failed_imports=False)

image_size = (1024, 1024)
norm_cfg = dict(type="LN2d", requires_grad=True)
embed_dim = 768

model = dict(
    # pad_size_divisor=1024: the resized images (long side <= 1024) become 1024 x 1024 in training and at test;
    # BatchFixedSizePad pads the training masks to match.
    data_preprocessor=dict(pad_size_divisor=image_size[0],
                           batch_augments=[dict(type="BatchFixedSizePad", size=image_size, pad_mask=True)]),
    backbone=dict(
        _delete_=True,
        type="TimmViT",
        arch="vit_base_patch16_224",
        img_size=image_size[0],
        drop_path_rate=0.1,
        init_cfg=dict(type="Pretrained", checkpoint=None),
    ),
    neck=dict(_delete_=True, type="SimpleFeaturePyramid", in_channels=embed_dim, out_channels=256, scale_factors=(4.0, 2.0, 1.0, 0.5),
              norm_cfg=norm_cfg),
    rpn_head=dict(num_convs=2),
    roi_head=dict(
        bbox_head=dict(type="Shared4Conv1FCBBoxHead", conv_out_channels=256, norm_cfg=norm_cfg),
        mask_head=dict(norm_cfg=norm_cfg),
    ),
)

train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations", with_bbox=True, with_mask=True),
    dict(type="RandomFlip", prob=0.5),
    dict(type="RandomResize", scale=image_size, ratio_range=(0.1, 2.0), keep_ratio=True),
    dict(type="RandomCrop", crop_type="absolute_range", crop_size=image_size, recompute_bbox=True, allow_negative_crop=True),
    dict(type="FilterAnnotations", min_gt_bbox_wh=(1e-2, 1e-2)),
    dict(type="PackDetInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="Resize", scale=image_size, keep_ratio=True),
    dict(type="LoadAnnotations", with_bbox=True, with_mask=True),
    dict(type="PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor")),
]
# The data root and the evaluator are mmdet's COCO base's (data/coco/, or: bam-dense det train ... --data-root DIR).
train_dataloader = dict(batch_size=4, num_workers=8, dataset=dict(pipeline=train_pipeline))  # x 16 GPUs = 64
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

max_iters = 184375
train_cfg = dict(type="IterBasedTrainLoop", max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")
optim_wrapper = dict(
    type="AmpOptimWrapper",
    constructor="ViTLayerDecayOptimizerConstructor",
    paramwise_cfg=dict(decay_rate=0.7, num_layers=12),
    optimizer=dict(type="AdamW", lr=1e-4, betas=(0.9, 0.999), weight_decay=0.1),
)
param_scheduler = [
    dict(type="LinearLR", start_factor=0.001, by_epoch=False, begin=0, end=250),
    dict(type="MultiStepLR", begin=0, end=max_iters, by_epoch=False, milestones=[163889, 177546], gamma=0.1),
]
default_hooks = dict(checkpoint=dict(by_epoch=False, interval=5000, max_keep_ckpts=2))
log_processor = dict(by_epoch=False)
custom_hooks = [dict(type="PretrainedWeightCheckHook"), dict(type="TensorOnlyCheckpointHook")]
auto_scale_lr = dict(base_batch_size=64)
