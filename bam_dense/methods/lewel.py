"""LEWEL_B (METHODS.md section 2) and BYOL, which is LEWEL_B with loss weight 1.

Per view: the backbone's dense map ``Y``; the alignment neck gives the global projection ``z_g`` and the
aligned embeddings ``E``; predictors ``q``, ``q_o`` on the online side. For an ordered pair (online view a,
target view b):  ``w * l(q(z_g^a), z_g^b) + (1 - w) * l(q_o(E^a)_j, E^b_j)`` over all (image, j), with ``l``
the BYOL loss; the total sums both directions. Each view passes separately (BatchNorm per view).
Every head (neck projectors and predictors) is initialised as the official 1x1-conv MLP1D: kaiming normal,
fan_out (``MLPHead`` init ``kaiming_fan_out``).

With ``w = 1`` (method ``byol``) the dense path is skipped entirely: the projector sees only the pooled
vector, so its BatchNorm statistics, and therefore the loss, are exactly BYOL's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from bam_dense.core.config import COUNT, FRACTION, POSITIVE, ConfigError, PretrainConfig
from bam_dense.core.registry import MethodParams, register_method
from bam_dense.losses.lewel import lewel_loss
from bam_dense.methods.base import Method, StepContext
from bam_dense.models.alignment import AlignmentNeck
from bam_dense.models.backbones import describe, features
from bam_dense.models.heads import HeadConfig, MLPHead

NECK_RANGES = {"num_heads": COUNT, "scale": POSITIVE}  # the alignment neck's options (LEWEL_B's and LEWEL-BAM's)


def check_heads_divide(head: str, cfg: HeadConfig, num_heads: int) -> None:
    """The alignment neck splits the head's output channels into ``num_heads`` groups."""
    if cfg.out_dim % num_heads:
        raise ConfigError(f"method.{head}.out_dim ({cfg.out_dim}) must be divisible by method.num_heads ({num_heads})")


@dataclass
class BYOLParams(MethodParams):
    """BYOL, and LEWEL_B when ``lewel_loss_weight < 1``: with weight 1 LEWEL_B is exactly BYOL."""

    name: str = "byol"
    projector: HeadConfig = field(default_factory=lambda: HeadConfig(2, 4096, 256, bn=True, bias=False, act="relu"))
    predictor: HeadConfig = field(default_factory=lambda: HeadConfig(2, 4096, 256, bn=True, bias=False, act="relu"))
    NEEDS_TEACHER = True
    TWO_VIEWS = True


@dataclass
class LEWELParams(MethodParams):
    name: str = "lewel_b"
    projector: HeadConfig = field(default_factory=lambda: HeadConfig(2, 4096, 256, bn=True, bias=False, act="relu"))
    predictor: HeadConfig = field(default_factory=lambda: HeadConfig(2, 4096, 256, bn=True, bias=False, act="relu"))
    num_heads: int = 4  # alignment-map heads (channel groups)
    scale: float = 1.0  # temperature of the spatial softmax over L2-normalised map logits
    loss_weight: float = 0.5  # w: w * global + (1 - w) * aligned; 1.0 gives BYOL
    RANGES = {**NECK_RANGES, "loss_weight": FRACTION}
    NEEDS_TEACHER = True
    TWO_VIEWS = True

    def check(self, cfg: PretrainConfig) -> None:
        check_heads_divide("projector", self.projector, self.num_heads)


class LEWELNet(nn.Module):
    def __init__(self, backbone: nn.Module, params, dense: bool):
        super().__init__()
        dim = describe(backbone).dense_dim
        self.backbone = backbone
        self.dense = dense
        heads = getattr(params, "num_heads", 1)
        self.neck = AlignmentNeck(dim, params.projector, heads, getattr(params, "scale", 1.0))
        if not dense:
            self.neck.proj_obj = None
        k = params.projector.out_dim
        self.predictor = MLPHead.from_config(k, params.predictor, init="kaiming_fan_out")
        self.predictor_obj = MLPHead.from_config(k, params.predictor, init="kaiming_fan_out") if dense else None

    def view(self, x: torch.Tensor, predict: bool) -> dict[str, torch.Tensor]:
        dense = features(self.backbone, x).dense
        if self.dense:
            z_g, aligned = self.neck(dense)
        else:
            z_g, aligned = self.neck.proj(dense.mean(dim=(2, 3))), None
        out = {"z": z_g}
        if aligned is not None:
            out["e"] = aligned
        if predict:
            out["p"] = self.predictor(z_g)
            if aligned is not None:
                out["p_e"] = self.predictor_obj(aligned)
        return out

    def forward(self, crops: list[torch.Tensor], predict: bool = True) -> list[dict[str, torch.Tensor]]:
        return [self.view(x, predict) for x in crops]


@register_method("byol", BYOLParams)
@register_method("lewel_b", LEWELParams)
class LEWELB(Method):
    name = "lewel_b"
    teacher_exclude = ("predictor", "predictor_obj")

    def __init__(self, backbone: nn.Module, params):
        self.weight = 1.0 if params.name == "byol" else params.loss_weight
        super().__init__(LEWELNet(backbone, params, dense=self.weight < 1.0))
        self.params = params

    def teacher_forward(self, teacher, crops):
        return teacher(crops, predict=False)

    def loss(self, student_out, teacher_out, ctx: StepContext):
        loss, l_g, l_o = lewel_loss(student_out, teacher_out, self.weight)
        if self.weight >= 1.0:
            return loss, {"byol": l_g.detach()}
        return loss, {"global": l_g.detach(), "aligned": l_o.detach()}
