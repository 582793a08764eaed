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

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from bam_dense.core.config import FRACTION, PretrainConfig
from bam_dense.core.registry import register_method
from bam_dense.losses.bam import bam_loss
from bam_dense.methods import lewel
from bam_dense.methods.bam import BAM, BAMNet, BAMParams
from bam_dense.methods.base import StepContext
from bam_dense.models.alignment import AlignmentNeck
from bam_dense.models.backbones import describe
from bam_dense.models.heads import HeadConfig


@dataclass
class LEWELBAMParams(BAMParams):
    name: str = "lewel_bam"
    global_weight: float = 0.5  # w in w L_BAM(global) + (1 - w) mean_j L_BAM(aligned j)
    num_heads: int = 4
    scale: float = 1.0
    neck: HeadConfig = field(default_factory=lambda: HeadConfig(2, 2048, 256, bn=True, bias=False, act="relu"))
    RANGES = {**lewel.NECK_RANGES, "global_weight": FRACTION}

    def check(self, cfg: PretrainConfig) -> None:
        super().check(cfg)
        lewel.check_heads_divide("neck", self.neck, self.num_heads)


class LEWELBAMNet(BAMNet):
    def __init__(self, backbone: nn.Module, params: LEWELBAMParams):
        super().__init__(backbone, params)
        self.neck = None
        if params.global_weight < 1:
            self.neck = AlignmentNeck(describe(backbone).dense_dim, params.neck, params.num_heads, params.scale)

    def dense_heads(self, dense: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.neck is None:
            return {}
        return {"aligned": torch.cat([self.neck(d)[1] for d in dense])}  # (V*b) x k x J, crop-major


@register_method("lewel_bam", LEWELBAMParams)
class LEWELBAM(BAM):
    name = "lewel_bam"

    def __init__(self, backbone: nn.Module, params: LEWELBAMParams):
        super().__init__(backbone, params, student=LEWELBAMNet(backbone, params))

    def loss(self, student_out, teacher_out, ctx: StepContext):
        p = self.params
        kwargs = self.bam_kwargs(ctx)
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
