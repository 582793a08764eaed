"""Resampling a ViT's learned position table to an input size other than the pretraining one: each source's rule.

The same weights give different features at another input size depending on how the table is resampled, so
every protocol (DAVIS, linear probe, linear segmentation, retrieval, the dense probe) applies the rule of the
checkpoint's source, recorded with the loaded encoder (:func:`set_pos_rule`; the source layout picks it in
:func:`bam_dense.convert.sources.native_pos_rule`). The rules (:data:`POS_RULES`):

* ``timm``: timm's dynamic-size resampling (``resample_abs_pos_embed``): bicubic to the target grid *size*,
  antialiased; the table as is on the pretraining grid. BAM's evaluation, bam-dense checkpoints, timm files.
* ``dino``: DINO's ``VisionTransformer.interpolate_pos_encoding`` (facebookresearch/dino, unchanged in iBOT):
  bicubic by a *scale factor* ``(n + 0.1) / sqrt(N)`` per axis (``n`` patches along the axis, ``N`` the table's
  patch count), not antialiased, ``align_corners=False``: the sampling positions follow the scale factor, slightly
  off a plain resize to ``n``. The table is used as is only when the patch count equals the table's *and* the
  image is square in pixels.
* ``dinov2``: DINOv2's ``DinoVisionTransformer.interpolate_pos_encoding`` with its hub settings for models without
  registers (``interpolate_offset=0.1``, ``interpolate_antialias=False``): DINO's arithmetic, computed in float32.
* ``dinov2-reg``: the same function with the hub settings for models with registers (``interpolate_offset=0.0``,
  ``interpolate_antialias=True``): bicubic to the grid *size*, antialiased, DINO's early-out.
* ``deit``: DeiT's ``main.py`` and MAE's ``util/pos_embed.py`` ``interpolate_pos_embed`` (the same lines), used
  when weights meet a model of another ``img_size``: bicubic to the grid size, not antialiased,
  ``align_corners=False``, the table as is on its own grid. MoCo v3's ViTs transfer through DeiT
  (``convert_to_deit.py``), so they get it too. The sources resize square grids only; a non-square grid is
  resized per axis the same way here.
* ``rope``: DINOv3 has no table (rotary embeddings computed for the grid, timm's ``Eva`` as DINOv3's code):
  nothing to resample.

Tests (``tests/test_pos_rules.py``) compare each table with the source's own function, recorded as fixtures.
"""

from __future__ import annotations

import contextlib
import types
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class PosRule:
    name: str
    source: str
    by_scale: bool = False  # scale factor (n + offset) / N per axis, else the output size n
    offset: float = 0.0
    antialias: bool = False
    square_early_out: bool = False  # table as is when the patch count is the table's and the image square (DINO)
    table: bool = True  # False: no table to resample (RoPE)


POS_RULES = {
    "timm": PosRule("timm", "timm resample_abs_pos_embed (BAM's evaluation, bam-dense, timm files)", antialias=True),
    "dino": PosRule("dino", "DINO / iBOT VisionTransformer.interpolate_pos_encoding", by_scale=True, offset=0.1,
                    square_early_out=True),
    "dinov2": PosRule("dinov2", "DINOv2 interpolate_pos_encoding, interpolate_offset 0.1, no antialias (hub, no registers)",
                      by_scale=True, offset=0.1, square_early_out=True),
    "dinov2-reg": PosRule("dinov2-reg", "DINOv2 interpolate_pos_encoding, interpolate_offset 0, antialias (hub, registers)",
                          antialias=True, square_early_out=True),
    "deit": PosRule("deit", "DeiT main.py / MAE util/pos_embed.py interpolate_pos_embed (also MoCo v3 ViTs via DeiT)"),
    "rope": PosRule("rope", "DINOv3: rotary position embeddings computed for the grid, no table", table=False),
}
POS_RESAMPLE = tuple(POS_RULES)


def _pair(value) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[1]))


def check_rule(rule: str) -> PosRule:
    if rule not in POS_RULES:
        raise ValueError(f"unknown position-embedding resampling {rule!r}; choose from {', '.join(POS_RULES)}")
    return POS_RULES[rule]


def resample_pos_table(pos_embed: torch.Tensor, rule: str, img_size: tuple[int, int], patch_size: int | tuple[int, int],
                       old_size: tuple[int, int] | None = None, num_prefix_tokens: int = 1) -> torch.Tensor:
    """The table ``1 x (prefix + h*w) x D`` that ``rule`` gives for an ``H x W`` input.

    ``img_size`` is the input's (H, W) in pixels, ``h, w = H // patch, W // patch``; ``old_size`` the table's
    grid (square when not given, as the sources assume); the first ``num_prefix_tokens`` rows (class token) are
    kept as they are.
    """
    spec = check_rule(rule)
    if not spec.table:
        raise ValueError(f"rule {rule!r} has no position table to resample")
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
    if (gh * gw == n_pos and height == width) if spec.square_early_out else (gh, gw) == (oh, ow):
        return pos_embed
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    dim = pos_embed.shape[-1]
    table = grid.float().reshape(1, oh, ow, dim).permute(0, 3, 1, 2)
    size = {"scale_factor": ((gh + spec.offset) / oh, (gw + spec.offset) / ow)} if spec.by_scale else {"size": (gh, gw)}
    table = F.interpolate(table, mode="bicubic", align_corners=False, antialias=spec.antialias, **size)
    if tuple(table.shape[-2:]) != (gh, gw):  # DINO and DINOv2 assert the same
        raise ValueError(f"resampled grid {tuple(table.shape[-2:])} is not the input's {gh}x{gw}")
    table = table.permute(0, 2, 3, 1).reshape(1, gh * gw, dim).to(pos_embed.dtype)
    return torch.cat([prefix, table], dim=1)


def _ruled_pos_embed(self, x: torch.Tensor) -> torch.Tensor:
    """timm's ``_pos_embed`` with the table resampled by ``self.pos_rule`` (timm's own for ``timm``)."""
    rule = getattr(self, "pos_rule", "timm")
    if rule == "timm" or self.pos_embed is None:
        return type(self)._pos_embed(self, x)
    if x.ndim == 4:  # NHWC from a dynamic-size patch embedding
        grid = tuple(x.shape[1:3])
        x = x.flatten(1, 2)
    else:
        grid = tuple(self.patch_embed.grid_size)
    patch = _pair(self.patch_embed.patch_size)
    pixels = (grid[0] * patch[0], grid[1] * patch[1])  # timm takes only multiples of the patch (or pads to one)
    n_prefix = 0 if self.no_embed_class else self.num_prefix_tokens
    pos = resample_pos_table(self.pos_embed, rule, pixels, patch, self.patch_embed.grid_size, n_prefix)
    if pos.shape[1] - n_prefix != x.shape[1]:
        raise ValueError(f"{x.shape[1]} patch tokens but a table of {pos.shape[1] - n_prefix} (padded patch embedding?)")
    tokens = (self.cls_token, getattr(self, "dist_token", None), self.reg_token)  # timm's order; DeiT's distillation token
    prefix = [t.expand(x.shape[0], -1, -1) for t in tokens if t is not None]
    if self.no_embed_class:
        out = torch.cat(prefix + [x + pos], dim=1)
    else:
        out = torch.cat(prefix + [x], dim=1) + pos
    return self.pos_drop(out)


def set_pos_rule(backbone: nn.Module, rule: str) -> nn.Module:
    """Record ``rule`` with a ViT (``backbone.pos_rule``) and make its every forward path (``forward_features``,
    ``forward_intermediates``) resample the table by it. A no-op but the record for other families."""
    from bam_dense.models.backbones import describe

    check_rule(rule)
    position = describe(backbone).position
    if position is None:
        return backbone
    if position == "rope" and rule not in ("rope", "timm"):
        raise ValueError(f"{type(backbone).__name__} has rotary position embeddings: rule {rule!r} does not apply")
    if position == "table" and rule == "rope":
        raise ValueError(f"{type(backbone).__name__} has a position table: rule 'rope' does not apply")
    if position == "table" and getattr(backbone, "pos_embed", None) is not None and "_pos_embed" not in vars(backbone):
        backbone._pos_embed = types.MethodType(_ruled_pos_embed, backbone)
    backbone.pos_rule = rule
    return backbone


def pos_rule_of(backbone: nn.Module) -> str | None:
    """The rule recorded with a ViT (``timm`` when none was), None for other families."""
    from bam_dense.models.backbones import describe

    position = describe(backbone).position
    if position == "rope":
        return "rope"
    return getattr(backbone, "pos_rule", "timm") if position == "table" else None


@contextlib.contextmanager
def pos_rule(backbone: nn.Module, rule: str | None):
    """Within the block, ``backbone`` resamples by ``rule`` (None: its recorded rule); restored after."""
    previous = pos_rule_of(backbone)
    if rule is None or previous in (None, "rope") or rule == previous:  # RoPE: no table, nothing to choose
        yield backbone
        return
    set_pos_rule(backbone, rule)
    try:
        yield backbone
    finally:
        backbone.pos_rule = previous


def vit_forward_features(backbone: nn.Module, x: torch.Tensor, pos_resample: str | None = None) -> torch.Tensor:
    """All tokens after the final norm of a timm ``VisionTransformer``, the table resampled by ``pos_resample``
    (None: the rule recorded with the backbone, :func:`set_pos_rule`; ``timm`` when none was)."""
    if pos_resample is not None:
        check_rule(pos_resample)
    with pos_rule(backbone, pos_resample):
        return backbone.forward_features(x)
