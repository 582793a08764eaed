# Tiny version of mask-rcnn_r50_fpn_1x_coco.py for CPU tests and the demo: the full torchvision-style ResNet-50
# with FPN, SyncBN (reverted to BN in one process) and the 4conv-1fc head, on 128-px synthetic COCO images
# (`bam-dense make-synthetic coco --root data/synthetic/coco`, 10 shape classes), a few iterations.
_base_ = ["../mask-rcnn_r50_fpn_1x_coco.py"]

data_root = "data/synthetic/coco/"
classes = ("red_disc", "blue_square", "green_triangle", "yellow_star", "purple_ring",
           "orange_cross", "cyan_diamond", "pink_hexagon", "white_crescent", "brown_tee")  # bam_dense.data.synthetic
metainfo = dict(classes=classes)
max_iters = 4

model = dict(
    rpn_head=dict(anchor_generator=dict(scales=[4])),
    roi_head=dict(bbox_head=dict(num_classes=len(classes), fc_out_channels=128), mask_head=dict(num_classes=len(classes), conv_out_channels=32)),
    train_cfg=dict(rpn_proposal=dict(nms_pre=200, max_per_img=100), rcnn=dict(sampler=dict(num=64))),
    test_cfg=dict(rpn=dict(nms_pre=200, max_per_img=100), rcnn=dict(max_per_img=20)),
)
train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations", with_bbox=True, with_mask=True),
    dict(type="RandomChoiceResize", scales=[(256, s) for s in (112, 128, 144)], keep_ratio=True),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PackDetInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="Resize", scale=(256, 128), keep_ratio=True),
    dict(type="LoadAnnotations", with_bbox=True, with_mask=True),
    dict(type="PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor")),
]
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dict(data_root=data_root, metainfo=metainfo, pipeline=train_pipeline,
                                     filter_cfg=dict(filter_empty_gt=True, min_size=4)))
val_dataloader = dict(batch_size=1, num_workers=0, persistent_workers=False,
                      dataset=dict(data_root=data_root, metainfo=metainfo, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + "annotations/instances_val2017.json")
test_evaluator = val_evaluator
train_cfg = dict(_delete_=True, type="IterBasedTrainLoop", max_iters=max_iters, val_interval=max_iters)
param_scheduler = [dict(type="LinearLR", start_factor=0.1, by_epoch=False, begin=0, end=2)]
optim_wrapper = dict(optimizer=dict(lr=0.01))
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(by_epoch=False, interval=max_iters))
log_processor = dict(by_epoch=False)
