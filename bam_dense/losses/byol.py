r"""The BYOL regression loss (Grill et al. 2020), used by BYOL, LEWEL_B and CO-BYOL.

.. math:: \ell(p, z) = 2 - \frac{2}{N} \sum_{n} \frac{p_n \cdot z_n}{\lVert p_n \rVert \lVert z_n \rVert}

``p`` and ``z`` are ``N x d`` (rows compared pairwise); ``z`` is the target and receives no gradient.
Per-image, so no communication is needed: DDP's gradient averaging makes the mean global.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``2 - 2 * mean_n cos(p_n, z_n)`` with ``z`` detached; range [0, 4]."""
    if p.shape != z.shape:
        raise ValueError(f"prediction {tuple(p.shape)} and target {tuple(z.shape)} shapes differ")
    p = F.normalize(p.float(), dim=1)
    z = F.normalize(z.detach().float(), dim=1)
    return 2 - 2 * (p * z).sum(dim=1).mean()
