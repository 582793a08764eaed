r"""LEWEL's alignment neck (Huang et al., CVPR 2022; METHODS.md 2.2), for CNN maps and ViT token grids.

Given a dense map ``Y`` (``B x C x N`` after flattening), one pointwise projector ``g`` is applied to the
pooled vector and every position *in one call*, so its BatchNorm statistics are shared across them:

.. math:: [z_g, U] = g([\bar y, Y]), \qquad A_{j,p} = \mathrm{softmax}_p\big(\hat U_{j,p} / s\big)

with ``\hat U`` the L2-normalised (over channels) logits. The ``k`` maps and the ``C`` channels are split
into ``h`` heads; head ``q`` pools channel group ``q`` of ``Y`` with each of its ``k/h`` maps, giving
``J = k/h`` aligned features ``O \in R^{B x C x J}``, projected by a separate ``g_o``:
``E = g_o(O) \in R^{B x k x J}``. Aligned embedding ``j`` of one view is matched to aligned embedding
``j`` of the other (correspondence by map index, not by location).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from bam_dense.models.heads import HeadConfig, MLPHead


def alignment_maps(logits: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """``B x k x N`` logits -> maps: L2-normalised over ``k``, divided by ``scale``, softmax over ``N``."""
    return F.softmax(F.normalize(logits.float(), dim=1) / scale, dim=2)


def multi_head_pooling(features: torch.Tensor, maps: torch.Tensor, num_heads: int) -> torch.Tensor:
    """``B x C x N`` features, ``B x k x N`` maps -> ``B x C x (k/h)``: head q pools channel group q."""
    b, c, n = features.shape
    k = maps.shape[1]
    if c % num_heads or k % num_heads:
        raise ValueError(f"channels ({c}) and maps ({k}) must both be divisible by the {num_heads} heads")
    grouped = features.reshape(b, num_heads, c // num_heads, n)
    heads = maps.reshape(b, num_heads, k // num_heads, n)
    return torch.matmul(grouped, heads.transpose(3, 2).to(grouped.dtype)).reshape(b, c, k // num_heads)


class AlignmentNeck(nn.Module):
    """``forward(dense B x C x H x W) -> (z_g B x k, E B x k x J)``."""

    def __init__(self, in_dim: int, cfg: HeadConfig, num_heads: int, scale: float = 1.0, init: str = "kaiming_fan_out"):
        super().__init__()
        self.proj = MLPHead.from_config(in_dim, cfg, init=init)
        self.proj_obj = MLPHead.from_config(in_dim, cfg, init=init)
        self.num_heads = num_heads
        self.scale = scale

    def forward(self, dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = dense.flatten(2)  # B x C x N
        pooled = y.mean(dim=2, keepdim=True)
        z = self.proj(torch.cat([pooled, y], dim=2))  # one call: BN over pooled and pixels jointly
        z_g, logits = z[:, :, 0], z[:, :, 1:]
        aligned = multi_head_pooling(y, alignment_maps(logits, self.scale), self.num_heads)
        return z_g, self.proj_obj(aligned)
