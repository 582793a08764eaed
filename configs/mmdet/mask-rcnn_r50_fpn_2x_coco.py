# Mask R-CNN R50-FPN 2x (24 epochs, lr steps at 16 and 22), otherwise the 1x SSL transfer recipe.
# Schedule as mmselfsup 1.x configs/benchmarks/mmdetection/coco/mask-rcnn_r50_fpn_ms-2x_coco.py (commit db861f3):
# linear warm-up over 1000 iterations (mmdet's own 1x/2x warm up over 500). mmengine replaces a list from
# _base_ wholesale, so both schedulers are spelled out here.
_base_ = ["./mask-rcnn_r50_fpn_1x_coco.py"]

max_epochs = 24
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type="LinearLR", start_factor=0.001, by_epoch=False, begin=0, end=1000),
    dict(type="MultiStepLR", begin=0, end=max_epochs, by_epoch=True, milestones=[16, 22], gamma=0.1),
]
