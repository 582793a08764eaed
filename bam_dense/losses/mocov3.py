r"""The MoCo v3 contrastive loss (Chen, Xie & He 2021), one direction; used by MoCo v3 and CO-MoCoV3.

With queries ``q`` (``N x d``, this process) and keys ``k`` (``N x d``, this process), both L2-normalised,
the keys of all ``W`` processes gathered into ``K`` (``W N x d``, rank-major, no gradient) and temperature
``T``:

.. math::

    \mathcal L = 2T \cdot \frac1N \sum_{i} -\log
        \frac{\exp(q_i \cdot K_{rN + i} / T)}{\sum_{j < WN} \exp(q_i \cdot K_j / T)}

i.e. the positive of query ``i`` on rank ``r`` is its own key at column ``r N + i``. This is
``MoCo.contrastive_loss`` (facebookresearch/moco-v3 moco/builder.py); MoCo v3 sums both directions,
``mocov3_loss(q1, k2) + mocov3_loss(q2, k1)``. At world size 1 the gather is the identity.

CO-MoCoV3's local term gives every image ``n`` queries (one per cell of its dense map) against the same keys:
with ``q`` of shape ``N x n x d`` the positive of every query of image ``i`` is still ``K_{rN + i}`` and the
mean runs over the ``N n`` queries,

.. math::

    \mathcal L = 2T \cdot \frac{1}{N n} \sum_{i, c} -\log
        \frac{\exp(q_{ic} \cdot K_{rN + i} / T)}{\sum_{j < WN} \exp(q_{ic} \cdot K_j / T)}

the mean over cells of the per-cell loss ``mocov3_loss(q[:, c], k)``, with one gather of the keys.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bam_dense.core import dist


def mocov3_loss(q: torch.Tensor, k: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """InfoNCE of ``q`` (``N x d``, or ``N x n x d``: ``n`` queries per image) against the keys (``N x d``) of
    every process, scaled by ``2 * temperature``."""
    if k.dim() != 2 or q.dim() not in (2, 3) or q.shape[0] != k.shape[0] or q.shape[-1] != k.shape[1]:
        raise ValueError(f"queries {tuple(q.shape)} must be N x d or N x n x d for keys {tuple(k.shape)} (N x d)")
    n = k.shape[0]
    q = F.normalize(q.float(), dim=-1).reshape(n, -1, k.shape[1])  # N x n x d (n = 1 for N x d queries)
    k = F.normalize(k.detach().float(), dim=1)
    keys = dist.all_gather(k, grad=False).reshape(-1, k.shape[1])  # W N x d, rank-major
    logits = q.reshape(-1, k.shape[1]) @ keys.t() / temperature  # N n x W N, image-major
    labels = (torch.arange(n, device=q.device) + n * dist.rank()).repeat_interleave(q.shape[1])
    return F.cross_entropy(logits, labels) * (2 * temperature)
