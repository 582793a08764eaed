# Pascal VOC 2012 aug, FCN-d8 on a torchvision-style ResNet-50 (DOWNSTREAM.md 2): the mmseg/mmselfsup/DenseCL
# recipe (dilated R50, output stride 8, SyncBN, FCN head + aux head, SGD lr 0.01 poly 0.9, 20k iterations at
# batch 16, crop 512, whole-image test), with the backbone switched from ResNetV1c (deep stem, which would
# leave a torchvision checkpoint's stem random) to ResNet (V1b, 7x7 stem) as DOWNSTREAM.md 2.3 requires.
_base_ = ["mmseg::fcn/fcn_r50-d8_4xb4-20k_voc12aug-512x512.py"]
custom_imports = dict(imports=["bam_dense.downstream.mmseg_modules"], allow_failed_imports=False)

data_root = "data/VOCdevkit/VOC2012"
model = dict(
    pretrained=None,
    backbone=dict(type="ResNet", depth=50, init_cfg=dict(type="Pretrained", checkpoint=None)),
)
# The train set is the base's ConcatDataset of VOC train + SBD aug (type, data_prefix, ann_file, pipeline each).
# It is left as the base defines it, with the base's data root (the same as data_root above): mmengine replaces a
# list from _base_ wholesale, so restating `datasets` here would drop everything the two entries do not repeat.
# `--data-root DIR` reaches both members.
train_dataloader = dict(batch_size=4)  # x 4 GPUs = 16
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
val_evaluator = dict(type="IoUMetricWithClasses", iou_metrics=["mIoU"])
test_evaluator = val_evaluator
custom_hooks = [dict(type="PretrainedWeightCheckHook"), dict(type="TensorOnlyCheckpointHook")]
