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

What the rest of the library needs to know about a backbone (its family, feature widths, patch size, prefix tokens,
position embedding, stages) is one :class:`BackboneFacts` record, built with the backbone by :func:`create_backbone`
and read with :func:`describe` (which describes, once, a backbone built elsewhere: a bare timm model, a meta-device
model of the converters), as timm's ``feature_info`` travels with its models.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from bam_dense.core.config import CHOICES, ModelConfig
from bam_dense.core.errors import UserFacingError
from bam_dense.models.heads import ACTIVATIONS, trunc_normal_icdf_
from bam_dense.models.rf_resnet import PRESETS as RF_RESNETS
from bam_dense.models.rf_resnet import RFResNet, create_rf_resnet


@dataclass
class Features:
    pooled: torch.Tensor  # B x D
    dense: torch.Tensor  # B x C x h x w
    inner: torch.Tensor | None = None  # B x C' x h' x w': the map of stage ``stage`` when features() was asked for one


@dataclass(frozen=True)
class BackboneFacts:
    """What a backbone is, for every consumer (heads, protocols, converters, records): built once per backbone.

    * ``family``: ``vit``, ``eva`` (timm's ``Eva``: RoPE ViTs such as DINOv3, no position table), ``cnn`` (timm's
      ResNets and the RF-ResNets) or ``metaformer``.
    * ``pooled_dim``, ``dense_dim``: widths of :class:`Features` ``pooled`` and ``dense``.
    * ``patch_size``: input pixels per cell of the dense map (a ViT's patch size, a CNN's output stride).
    * ``stage_dims``, ``stage_strides``: channels and input pixels per cell of each stage ``features(..., stage=k)``
      can tap, ``k = 1..stage_count`` (a CNN's ``layer1-4``, a ViT's blocks); none for a MetaFormer.
    * ``prefix_tokens``: the tokens before the patch tokens (class, distillation, registers); 0 without tokens.
      ``registers``: those besides the class token (DINOv2's registers, DINOv3's storage tokens, DeiT's distillation
      token).
    * ``position``: ``table`` (a position table that a rule of :mod:`bam_dense.models.pos_embed` resamples),
      ``rope`` (rotary embeddings computed for the grid) or None (no position embedding: CNNs, MetaFormers).
    * ``name``: the backbone's class, for messages.
    """

    family: str
    pooled_dim: int
    dense_dim: int
    patch_size: int
    stage_dims: tuple[int, ...]
    stage_strides: tuple[int, ...]
    prefix_tokens: int
    registers: int
    position: str | None
    name: str

    @property
    def tokens(self) -> bool:
        """Whether the backbone is a transformer over tokens (ViT, Eva) rather than a convolutional map."""
        return self.family in ("vit", "eva")

    @property
    def stage_count(self) -> int:
        """How many stages ``features(..., stage=k)`` can tap: a CNN's 4 layers, a ViT's blocks."""
        if not self.stage_dims:
            raise UserFacingError(f"intermediate stages are not supported for the {self.name} backbone")
        return len(self.stage_dims)

    def check_stage(self, stage: int | None, key: str) -> None:
        """Fail at start-up, naming the config ``key``, when ``stage`` is not a stage of this backbone (None: the
        last)."""
        if stage is None:
            return
        n = self.stage_count
        if isinstance(stage, bool) or not isinstance(stage, int) or not 1 <= stage <= n:
            raise UserFacingError(f"{key}: {stage!r} is not a stage of {self.name}: choose 1-{n}, or null "
                                  "for the last stage's dense map")

    def stage_dim(self, stage: int | None) -> int:
        """Channels of the stage's dense map (None: the last stage's, ``dense_dim``)."""
        return self.dense_dim if stage is None else self.stage_dims[stage - 1]

    def stage_stride(self, stage: int | None) -> int:
        """Input pixels per cell of the stage's dense map (None: the last stage's, ``patch_size``)."""
        return self.patch_size if stage is None else self.stage_strides[stage - 1]


_FACTS = "_bam_dense_facts"  # where a backbone keeps its BackboneFacts (a plain attribute: not in the state dict)


def describe(backbone: nn.Module) -> BackboneFacts:
    """The backbone's :class:`BackboneFacts`: those :func:`create_backbone` built with it, else (a backbone built
    elsewhere) derived now and kept with it."""
    facts = getattr(backbone, _FACTS, None)
    if facts is None:
        facts = _derive_facts(backbone)
        setattr(backbone, _FACTS, facts)
    return facts


def _derive_facts(backbone: nn.Module) -> BackboneFacts:
    kind = _family(backbone)
    name = type(backbone).__name__
    if kind in ("vit", "eva"):
        width, patch, depth = int(backbone.embed_dim), int(backbone.patch_embed.patch_size[0]), len(backbone.blocks)
        n_prefix = int(backbone.num_prefix_tokens)
        return BackboneFacts(kind, width, width, patch, (width,) * depth, (patch,) * depth, n_prefix,
                             n_prefix - int(getattr(backbone, "cls_token", None) is not None),
                             "table" if kind == "vit" else "rope", name)
    width, patch = int(backbone.num_features), int(backbone.feature_info[-1]["reduction"])
    stages = backbone.feature_info[1:5] if kind == "cnn" else []  # entry 0 is the stem, entry k the stage layer{k}
    return BackboneFacts(kind, width, width, patch, tuple(int(info["num_chs"]) for info in stages),
                         tuple(int(info["reduction"]) for info in stages), 0, 0, None, name)


def _family(backbone: nn.Module) -> str:
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
    """MoCo v3's fixed 2-D sin-cos table (``vits.py`` ``build_2d_sincos_position_embedding``, also BAM's
    ``models/vit.py``): ``1 x (n_prefix + h*w) x dim``, prefix rows zero.

    Token ``m`` (row-major over the grid, as the patch tokens) gets ``[sin(a w), cos(a w), sin(b w), cos(b w)]``
    with ``a = m // h``, ``b = m % h`` and ``w_k = temperature^(-k / (dim/4))``: vits.py meshgrids the ``w`` and
    ``h`` ranges in that order and flattens, so on a square grid the first half encodes the token's row and the
    second its column. Computed in float32 as there, so the table is vits.py's bit for bit.
    """
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs dim divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / temperature ** (torch.arange(quarter, dtype=torch.float32) / quarter)
    m = torch.arange(grid_h * grid_w)
    a = (m // grid_h).float()[:, None] * omega[None]
    b = (m % grid_h).float()[:, None] * omega[None]
    table = torch.cat([a.sin(), a.cos(), b.sin(), b.cos()], dim=1)
    return torch.cat([torch.zeros(n_prefix, dim), table], dim=0).unsqueeze(0)


VIT_INITS = CHOICES["model.init"]


def _init_vit_(model: nn.Module, init: str) -> None:
    """The ViT initialisations of the sources, after timm's own (``moco`` and ``timm_moco`` asked timm for its
    ``weight_init='moco'``).

    * ``timm_moco``: timm's ``weight_init='moco'`` as it is (the QKV thirds and the other linears xavier-uniform,
      zero biases, class token normal std 1e-6; the patch projection left at PyTorch's default), what BAM's
      ``get_arch`` builds.
    * ``moco`` (moco-v3 ``vits.py`` ``VisionTransformerMoCo``): ``timm_moco`` and, which timm leaves out, the
      patch projection xavier-uniform over ``3 p^2`` inputs and ``D`` outputs, ``U(-sqrt(6 / (3 p^2 + D)),
      +sqrt(6 / (3 p^2 + D)))``, with a zero bias. With ``--stop-grad-conv1`` this random projection is never
      trained, so its scale stays for the whole run.
    * ``timm``: timm's default (linears truncated normal std 0.02, class token normal std 1e-6).
    * ``dino`` (facebookresearch/dino ``vision_transformer.py``): timm's default but the class token truncated
      normal std 0.02, as DINO's ``trunc_normal_(self.cls_token, std=.02)``.
    """
    if init == "moco":
        proj = model.patch_embed.proj
        fan_in = proj.in_channels * proj.kernel_size[0] * proj.kernel_size[1]
        bound = math.sqrt(6.0 / float(fan_in + model.embed_dim))
        with torch.no_grad():
            nn.init.uniform_(proj.weight, -bound, bound)
            if proj.bias is not None:
                nn.init.zeros_(proj.bias)
    elif init == "dino" and model.cls_token is not None:
        with torch.no_grad():
            trunc_normal_icdf_(model.cls_token, std=0.02)  # DINO's sampler


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
    init: str = "auto",
) -> nn.Module:
    """A timm backbone (or an RF-ResNet preset) without classifier. ``kwargs`` override timm's constructor
    arguments (an RF-ResNet's configuration fields).

    ``zero_init_residual`` (ResNets only): ``True`` zero-initialises the last BatchNorm of every residual
    block (timm's ``zero_init_last``), ``False`` leaves it at one (torchvision's default); ``None`` keeps
    timm's default.

    ``init`` (ViTs only, :func:`_init_vit_`): ``moco``, ``timm_moco``, ``timm`` or ``dino``; ``auto`` is
    ``timm_moco`` with the sin-cos table and ``timm`` with a learned one.
    """
    import timm

    if init not in VIT_INITS:
        raise ValueError(f"unknown ViT initialisation {init!r}; choose from {', '.join(VIT_INITS)}")
    if arch in RF_RESNETS:  # kwargs override RFResNetConfig fields (layers, spatial, maxpool, strides, ...)
        if pretrained:
            raise ValueError(f"{arch!r} has no pretrained weights")
        model = create_rf_resnet(arch, zero_init_last=True if zero_init_residual is None else zero_init_residual,
                                 **(kwargs or {}))
        describe(model)
        return model
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
    is_vit = probe.startswith(("vit_", "deit_")) and not _is_timm_eva(arch)  # Eva (RoPE): no table, no moco init
    if init != "auto" and not is_vit:
        raise ValueError(f"model.init: {init!r} applies to ViTs only, not {arch!r}; leave it at auto")
    if is_vit and init == "auto":
        init = "timm_moco" if pos_embed == "sincos" else "timm"
    if probe.startswith(("vit_", "deit_")):
        kw.setdefault("dynamic_img_size", dynamic_img_size)
        if init in ("moco", "timm_moco"):
            kw.setdefault("weight_init", "moco")
    if drop_path_rate:
        kw["drop_path_rate"] = drop_path_rate
    model = timm.create_model(arch, pretrained=pretrained, num_classes=0, **kw)
    if describe(model).family == "vit":
        if not pretrained:
            _init_vit_(model, init)
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
                                   drop_path_rate=m.drop_path_rate, zero_init_residual=m.zero_init_residual,
                                   init=m.init)
    except (ValueError, TypeError) as err:
        raise UserFacingError(f"model: cannot build {m.arch!r} with kwargs {m.kwargs}: {err}") from None
    if m.grad_checkpointing:
        backbone.set_grad_checkpointing(True)
    return backbone


def _stage_module(backbone: nn.Module, stage: int) -> nn.Module:
    return backbone.blocks[stage - 1] if describe(backbone).tokens else getattr(backbone, f"layer{stage}")


def features(backbone: nn.Module, x: torch.Tensor, pos_resample: str | None = None, stage: int | None = None) -> Features:
    """The backbone's :class:`Features`; ``pos_resample`` (ViT only, see :mod:`bam_dense.models.pos_embed`) picks
    how the position table is resampled to the input size (None: the rule recorded with the backbone, timm's when
    none was).
    ``stage``: also return that stage's map as ``inner``, taken from the same forward pass."""
    if stage is None:
        return _features(backbone, x, pos_resample)
    describe(backbone).check_stage(stage, "stage")
    captured: list[torch.Tensor] = []
    hook = _stage_module(backbone, stage).register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        feats = _features(backbone, x, pos_resample)
    finally:
        hook.remove()
    inner = captured[-1]
    if describe(backbone).tokens:  # tokens after block ``stage``, normalised as the last block's
        inner = backbone.norm(inner)[:, backbone.num_prefix_tokens:]
        inner = inner.transpose(1, 2).reshape(x.shape[0], -1, *feats.dense.shape[-2:])
    feats.inner = inner
    return feats


def _features(backbone: nn.Module, x: torch.Tensor, pos_resample: str | None) -> Features:
    kind = describe(backbone).family
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
