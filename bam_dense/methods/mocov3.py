"""MoCo v3 (Chen, Xie & He 2021): InfoNCE between the online query of one view and the momentum key of the other.

Per view (each view through the backbone in its own call, as ``MoCo.forward`` does, so BatchNorm sees one
view per batch): pooled feature ``y`` (ResNet: global average; ViT: the CLS token), projector ``g`` and
predictor ``h`` as in the official builder (:func:`~bam_dense.models.heads.mocov3_projector`,
:func:`~bam_dense.models.heads.mocov3_predictor`: 2 + 2 layers after a ResNet, 3 + 2 after a ViT). The
momentum teacher is the EMA copy of backbone and projector (``momentum_encoder``), in train mode.

    L = mocov3_loss(h(g(y_1)), g_xi(y_2)) + mocov3_loss(h(g(y_2)), g_xi(y_1))

:func:`~bam_dense.losses.mocov3.mocov3_loss` is one direction of ``contrastive_loss``: temperature ``T``, keys
gathered across processes, times ``2T``.

Momentum: the official loop updates the momentum encoder at the *start* of iteration ``i`` with ``m_i``
(``adjust_moco_momentum``: ``1 - (1 + cos(pi i / I)) (1 - m) / 2``, the engine's cosine from ``teacher.momentum``
to ``teacher.momentum_end: 1``) and then computes the keys. The engine updates the teacher after the optimizer
step of iteration ``i - 1``, from the same student weights; ``teacher_momentum_lead = 1`` makes that update use
``m_i``, so the teacher of every iteration is the official one (at iteration 0 both are the student's copy).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from bam_dense.core.config import COUNT, POSITIVE
from bam_dense.core.registry import MethodParams, register_method
from bam_dense.losses.mocov3 import mocov3_loss
from bam_dense.methods.base import Method, StepContext
from bam_dense.models.backbones import Features, describe, features
from bam_dense.models.heads import mocov3_predictor, mocov3_projector


@dataclass
class MoCoV3Params(MethodParams):
    """MoCo v3 (Chen, Xie & He 2021); defaults from facebookresearch/moco-v3 main_moco.py, except the temperature."""

    name: str = "mocov3"
    dim: int = 256  # --moco-dim: output width of the projector and predictor
    mlp_dim: int = 4096  # --moco-mlp-dim: their hidden width
    temperature: float = 0.2  # --moco-t: 0.2 in CONFIG.md's ViT runs (main_moco.py's default is 1.0)
    RANGES = {"dim": COUNT, "mlp_dim": COUNT, "temperature": POSITIVE}
    NEEDS_TEACHER = True
    TWO_VIEWS = True


def mocov3_head_family(backbone: nn.Module) -> str:
    """MoCo v3 builds its heads per backbone family: ``vit`` (ViT, Eva) or ``cnn`` (ResNet, RF-ResNet)."""
    facts = describe(backbone)
    return "vit" if facts.tokens else facts.family


class MoCoV3Net(nn.Module):
    def __init__(self, backbone: nn.Module, params: MoCoV3Params, in_dim: int | None = None):
        super().__init__()
        head_family = mocov3_head_family(backbone)
        self.backbone = backbone
        self.projector = mocov3_projector(in_dim or describe(backbone).pooled_dim, head_family, mlp_dim=params.mlp_dim,
                                          dim=params.dim)
        self.global_mlp: nn.Module = nn.Identity()  # CO-MoCoV3's optional MLP after pooling (no parameters)
        self.predictor = mocov3_predictor(head_family, mlp_dim=params.mlp_dim, dim=params.dim)

    def view(self, x: torch.Tensor, predict: bool, stage: int | None = None) -> tuple[dict[str, torch.Tensor], Features]:
        feats = features(self.backbone, x, stage=stage)
        out = {"z": self.projector(self.global_mlp(feats.pooled))}  # the key (momentum branch) / the projection (online)
        if predict:
            out["q"] = self.predictor(out["z"])
        return out, feats

    def forward(self, crops: list[torch.Tensor], predict: bool = True) -> list[dict[str, torch.Tensor]]:
        return [self.view(x, predict)[0] for x in crops]


@register_method("mocov3", MoCoV3Params)
class MoCoV3(Method):
    name = "mocov3"
    teacher_exclude = ("predictor",)
    teacher_momentum_lead = 1  # the official loop updates the momentum encoder before the keys of the step

    def __init__(self, backbone: nn.Module, params: MoCoV3Params, student: nn.Module | None = None):
        super().__init__(student if student is not None else MoCoV3Net(backbone, params))
        self.params = params

    def teacher_forward(self, teacher, crops):
        return teacher(crops, predict=False)

    def global_loss(self, student_out, teacher_out) -> torch.Tensor:
        if teacher_out is None:
            raise ValueError(f"{self.name} needs the momentum teacher: set teacher.enabled: true")
        t = self.params.temperature
        return mocov3_loss(student_out[0]["q"], teacher_out[1]["z"], t) + mocov3_loss(student_out[1]["q"], teacher_out[0]["z"], t)

    def loss(self, student_out, teacher_out, ctx: StepContext):
        loss = self.global_loss(student_out, teacher_out)
        return loss, {"mocov3": loss.detach()}
