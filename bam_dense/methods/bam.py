"""BAM (METHODS.md section 1): backbone -> pooled embedding -> projector -> balanced attention matching."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from bam_dense.core.config import COUNT, NON_NEGATIVE, POSITIVE, ConfigError, PretrainConfig
from bam_dense.core.registry import MethodParams, register_method
from bam_dense.losses.bam import bam_loss, eps_at_epoch
from bam_dense.methods.base import Method, StepContext, multicrop_features
from bam_dense.models.backbones import describe
from bam_dense.models.heads import HeadConfig, MLPHead


@dataclass
class BAMParams(MethodParams):
    name: str = "bam"
    temperature: float = 0.1  # softmax temperature of the source attention
    eps: float = 0.05  # Sinkhorn entropic regularisation at the start of training
    eps_final: float | None = None  # None: constant eps
    eps_warmup_epochs: float = 0.0  # linear eps -> eps_final over these epochs
    sinkhorn_iters: int = 3
    top_k: int = 0  # keep the k largest target entries per image (0: off)
    positive_masking: bool = True
    n_target: int | None = None  # target crops (default: the number of global crops)
    projector: HeadConfig = field(default_factory=HeadConfig)
    RANGES = {
        "temperature": POSITIVE,
        "eps": POSITIVE,
        "eps_final": POSITIVE,
        "eps_warmup_epochs": NON_NEGATIVE,
        "sinkhorn_iters": COUNT,
        "top_k": NON_NEGATIVE,  # 0: off
        "n_target": COUNT,
    }

    def check(self, cfg: PretrainConfig) -> None:
        crops = cfg.data.views.global_crops
        if self.n_target is not None and not 1 <= self.n_target <= crops:
            raise ConfigError(f"method.n_target must be in 1..{crops} (the global crops), "
                              f"got {self.n_target}")


class BAMNet(nn.Module):
    """Backbone and projector; CO-BAM and LEWEL-BAM add a head on the dense maps (:meth:`dense_heads`)."""

    def __init__(self, backbone: nn.Module, params: BAMParams):
        super().__init__()
        self.backbone = backbone
        self.projector = MLPHead.from_config(describe(backbone).pooled_dim, params.projector)

    def forward(self, crops: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        pooled, dense = multicrop_features(self.backbone, crops)
        return {"z": self.projector(pooled), **self.dense_heads(dense)}

    def dense_heads(self, dense: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """The outputs of a variant's head on every crop's dense map (BAM: none)."""
        return {}


@register_method("bam", BAMParams)
class BAM(Method):
    name = "bam"
    # BAM's StudentTeacherWrapper updates the teacher at the start of each step, from the student before its
    # optimizer step (with the momentum of that step), then computes the targets: MoCo v3's order
    teacher_momentum_lead = 1

    def __init__(self, backbone: nn.Module, params: BAMParams, student: nn.Module | None = None):
        super().__init__(student if student is not None else BAMNet(backbone, params))
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
