# Tiny version of upernet_vit-b16_ade20k-512x512_160k.py for CPU tests and the demo: the same model
# family (mmseg MAE backbone with layer decay, Feature2Pyramid, UperHead + aux FCN, slide test) at the size
# of configs/pretrain/bam_tiny_cpu.yaml's ViT (96 wide, 4 blocks, 4 heads, patch 4), 64-px crops, a few
# iterations, on the synthetic ADE20K layout (`bam-dense make-synthetic ade20k --root data/synthetic/ade20k`).
_base_ = ["../upernet_vit-b16_ade20k-512x512_160k.py"]

crop_size = (64, 64)
data_root = "data/synthetic/ade20k/ADEChallengeData2016"
embed_dims = 96
max_iters = 6

model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(img_size=crop_size, patch_size=4, embed_dims=embed_dims, num_layers=4, num_heads=4,
                  out_indices=[0, 1, 2, 3], drop_path_rate=0.0),
    neck=dict(embed_dim=embed_dims),
    decode_head=dict(in_channels=[embed_dims] * 4, channels=32, pool_scales=(1, 2)),
    auxiliary_head=dict(in_channels=embed_dims, channels=16),
    test_cfg=dict(mode="slide", crop_size=crop_size, stride=(43, 43)),
)
optim_wrapper = dict(optimizer=dict(lr=5e-4), paramwise_cfg=dict(num_layers=4))
param_scheduler = [
    dict(type="LinearLR", start_factor=0.1, by_epoch=False, begin=0, end=2),
    dict(type="PolyLR", eta_min=0.0, power=1.0, begin=2, end=max_iters, by_epoch=False),
]
train_cfg = dict(type="IterBasedTrainLoop", max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(by_epoch=False, interval=max_iters))

train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations", reduce_zero_label=True),
    dict(type="RandomResize", scale=(256, 64), ratio_range=(0.75, 1.5), keep_ratio=True),
    dict(type="RandomCrop", crop_size=crop_size, cat_max_ratio=0.75),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PhotoMetricDistortion"),
    dict(type="PackSegInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="Resize", scale=(256, 64), keep_ratio=True),
    dict(type="LoadAnnotations", reduce_zero_label=True),
    dict(type="PackSegInputs"),
]
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(batch_size=1, num_workers=0, persistent_workers=False,
                      dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader
