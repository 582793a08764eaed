"""BAM (METHODS.md section 1): backbone -> pooled embedding -> projector -> balanced attention matching."""

from __future__ import annotations

import torch
import torch.nn as nn

from bam_dense.core.config import BAMParams
from bam_dense.losses.bam import bam_loss, eps_at_epoch
from bam_dense.methods.base import Method, StepContext, multicrop_features
from bam_dense.models.backbones import describe
from bam_dense.models.heads import MLPHead


class BAMNet(nn.Module):
    def __init__(self, backbone: nn.Module, params: BAMParams):
        super().__init__()
        self.backbone = backbone
        self.projector = MLPHead.from_config(describe(backbone).pooled_dim, params.projector)

    def forward(self, crops: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        pooled, _ = multicrop_features(self.backbone, crops)
        return {"z": self.projector(pooled)}


class BAM(Method):
    name = "bam"
    # BAM's StudentTeacherWrapper updates the teacher at the start of each step, from the student before its
    # optimizer step (with the momentum of that step), then computes the targets: MoCo v3's order
    teacher_momentum_lead = 1

    def __init__(self, backbone: nn.Module, params: BAMParams):
        super().__init__(BAMNet(backbone, params))
        self.params = params

    def bam_kwargs(self, ctx: StepContext) -> dict:
        p = self.params
        return dict(
            n_crops=ctx.n_crops,
            n_global=ctx.n_global,
            n_target=p.n_target,
            temperature=p.temperature,
            eps=eps_at_epoch(ctx.epoch, p.eps, p.eps_final, p.eps_warmup_epochs),
            sinkhorn_iters=p.sinkhorn_iters,
            top_k=p.top_k,
            positive_masking=p.positive_masking,
        )

    def loss(self, student_out, teacher_out, ctx):
        z_teacher = teacher_out["z"] if teacher_out is not None else None
        loss = bam_loss(student_out["z"], z_teacher, **self.bam_kwargs(ctx))
        return loss, {"bam": loss.detach()}
