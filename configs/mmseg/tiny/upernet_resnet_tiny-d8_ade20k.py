# The demo's segmentation fine-tune: UperNet (+ aux FCN) on the tiny dilated ResNet of
# configs/pretrain/bam_tiny_resnet_cpu.yaml (timm resnet18 with one basic block per stage, 32-256 channels,
# 64-wide stem, output stride 8: mmseg's ResNet at depth 10, registered by bam_dense.downstream.mmseg_modules),
# 64-px crops of the synthetic ADE20K layout, on a CPU. The iterations are the full demo's (`bam-dense demo`, which
# has to fit in 10 minutes on 2 cores; its verdicts are in docs/benchmarks.md, "The demo").
_base_ = ["./upernet_r50_ade20k.py"]

max_iters = 80
model = dict(
    backbone=dict(type="ResNet10", depth=10, stem_channels=64, base_channels=32, strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4),
                  contract_dilation=False),
    decode_head=dict(in_channels=[32, 64, 128, 256], channels=32, pool_scales=(1, 2)),
    auxiliary_head=dict(in_channels=128, channels=16),
)
optim_wrapper = dict(optimizer=dict(lr=0.01))
param_scheduler = [dict(type="PolyLR", eta_min=1e-4, power=0.9, begin=0, end=max_iters, by_epoch=False)]
train_cfg = dict(type="IterBasedTrainLoop", max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(logger=dict(interval=20), checkpoint=dict(by_epoch=False, interval=max_iters))
train_dataloader = dict(batch_size=4)
# No validation inside training: `seg test` / `det test` evaluate once afterwards (the demo's budget).
val_cfg = None
val_dataloader = None
val_evaluator = None
