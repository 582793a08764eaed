"""What a method declares; the engine (``bam_dense.engine.trainer``) does everything else.

A method provides:
* ``student``: an ``nn.Module`` whose ``forward(crops)`` returns a dict of tensors (the engine wraps it
  in DDP, so every trainable parameter lives here);
* ``teacher_exclude``: the student sub-modules the EMA teacher does not copy (predictors);
* ``teacher_momentum_lead``: the engine updates the teacher after the optimizer step of step ``i`` with the
  momentum of step ``i + lead`` (0: DINO, BYOL, LEWEL; 1: MoCo v3 and BAM, which update at the start of the next step);
* ``teacher_forward(teacher, crops)``: the teacher's outputs (default: the same forward);
* ``loss(student_out, teacher_out, ctx) -> (loss, {term: value})``: a pure function of those outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from bam_dense.models.backbones import Features, features


@dataclass
class StepContext:
    step: int  # global optimizer step (0-based)
    epoch: int
    n_global: int
    n_crops: int


class Method:
    name = "method"
    teacher_exclude: tuple[str, ...] = ()
    teacher_momentum_lead: int = 0

    def __init__(self, student: nn.Module):
        self.student = student

    def teacher_forward(self, teacher: nn.Module, crops: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        return teacher(crops)

    def loss(self, student_out: dict, teacher_out: dict | None, ctx: StepContext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError


def multicrop_features(backbone: nn.Module, crops: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Run consecutive crops of equal size together; return (pooled crop-major ``(V*b) x D``, dense per crop).

    ``crops`` is ``[g1, .., gG, l1, .., lL]`` with ``b`` images each. Crops of one resolution go through
    the backbone in one call (as in DINO/BAM), so BatchNorm backbones see the same batches as there.
    """
    pooled, dense = [], []
    start = 0
    while start < len(crops):
        end = start
        while end < len(crops) and crops[end].shape[-2:] == crops[start].shape[-2:]:
            end += 1
        group = torch.cat(crops[start:end])
        feats: Features = features(backbone, group)
        pooled.append(feats.pooled)
        dense.extend(feats.dense.chunk(end - start))
        start = end
    return torch.cat(pooled), dense
