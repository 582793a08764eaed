"""Resampling a ViT's learned position embedding to an input size other than the pretraining one.

Two conventions give different tables from the same weights and grid, and so different features:

* ``timm``: timm's dynamic-size resampling (``resample_abs_pos_embed``, what ``dynamic_img_size=True``
  does in ``forward_features``): bicubic to the target grid *size*, antialiased (PyTorch's antialiased
  bicubic uses the kernel a = -0.5, and a wider support when shrinking). The table is used as is when the
  grid equals the pretraining grid. BAM's own evaluation goes through timm.
* ``dino``: ``VisionTransformer.interpolate_pos_encoding`` of DINO (facebookresearch/dino, copied unchanged
  into iBOT): bicubic by a *scale factor* ``(n + 0.1) / sqrt(N)`` per axis (``n`` patches along the axis,
  ``N`` the table's patch count, the +0.1 against flooring errors), not antialiased (a = -0.75),
  ``align_corners=False``. Since the sampling positions follow the scale factor, not ``n / sqrt(N)``, they
  are slightly off a plain resize to ``n``. The table is used as is only when the patch count equals the
  table's *and* the image is square (in pixels).

:func:`vit_forward_features` is timm's ``forward_features`` with the table resampled the chosen way.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

POS_RESAMPLE = ("timm", "dino")


def _pair(value) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[1]))


def dino_resample_pos_embed(pos_embed: torch.Tensor, img_size: tuple[int, int], patch_size: int | tuple[int, int],
                            old_size: tuple[int, int] | None = None, num_prefix_tokens: int = 1) -> torch.Tensor:
    """The table ``1 x (prefix + h*w) x D`` DINO's ``interpolate_pos_encoding`` gives for an ``H x W`` input.

    ``img_size`` is the input's (H, W) in pixels, ``h, w = H // patch, W // patch``; ``old_size`` the table's
    grid (square ``sqrt(N)`` when not given, as in DINO; a non-square one is scaled per axis the same way);
    the first ``num_prefix_tokens`` rows (the class token's) are kept as they are.
    """
    height, width = int(img_size[0]), int(img_size[1])
    ph, pw = _pair(patch_size)
    gh, gw = height // ph, width // pw
    n_pos = pos_embed.shape[1] - num_prefix_tokens
    if old_size is None:
        side = int(round(n_pos ** 0.5))
        old_size = (side, side)
    oh, ow = int(old_size[0]), int(old_size[1])
    if oh * ow != n_pos:
        raise ValueError(f"position table of {n_pos} patches is not a {oh}x{ow} grid")
    if gh * gw == n_pos and height == width:  # DINO's early-out: same patch count and a square image
        return pos_embed
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    dim = pos_embed.shape[-1]
    table = grid.float().reshape(1, oh, ow, dim).permute(0, 3, 1, 2)
    table = F.interpolate(table, scale_factor=((gh + 0.1) / oh, (gw + 0.1) / ow), mode="bicubic", align_corners=False)
    if tuple(table.shape[-2:]) != (gh, gw):  # DINO asserts the same
        raise ValueError(f"resampled grid {tuple(table.shape[-2:])} is not the input's {gh}x{gw}")
    table = table.permute(0, 2, 3, 1).reshape(1, gh * gw, dim).to(pos_embed.dtype)
    return torch.cat([prefix, table], dim=1)


def _vit_tokens_with_pos(backbone: nn.Module, patches: torch.Tensor, pos_embed: torch.Tensor) -> torch.Tensor:
    """The rest of timm's ``forward_features`` after the patch embedding, with ``pos_embed`` as the table.

    ``patches`` is ``B x h*w x D``; prefix tokens and the table are combined as timm's ``_pos_embed`` does.
    """
    tokens = (backbone.cls_token, getattr(backbone, "dist_token", None), backbone.reg_token)  # DeiT's distillation token
    prefix = [t.expand(patches.shape[0], -1, -1) for t in tokens if t is not None]
    if backbone.no_embed_class:
        tokens = torch.cat(prefix + [patches + pos_embed], dim=1)
    else:
        tokens = torch.cat(prefix + [patches], dim=1) + pos_embed
    tokens = backbone.norm_pre(backbone.patch_drop(backbone.pos_drop(tokens)))
    return backbone.norm(backbone.blocks(tokens))


def vit_forward_features(backbone: nn.Module, x: torch.Tensor, pos_resample: str = "timm") -> torch.Tensor:
    """All tokens after the final norm of a timm ``VisionTransformer``, the table resampled ``pos_resample``'s way.

    ``timm`` is ``backbone.forward_features(x)`` itself; ``dino`` resamples with :func:`dino_resample_pos_embed`.
    """
    if pos_resample not in POS_RESAMPLE:
        raise ValueError(f"unknown position-embedding resampling {pos_resample!r}; choose from {', '.join(POS_RESAMPLE)}")
    if pos_resample == "timm" or backbone.pos_embed is None:
        return backbone.forward_features(x)
    patches = backbone.patch_embed(x)
    if patches.ndim == 4:  # NHWC from a dynamic-size patch embedding
        patches = patches.flatten(1, 2)
    n_prefix = 0 if backbone.no_embed_class else backbone.num_prefix_tokens
    pos = dino_resample_pos_embed(backbone.pos_embed, tuple(x.shape[-2:]), backbone.patch_embed.patch_size,
                                  backbone.patch_embed.grid_size, n_prefix)
    if pos.shape[1] - n_prefix != patches.shape[1]:
        raise ValueError(f"{patches.shape[1]} patch tokens but a table of {pos.shape[1] - n_prefix} (padded patch embedding?)")
    return _vit_tokens_with_pos(backbone, patches, pos)
