"""MMSegmentation additions registered on import (configs list this module in ``custom_imports``)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from mmengine.model import BaseModule
from mmseg.engine.optimizers.layer_decay_optimizer_constructor import (
    LayerDecayOptimizerConstructor,
    get_layer_id_for_vit,
)
from mmseg.evaluation.metrics import IoUMetric
from mmseg.models.backbones import ResNet
from mmseg.models.backbones.resnet import BasicBlock
from mmseg.models.decode_heads.decode_head import BaseDecodeHead
from mmseg.registry import METRICS, MODELS, OPTIM_WRAPPER_CONSTRUCTORS

import bam_dense.downstream.mm_hooks  # noqa: F401  (registers PretrainedWeightCheckHook)


@MODELS.register_module()
class ResNet10(ResNet):
    """mmseg's ResNet that also knows depth 10: one basic block per stage, the tiny ResNet of the ``*_tiny_cpu``
    pretraining configs (timm ``resnet18`` with ``layers: [1, 1, 1, 1]``; torchvision names, as ``ResNet``)."""

    arch_settings = {**ResNet.arch_settings, 10: (BasicBlock, (1, 1, 1, 1))}


@METRICS.register_module()
class IoUMetricWithClasses(IoUMetric):
    """mmseg's IoUMetric that also keeps each class's IoU (in %, like mIoU) in ``per_class_iou``.

    The per-class values stay out of the returned metrics so that logs keep one line of summary numbers;
    ``bam-dense seg test`` reads them from the evaluator for the metrics JSON (None for absent classes).
    ``per_image`` keeps each image's intersection and union per class (in the test loader's order), over the
    classes with a non-empty union: bootstrap intervals over the validation images are computed from them.
    """

    per_class_iou: dict[str, float | None] = {}
    per_image: dict = {}

    def compute_metrics(self, results: list) -> dict:
        metrics = super().compute_metrics(results)
        if results:
            inters = np.stack([np.asarray(r[0], dtype=np.int64) for r in results])
            unions = np.stack([np.asarray(r[1], dtype=np.int64) for r in results])
            classes = np.nonzero(unions.sum(0) > 0)[0]
            self.per_image = {"classes": classes.tolist(), "intersect": inters[:, classes].tolist(),
                              "union": unions[:, classes].tolist()}
            inter, union, pred, label = (sum(part) for part in zip(*results))
            per_class = self.total_area_to_metrics(inter, union, pred, label, ["mIoU"], self.nan_to_num, self.beta)["IoU"]
            self.per_class_iou = {
                name: (None if np.isnan(value) else float(np.round(value * 100, 2)))
                for name, value in zip(self.dataset_meta["classes"], np.asarray(per_class, dtype=float))
            }
        return metrics


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class ViTLayerDecayOptimizerConstructor(LayerDecayOptimizerConstructor):
    """mmseg's layer-wise lr decay, also for mmseg's ``VisionTransformer`` (mmseg 1.2.2 takes only BEiT and MAE).

    The rule is mmseg's (and BEiT's / iBOT's ``layer_decay_optimizer_constructor``): with L = num_layers + 2
    ids, the patch embedding, cls token and position embedding get id 0, block ``layers.i`` id i + 1, and
    everything else (heads, neck) id L - 1; a group's lr is ``lr * decay ** (L - 1 - id)``. Biases and 1-d
    parameters have no weight decay. Other backbones go to mmseg's own implementation unchanged.
    """

    def add_params(self, params, module, **kwargs):
        if type(module.backbone).__name__ != "VisionTransformer":
            return super().add_params(params, module, **kwargs)
        num_ids = self.paramwise_cfg["num_layers"] + 2
        decay = self.paramwise_cfg["decay_rate"]
        groups: dict[str, dict] = {}
        for name, param in module.named_parameters():
            if not param.requires_grad:
                continue
            no_decay = param.ndim == 1 or name.endswith(".bias")
            layer_id = get_layer_id_for_vit(name, num_ids)
            key = f"layer_{layer_id}_{'no_decay' if no_decay else 'decay'}"
            if key not in groups:
                scale = decay ** (num_ids - layer_id - 1)
                groups[key] = {"weight_decay": 0.0 if no_decay else self.base_wd, "params": [], "param_names": [],
                               "lr_scale": scale, "group_name": key, "lr": scale * self.base_lr}
            groups[key]["params"].append(param)
            groups[key]["param_names"].append(name)
        params.extend(groups.values())


# ---------------------------------------------------------------------------------------------
# Linear semantic segmentation on frozen features (the DINOv2 / DINOv3 protocol)
# ---------------------------------------------------------------------------------------------


def center_pad(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad H and W up to a multiple of ``multiple``, split evenly (the extra pixel at the end), as DINOv2's
    segmentation backbone does before a patch-14 ViT (facebookresearch/dinov2 ``hub/utils.py`` CenterPadding)."""
    pads = []
    for size in (x.shape[-1], x.shape[-2]):  # F.pad takes the last dimension first
        extra = -size % multiple
        pads += [extra // 2, extra - extra // 2]
    return F.pad(x, pads) if any(pads) else x


@MODELS.register_module()
class FrozenTimmEncoder(BaseModule):
    """A frozen timm ViT (anything ``bam-dense convert --to timm`` writes: bam-dense, DINO, iBOT, MAE, MoCo v3,
    DeiT, DINOv2 with or without registers, DINOv3 with RoPE) that returns the **patch tokens** of the blocks
    ``out_indices`` as ``N x C x h x w`` maps.

    * Prefix tokens (class token, registers, DINOv3's storage tokens, DeiT's distillation token) are never
      returned: timm's ``forward_intermediates`` drops the model's ``num_prefix_tokens`` first tokens.
    * ``final_norm``: the encoder's final LayerNorm applied to every returned block (DINOv3's
      ``use_backbone_norm``; DINOv2's ``get_intermediate_layers(norm=True)``).
    * The input is centre-padded to a multiple of the patch size (DINOv2's CenterPadding; a no-op for patch 16
      at 512 px). Position tables are resampled to the input grid by ``pos_resample``, the rule of the
      checkpoint's source (:mod:`bam_dense.models.pos_embed`; ``seg train --checkpoint`` fills it from the
      conversion report, as the architecture), RoPE is computed for it.
    * Frozen: no parameter takes gradients, the encoder stays in eval mode whatever ``train()`` is called
      with, and the forward pass runs without autograd.

    ``arch``/``model_kwargs`` name the timm architecture. ``bam-dense seg train --checkpoint`` fills them from
    the checkpoint when the config leaves ``arch`` at None (the conversion report records them), and the head's
    ``in_channels`` with them. The pretrained file is a timm state dict (``bam-dense convert --to timm``),
    loaded strictly.
    """

    def __init__(self, arch: str | None = None, model_kwargs: dict | None = None, out_indices=(-1,),
                 final_norm: bool = True, pos_resample: str | None = None, init_cfg: dict | None = None):
        super().__init__(init_cfg)
        if arch is None:
            raise ValueError("FrozenTimmEncoder: model.backbone.arch is None. `bam-dense seg train --checkpoint CKPT` sets it "
                             "from the checkpoint; otherwise pass --cfg-options model.backbone.arch=<timm name>")
        from bam_dense.models.backbones import create_backbone, describe
        from bam_dense.models.pos_embed import set_pos_rule

        self.encoder = create_backbone(arch, dict(model_kwargs or {}), pos_embed="learned")
        facts = describe(self.encoder)
        if not facts.tokens:
            raise ValueError(f"FrozenTimmEncoder: {arch!r} is not a ViT; the linear protocol reads ViT patch tokens")
        if pos_resample is not None:
            set_pos_rule(self.encoder, pos_resample)
        depth = facts.stage_count
        indices = [int(i) for i in out_indices]
        if not indices or any(not -depth <= i < depth for i in indices):
            raise ValueError(f"FrozenTimmEncoder: out_indices {list(out_indices)} outside the {depth} blocks of {arch}")
        self.out_indices = [i % depth for i in indices]
        self.final_norm = final_norm
        self.patch_size = facts.patch_size
        self.encoder.requires_grad_(False)
        self.encoder.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        self.encoder.eval()  # frozen: no dropout, no drop path, whatever the segmentor's mode
        return self

    def init_weights(self) -> None:
        cfg = self.init_cfg if isinstance(self.init_cfg, dict) else {}
        if cfg.get("type") == "Pretrained" and cfg.get("checkpoint"):
            state = torch.load(cfg["checkpoint"], map_location="cpu", weights_only=True)
            state = state.get("state_dict", state)
            self.encoder.load_state_dict(state, strict=True)
            self._is_init = True
        # without a checkpoint the encoder keeps timm's initialisation (tests, dry-runs with random weights)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with torch.no_grad():
            maps = self.encoder.forward_intermediates(center_pad(x, self.patch_size), indices=self.out_indices,
                                                      norm=self.final_norm, output_fmt="NCHW", intermediates_only=True)
        return tuple(m.detach() for m in maps)


@MODELS.register_module()
class BNLinearHead(BaseDecodeHead):
    """The linear head of DINOv2/DINOv3: the input maps resized to the first one's grid and concatenated, dropout,
    BatchNorm, one 1x1 convolution (``conv_seg``), in that order (facebookresearch/dinov3
    ``eval/segmentation/models/heads/linear_head.py``: Dropout2d -> SyncBatchNorm -> Conv2d 1x1, weight ~ N(0, 0.01),
    bias 0, which is mmseg's ``conv_seg`` initialisation). ``channels`` must equal the summed ``in_channels``:
    nothing between the features and the classifier has weights but the BatchNorm's affine pair.

    ``dropout_first=False`` gives DINOv2's order (facebookresearch/dinov2@b8931f7
    ``eval/segmentation/models/decode_heads/linear_head.py`` ``BNHead``: SyncBatchNorm, then mmseg's ``cls_seg``:
    dropout, then the 1x1 convolution).
    """

    def __init__(self, dropout_first: bool = True, **kwargs):
        kwargs.setdefault("input_transform", "resize_concat")
        super().__init__(**kwargs)
        self.dropout_first = dropout_first
        if self.channels != self.in_channels:
            raise ValueError(f"BNLinearHead: channels ({self.channels}) must equal the summed in_channels ({self.in_channels})")
        from mmcv.cnn import build_norm_layer

        self.bn = build_norm_layer(self.norm_cfg or dict(type="SyncBN"), self.in_channels)[1]

    def forward(self, inputs):
        x = self._transform_inputs(inputs)
        if not self.dropout_first:  # DINOv2: BatchNorm, dropout, conv
            x = self.bn(x)
        if self.dropout is not None:
            x = self.dropout(x)
        return self.conv_seg(self.bn(x) if self.dropout_first else x)
