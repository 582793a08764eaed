"""LEWEL-BAM (this project's, METHODS.md 5.2): BAM on LEWEL's aligned embeddings as well.

LEWEL's alignment neck (:class:`bam_dense.models.alignment.AlignmentNeck`) runs on the dense map of every
crop, giving ``J = k / heads`` aligned embeddings per crop. For each index ``j``, the aligned embeddings
``j`` of all crops of the batch form a BAM problem of their own (positives: other crops of the same image,
same ``j``), with targets from the teacher's aligned embeddings when there is a teacher. BAM's global path
(projector on the pooled feature) is unchanged.

    L = w L_BAM(global) + (1 - w) mean_j L_BAM(aligned j)

With ``w = 1`` it is exactly BAM.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from bam_dense.core.config import LEWELBAMParams
from bam_dense.losses.bam import bam_loss, eps_at_epoch
from bam_dense.methods.base import Method, StepContext, multicrop_features
from bam_dense.models.alignment import AlignmentNeck
from bam_dense.models.backbones import describe
from bam_dense.models.heads import MLPHead


class LEWELBAMNet(nn.Module):
    def __init__(self, backbone: nn.Module, params: LEWELBAMParams):
        super().__init__()
        pooled_dim, dense_dim = describe(backbone).pooled_dim, describe(backbone).dense_dim
        self.backbone = backbone
        self.projector = MLPHead.from_config(pooled_dim, params.projector)
        self.neck = AlignmentNeck(dense_dim, params.neck, params.num_heads, params.scale) if params.global_weight < 1 else None

    def forward(self, crops: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        pooled, dense = multicrop_features(self.backbone, crops)
        out = {"z": self.projector(pooled)}
        if self.neck is not None:
            out["aligned"] = torch.cat([self.neck(d)[1] for d in dense])  # (V*b) x k x J, crop-major
        return out


class LEWELBAM(Method):
    name = "lewel_bam"
    teacher_momentum_lead = 1  # BAM's teacher: updated at the start of each step (methods/bam.py)

    def __init__(self, backbone: nn.Module, params: LEWELBAMParams):
        super().__init__(LEWELBAMNet(backbone, params))
        self.params = params

    def loss(self, student_out, teacher_out, ctx: StepContext):
        p = self.params
        kwargs = dict(n_crops=ctx.n_crops, n_global=ctx.n_global, n_target=p.n_target, temperature=p.temperature,
                      eps=eps_at_epoch(ctx.epoch, p.eps, p.eps_final, p.eps_warmup_epochs),
                      sinkhorn_iters=p.sinkhorn_iters, top_k=p.top_k, positive_masking=p.positive_masking)
        l_bam = bam_loss(student_out["z"], teacher_out["z"] if teacher_out is not None else None, **kwargs)
        if p.global_weight >= 1:
            return l_bam, {"bam": l_bam.detach()}
        aligned = student_out["aligned"]
        aligned_t = teacher_out["aligned"] if teacher_out is not None else None
        terms = [bam_loss(aligned[:, :, j], aligned_t[:, :, j] if aligned_t is not None else None, **kwargs)
                 for j in range(aligned.shape[2])]
        l_aligned = torch.stack(terms).mean()
        loss = p.global_weight * l_bam + (1 - p.global_weight) * l_aligned
        return loss, {"bam": l_bam.detach(), "aligned": l_aligned.detach()}
