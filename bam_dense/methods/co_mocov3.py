"""CO-MoCoV3 (CO-SSL, Aubret et al.; METHODS.md 3): MoCo v3 plus local-to-global InfoNCE, CO-BYOL's construction.

Per view: dense map ``Y`` (ResNet last stage or ViT patch tokens), optionally adaptive-average-pooled to
``grid x grid``; pointwise (1x1) local heads with MoCo v3's head shapes, a local projector ``g2`` and a local
predictor ``h2``, give one query per cell, ``h2(g2(Y))``. The key of view ``b`` for the cells of view ``a`` is
its global momentum output: ``t_b = mean_cells g2_xi(Y_b)``, the momentum local projector on every cell,
averaged (``target_head: local``, CO-BYOL's default, for the reason given there), or MoCo v3's own key
``g_xi(y_b)`` (``target_head: global``). Every cell's query is contrasted with the keys of the whole batch
(all processes); its own image's key is the positive:

    L_g = mocov3_loss(h(g(y_1)), g_xi(y_2)) + mocov3_loss(h(g(y_2)), g_xi(y_1))          (MoCo v3)
    L_l = mocov3_loss(h2(g2(Y_1)), t_2) + mocov3_loss(h2(g2(Y_2)), t_1)                  (mean over cells)
    L   = L_g + w_s L_l          (convex: (1 - w_s) L_g + w_s L_l)

``L_l`` sums the two directions as ``L_g`` does, so ``w_s`` weighs terms of one scale. With ``w_s = 0`` the
local heads are not built: the network, its initial weights and every step are MoCo v3's.

``local_stage`` and ``global_mlp``: the CO-SSL family's (:mod:`bam_dense.methods.co_ssl`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from bam_dense.core.registry import register_method
from bam_dense.losses.mocov3 import mocov3_loss
from bam_dense.methods import co_ssl
from bam_dense.methods.base import StepContext
from bam_dense.methods.co_ssl import global_dim, global_mlp, local_cells, local_source, with_local_term
from bam_dense.methods.mocov3 import MoCoV3, MoCoV3Net, MoCoV3Params, mocov3_head_family
from bam_dense.models.backbones import describe
from bam_dense.models.heads import HeadConfig, mocov3_predictor, mocov3_projector


@dataclass
class COMoCoV3Params(MoCoV3Params):
    """CO-MoCoV3 (CO-SSL): MoCo v3 plus an InfoNCE of every cell's query against the other view's global keys.

    The paper's CO-MoCoV3 details are not public: every field below is a reconstructed choice (docs/methods.md)."""

    name: str = "co_mocov3"
    local_weight: float = 0.3  # w_s; 0: no local heads, exactly MoCo v3
    convex: bool = False  # False: L_g + w_s L_l | True: (1 - w_s) L_g + w_s L_l
    grid: int = 0  # 0: every cell | n: adaptive-average-pool to n x n first
    target_head: str = "local"  # local: mean over cells of the momentum local projector (as CO-BYOL) | global: the key
    local_stage: int | None = None  # None: the last stage's dense map | k: stage k's map (CNN layer k, ViT block k)
    global_mlp: HeadConfig | None = None  # an MLP after average pooling giving the global representation (RF-ResNet's)
    RANGES = co_ssl.RANGES
    CHOICES = {"target_head": co_ssl.TARGET_HEADS}


class COMoCoV3Net(MoCoV3Net):
    def __init__(self, backbone: nn.Module, params: COMoCoV3Params):
        # MoCo v3's modules first: with w_s = 0 (and no post-pool MLP) the same draws, the same weights
        super().__init__(backbone, params, in_dim=global_dim(backbone, params.global_mlp))
        describe(backbone).check_stage(params.local_stage, "method.local_stage")
        self.grid = params.grid
        self.stage = params.local_stage
        self.local = params.local_weight > 0
        self.local_projector = self.local_predictor = None
        if self.local:
            head_family = mocov3_head_family(backbone)
            self.local_projector = mocov3_projector(describe(backbone).stage_dim(self.stage), head_family, mlp_dim=params.mlp_dim,
                                                    dim=params.dim)
            self.local_predictor = mocov3_predictor(head_family, mlp_dim=params.mlp_dim, dim=params.dim)
        self.global_mlp = global_mlp(backbone, params.global_mlp, init="torch_default")  # MoCo v3's head init

    def forward(self, crops: list[torch.Tensor], predict: bool = True, local_target: bool = False) -> list[dict]:
        outs = []
        cells_wanted = self.local and (predict or local_target)
        for x in crops:
            out, feats = self.view(x, predict, stage=self.stage if cells_wanted else None)
            if cells_wanted:
                cells = local_cells(local_source(feats, self.stage), self.grid)
                if predict:  # one query per cell: B x cells x dim
                    out["q_local"] = self.local_predictor(self.local_projector(cells)).transpose(1, 2)
                else:  # the local target: g2_xi on every cell (the inputs of its BN statistics), then the mean
                    out["t_local"] = self.local_projector(cells).mean(dim=2)
            outs.append(out)
        return outs


@register_method("co_mocov3", COMoCoV3Params)
class COMoCoV3(MoCoV3):
    name = "co_mocov3"

    def __init__(self, backbone: nn.Module, params: COMoCoV3Params):
        super().__init__(backbone, params, student=COMoCoV3Net(backbone, params))
        # the momentum local projector only serves the local target
        self.teacher_exclude = ("predictor", "local_predictor") + (() if params.target_head == "local" else ("local_projector",))

    def teacher_forward(self, teacher, crops):
        p = self.params
        return teacher(crops, predict=False, local_target=p.local_weight > 0 and p.target_head == "local")

    def loss(self, student_out, teacher_out, ctx: StepContext):
        p = self.params
        l_g = self.global_loss(student_out, teacher_out)
        if p.local_weight == 0:
            return l_g, {"global": l_g.detach()}
        key = "t_local" if p.target_head == "local" else "z"
        l_l = (mocov3_loss(student_out[0]["q_local"], teacher_out[1][key], p.temperature)
               + mocov3_loss(student_out[1]["q_local"], teacher_out[0][key], p.temperature))
        loss = with_local_term(l_g, l_l, p.local_weight, p.convex)
        return loss, {"global": l_g.detach(), "local": l_l.detach()}
