# Pascal VOC 2012 aug, FCN-d8 on a torchvision-style ResNet-50 (DOWNSTREAM.md 2): the mmseg/mmselfsup/DenseCL
# recipe (dilated R50, output stride 8, SyncBN, FCN head + aux head, SGD lr 0.01 poly 0.9, 20k iterations at
# batch 16, crop 512, whole-image test), with the backbone switched from ResNetV1c (deep stem, which would
# leave a torchvision checkpoint's stem random) to ResNet (V1b, 7x7 stem) as DOWNSTREAM.md 2.3 requires.
_base_ = ["mmseg::fcn/fcn_r50-d8_4xb4-20k_voc12aug-512x512.py"]
custom_imports = dict(imports=["bam_dense.downstream.mmseg_modules"], allow_failed_imports=False)

model = dict(
    pretrained=None,
    backbone=dict(type="ResNet", depth=50, init_cfg=dict(type="Pretrained", checkpoint=None)),
)
# The data are the base's as it defines them: data root data/VOCdevkit/VOC2012 (`--data-root DIR` reaches the
# val set and both members of the train set, the base's ConcatDataset of VOC train + SBD aug), batch 4 x 4 GPUs
# = 16. mmengine replaces a list from _base_ wholesale, so restating `datasets` here would drop everything the
# two entries do not repeat.
val_evaluator = dict(type="IoUMetricWithClasses", iou_metrics=["mIoU"])
test_evaluator = val_evaluator
custom_hooks = [dict(type="PretrainedWeightCheckHook"), dict(type="TensorOnlyCheckpointHook")]
