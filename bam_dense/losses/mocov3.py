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
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bam_dense.core import dist


def mocov3_loss(q: torch.Tensor, k: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """InfoNCE of ``q`` (``N x d``) against the keys of every process, scaled by ``2 * temperature``."""
    if q.dim() != 2 or q.shape != k.shape:
        raise ValueError(f"queries {tuple(q.shape)} and keys {tuple(k.shape)} must both be N x d")
    q = F.normalize(q.float(), dim=1)
    k = F.normalize(k.detach().float(), dim=1)
    keys = dist.all_gather(k, grad=False).reshape(-1, k.shape[1])  # W N x d, rank-major
    logits = q @ keys.t() / temperature
    n = q.shape[0]
    labels = torch.arange(n, device=q.device) + n * dist.rank()
    return F.cross_entropy(logits, labels) * (2 * temperature)
