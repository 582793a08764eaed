"""CO-BAM (this project's, METHODS.md 5.1): BAM with local cells as extra sources of attention.

The student's dense map of every crop is pooled to ``grid x grid`` cells (``grid: 0``: every token or
pixel) and a pointwise local projector embeds each cell. A cell of image ``i`` in crop ``s`` attends, with
BAM's masked temperature softmax, to the same target columns as BAM (global target crops of the whole
batch, every rank), and is matched to ``P_t[i]``, the balanced attention row of image ``i`` in global view
``t != s``.

    L = (1 - w_s) L_BAM + w_s L_local,   L_local = mean over (t, s != t, i, cell) of the cross-entropy

With ``w_s = 0`` it is exactly BAM.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from bam_dense.core.registry import register_method
from bam_dense.losses.bam import attention_cross_entropy, balanced_targets, eps_at_epoch
from bam_dense.methods import co_ssl
from bam_dense.methods.bam import BAM, BAMNet, BAMParams
from bam_dense.methods.base import StepContext, multicrop_features
from bam_dense.methods.co_ssl import local_cells
from bam_dense.models.backbones import describe
from bam_dense.models.heads import HeadConfig, MLPHead


@dataclass
class COBAMParams(BAMParams):
    name: str = "co_bam"
    local_weight: float = 0.3  # w_s in (1 - w_s) L_BAM + w_s L_local
    grid: int = 4  # pool the dense map to grid x grid cells (0: every token / pixel)
    local_projector: HeadConfig = field(default_factory=HeadConfig)
    RANGES = co_ssl.RANGES


class COBAMNet(BAMNet):
    def __init__(self, backbone: nn.Module, params: COBAMParams):
        super().__init__(backbone, params)
        self.grid = params.grid
        self.local_projector = None
        if params.local_weight > 0:
            self.local_projector = MLPHead.from_config(describe(backbone).dense_dim, params.local_projector)

    def dense_heads(self, dense: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.local_projector is None:
            return {}
        cells = [self.local_projector(local_cells(d, self.grid)) for d in dense]  # per crop: b x d x cells
        n_cells = {c.shape[2] for c in cells}
        if len(n_cells) != 1:
            raise ValueError(f"crops give different numbers of cells {sorted(n_cells)}: set method.grid > 0")
        return {"cells": torch.stack(cells)}  # V x b x d x cells


@register_method("co_bam", COBAMParams)
class COBAM(BAM):
    name = "co_bam"
    teacher_exclude = ("local_projector",)

    def __init__(self, backbone: nn.Module, params: COBAMParams):
        super().__init__(backbone, params, student=COBAMNet(backbone, params))

    def teacher_forward(self, teacher, crops):
        return {"z": teacher.projector(multicrop_features(teacher.backbone, crops)[0])}

    def loss(self, student_out, teacher_out, ctx: StepContext):
        p = self.params
        z = student_out["z"]
        with torch.autocast(device_type=z.device.type, enabled=False):
            bt = balanced_targets(z, teacher_out["z"] if teacher_out is not None else None, n_crops=ctx.n_crops,
                                  n_global=ctx.n_global, n_target=p.n_target,
                                  eps=eps_at_epoch(ctx.epoch, p.eps, p.eps_final, p.eps_warmup_epochs),
                                  sinkhorn_iters=p.sinkhorn_iters, top_k=p.top_k, positive_masking=p.positive_masking)
            logits = bt.rows @ bt.columns.t()
            l_bam = attention_cross_entropy(logits, bt.targets, bt.mask, ctx.n_crops, p.temperature, bt.b)
            if p.local_weight == 0:
                return l_bam, {"bam": l_bam.detach()}
            cells = student_out["cells"].float()  # V x b x d x cells
            n_cells = cells.shape[3]
            rows = F.normalize(cells.permute(0, 1, 3, 2).reshape(-1, cells.shape[2]), dim=-1)  # (V*b*cells) x d
            cell_logits = rows @ bt.columns.t()
            mask = bt.mask.repeat_interleave(n_cells, dim=0) if bt.mask is not None else None
            targets = [t.repeat_interleave(n_cells, dim=0) for t in bt.targets]
            l_local = attention_cross_entropy(cell_logits, targets, mask, ctx.n_crops, p.temperature, bt.b * n_cells)
        loss = (1 - p.local_weight) * l_bam + p.local_weight * l_local
        return loss, {"bam": l_bam.detach(), "local": l_local.detach()}
