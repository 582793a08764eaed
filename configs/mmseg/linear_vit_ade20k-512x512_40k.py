# ADE20K linear semantic segmentation on a FROZEN encoder: the DINOv3 protocol, which is DINOv2's "linear"
# (facebookresearch/dinov3@6876159 dinov3/eval/segmentation/configs/config-ade20k-linear-training.yaml, with
# config.py's defaults, models/__init__.py, models/heads/linear_head.py, schedulers.py, train.py, transforms.py).
# Recipe id "dinov3-linear-seg" in bam_dense/bench/published.py; docs/linear_segmentation.md.
#   encoder    frozen (no gradients, eval mode), the LAST block's patch tokens after the encoder's final norm
#              (backbone_out_layers LAST, use_backbone_norm, use_cls_token False); prefix tokens (class token,
#              registers) never used as patches; patch-14 inputs centre-padded to a multiple of 14 (DINOv2)
#   head       Dropout2d 0.1 -> BatchNorm -> 1x1 conv (BNLinearHead), cross-entropy
#   optimiser  AdamW lr 1e-3, betas (0.9, 0.999), wd 1e-3 on every trainable parameter, no gradient clipping;
#              linear warm-up over 1500 iterations from ratio 1e-6, cosine to 0 over the 40k iterations;
#              40k iterations at batch 16 (8 GPUs x 2), fp32
#   data       short side 512 x [0.5, 2.0], random crop 512 (cat_max_ratio 0.75), flip, photometric
#              distortion; test: short side 512, sliding window 512 / stride 341, logits resized to the label
# The encoder's architecture comes from the checkpoint (`bam-dense seg train CONFIG --checkpoint CKPT` fills
# model.backbone.arch / model_kwargs and the head's width from the conversion), so one file serves ViT-S/B/L,
# patch 14 or 16, with or without registers, DINOv3's RoPE.
# Hue jitter as DINOv3's PhotoMetricDistortion: a hue factor uniform in (-0.5, 0.5) of the circle (torchvision
# adjust_hue), here mmseg's hue_delta 90 of OpenCV's 180 (mmseg's default 18 would be a fifth of that range).
# Deliberate differences, stated: mmseg's pipeline (RandomResize caps the long side at 2048 x ratio; hue shifts in
# whole steps of 1/180 of the circle, torchvision's in 1/255); the number reported is the model at
# the last iteration (`seg test`), while DINOv3's train.py keeps the best of the validations every 5000 iterations;
# DINOv3's warm-up multiplies by (1 - it/40000) and then jumps to the cosine, where this one multiplies by the
# cosine throughout (up to 3.6 % apart during the 1500 warm-up iterations, the same cosine after).
# Run:  bam-dense seg train configs/mmseg/linear_vit_ade20k-512x512_40k.py --checkpoint dinov2_vits14_pretrain.pth
_base_ = [
    "mmseg::_base_/datasets/ade20k.py",
    "mmseg::_base_/default_runtime.py",
    "mmseg::_base_/schedules/schedule_40k.py",
]
custom_imports = dict(imports=["bam_dense.downstream.mmseg_modules"], allow_failed_imports=False)

crop_size = (512, 512)
max_iters = 40000
norm_cfg = dict(type="SyncBN", requires_grad=True)  # reverted to BatchNorm by mmengine on one process

model = dict(
    type="EncoderDecoder",
    data_preprocessor=dict(type="SegDataPreProcessor", mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
                           bgr_to_rgb=True, pad_val=0, seg_pad_val=255, size=crop_size),
    pretrained=None,
    backbone=dict(
        type="FrozenTimmEncoder",
        arch=None,  # the checkpoint's (set by `seg train --checkpoint`)
        model_kwargs=dict(),  # the checkpoint's, with arch
        out_indices=[-1],  # the last block
        final_norm=True,
        pos_resample=None,  # the checkpoint source's position-table rule (set by `seg train --checkpoint`)
        init_cfg=dict(type="Pretrained", checkpoint=None),
    ),
    decode_head=dict(
        type="BNLinearHead",
        in_channels=None,  # the encoder's width x the number of blocks read (set with the architecture)
        in_index=[0],
        channels=None,
        dropout_ratio=0.1,
        num_classes=150,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
    ),
    train_cfg=dict(),
    test_cfg=dict(mode="slide", crop_size=crop_size, stride=(341, 341)),
)

optim_wrapper = dict(
    _delete_=True,
    type="OptimWrapper",
    optimizer=dict(type="AdamW", lr=1e-3, betas=(0.9, 0.999), weight_decay=1e-3),
    clip_grad=None,
)
# Both schedulers run from iteration 0 and multiply: warm-up x cosine, as DINOv3's WarmupOneCycleLR (pct_start 0,
# final_div_factor inf: the cosine reaches 0 at 40k and is measured from iteration 0, not from the warm-up's end).
param_scheduler = [
    dict(type="LinearLR", start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type="CosineAnnealingLR", T_max=max_iters, eta_min=0.0, by_epoch=False, begin=0, end=max_iters),
]
train_cfg = dict(type="IterBasedTrainLoop", max_iters=max_iters, val_interval=5000)
default_hooks = dict(checkpoint=dict(by_epoch=False, interval=5000))

train_pipeline = [  # mmseg's ade20k base, with DINOv3's hue range
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations", reduce_zero_label=True),
    dict(type="RandomResize", scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type="RandomCrop", crop_size=crop_size, cat_max_ratio=0.75),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PhotoMetricDistortion", hue_delta=90),
    dict(type="PackSegInputs"),
]
# The data are mmseg's ADE20K base's (data/ade/ADEChallengeData2016, or: bam-dense seg train ... --data-root DIR).
train_dataloader = dict(batch_size=2, dataset=dict(pipeline=train_pipeline))  # x 8 GPUs = 16
val_evaluator = dict(type="IoUMetricWithClasses", iou_metrics=["mIoU"])
test_evaluator = val_evaluator
custom_hooks = [dict(type="PretrainedWeightCheckHook"), dict(type="TensorOnlyCheckpointHook")]

# "+ms", DINOv2's boosted variant (paper Sec. 7.4 / Tab. 10; DINOv3's BackboneLayersSet.FOUR_LAST), as options:
#   --cfg-options "model.backbone.out_indices=[-4,-3,-2,-1]" test_time_aug=True
# (through the pipeline below and mmseg's tta_model, SegTTAModel, from its default runtime)
# The last four blocks, each after the final norm, concatenated (4 x width channels, the head sized to match), and
# `seg test` through mmseg's TestTimeAug: short side 512 x each ratio below, flipped and not, sliding windows,
# logits averaged. DINOv2's +ms rows also use 640-px images; its config (a download) was not read, so that is
# not claimed here and those published rows are reported as a different recipe.
test_time_aug = False
img_ratios = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
tta_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="TestTimeAug", transforms=[
        [dict(type="Resize", scale=(int(2048 * r), int(512 * r)), keep_ratio=True) for r in img_ratios],
        [dict(type="RandomFlip", prob=0.0, direction="horizontal"), dict(type="RandomFlip", prob=1.0, direction="horizontal")],
        [dict(type="LoadAnnotations", reduce_zero_label=True)],
        [dict(type="PackSegInputs")],
    ]),
]
