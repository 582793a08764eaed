"""Backbones from timm behind one feature interface.

``create_backbone(arch, **kwargs)`` returns the timm model itself (so its state dict carries plain timm
names, which the converters rely on) with ``num_classes=0``; ``features(backbone, x)`` returns a
:class:`Features` record for any supported family:

* ViT (``VisionTransformer``): ``pooled`` = CLS token (or the average of patch tokens for
  ``global_pool='avg'``) after the final norm; ``dense`` = patch tokens after the final norm as
  ``B x C x h x w``. MoCo v3 options: fixed 2-D sin-cos position embedding and a frozen patch projection;
  ``dynamic_img_size=True`` so local crops resample the table (timm's way, or DINO's with
  ``features(..., pos_resample="dino")``, see :mod:`bam_dense.models.pos_embed`).
* Eva (timm's RoPE ViT, e.g. DINOv3's ``vit_*_dinov3``): as ViT; the rotary embedding follows the grid.
* CNN (ResNet, torchvision-compatible names in timm's ``resnet50``): ``dense`` = last stage, ``pooled``
  = its global average. ``zero_init_residual`` chooses the start of every block's last BatchNorm scale:
  zero (timm's default) or one (torchvision's ``zero_init_residual=False``).
* MetaFormer (CAFormer): ``dense`` = last stage, ``pooled`` = the head's average pool + norm.
* RF-ResNet (``rf99_resnet50``, ``rf29_resnet18``; :mod:`bam_dense.models.rf_resnet`, not timm models): a CNN
  like the ResNets, ``dense`` = last stage, ``pooled`` = its global average.

``features(backbone, x, stage=k)`` also returns ``inner``, the dense map of an intermediate stage from the same
forward pass (CO-SSL's local representations taken before the last stage): a CNN's ``layer{k}`` (1-4), a ViT's
block ``k`` (1-depth) with the final norm applied, as DINO's ``get_intermediate_layers``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from bam_dense.core.config import ModelConfig
from bam_dense.core.errors import UserFacingError
from bam_dense.models.heads import ACTIVATIONS
from bam_dense.models.rf_resnet import PRESETS as RF_RESNETS
from bam_dense.models.rf_resnet import RFResNet, create_rf_resnet


@dataclass
class Features:
    pooled: torch.Tensor  # B x D
    dense: torch.Tensor  # B x C x h x w
    inner: torch.Tensor | None = None  # B x C' x h' x w': the map of stage ``stage`` when features() was asked for one


def family(backbone: nn.Module) -> str:
    """``vit``, ``eva`` (timm's ``Eva``: RoPE ViTs such as DINOv3, no position table), ``cnn`` or ``metaformer``."""
    from timm.models.eva import Eva
    from timm.models.metaformer import MetaFormer
    from timm.models.resnet import ResNet
    from timm.models.vision_transformer import VisionTransformer

    if isinstance(backbone, VisionTransformer):
        return "vit"
    if isinstance(backbone, Eva):
        return "eva"
    if isinstance(backbone, (ResNet, RFResNet)):
        return "cnn"
    if isinstance(backbone, MetaFormer):
        return "metaformer"
    raise TypeError(f"unsupported backbone type {type(backbone).__name__}")


def sincos_2d_position_embedding(grid_h: int, grid_w: int, dim: int, n_prefix: int = 1, temperature: float = 10000.0) -> torch.Tensor:
    """Fixed 2-D sin-cos table (MoCo v3): ``1 x (n_prefix + h*w) x dim``, prefix rows zero.

    A quarter of the channels each hold sin(x w), cos(x w), sin(y w), cos(y w) with
    ``w_k = temperature^(-k / (dim/4))``.
    """
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs dim divisible by 4, got {dim}")
    ys, xs = torch.meshgrid(torch.arange(grid_h, dtype=torch.float64), torch.arange(grid_w, dtype=torch.float64), indexing="ij")
    quarter = dim // 4
    omega = 1.0 / temperature ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    ox = xs.reshape(-1, 1) * omega[None]
    oy = ys.reshape(-1, 1) * omega[None]
    table = torch.cat([ox.sin(), ox.cos(), oy.sin(), oy.cos()], dim=1).float()
    return torch.cat([torch.zeros(n_prefix, dim), table], dim=0).unsqueeze(0)


def _timm_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """YAML-friendly kwargs to timm's: activation names become classes."""
    out = dict(kwargs)
    for key in ("mlp_act", "act_layer", "act1_layer", "act2_layer"):  # act1/act2: MetaFormer's SepConv activations
        if isinstance(out.get(key), str):
            if out[key] not in ACTIVATIONS:
                raise ValueError(f"model.kwargs.{key}: unknown activation {out[key]!r}; choose from {sorted(ACTIVATIONS)}")
            out[key] = ACTIVATIONS[out[key]]
    if isinstance(out.get("res_scale_init_values"), list):
        out["res_scale_init_values"] = tuple(out["res_scale_init_values"])
    return out


def _is_timm_resnet(arch: str) -> bool:
    """Whether timm builds ``arch`` with its ``ResNet`` class (resnet*, resnext*, wide_resnet*, ...)."""
    from timm.models import model_entrypoint

    return model_entrypoint(arch).__module__ == "timm.models.resnet"


def _is_timm_eva(arch: str) -> bool:
    from timm.models import model_entrypoint

    return model_entrypoint(arch).__module__ == "timm.models.eva"


def create_backbone(
    arch: str,
    kwargs: dict[str, Any] | None = None,
    *,
    pos_embed: str = "sincos",
    freeze_patch_embed: bool = False,
    drop_path_rate: float = 0.0,
    dynamic_img_size: bool = True,
    pretrained: bool = False,
    zero_init_residual: bool | None = None,
) -> nn.Module:
    """A timm backbone (or an RF-ResNet preset) without classifier. ``kwargs`` override timm's constructor
    arguments (an RF-ResNet's configuration fields).

    ``zero_init_residual`` (ResNets only): ``True`` zero-initialises the last BatchNorm of every residual
    block (timm's ``zero_init_last``), ``False`` leaves it at one (torchvision's default); ``None`` keeps
    timm's default.
    """
    import timm

    if arch in RF_RESNETS:  # kwargs override RFResNetConfig fields (layers, spatial, maxpool, strides, ...)
        if pretrained:
            raise ValueError(f"{arch!r} has no pretrained weights")
        return create_rf_resnet(arch, zero_init_last=True if zero_init_residual is None else zero_init_residual,
                                **(kwargs or {}))
    kw = _timm_kwargs(kwargs or {})
    if not timm.is_model(arch):
        raise ValueError(f"unknown timm architecture {arch!r}")
    if "zero_init_last" in kw:
        raise ValueError("set model.zero_init_residual, not model.kwargs.zero_init_last")
    if zero_init_residual is not None:
        if not _is_timm_resnet(arch):
            if zero_init_residual:
                raise ValueError(f"model.zero_init_residual: true applies to ResNets only, not {arch!r}")
        else:
            kw["zero_init_last"] = zero_init_residual
    probe = arch.lower()
    is_vit = probe.startswith(("vit_", "deit_"))
    if is_vit:
        kw.setdefault("dynamic_img_size", dynamic_img_size)
        if pos_embed == "sincos" and not _is_timm_eva(arch):  # Eva (RoPE) has no table and no moco init
            kw.setdefault("weight_init", "moco")
    if drop_path_rate:
        kw["drop_path_rate"] = drop_path_rate
    model = timm.create_model(arch, pretrained=pretrained, num_classes=0, **kw)
    if family(model) == "vit":
        if pos_embed == "sincos" and model.pos_embed is not None:
            gh, gw = model.patch_embed.grid_size
            table = sincos_2d_position_embedding(gh, gw, model.embed_dim, n_prefix=0 if model.no_embed_class else model.num_prefix_tokens)
            with torch.no_grad():
                model.pos_embed.copy_(table)
            model.pos_embed.requires_grad_(False)
        if freeze_patch_embed:
            model.patch_embed.proj.weight.requires_grad_(False)
            if model.patch_embed.proj.bias is not None:
                model.patch_embed.proj.bias.requires_grad_(False)
    return model


def build_backbone(m: ModelConfig) -> nn.Module:
    """The backbone a pretraining config's ``model`` section describes (random init, seeded by the caller)."""
    try:
        backbone = create_backbone(m.arch, m.kwargs, pos_embed=m.pos_embed, freeze_patch_embed=m.freeze_patch_embed,
                                   drop_path_rate=m.drop_path_rate, zero_init_residual=m.zero_init_residual)
    except (ValueError, TypeError) as err:
        raise UserFacingError(f"model: cannot build {m.arch!r} with kwargs {m.kwargs}: {err}") from None
    if m.grad_checkpointing:
        backbone.set_grad_checkpointing(True)
    return backbone


def feature_dims(backbone: nn.Module) -> tuple[int, int]:
    """(pooled dim, dense channel dim)."""
    kind = family(backbone)
    if kind in ("vit", "eva"):
        return backbone.embed_dim, backbone.embed_dim
    return backbone.num_features, backbone.num_features


def patch_size(backbone: nn.Module) -> int:
    """Input pixels per dense-map cell (ViT patch size, CNN output stride)."""
    kind = family(backbone)
    if kind in ("vit", "eva"):
        return int(backbone.patch_embed.patch_size[0])
    return int(backbone.feature_info[-1]["reduction"])


def stage_count(backbone: nn.Module) -> int:
    """How many stages ``features(..., stage=k)`` can tap: a CNN's 4 layers, a ViT's blocks."""
    kind = family(backbone)
    if kind in ("vit", "eva"):
        return len(backbone.blocks)
    if kind == "cnn":
        return 4
    raise UserFacingError(f"intermediate stages are not supported for the {type(backbone).__name__} backbone")


def check_stage(backbone: nn.Module, stage: int | None, key: str) -> None:
    """Fail at start-up, naming the config ``key``, when ``stage`` is not a stage of this backbone (None: the last)."""
    if stage is None:
        return
    n = stage_count(backbone)
    if isinstance(stage, bool) or not isinstance(stage, int) or not 1 <= stage <= n:
        raise UserFacingError(f"{key}: {stage!r} is not a stage of {type(backbone).__name__}: choose 1-{n}, or null "
                              "for the last stage's dense map")


def stage_dim(backbone: nn.Module, stage: int | None) -> int:
    """Channels of the stage's dense map (None: the last stage's, ``feature_dims(backbone)[1]``)."""
    if stage is None or family(backbone) in ("vit", "eva"):
        return feature_dims(backbone)[1]
    return int(backbone.feature_info[stage]["num_chs"])  # entry 0 is the stem, entry k the stage layer{k}


def _stage_module(backbone: nn.Module, stage: int) -> nn.Module:
    return backbone.blocks[stage - 1] if family(backbone) in ("vit", "eva") else getattr(backbone, f"layer{stage}")


def features(backbone: nn.Module, x: torch.Tensor, pos_resample: str | None = None, stage: int | None = None) -> Features:
    """The backbone's :class:`Features`; ``pos_resample`` (ViT only, see :mod:`bam_dense.models.pos_embed`) picks
    how the position table is resampled to the input size (None: the rule recorded with the backbone, timm's when
    none was).
    ``stage``: also return that stage's map as ``inner``, taken from the same forward pass."""
    if stage is None:
        return _features(backbone, x, pos_resample)
    check_stage(backbone, stage, "stage")
    captured: list[torch.Tensor] = []
    hook = _stage_module(backbone, stage).register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        feats = _features(backbone, x, pos_resample)
    finally:
        hook.remove()
    inner = captured[-1]
    if family(backbone) in ("vit", "eva"):  # tokens after block ``stage``, normalised as the last block's
        inner = backbone.norm(inner)[:, backbone.num_prefix_tokens:]
        inner = inner.transpose(1, 2).reshape(x.shape[0], -1, *feats.dense.shape[-2:])
    feats.inner = inner
    return feats


def _features(backbone: nn.Module, x: torch.Tensor, pos_resample: str | None) -> Features:
    kind = family(backbone)
    if kind in ("vit", "eva"):
        from bam_dense.models.pos_embed import vit_forward_features

        if kind == "eva":  # RoPE from the patch grid (no table to resample); DINOv3's own forward does the same
            tokens = backbone.forward_features(x)
        else:
            tokens = vit_forward_features(backbone, x, pos_resample)  # after the final norm
        n_prefix = backbone.num_prefix_tokens
        patches = tokens[:, n_prefix:]
        h, w = backbone.patch_embed.dynamic_feat_size(x.shape[-2:]) if backbone.dynamic_img_size else backbone.patch_embed.grid_size
        dense = patches.transpose(1, 2).reshape(x.shape[0], -1, h, w)
        pooled = tokens[:, 0] if backbone.global_pool == "token" else patches.mean(1)
        return Features(pooled=pooled, dense=dense)
    if kind == "cnn":
        dense = backbone.forward_features(x)
        return Features(pooled=dense.mean(dim=(2, 3)), dense=dense)
    dense = backbone.forward_features(x)
    pooled = backbone.forward_head(dense, pre_logits=True)
    return Features(pooled=pooled, dense=dense)


def resnet_stage_features(backbone: nn.Module, x: torch.Tensor, stage: int) -> torch.Tensor:
    """The ResNet dense map after ``layer{stage}`` (1..4)."""
    x = backbone.act1(backbone.bn1(backbone.conv1(x)))
    x = backbone.maxpool(x)
    for i in range(1, stage + 1):
        x = getattr(backbone, f"layer{i}")(x)
    return x
