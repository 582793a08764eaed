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

``local_stage`` and ``global_mlp``: the CO-SSL family's (:mod:`bam_dense.methods.co_ssl`).

With ``w_s = 0`` it is exactly BYOL. CO-SSL's code is not public: all four heads are initialised as LEWEL's
1x1-conv MLP1D heads, of the BYOL/LEWEL_B recipe this one follows (kaiming normal, fan_out).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from bam_dense.core.registry import MethodParams, register_method
from bam_dense.losses.byol import byol_loss
from bam_dense.methods import co_ssl
from bam_dense.methods.base import Method, StepContext
from bam_dense.methods.co_ssl import global_dim, global_mlp, local_cells, local_source, with_local_term
from bam_dense.models.backbones import describe, features
from bam_dense.models.heads import HeadConfig, MLPHead


@dataclass
class COBYOLParams(MethodParams):
    name: str = "co_byol"
    projector: HeadConfig = field(default_factory=lambda: HeadConfig(2, 4096, 256, bn=True, bias=False, act="relu"))
    predictor: HeadConfig = field(default_factory=lambda: HeadConfig(2, 4096, 256, bn=True, bias=False, act="relu"))
    local_weight: float = 0.3  # w_s
    convex: bool = False  # False: L_g + w_s L_l (default, METHODS.md 6) | True: (1 - w_s) L_g + w_s L_l
    grid: int = 0  # 0: every cell of the dense map | n: adaptive-average-pool to n x n first
    target_head: str = "local"  # local: mean over cells of the momentum local projector | global: reuse g_xi's output
    local_stage: int | None = None  # None: the last stage's dense map | k: stage k's map (CNN layer k, ViT block k)
    global_mlp: HeadConfig | None = None  # an MLP after average pooling giving the global representation (RF-ResNet's)
    RANGES = co_ssl.RANGES
    CHOICES = {"target_head": co_ssl.TARGET_HEADS}
    NEEDS_TEACHER = True
    TWO_VIEWS = True


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


@register_method("co_byol", COBYOLParams)
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
        loss = with_local_term(l_g, l_l, p.local_weight, p.convex)
        return loss, {"global": l_g.detach(), "local": l_l.detach()}
