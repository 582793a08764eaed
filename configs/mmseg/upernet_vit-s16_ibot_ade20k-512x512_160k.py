# ADE20K UperNet on a ViT-S/16 with iBOT's recipe, the one behind the published iBOT ViT-S/16 row (45.4 mIoU):
# bytedance/ibot@da316d8 evaluation/semantic_segmentation/configs/upernet/vit_small_512_ade20k_160k.py and its
# _base_ files, in mmseg 1.x terms. Recipe id "ibot-upernet-vits" in bam_dense/bench/published.py.
#   backbone   DINO-style ViT: 6 heads, qkv bias, no layer scale, drop path 0.1, absolute position embedding
#              (bicubic-resized to the 32x32 grid of a 512 crop), blocks 3/5/7/11 tapped WITHOUT the final norm
#              (iBOT's backbone wrapper replaces `norm` by Identity unless out_with_norm=True, which the
#              ViT-S config does not set). mmseg's VisionTransformer with final_norm=False is that network.
#   neck       deconv x2 (BN, GELU, deconv), deconv, identity, max-pool: mmseg's Feature2Pyramid.
#   heads      UperHead channels 384 (not mmseg's 512/768), auxiliary FCN on block 7, channels 256.
#   optimiser  AdamW lr 3e-5, betas (0.9, 0.999), wd 0.05, layer-wise lr decay 0.9 over 12 layers (iBOT's
#              rule; mmseg 1.2.2 implements it for BEiT/MAE only, bam-dense's ViTLayerDecayOptimizerConstructor
#              applies the same rule to mmseg's VisionTransformer);
#              linear warm-up 1500 iterations from ratio 1e-6, then poly (power 1, min 0); 160k iterations at
#              batch 16 (8 GPUs x 2); sliding-window test 512/341.
# Deliberate differences, stated: iBOT trains with apex fp16 (here: bf16/fp16 through `--amp`); mmseg's
# LayerNorm is given eps 1e-6 as in DINO/iBOT's ViT.
# BAM's ViT-S has 12 heads (MoCo v3 style): add --cfg-options model.backbone.num_heads=12 for a BAM checkpoint.
# Run:  bam-dense seg train configs/mmseg/upernet_vit-s16_ibot_ade20k-512x512_160k.py --checkpoint ibot_vits.pth --amp
_base_ = ["./upernet_vit-b16_ade20k-512x512_160k.py"]

crop_size = (512, 512)
embed_dims = 384

model = dict(
    backbone=dict(
        _delete_=True,
        type="VisionTransformer",
        img_size=crop_size,
        patch_size=16,
        in_channels=3,
        embed_dims=embed_dims,
        num_layers=12,
        num_heads=6,
        mlp_ratio=4,
        out_indices=[3, 5, 7, 11],
        qkv_bias=True,
        drop_rate=0.0,
        attn_drop_rate=0.0,
        drop_path_rate=0.1,
        with_cls_token=True,
        output_cls_token=False,
        norm_cfg=dict(type="LN", eps=1e-6),
        act_cfg=dict(type="GELU"),
        patch_norm=False,
        final_norm=False,
        interpolate_mode="bicubic",
        init_cfg=dict(type="Pretrained", checkpoint=None),
    ),
    neck=dict(embed_dim=embed_dims, rescales=[4, 2, 1, 0.5]),
    decode_head=dict(in_channels=[embed_dims] * 4, channels=384, num_classes=150),
    auxiliary_head=dict(in_channels=embed_dims, channels=256, num_classes=150),
)

optim_wrapper = dict(
    optimizer=dict(type="AdamW", lr=3e-5, betas=(0.9, 0.999), weight_decay=0.05),
    constructor="ViTLayerDecayOptimizerConstructor",  # mmseg's rule, extended to its VisionTransformer
    paramwise_cfg=dict(num_layers=12, layer_decay_rate=0.9),
)
