"""MMDetection additions registered on import (configs list this module in ``custom_imports``).

* ``TimmViT``: a timm ViT used as a ViTDet-style backbone (the last block's feature map, before the final
  norm), loading ``{'model': timm names}`` strictly; the position table stays at the pretraining size and
  timm resamples it for each input size.
* ``SimpleFeaturePyramid``: ViTDet's pyramid from one stride-16 map (deconvolutions up, max-pool down).
* ``ViTLayerDecayOptimizerConstructor``: layer-wise lr decay for ``TimmViT`` (mmdet's own constructor knows
  only ConvNeXt names).
* ``LN2d``: channels-first LayerNorm for the pyramid and heads.
* ``ResNet10``: mmdet's ResNet at depth 10 (one basic block per stage), the tiny ResNet of the CPU configs.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmdet.models.backbones import ResNet
from mmdet.models.backbones.resnet import BasicBlock
from mmdet.registry import MODELS, OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.model import BaseModule
from mmengine.optim import DefaultOptimWrapperConstructor
from timm.models.vision_transformer import VisionTransformer

import bam_dense.downstream.mm_hooks  # noqa: F401  (registers the bam-dense hooks)

# (patch, embed dim, depth, heads) of the timm ViTs TimmViT accepts by name; model_kwargs override them.
VIT_ARCHS = {
    "vit_small_patch16_224": dict(patch_size=16, embed_dim=384, depth=12, num_heads=6),
    "vit_base_patch16_224": dict(patch_size=16, embed_dim=768, depth=12, num_heads=12),
    "vit_large_patch16_224": dict(patch_size=16, embed_dim=1024, depth=24, num_heads=16),
}


@MODELS.register_module()
class ResNet10(ResNet):
    """mmdet's ResNet that also knows depth 10: one basic block per stage, the tiny ResNet of the ``*_tiny_cpu``
    pretraining configs (timm ``resnet18`` with ``layers: [1, 1, 1, 1]``; torchvision names, as ``ResNet``)."""

    arch_settings = {**ResNet.arch_settings, 10: (BasicBlock, (1, 1, 1, 1))}


@MODELS.register_module(name="LN2d")
class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an ``N x C x H x W`` map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps).permute(0, 3, 1, 2)


@MODELS.register_module()
class TimmViT(VisionTransformer):
    def __init__(self, arch: str = "vit_base_patch16_224", img_size: int = 1024, pretrain_img_size: int = 224,
                 drop_path_rate: float = 0.0, model_kwargs: dict | None = None, init_cfg: dict | None = None):
        if arch not in VIT_ARCHS:
            raise ValueError(f"TimmViT: unknown arch {arch!r}; choose from {sorted(VIT_ARCHS)} (and model_kwargs)")
        args = {**VIT_ARCHS[arch], **(model_kwargs or {})}
        super().__init__(img_size=pretrain_img_size, num_classes=0, dynamic_img_size=True, qkv_bias=True,
                         drop_path_rate=drop_path_rate, **args)
        self.input_size = img_size
        self.init_cfg = init_cfg
        for p in self.norm.parameters():  # ViTDet uses the last block's output; the final norm is unused
            p.requires_grad_(False)

    def init_weights(self, mode: str = "", **kwargs) -> None:
        cfg = getattr(self, "init_cfg", None)  # absent while timm's own constructor initialises
        if isinstance(cfg, dict) and cfg.get("type") == "Pretrained" and cfg.get("checkpoint"):
            state = torch.load(cfg["checkpoint"], map_location="cpu", weights_only=True)
            if "model" not in state:
                raise KeyError(f"TimmViT: {cfg['checkpoint']} has no 'model' key; convert it with "
                               "`bam-dense convert SRC --to mmdet` (ViT checkpoints hold {'model': timm names})")
            self.load_state_dict(state["model"], strict=True)
            self._is_init = True
        else:
            super().init_weights(mode, **kwargs)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        (feat,) = self.forward_intermediates(x, indices=[len(self.blocks) - 1], norm=False, output_fmt="NCHW",
                                             intermediates_only=True)
        return (feat,)


@MODELS.register_module()
class SimpleFeaturePyramid(BaseModule):
    """Maps at ``scale_factors`` x the input resolution, each through 1x1 and 3x3 convs with a norm,
    plus a max-pooled extra level (``num_outs = len(scale_factors) + 1``)."""

    def __init__(self, in_channels: int, out_channels: int = 256, scale_factors=(4.0, 2.0, 1.0, 0.5),
                 norm_cfg: dict | None = None, init_cfg=None):
        super().__init__(init_cfg)
        from mmcv.cnn import build_norm_layer

        norm_cfg = norm_cfg or dict(type="LN2d", requires_grad=True)
        self.stages = nn.ModuleList()
        for scale in scale_factors:
            dim = in_channels
            if scale == 4.0:
                layers = [nn.ConvTranspose2d(dim, dim // 2, 2, 2), build_norm_layer(norm_cfg, dim // 2)[1], nn.GELU(),
                          nn.ConvTranspose2d(dim // 2, dim // 4, 2, 2)]
                dim //= 4
            elif scale == 2.0:
                layers = [nn.ConvTranspose2d(dim, dim // 2, 2, 2)]
                dim //= 2
            elif scale == 1.0:
                layers = []
            elif scale == 0.5:
                layers = [nn.MaxPool2d(2, 2)]
            else:
                raise ValueError(f"scale factor {scale} is not one of 4, 2, 1, 0.5")
            layers += [nn.Conv2d(dim, out_channels, 1, bias=False), build_norm_layer(norm_cfg, out_channels)[1],
                       nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), build_norm_layer(norm_cfg, out_channels)[1]]
            self.stages.append(nn.Sequential(*layers))

    def forward(self, inputs: tuple[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        x = inputs[-1]
        outs = [stage(x) for stage in self.stages]
        outs.append(F.max_pool2d(outs[-1], kernel_size=1, stride=2))
        return tuple(outs)


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class ViTLayerDecayOptimizerConstructor(DefaultOptimWrapperConstructor):
    """``lr * decay_rate ** (num_layers + 1 - layer_id)``: embeddings id 0, block i id i+1, the rest
    (pyramid, heads) num_layers+1. Biases, norms, 1-D parameters and ``pos_embed`` get no weight decay."""

    def add_params(self, params: list, module: nn.Module, **kwargs) -> None:
        num_layers = self.paramwise_cfg.get("num_layers", 12)
        decay_rate = self.paramwise_cfg.get("decay_rate", 0.7)
        base_wd = self.base_wd or 0.0
        groups: dict[tuple[int, bool], dict] = {}
        for name, param in module.named_parameters():
            if not param.requires_grad:
                continue
            if name.startswith("backbone.blocks."):
                layer_id = int(name.split(".")[2]) + 1
            elif name.startswith(("backbone.patch_embed", "backbone.cls_token", "backbone.pos_embed")):
                layer_id = 0
            else:
                layer_id = num_layers + 1
            no_decay = param.ndim == 1 or name.endswith(".bias") or name.endswith("pos_embed")
            key = (layer_id, no_decay)
            if key not in groups:
                groups[key] = {"params": [], "lr": self.base_lr * decay_rate ** (num_layers + 1 - layer_id),
                               "weight_decay": 0.0 if no_decay else base_wd}
            groups[key]["params"].append(param)
        params.extend(groups[k] for k in sorted(groups))
