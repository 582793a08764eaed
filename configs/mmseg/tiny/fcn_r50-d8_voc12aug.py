# Tiny version of fcn_r50-d8_voc12aug-512x512_20k.py: dilated torchvision-style ResNet-50 with a slim FCN
# head, 64-px crops, a few iterations, on the synthetic VOC layout (train + aug concatenated as in the recipe).
_base_ = ["../fcn_r50-d8_voc12aug-512x512_20k.py"]

crop_size = (64, 64)
data_root = "data/synthetic/voc/VOCdevkit/VOC2012"
max_iters = 4

model = dict(
    data_preprocessor=dict(size=crop_size),
    decode_head=dict(channels=32),
    auxiliary_head=dict(channels=16),
)
param_scheduler = [dict(type="PolyLR", eta_min=1e-4, power=0.9, begin=0, end=max_iters, by_epoch=False)]
train_cfg = dict(type="IterBasedTrainLoop", max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(by_epoch=False, interval=max_iters))

train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations"),
    dict(type="RandomResize", scale=(256, 64), ratio_range=(0.75, 1.5), keep_ratio=True),
    dict(type="RandomCrop", crop_size=crop_size, cat_max_ratio=0.75),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PackSegInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="Resize", scale=(256, 64), keep_ratio=True),
    dict(type="LoadAnnotations"),
    dict(type="PackSegInputs"),
]
_train = dict(type="PascalVOCDataset", data_root=data_root, pipeline=train_pipeline)
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    dataset=dict(_delete_=True, type="ConcatDataset", datasets=[
        dict(**_train, data_prefix=dict(img_path="JPEGImages", seg_map_path="SegmentationClass"),
             ann_file="ImageSets/Segmentation/train.txt"),
        dict(**_train, data_prefix=dict(img_path="JPEGImages", seg_map_path="SegmentationClassAug"),
             ann_file="ImageSets/Segmentation/aug.txt"),
    ]),
)
val_dataloader = dict(batch_size=1, num_workers=0, persistent_workers=False,
                      dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader
