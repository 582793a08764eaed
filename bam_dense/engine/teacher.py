"""The momentum (EMA) teacher, one implementation for every method.

* momentum follows a per-iteration cosine from ``momentum`` to ``momentum_end`` indexed by the global
  step, so a resumed run uses the right value (the BAM defect B12 kept it in a popped list);
* the engine calls :meth:`update` explicitly after ``optimizer.step()``;
* buffer policy ``params`` (BYOL, LEWEL_B, BAM: the teacher keeps its own BN statistics, train mode) or
  ``params_and_buffers`` (EMAN: BN running statistics averaged too, teacher in eval mode).
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from bam_dense.engine.schedules import cosine


def make_teacher(student: nn.Module, exclude: tuple[str, ...] = ()) -> nn.Module:
    """A frozen deep copy of ``student`` without the named sub-modules (e.g. predictors)."""
    teacher = copy.deepcopy(student)
    for name in exclude:
        setattr(teacher, name, None)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


class EMATeacher:
    def __init__(self, student: nn.Module, teacher: nn.Module, momentum: float, momentum_end: float,
                 total_steps: int, buffers: str = "params", eval_mode: bool = False):
        if buffers not in ("params", "params_and_buffers"):
            raise ValueError(f"unknown buffer policy {buffers!r}")
        self.student = student
        self.teacher = teacher
        self.momentum = momentum
        self.momentum_end = momentum_end
        self.total_steps = total_steps
        self.buffers = buffers
        self.eval_mode = eval_mode
        student_params = dict(student.named_parameters())
        self.pairs = [(student_params[name], p) for name, p in teacher.named_parameters()]
        student_buffers = dict(student.named_buffers())
        self.buffer_pairs = [(student_buffers[name], b) for name, b in teacher.named_buffers()]
        self.set_mode()

    def set_mode(self) -> None:
        self.teacher.train(not self.eval_mode)

    def momentum_at(self, step: int) -> float:
        return cosine(step, self.total_steps, self.momentum, self.momentum_end)

    @torch.no_grad()
    def update(self, step: int) -> float:
        """EMA with the momentum of ``step`` (the step whose optimizer update just happened)."""
        m = self.momentum_at(step)
        s_params = [s.detach() for s, _ in self.pairs]
        t_params = [t for _, t in self.pairs]
        torch._foreach_mul_(t_params, m)
        torch._foreach_add_(t_params, s_params, alpha=1.0 - m)
        if self.buffers == "params_and_buffers":
            for s, t in self.buffer_pairs:
                if t.dtype.is_floating_point:
                    t.mul_(m).add_(s.detach(), alpha=1.0 - m)
                else:  # num_batches_tracked is copied
                    t.copy_(s)
        return m
