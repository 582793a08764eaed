"""CO-DINO (CO-SSL, Aubret et al.; METHODS.md 3): DINO plus local-to-global distillation, CO-BYOL's construction.

DINO unchanged (:mod:`bam_dense.methods.dino`: head on every crop's pooled feature, EMA teacher on the two
global crops, centring, sharpening, the centre update from the global teacher outputs only). In addition, for
each of the two global views ``a``: its dense map ``Y_a`` (ResNet last stage or ViT patch tokens, optionally
adaptive-average-pooled to ``grid x grid``) goes cell by cell (a 1x1 head) through a local DINO head ``h2``
(DINO's head shape; ``shared_head``: DINO's head itself), and every cell's distribution is matched to the
**other** view's global teacher distribution, centred and sharpened as in DINO's own term:

    P_b   = softmax((h_xi(y_b) - c) / tau_t)                    (DINO's teacher target of view b)
    L_l   = 1/2 sum_{(a, b) in {(1, 2), (2, 1)}} mean_{i, cells} -sum_k P_b[i, k] log softmax(h2(Y_a[i, cell]) / tau_s)_k
    L     = L_g + w_s L_l          (convex: (1 - w_s) L_g + w_s L_l)

This is :func:`~bam_dense.losses.dino.dino_loss` on the per-cell student logits of the two global views against
the two teacher outputs repeated per cell (the same-view pairs skipped, pairs averaged as DINO averages its
global term), with the centre and teacher temperature of DINO's term, taken before the centre moves. With
``w_s = 0`` no local head is built: the network, its initial weights and every step are DINO's. The local head
trains as DINO's own: its last layer frozen in the first ``freeze_last_layer`` epochs
(:meth:`~bam_dense.methods.dino.DINO.frozen_parameters` freezes every DINO head's), and the teacher, built as
DINO's, never drops paths.

``local_stage`` and ``global_mlp``: the CO-SSL family's (:mod:`bam_dense.methods.co_ssl`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from bam_dense.core.config import ConfigError, PretrainConfig
from bam_dense.core.errors import UserFacingError
from bam_dense.core.registry import register_method
from bam_dense.losses.dino import dino_loss
from bam_dense.methods import co_ssl
from bam_dense.methods.base import StepContext
from bam_dense.methods.co_ssl import global_dim, global_mlp, local_cells, local_source, with_local_term
from bam_dense.methods.dino import DINO, DINONet, DINOParams, teacher_temp_at_epoch, without_drop_path_
from bam_dense.models.backbones import describe
from bam_dense.models.heads import DINOHead, HeadConfig


@dataclass
class CODINOParams(DINOParams):
    """CO-DINO (CO-SSL): DINO plus each cell of a global view distilled from the other view's teacher output.

    The paper's CO-DINO details are not public: every field below is a reconstructed choice (docs/methods.md)."""

    name: str = "co_dino"
    local_weight: float = 0.3  # w_s (the paper's good range 0.2-0.5); 0: no local head, exactly DINO
    convex: bool = False  # False: L_g + w_s L_l | True: (1 - w_s) L_g + w_s L_l
    grid: int = 0  # 0: every cell of the dense map | n: adaptive-average-pool it to n x n first
    shared_head: bool = False  # True: the cells go through DINO's own head (the paper's Table 6 ablation)
    local_stage: int | None = None  # None: the last stage's dense map | k: stage k's map (CNN layer k, ViT block k)
    global_mlp: HeadConfig | None = None  # an MLP after average pooling giving the global representation (RF-ResNet's)
    RANGES = co_ssl.RANGES

    def check(self, cfg: PretrainConfig) -> None:
        crops = cfg.data.views.global_crops
        if crops != 2:
            raise ConfigError(f"method co_dino pairs the two global crops: set data.views.global_crops: 2 (got {crops})")


class CODINONet(DINONet):
    def __init__(self, backbone: nn.Module, params: CODINOParams):
        # DINO's modules first: with w_s = 0 (and no post-pool MLP) the same draws, the same weights
        super().__init__(backbone, params, in_dim=global_dim(backbone, params.global_mlp))
        describe(backbone).check_stage(params.local_stage, "method.local_stage")
        if params.shared_head and (params.local_stage is not None or params.global_mlp is not None):
            raise UserFacingError("method.shared_head: DINO's own head reads the pooled last stage; with "
                                  "method.local_stage or method.global_mlp set, use shared_head: false")
        self.grid = params.grid
        self.stage = params.local_stage
        self.local = params.local_weight > 0
        self.local_head = None
        if self.local and not params.shared_head:
            self.local_head = DINOHead(describe(backbone).stage_dim(self.stage), params.out_dim, hidden_dim=params.hidden_dim,
                                       bottleneck_dim=params.bottleneck_dim, layers=params.head_layers,
                                       bn=params.head_bn, norm_last_layer=params.norm_last_layer)
        self.global_mlp = global_mlp(backbone, params.global_mlp, init="trunc_normal")  # DINO's head init

    def forward(self, crops: list[torch.Tensor], local: bool = True) -> dict:
        local = self.local and local
        # DINO's own backbone calls (so that w_s = 0 is DINO exactly), tapping the local stage when one is set
        calls = self.crop_features(crops, stage=self.stage if local else None)
        pooled = torch.cat([f.pooled for _, f in calls])
        out: dict = {"logits": self.head(self.global_mlp(pooled))}
        if local:
            head = self.local_head if self.local_head is not None else self.head
            n, first = calls[0]  # the two global crops come first (and share a size)
            dense = local_source(first, self.stage).chunk(n)[:2]
            cells = [local_cells(d, self.grid).transpose(1, 2) for d in dense]  # B x cells x C per global view
            out["local_logits"] = [head(c.reshape(-1, c.shape[2])) for c in cells]  # (B cells) x K, image-major
        return out


@register_method("co_dino", CODINOParams)
class CODINO(DINO):
    name = "co_dino"
    teacher_exclude = ("local_head",)  # the target is the teacher's global output

    def __init__(self, backbone: nn.Module, params: CODINOParams):
        super().__init__(backbone, params, student=CODINONet(backbone, params))

    def teacher_forward(self, teacher, crops):
        without_drop_path_(teacher)  # DINO's teacher, so no stochastic depth
        return teacher(crops[:2], local=False)

    def loss(self, student_out, teacher_out, ctx: StepContext):
        p = self.params
        center = self.student.center.clone()  # DINO's term moves the centre; the local term uses the same one
        l_g, _ = super().loss(student_out, teacher_out, ctx)
        if p.local_weight == 0:
            return l_g, {"global": l_g.detach()}
        temp = teacher_temp_at_epoch(ctx.epoch, p.warmup_teacher_temp, p.teacher_temp, p.warmup_teacher_temp_epochs)
        teachers = teacher_out["logits"].chunk(ctx.n_global)
        cells = student_out["local_logits"][0].shape[0] // teachers[0].shape[0]
        targets = [t.repeat_interleave(cells, dim=0) for t in teachers]  # every cell of image i: the target of i
        l_l = dino_loss(student_out["local_logits"], targets, center, student_temp=p.student_temp, teacher_temp=temp)
        loss = with_local_term(l_g, l_l, p.local_weight, p.convex)
        return loss, {"global": l_g.detach(), "local": l_l.detach()}
