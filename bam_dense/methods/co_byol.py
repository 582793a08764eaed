"""CO-BYOL (CO-SSL, Aubret et al.; METHODS.md sections 3 and 6): BYOL plus local-to-global alignment.

Per view: dense map ``Y`` (CNN last stage or ViT patch tokens), global ``y = mean(Y)``; BYOL's projector
``g`` and predictor ``q`` on ``y``. Local heads are pointwise: projector ``g2`` and predictor ``q2`` on every
cell of ``Y`` (optionally adaptive-average-pooled to ``grid x grid``). The target of every cell of view a is
the other view's global target embedding: ``t_b = mean_cells g2_xi(Y_b)``, the momentum local projector on
every cell of view b, averaged (``target_head: local``, the default), or ``g_xi(y_b)`` (``target_head: global``).

    L_g = l(q(g(y_1)), g_xi(y_2)) + l(q(g(y_2)), g_xi(y_1))
    L_l = mean_cells l(q2(g2(Y_1)), t_2) + mean_cells l(q2(g2(Y_2)), t_1)
    L   = L_g + w_s L_l          (convex: (1 - w_s) L_g + w_s L_l)

Why the local target pools *after* ``g2_xi``: the local projector's BatchNorm only ever learns statistics of
cells (the student feeds it nothing else), so the target head is applied to cells too. Applied to the pooled
vector ``y_b`` instead, an EMAN teacher (eval mode) would normalise it with per-cell running statistics, while
a pooled vector varies far less than a cell (on a random ResNet-18, pre-BN variance 0.07 pooled against 0.68
per cell). Cells in, then the mean, is the same target for an EMA teacher in train mode and an EMAN teacher.

Two options shared by the CO methods (CO-DINO, CO-MoCoV3 too): ``local_stage`` takes ``Y`` for the local heads
from an intermediate stage of the same forward pass (the paper's appendix A.6; the global path keeps the last
stage), and ``global_mlp`` puts an MLP between ``mean(Y)`` and the base method's head (RF-ResNet's MLP after
average pooling, the paper's Table 6).

With ``w_s = 0`` it is exactly BYOL. CO-SSL's code is not public: all four heads are initialised as LEWEL's
1x1-conv MLP1D heads, of the BYOL/LEWEL_B recipe this one follows (kaiming normal, fan_out).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from bam_dense.core.config import COBYOLParams, HeadConfig
from bam_dense.losses.byol import byol_loss
from bam_dense.methods.base import Method, StepContext
from bam_dense.models.backbones import Features, describe, features
from bam_dense.models.heads import MLPHead


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


class COBYOLNet(nn.Module):
    def __init__(self, backbone: nn.Module, params: COBYOLParams):
        super().__init__()
        k = params.projector.out_dim
        describe(backbone).check_stage(params.local_stage, "method.local_stage")
        self.backbone = backbone
        self.grid = params.grid
        self.stage = params.local_stage
        self.local = params.local_weight > 0  # w_s = 0: no local heads in the graph (exactly BYOL)
        self.projector = MLPHead.from_config(global_dim(backbone, params.global_mlp), params.projector, init="kaiming_fan_out")
        self.predictor = MLPHead.from_config(k, params.predictor, init="kaiming_fan_out")
        self.local_projector = MLPHead.from_config(describe(backbone).stage_dim(self.stage), params.projector, init="kaiming_fan_out")
        self.local_predictor = MLPHead.from_config(k, params.predictor, init="kaiming_fan_out")
        self.global_mlp = global_mlp(backbone, params.global_mlp, init="kaiming_fan_out")  # the heads' init

    def view(self, x: torch.Tensor, predict: bool, local: bool) -> dict[str, torch.Tensor]:
        feats = features(self.backbone, x, stage=self.stage if local else None)
        pooled = feats.dense.mean(dim=(2, 3))
        out = {"z": self.projector(self.global_mlp(pooled))}
        if local:
            cells = local_cells(local_source(feats, self.stage), self.grid)
        if predict:
            out["p"] = self.predictor(out["z"])
            if local:
                out["p_local"] = self.local_predictor(self.local_projector(cells))  # B x k x cells
        elif local:
            # the local target: g2_xi on every cell (the inputs its BN statistics come from), then the mean
            out["t_local"] = self.local_projector(cells).mean(dim=2)
        return out

    def forward(self, crops: list[torch.Tensor], predict: bool = True, local: bool | None = None) -> list[dict]:
        local = self.local if local is None else local
        return [self.view(x, predict, local) for x in crops]


class COBYOL(Method):
    name = "co_byol"
    teacher_exclude = ("predictor", "local_predictor")

    def __init__(self, backbone: nn.Module, params: COBYOLParams):
        super().__init__(COBYOLNet(backbone, params))
        self.params = params

    def teacher_forward(self, teacher, crops):
        return teacher(crops, predict=False, local=self.params.target_head == "local" and self.params.local_weight > 0)

    def loss(self, student_out, teacher_out, ctx: StepContext):
        p = self.params
        l_g = byol_loss(student_out[0]["p"], teacher_out[1]["z"]) + byol_loss(student_out[1]["p"], teacher_out[0]["z"])
        if p.local_weight == 0:
            return l_g, {"global": l_g.detach()}
        l_l = 0.0
        for a, b in ((0, 1), (1, 0)):
            pred = student_out[a]["p_local"]  # B x k x cells
            target = teacher_out[b]["t_local"] if p.target_head == "local" else teacher_out[b]["z"]  # B x k
            cells = pred.shape[2]
            l_l = l_l + byol_loss(pred.transpose(2, 1).reshape(-1, pred.shape[1]),
                                  target[:, None, :].expand(-1, cells, -1).reshape(-1, target.shape[1]))
        loss = ((1 - p.local_weight) * l_g if p.convex else l_g) + p.local_weight * l_l
        return loss, {"global": l_g.detach(), "local": l_l.detach()}
