# ADE20K UperNet on a ViT-S/16: the ViT-B/16 recipe with ViT-S widths. BAM's ViT-S is MoCo-v3 style with
# 12 heads (METHODS.md 1.7); for a DINO/DeiT ViT-S (6 heads) pass --cfg-options model.backbone.num_heads=6.
_base_ = ["./upernet_vit-b16_ade20k-512x512_160k.py"]

embed_dims = 384
model = dict(
    backbone=dict(embed_dims=embed_dims, num_heads=12),
    neck=dict(embed_dim=embed_dims),
    decode_head=dict(in_channels=[embed_dims] * 4, channels=512),
    auxiliary_head=dict(in_channels=embed_dims),
)
