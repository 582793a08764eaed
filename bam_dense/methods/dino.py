"""DINO (Caron et al. 2021): self-distillation of the EMA teacher's centred, sharpened prototypes.

Student: backbone -> pooled feature -> :class:`~bam_dense.models.heads.DINOHead` on every crop (global crops
first, crops of one size in one backbone call). Teacher: the EMA copy of the whole student (head included) on
the global crops only. Loss: :func:`~bam_dense.losses.dino.dino_loss` at the teacher temperature of the epoch
(DINO's schedule: ``linspace(warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs)``, then constant);
after it the centre, a buffer of the student (so checkpoints carry it), moves by
:func:`~bam_dense.losses.dino.dino_center`, as DINOLoss.forward does after computing the loss.

As ``main_dino.py`` also: during the first ``freeze_last_layer`` epochs the head's last layer is not updated (the
engine drops its gradients after clipping, :meth:`DINO.frozen_parameters`); ViT crops of another size than the
position table's see it resampled as DINO's ``interpolate_pos_encoding`` does (``pos_resample: dino``); the teacher
never drops paths (``train_dino`` builds it without stochastic depth, the student with ``drop_path_rate``). One
whole step equals the official one (tests/test_dino_official_step.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import groupby

import torch
import torch.nn as nn

from bam_dense.core.config import COUNT, FRACTION, NON_NEGATIVE, POSITIVE
from bam_dense.core.registry import MethodParams, register_method
from bam_dense.losses.dino import dino_center, dino_loss
from bam_dense.methods.base import Method, StepContext
from bam_dense.models.backbones import Features, describe, features
from bam_dense.models.heads import DINOHead


@dataclass
class DINOParams(MethodParams):
    """DINO (Caron et al. 2021); defaults from facebookresearch/dino main_dino.py's arguments."""

    name: str = "dino"
    out_dim: int = 65536  # prototypes K of the head's weight-normalised last layer
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    head_layers: int = 3
    head_bn: bool = False  # use_bn_in_head
    norm_last_layer: bool = True  # keep the last layer's weight-norm g at 1 (not trained)
    student_temp: float = 0.1
    teacher_temp: float = 0.04  # after the warm-up
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: int = 0  # linear warm-up of the teacher temperature (DINO's linspace per epoch)
    center_momentum: float = 0.9
    freeze_last_layer: int = 1  # epochs during which the head's last layer gets no update (its gradients dropped)
    pos_resample: str = "dino"  # ViT local crops: the position table resampled as DINO's interpolate_pos_encoding
    RANGES = {
        "out_dim": COUNT,
        "hidden_dim": COUNT,
        "bottleneck_dim": COUNT,
        "head_layers": COUNT,
        "student_temp": POSITIVE,
        "teacher_temp": POSITIVE,
        "warmup_teacher_temp": POSITIVE,
        "warmup_teacher_temp_epochs": NON_NEGATIVE,
        "center_momentum": FRACTION,
        "freeze_last_layer": NON_NEGATIVE,
    }
    CHOICES = {"pos_resample": ("dino", "timm")}
    NEEDS_TEACHER = True


def teacher_temp_at_epoch(epoch: int, warmup_temp: float, temp: float, warmup_epochs: int) -> float:
    """DINO's teacher temperature: ``linspace(warmup_temp, temp, warmup_epochs)[epoch]``, then ``temp``."""
    if epoch >= warmup_epochs:
        return temp
    if warmup_epochs == 1:
        return warmup_temp
    return warmup_temp + (temp - warmup_temp) * epoch / (warmup_epochs - 1)


def without_drop_path_(teacher: nn.Module) -> None:
    """Switch off the DropPath modules the EMA copy of the student carries: ``train_dino`` builds DINO's teacher
    without stochastic depth, so its targets are deterministic."""
    # imported here: reading a config imports this module, and timm takes ~2 s to import
    from timm.layers import DropPath

    for module in teacher.modules():
        if isinstance(module, DropPath):
            module.drop_prob = 0.0


class DINONet(nn.Module):
    def __init__(self, backbone: nn.Module, params: DINOParams, in_dim: int | None = None):
        super().__init__()
        self.backbone = backbone
        self.head = DINOHead(in_dim or describe(backbone).pooled_dim, params.out_dim, hidden_dim=params.hidden_dim,
                             bottleneck_dim=params.bottleneck_dim, layers=params.head_layers, bn=params.head_bn,
                             norm_last_layer=params.norm_last_layer)
        self.register_buffer("center", torch.zeros(1, params.out_dim))
        self.pos_resample = params.pos_resample

    def crop_features(self, crops: list[torch.Tensor], stage: int | None = None) -> list[tuple[int, Features]]:
        """Consecutive crops of one size in one backbone call (DINO's MultiCropWrapper): (crops, features) per call;
        ``stage``: the first call (the global crops) also returns that stage's map."""
        groups = [list(group) for _, group in groupby(crops, key=lambda crop: tuple(crop.shape[-2:]))]
        return [(len(group), features(self.backbone, torch.cat(group), self.pos_resample, stage if i == 0 else None))
                for i, group in enumerate(groups)]

    def forward(self, crops: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        pooled = [f.pooled for _, f in self.crop_features(crops)]
        return {"logits": self.head(torch.cat(pooled))}  # (V*b) x K, crop-major


@register_method("dino", DINOParams)
class DINO(Method):
    name = "dino"

    def __init__(self, backbone: nn.Module, params: DINOParams, student: nn.Module | None = None):
        super().__init__(student if student is not None else DINONet(backbone, params))
        self.params = params

    def frozen_parameters(self, epoch: int) -> list[nn.Parameter]:
        """The last layer of every DINO head during the first ``freeze_last_layer`` epochs (DINO's
        ``cancel_gradients_last_layer``)."""
        if epoch >= self.params.freeze_last_layer:
            return []
        heads = [m for m in self.student.modules() if isinstance(m, DINOHead)]
        return [p for head in heads for p in head.last_layer.parameters()]

    def teacher_forward(self, teacher: nn.Module, crops: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        without_drop_path_(teacher)
        return teacher(crops[:2])  # the global crops (DINO has two)

    def loss(self, student_out, teacher_out, ctx: StepContext):
        if teacher_out is None:
            raise ValueError("DINO needs the EMA teacher: set teacher.enabled: true")
        p = self.params
        students = student_out["logits"].chunk(ctx.n_crops)
        teachers = teacher_out["logits"].chunk(ctx.n_global)
        temp = teacher_temp_at_epoch(ctx.epoch, p.warmup_teacher_temp, p.teacher_temp, p.warmup_teacher_temp_epochs)
        center = self.student.center
        loss = dino_loss(students, teachers, center, student_temp=p.student_temp, teacher_temp=temp)
        with torch.no_grad():
            center.copy_(dino_center(teachers, center, momentum=p.center_momentum))
        return loss, {"dino": loss.detach()}
