# Tiny version of mask-rcnn_vit-b16_sfp_lsj-100e_coco.py: the ViT of configs/pretrain/bam_tiny_cpu.yaml
# (96 wide, 4 blocks, 4 heads, patch 4, pretrained at 32 px) with the simple feature pyramid and LN heads,
# 128-px synthetic COCO images, a few iterations.
_base_ = ["../mask-rcnn_vit-b16_sfp_lsj-100e_coco.py"]

image_size = (128, 128)
data_root = "data/synthetic/coco/"
classes = ("red_disc", "blue_square", "green_triangle", "yellow_star", "purple_ring",
           "orange_cross", "cyan_diamond", "pink_hexagon", "white_crescent", "brown_tee")
metainfo = dict(classes=classes)
embed_dim = 96
max_iters = 4

model = dict(
    data_preprocessor=dict(pad_size_divisor=image_size[0],
                           batch_augments=[dict(type="BatchFixedSizePad", size=image_size, pad_mask=True)]),
    backbone=dict(arch="vit_small_patch16_224", img_size=image_size[0], pretrain_img_size=32, drop_path_rate=0.0,
                  model_kwargs=dict(patch_size=4, embed_dim=embed_dim, depth=4, num_heads=4)),
    # patch 4: the pyramid at x2, x1, x0.5 gives strides 2, 4, 8 (+ 16 from the extra max-pool level)
    neck=dict(in_channels=embed_dim, out_channels=64, scale_factors=(2.0, 1.0, 0.5)),
    rpn_head=dict(in_channels=64, feat_channels=64, anchor_generator=dict(scales=[4], strides=[2, 4, 8, 16])),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=64, featmap_strides=[2, 4, 8]),
        bbox_head=dict(in_channels=64, conv_out_channels=64, fc_out_channels=128, num_classes=len(classes)),
        mask_roi_extractor=dict(out_channels=64, featmap_strides=[2, 4, 8]),
        mask_head=dict(in_channels=64, conv_out_channels=32, num_classes=len(classes)),
    ),
    train_cfg=dict(rpn_proposal=dict(nms_pre=200, max_per_img=100), rcnn=dict(sampler=dict(num=64))),
    test_cfg=dict(rpn=dict(nms_pre=200, max_per_img=100), rcnn=dict(max_per_img=20)),
)
train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations", with_bbox=True, with_mask=True),
    dict(type="RandomFlip", prob=0.5),
    dict(type="RandomResize", scale=image_size, ratio_range=(0.5, 1.5), keep_ratio=True),
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
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dict(data_root=data_root, metainfo=metainfo, pipeline=train_pipeline))
val_dataloader = dict(batch_size=1, num_workers=0, persistent_workers=False,
                      dataset=dict(data_root=data_root, metainfo=metainfo, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + "annotations/instances_val2017.json")
test_evaluator = val_evaluator
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
optim_wrapper = dict(type="OptimWrapper", paramwise_cfg=dict(num_layers=4))
param_scheduler = [dict(type="LinearLR", start_factor=0.1, by_epoch=False, begin=0, end=2)]
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(by_epoch=False, interval=max_iters))
