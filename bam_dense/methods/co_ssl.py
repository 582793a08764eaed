"""What the CO-SSL family shares (CO-SSL, Aubret et al.; METHODS.md 3): CO-BYOL, CO-DINO, CO-MoCoV3 and CO-BAM.

Each adds to its base method a local term: the cells of a view's dense map ``Y`` (CNN last stage or ViT patch
tokens; ``grid > 0``: adaptive-average-pooled to ``grid x grid`` first) aligned with a global output of the other
view, weighted by ``local_weight`` ``w_s``: ``L = L_g + w_s L_l`` (``convex``: ``(1 - w_s) L_g + w_s L_l``).

Two options shared by CO-BYOL, CO-DINO and CO-MoCoV3: ``local_stage`` takes ``Y`` for the local heads from an
intermediate stage of the same forward pass (the paper's appendix A.6; the global path keeps the last stage), and
``global_mlp`` puts an MLP between ``mean(Y)`` and the base method's head (RF-ResNet's MLP after average pooling,
the paper's Table 6).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from bam_dense.core.config import FRACTION, NON_NEGATIVE
from bam_dense.models.backbones import Features, describe
from bam_dense.models.heads import HeadConfig, MLPHead

# the family's options, one rule each (every CO method's parameters include them)
RANGES = {
    "local_weight": FRACTION,  # w_s
    "grid": NON_NEGATIVE,  # 0: every cell
}
TARGET_HEADS = ("local", "global")  # target_head of CO-BYOL and CO-MoCoV3


def local_cells(dense: torch.Tensor, grid: int) -> torch.Tensor:
    """``B x C x H x W`` -> ``B x C x cells``: every position, or an adaptive-average-pooled grid."""
    if grid > 0:
        dense = F.adaptive_avg_pool2d(dense, grid)
    return dense.flatten(2)


def global_mlp(backbone: nn.Module, cfg: HeadConfig | None, init: str) -> nn.Module:
    """CO-SSL's MLP after average pooling (RF-ResNet's, ablated in the paper's Table 6): it turns the pooled vector
    into the global representation the base method's head reads; the local heads read the cells before pooling.
    Without one, ``nn.Identity`` (no parameters: the state dict and every draw stay the base method's)."""
    return nn.Identity() if cfg is None else MLPHead.from_config(describe(backbone).pooled_dim, cfg, init=init)


def global_dim(backbone: nn.Module, cfg: HeadConfig | None) -> int:
    """Width of the global representation: the pooled vector's, or the post-pool MLP's output."""
    return describe(backbone).pooled_dim if cfg is None else cfg.out_dim


def local_source(feats: Features, stage: int | None) -> torch.Tensor:
    """The map the local heads embed: the last stage's (``stage`` None) or the intermediate one features() tapped."""
    return feats.dense if stage is None else feats.inner


def with_local_term(l_g: torch.Tensor, l_l: torch.Tensor, local_weight: float, convex: bool) -> torch.Tensor:
    """``L_g + w_s L_l``, or ``(1 - w_s) L_g + w_s L_l`` when ``convex``."""
    return ((1 - local_weight) * l_g if convex else l_g) + local_weight * l_l
