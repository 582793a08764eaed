r"""The DINO self-distillation loss and its centre update (Caron et al. 2021), used by DINO and CO-DINO.

Notation: ``V`` student crops, the first two of which are the global crops the teacher sees; every tensor is
``B x K`` (``B`` images on this process, ``K`` prototypes). With student temperature ``tau_s``, teacher
temperature ``tau_t`` and centre ``c`` (``1 x K`` or ``K``):

.. math::

    P_t^{(g)} = \mathrm{softmax}\big((t_g - c) / \tau_t\big), \qquad
    \log P_s^{(v)} = \log\mathrm{softmax}(s_v / \tau_s)

    \mathcal L = \frac{1}{|\{(g, v) : v \ne g\}|} \sum_{g < 2} \sum_{v \ne g}
        \frac1B \sum_i -\sum_k P_t^{(g)}[i, k] \, \log P_s^{(v)}[i, k]

The teacher distribution receives no gradient; pairs where student and teacher see the same view are skipped.
This is DINO's ``DINOLoss.forward`` (facebookresearch/dino main_dino.py) with the temperature of the epoch
passed in (its warm-up schedule belongs to the method) and the centre update split off into
:func:`dino_center`, which the method calls after the loss:

.. math:: c \leftarrow m\,c + (1 - m)\,\frac{1}{W \cdot n} \sum_{\text{ranks}} \sum_{\text{rows}} t

over all ``n`` teacher rows of every one of ``W`` processes (all-reduced; a no-op at world size 1).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from bam_dense.core import dist


def _crops(x: Sequence[torch.Tensor] | torch.Tensor, what: str) -> list[torch.Tensor]:
    crops = list(x)
    if not crops or any(c.dim() != 2 for c in crops):
        raise ValueError(f"{what}: expected a list of B x K tensors, got shapes {[tuple(c.shape) for c in crops]}")
    return crops


def dino_loss(
    student_logits: Sequence[torch.Tensor],
    teacher_logits: Sequence[torch.Tensor],
    center: torch.Tensor,
    student_temp: float = 0.1,
    teacher_temp: float = 0.04,
) -> torch.Tensor:
    """Cross-entropy of the student's crops against the centred, sharpened teacher on the other global crop.

    ``student_logits``: ``V`` tensors ``B x K``, global crops first; ``teacher_logits``: the teacher's
    ``B x K`` logits of the global crops (DINO uses two); ``center``: ``K`` or ``1 x K``. Returns a scalar.
    """
    students = _crops(student_logits, "student_logits")
    teachers = _crops(teacher_logits, "teacher_logits")
    if len(teachers) > len(students):
        raise ValueError(f"{len(teachers)} teacher crops but only {len(students)} student crops; the teacher sees the "
                         "first (global) student crops")
    shapes = {tuple(c.shape) for c in students + teachers}
    if len(shapes) != 1:
        raise ValueError(f"every crop's logits must be B x K with the same B and K, got {sorted(shapes)}")
    terms = len(teachers) * (len(students) - 1)
    if terms == 0:
        raise ValueError("no (teacher, student) pair of different views: give at least two crops")
    log_p = F.log_softmax(torch.stack(students).float().div_(student_temp), dim=-1)  # V x B x K
    center = center.detach().float().reshape(1, -1)
    q = F.softmax((torch.stack(teachers).detach().float() - center) / teacher_temp, dim=-1)  # G x B x K
    # every student crop meets every teacher crop but its own: one weighted sum reads each log-softmax once
    weights = q.sum(0).expand_as(log_p).clone()
    weights[: len(teachers)] -= q
    return -(weights * log_p).sum() / (terms * log_p.shape[1])


@torch.no_grad()
def dino_center(
    teacher_logits: Sequence[torch.Tensor] | torch.Tensor, center: torch.Tensor, momentum: float = 0.9
) -> torch.Tensor:
    """The new centre: ``momentum * center + (1 - momentum) * mean`` of every teacher row on every rank.

    ``teacher_logits``: a list of ``B x K`` tensors (or one ``n x K`` tensor); ``center``: ``K`` or ``1 x K``
    (the result has the same shape). The batch sum and row count are all-reduced across processes.
    """
    rows = torch.cat(_crops(teacher_logits, "teacher_logits") if not torch.is_tensor(teacher_logits)
                     else [teacher_logits]).detach().float()
    batch_sum = rows.sum(dim=0)
    dist.all_reduce(batch_sum, "sum")
    batch_center = batch_sum / (rows.shape[0] * dist.world_size())
    return (center.float() * momentum + batch_center.reshape(center.shape) * (1 - momentum)).to(center.dtype)
