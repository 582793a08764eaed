# The demo's detection fine-tune: Mask R-CNN with FPN on the tiny ResNet of configs/pretrain/bam_tiny_resnet_cpu.yaml
# (timm resnet18 with one basic block per stage, 32-256 channels, 64-wide stem: mmdet's ResNet at depth 10, registered
# by bam_dense.downstream.mmdet_modules), undilated here (strides 4-32 for the FPN; dilation holds no weights),
# slim 64-channel neck and heads, 128-px synthetic COCO images, on a CPU. The iterations are the full demo's.
_base_ = ["./mask-rcnn_r50_fpn_coco.py"]

max_iters = 80
model = dict(
    backbone=dict(type="ResNet10", depth=10, stem_channels=64, base_channels=32),
    neck=dict(in_channels=[32, 64, 128, 256], out_channels=64),
    rpn_head=dict(in_channels=64, feat_channels=64),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=64),
        bbox_head=dict(in_channels=64, conv_out_channels=64, fc_out_channels=128),
        mask_roi_extractor=dict(out_channels=64),
        mask_head=dict(in_channels=64, conv_out_channels=32),
    ),
)
train_cfg = dict(_delete_=True, type="IterBasedTrainLoop", max_iters=max_iters, val_interval=max_iters)
param_scheduler = [
    dict(type="LinearLR", start_factor=0.1, by_epoch=False, begin=0, end=10),
    dict(type="MultiStepLR", by_epoch=False, begin=0, end=max_iters, milestones=[int(max_iters * 0.8)], gamma=0.1),
]
optim_wrapper = dict(optimizer=dict(lr=0.02))
train_dataloader = dict(batch_size=4)
default_hooks = dict(logger=dict(interval=20), checkpoint=dict(by_epoch=False, interval=max_iters))
# No validation inside training: `seg test` / `det test` evaluate once afterwards (the demo's budget).
val_cfg = None
val_dataloader = None
val_evaluator = None
