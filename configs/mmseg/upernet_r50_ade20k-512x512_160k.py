# ADE20K UperNet on a torchvision-style ResNet-50 (DOWNSTREAM.md 1.5): mmseg's UperNet R50 160k recipe (SGD lr
# 0.01, wd 5e-4, poly 0.9, batch 16, whole-image test) with ResNet (V1b) instead of ResNetV1c.
_base_ = ["mmseg::upernet/upernet_r50_4xb4-160k_ade20k-512x512.py"]
custom_imports = dict(imports=["bam_dense.downstream.mmseg_modules"], allow_failed_imports=False)

model = dict(
    pretrained=None,
    backbone=dict(type="ResNet", depth=50, init_cfg=dict(type="Pretrained", checkpoint=None)),
)
# The data are the base's: data root data/ade/ADEChallengeData2016 (or `--data-root DIR`), batch 4 x 4 GPUs = 16.
val_evaluator = dict(type="IoUMetricWithClasses", iou_metrics=["mIoU"])
test_evaluator = val_evaluator
custom_hooks = [dict(type="PretrainedWeightCheckHook"), dict(type="TensorOnlyCheckpointHook")]
