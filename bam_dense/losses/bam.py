r"""BAM: Balanced self-Attention Matching (Shalam & Korman, ECCV 2024), METHODS.md section 1.

Notation (one process holds ``b`` images; ``W`` processes; ``V = G + L`` crops per image, ``G`` global;
``T`` target crops, the first ``T`` global crops). Embeddings are stacked **crop-major**: rows
``[v*b:(v+1)*b]`` are crop ``v`` of the local images.

Target columns: the L2-normalised embeddings of the ``T`` target crops of every image on every rank,
column ``c = m*(W*b) + r*b + i`` for crop ``m`` of image ``i`` on rank ``r`` (:func:`gather_crop_major`).
From the teacher when there is one, else from the student itself (then gradients flow through the
gather).

.. math::

    S = \hat Z K^\top, \qquad M_{v b + i,\; m W b + r b + j} = [r = \text{rank}][j = i]

    P = \mathrm{Sinkhorn}_\varepsilon(S_{tgt}; M) \text{ restricted to the } G b \text{ global rows}, \qquad
    A = \log\mathrm{softmax}(S / \tau \text{ with } M \text{ masked})

    \mathcal L = \frac1G \sum_{t<G} \frac1{V-1} \sum_{s \ne t} \frac1b \sum_i
        -\sum_c P_t[i, c] \, A_s[i, c] \, (1 - M_0[i, c])

where ``S_tgt = S`` without a teacher and ``S_tgt = Z_teacher K^T`` with one. The Sinkhorn step follows
the released code's semantics (linear space, on the transposed matrix, global max and sums reduced
across ranks, ``n_iter`` column/row rounds, rows normalised to 1 at the end) but always runs in float32
with no autograd, and builds the positive mask from explicit (rank, image) ids on every call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from bam_dense.core import dist


class _L2Normalize(torch.autograd.Function):
    """``F.normalize(x, dim=-1)`` with the closed-form backward ``(g - y <g, y>) / max(|x|, eps)``: three passes over
    ``x``'s size where autograd's chain through the division and the norm takes about nine (the BAM rows are
    ``n_crops * b x d`` with ``d = 4096``). Where the norm is below ``eps`` the denominator is the constant ``eps``, as
    in ``F.normalize``'s clamp."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, eps: float) -> torch.Tensor:
        norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
        denom = norm.clamp_min(eps)
        y = x / denom
        ctx.save_for_backward(y, denom, norm >= eps)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        y, denom, live = ctx.saved_tensors
        dot = (grad * y).sum(dim=-1, keepdim=True).mul_(live)
        return torch.addcmul(grad, y, dot, value=-1).div_(denom), None


def l2_normalize(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Rows of ``x`` scaled to unit L2 norm (``F.normalize(x, dim=-1, eps=eps)``, a cheaper backward)."""
    return _L2Normalize.apply(x, eps) if x.requires_grad else F.normalize(x, dim=-1, eps=eps)


def positive_mask(
    n_crops: int, b: int, n_target: int, world: int = 1, rank: int = 0, device: torch.device | str | None = None
) -> torch.Tensor:
    """Boolean ``(n_crops*b, n_target*world*b)``: True where row and column show the same image.

    Row ``v*b + i`` is crop ``v`` of local image ``i``; column ``m*world*b + r*b + j`` is target crop
    ``m`` of image ``j`` on rank ``r``. Built from those ids, never cached, so any batch size works.
    """
    row_image = torch.arange(b, device=device).repeat(n_crops)  # local image id of each row
    col = torch.arange(n_target * world * b, device=device)
    col_rank = (col // b) % world
    col_image = col % b
    return (col_rank[None, :] == rank) & (col_image[None, :] == row_image[:, None])


@torch.no_grad()
def sinkhorn_targets(
    logits: torch.Tensor, mask: torch.Tensor | None, eps: float, n_iters: int = 3, n_masked: int = 0
) -> torch.Tensor:
    """Balanced attention targets: rows of ``softmax``-like transport plans that sum to exactly 1.

    ``logits`` is ``(n, k)``: ``n`` source rows on this process, ``k`` target columns (identical on every
    process). Masked entries get exactly zero mass. Column masses are balanced across all ``W*n`` rows
    of every process (global max, global sum and per-column sums are all-reduced).
    """
    x = logits.detach().float().div(eps)  # the one n x k buffer; every step below works in place
    if mask is not None:
        x.masked_fill_(mask, torch.finfo(x.dtype).min)
    peak = x.max().reshape(1)
    dist.all_reduce(peak, "max")
    q = x.sub_(peak).exp_().t()  # k x n view
    total = q.sum().reshape(1)
    dist.all_reduce(total, "sum")
    q.div_(total)
    k, n = q.shape
    r = 1.0 / (k - max(0, n_masked))  # uniform target-column mass (a no-op given the final row step)
    c = 1.0 / (dist.world_size() * n)
    for _ in range(n_iters):
        u = q.sum(dim=1)
        dist.all_reduce(u, "sum")
        q.mul_((r / u).unsqueeze(1))
        q.mul_((c / q.sum(dim=0)).unsqueeze(0))
    return q.div_(q.sum(dim=0, keepdim=True)).t()


@torch.no_grad()
def keep_top_k(targets: torch.Tensor, n_views: int, k: int) -> torch.Tensor:
    """Keep, for each image, the ``k`` columns largest in its target rows averaged over ``n_views``.

    ``targets`` is ``(n_views*b, cols)`` view-major. The same columns are kept in every view's row;
    rows are re-normalised to sum to 1.
    """
    b = targets.shape[0] // n_views
    mean = targets.reshape(n_views, b, -1).mean(0)
    idx = mean.topk(min(k, targets.shape[1]), dim=-1).indices.repeat(n_views, 1)
    kept = torch.zeros_like(targets).scatter_(-1, idx, targets.gather(-1, idx))
    return kept / kept.sum(dim=-1, keepdim=True)


def attention_cross_entropy(
    source_logits: torch.Tensor, targets: list[torch.Tensor], mask: torch.Tensor | None,
    n_crops: int, temperature: float, rows_per_crop: int
) -> torch.Tensor:
    """The BAM cross-entropy between balanced targets and masked source log-softmax.

    ``source_logits`` ``(n_crops*b, cols)``; ``targets[t]`` ``(b, cols)`` for each target view ``t``
    (the first ``len(targets)`` crops). Every target view is paired with every *other* crop, averaged:
    ``-1/(T (V-1) b) sum_t sum_{s != t} <P_t * keep, A_s>``. Computed as one weighted sum: crop ``s`` weighs
    its log-attention by the sum of the targets it is paired with (all of them, less its own for a target
    crop), so the log-softmax is read once instead of once per pair (the same value up to float rounding).
    """
    s = source_logits / temperature
    if mask is not None:
        s.masked_fill_(mask, torch.finfo(s.dtype).min)  # s is this function's own tensor
    log_attn = F.log_softmax(s, dim=-1).reshape(n_crops, rows_per_crop, -1)
    kept = torch.stack(targets)  # T x b x cols
    if mask is not None:
        kept = kept * (~mask[:rows_per_crop]).to(s.dtype)
    weights = kept.sum(0).expand_as(log_attn).clone()  # V x b x cols: crop s meets every target view...
    if n_crops > 1:
        weights[: len(targets)] -= kept  # ...but its own
    pairs = max(n_crops - 1, 1)
    return -(weights * log_attn).sum() / (len(targets) * pairs * rows_per_crop)


@dataclass
class BalancedTargets:
    """What every BAM-style loss of one step shares: the target columns, the mask and the targets."""

    rows: torch.Tensor  # (n_crops*b) x d: the student's L2-normalised embeddings (with their graph), float32
    columns: torch.Tensor  # (T*W*b) x d, L2-normalised, crop-major over all ranks
    mask: torch.Tensor | None  # (n_crops*b) x (T*W*b): same image
    targets: list[torch.Tensor]  # per global view t: b x (T*W*b), rows sum to 1
    b: int  # images on this process


def balanced_targets(
    z: torch.Tensor,
    z_teacher: torch.Tensor | None,
    *,
    n_crops: int,
    n_global: int,
    n_target: int | None = None,
    eps: float = 0.05,
    sinkhorn_iters: int = 3,
    top_k: int = 0,
    positive_masking: bool = True,
) -> BalancedTargets:
    """Gather the target columns and compute the balanced (Sinkhorn) targets of the global views."""
    n_target = n_global if n_target is None else n_target
    if z.shape[0] % n_crops:
        raise ValueError(f"z has {z.shape[0]} rows, not a multiple of n_crops={n_crops}")
    if not 1 <= n_target <= n_global <= n_crops:
        raise ValueError(f"need 1 <= n_target ({n_target}) <= n_global ({n_global}) <= n_crops ({n_crops})")
    if z_teacher is not None and z_teacher.shape != z.shape:
        raise ValueError(f"z_teacher shape {tuple(z_teacher.shape)} differs from z shape {tuple(z.shape)}")
    b = z.shape[0] // n_crops
    world, rank = dist.world_size(), dist.rank()
    if positive_masking and world * b < 2:
        raise ValueError("positive masking needs at least 2 images in the global batch")
    zs = l2_normalize(z.float())
    zt = F.normalize(z_teacher.detach().float(), dim=-1) if z_teacher is not None else zs
    columns = dist.gather_crop_major(zt[: n_target * b], n_target, grad=z_teacher is None)
    mask = positive_mask(n_crops, b, n_target, world, rank, z.device) if positive_masking else None
    target_logits = zt @ columns.t()
    targets = sinkhorn_targets(target_logits, mask, eps, sinkhorn_iters, n_target if positive_masking else 0)[: n_global * b]
    if top_k > 0:
        targets = keep_top_k(targets, n_global, top_k)
    return BalancedTargets(zs, columns, mask, list(targets.split(b)), b)


def bam_loss(
    z: torch.Tensor,
    z_teacher: torch.Tensor | None = None,
    *,
    temperature: float = 0.1,
    return_targets: bool = False,
    **targets: Any,
):
    """The BAM loss of projector outputs ``z`` (``(n_crops*b, d)``, crop-major; global crops first).

    ``targets`` are the options of :func:`balanced_targets`, with their defaults there: ``n_crops``, ``n_global``
    (required), ``n_target``, ``eps``, ``sinkhorn_iters``, ``top_k``, ``positive_masking``.
    ``z_teacher`` (same shape, all crops) selects the distillation variant used by the released
    recipes: target columns and Sinkhorn rows come from the teacher, source rows from the student.
    Under torch.distributed the target columns are gathered from every rank (differentiably when they
    come from the student); with one process no torch.distributed call is made. Computed in float32.
    ``return_targets=True`` also returns ``(source_logits, targets, mask)`` for inspection and plots.
    """
    with torch.autocast(device_type=z.device.type, enabled=False):
        bt = balanced_targets(z, z_teacher, **targets)
        source_logits = bt.rows @ bt.columns.t()
        loss = attention_cross_entropy(source_logits, bt.targets, bt.mask, targets["n_crops"], temperature, bt.b)
    if return_targets:
        return loss, (source_logits.detach(), torch.cat(bt.targets), bt.mask)
    return loss


def eps_at_epoch(epoch: int, eps: float, eps_final: float | None, warmup_epochs: float) -> float:
    """Per-epoch Sinkhorn regularisation: ``linspace(eps, eps_final, warmup)[epoch]``, then constant.

    Defined for every epoch count (the released code's hard-coded 30-epoch ramp failed for shorter runs).
    """
    final = eps if eps_final is None else eps_final
    n = int(warmup_epochs)
    if epoch >= n:
        return final
    if n == 1:
        return eps
    return eps + (final - eps) * epoch / (n - 1)
