"""Pure loss functions of tensors: ``from bam_dense.losses import bam_loss``.

Each takes tensors (shapes in its docstring) and returns the loss; distributed behaviour is explicit and a
no-op at world size 1. Schedules and buffers live in the methods, never here.
"""

from bam_dense.losses.bam import (
           attention_cross_entropy,
           balanced_targets,
           bam_loss,
           eps_at_epoch,
           sinkhorn_targets,
)
from bam_dense.losses.byol import byol_loss
from bam_dense.losses.dino import dino_center, dino_loss
from bam_dense.losses.lewel import lewel_loss
from bam_dense.losses.mocov3 import mocov3_loss

__all__ = ["attention_cross_entropy", "balanced_targets", "bam_loss", "byol_loss", "dino_center", "dino_loss",
           "eps_at_epoch", "lewel_loss", "mocov3_loss", "sinkhorn_targets"]
