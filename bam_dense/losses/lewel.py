r"""The LEWEL_B loss (METHODS.md 2.2): BYOL on global and on index-matched aligned embeddings.

For an ordered pair (online view a, target view b), with ``l`` the BYOL loss (:func:`byol_loss`):

.. math:: w \, \ell(q(z_g^a), \bar z_g^b) + (1 - w) \, \ell\big(q_o(E^a)_{\cdot j}, \bar E^b_{\cdot j}\big)

where the aligned term compares row ``(i, j)`` (image ``i``, aligned index ``j``) across views. The total
sums both directions (range [0, 8]). Inputs per view: ``p`` (``B x k``), ``p_e`` (``B x k x J``) online;
``z`` (``B x k``), ``e`` (``B x k x J``) target.
"""

from __future__ import annotations

import torch

from bam_dense.losses.byol import byol_loss


def aligned_rows(e: torch.Tensor) -> torch.Tensor:
    """``B x k x J`` -> ``(B*J) x k``: one row per (image, aligned index)."""
    return e.transpose(2, 1).reshape(-1, e.shape[1])


def lewel_loss(online: list[dict], target: list[dict], weight: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, global part summed over directions, aligned part summed over directions)."""
    total_g = sum(byol_loss(online[a]["p"], target[b]["z"]) for a, b in ((0, 1), (1, 0)))
    if weight >= 1.0:
        return total_g, total_g, torch.zeros_like(total_g)
    total_o = sum(byol_loss(aligned_rows(online[a]["p_e"]), aligned_rows(target[b]["e"])) for a, b in ((0, 1), (1, 0)))
    return weight * total_g + (1 - weight) * total_o, total_g, total_o
