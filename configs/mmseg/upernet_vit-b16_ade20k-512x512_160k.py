# ADE20K semantic segmentation, UperNet on a ViT-B/16, the SSL fine-tuning recipe of the BEiT -> MAE -> iBOT
# lineage (DOWNSTREAM.md 1.2-1.3): mmseg's MAE backbone (layer-wise lr decay 0.65), taps 3/5/7/11 through a
# deconv pyramid (Feature2Pyramid), UperHead + auxiliary FCN head, AdamW lr 1e-4 wd 0.05, drop path 0.1,
# 1500 warm-up iterations then poly, 160k iterations at batch 16 (8 GPUs x 2), sliding-window test 512/341.
# Run:  bam-dense seg train configs/mmseg/upernet_vit-b16_ade20k-512x512_160k.py --checkpoint bam_vitb.pth --amp
_base_ = [
    "mmseg::_base_/models/upernet_mae.py",
    "mmseg::_base_/datasets/ade20k.py",
    "mmseg::_base_/default_runtime.py",
    "mmseg::_base_/schedules/schedule_160k.py",
]
custom_imports = dict(imports=["bam_dense.downstream.mmseg_modules"], allow_failed_imports=False)

crop_size = (512, 512)
embed_dims = 768
num_heads = 12

model = dict(
    data_preprocessor=dict(size=crop_size),
    pretrained=None,  # the backbone loads through init_cfg (set by `bam-dense seg train --checkpoint`)
    backbone=dict(
        type="MAE",
        img_size=crop_size,
        patch_size=16,
        embed_dims=embed_dims,
        num_layers=12,
        num_heads=num_heads,
        mlp_ratio=4,
        out_indices=[3, 5, 7, 11],
        drop_path_rate=0.1,
        init_values=1.0,  # layer scale starts at 1: the pretrained blocks are unchanged at iteration 0
        init_cfg=dict(type="Pretrained", checkpoint=None),
    ),
    neck=dict(embed_dim=embed_dims, rescales=[4, 2, 1, 0.5]),
    decode_head=dict(in_channels=[embed_dims] * 4, channels=768, num_classes=150),
    auxiliary_head=dict(in_channels=embed_dims, num_classes=150),
    test_cfg=dict(mode="slide", crop_size=crop_size, stride=(341, 341)),
)

optim_wrapper = dict(
    _delete_=True,
    type="OptimWrapper",  # `--amp` switches to AmpOptimWrapper (mmengine ignores the old fp16= key)
    optimizer=dict(type="AdamW", lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    constructor="LayerDecayOptimizerConstructor",
    paramwise_cfg=dict(num_layers=12, layer_decay_rate=0.65),
)
param_scheduler = [
    dict(type="LinearLR", start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type="PolyLR", eta_min=0.0, power=1.0, begin=1500, end=160000, by_epoch=False),
]

# The data are mmseg's ADE20K base's (data/ade/ADEChallengeData2016, or: bam-dense seg train ... --data-root DIR).
train_dataloader = dict(batch_size=2)  # x 8 GPUs = 16
val_evaluator = dict(type="IoUMetricWithClasses", iou_metrics=["mIoU"])
test_evaluator = val_evaluator
custom_hooks = [dict(type="PretrainedWeightCheckHook"), dict(type="TensorOnlyCheckpointHook")]
