"""One MLP head factory for every method: projectors, predictors, local (pointwise) heads.

``MLPHead`` maps ``B x C`` to ``B x D``, and in pointwise use ``B x C x N`` to ``B x D x N`` with the
same weights applied at every position (a 1x1 convolution). BatchNorm in a pointwise call normalises
over the batch *and* the positions jointly, which is what LEWEL's neck needs when the pooled vector and
every pixel pass through the projector in one call.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from bam_dense.core.config import HeadConfig

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU}


class MLPHead(nn.Module):
    def __init__(
        self,
        in_dim: int,
        hidden_dim: int,
        out_dim: int,
        layers: int = 2,
        bn: bool = True,
        last_bn: bool = False,
        bias: bool = True,
        act: str = "relu",
        init: str = "trunc_normal",
    ):
        super().__init__()
        if layers < 1:
            raise ValueError(f"an MLP head needs at least one layer, got {layers}")
        if act not in ACTIVATIONS:
            raise ValueError(f"unknown activation {act!r}; choose from {sorted(ACTIVATIONS)}")
        dims = [in_dim] + [hidden_dim] * (layers - 1) + [out_dim]
        self.linears = nn.ModuleList(nn.Linear(dims[i], dims[i + 1], bias=bias) for i in range(layers))
        self.norms = nn.ModuleList(nn.BatchNorm1d(dims[i + 1]) if bn else nn.Identity() for i in range(layers - 1))
        self.act = ACTIVATIONS[act]()
        self.last_norm = nn.BatchNorm1d(out_dim, affine=False) if last_bn else None
        self._init(init)

    @classmethod
    def from_config(cls, in_dim: int, cfg: HeadConfig, init: str = "trunc_normal") -> MLPHead:
        return cls(in_dim, cfg.hidden_dim, cfg.out_dim, cfg.layers, cfg.bn, cfg.last_bn, cfg.bias, cfg.act, init)

    def _init(self, init: str) -> None:
        for lin in self.linears:
            if init == "trunc_normal":  # BAM / DINO heads
                nn.init.trunc_normal_(lin.weight, std=0.02)
            elif init == "kaiming_fan_out":
                # LEWEL's neck *and* predictors: MLP1D is built of Conv1d layers, and utils/init.py init_weights
                # gives every Conv1d c2_msra_fill (kaiming normal, fan_out, relu) whatever init_linear says; its
                # normal(0, 0.01) applies to nn.Linear only, of which MLP1D has none [LayneH/LEWEL 4ee47eb
                # models/lewel.py MLP1D, LEWELB_EMAN.__init__; utils/init.py]. A Linear's fan_out equals the
                # 1x1 Conv1d's (out channels), and both draw the same default init first, so equal seeds give
                # equal weights.
                nn.init.kaiming_normal_(lin.weight, mode="fan_out", nonlinearity="relu")
            else:
                raise ValueError(f"unknown init {init!r}")
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)

    @staticmethod
    def _norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if isinstance(norm, nn.Identity):
            return x
        if x.dim() == 3:  # B x N x C -> BN over (B, N) jointly
            return norm(x.transpose(1, 2)).transpose(1, 2)
        return norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B x C`` -> ``B x D``; ``B x C x N`` (pointwise) -> ``B x D x N``."""
        pointwise = x.dim() == 3
        if pointwise:
            x = x.transpose(1, 2)  # B x N x C
        for i, lin in enumerate(self.linears):
            x = lin(x)
            if i < len(self.linears) - 1:
                x = self.act(self._norm(self.norms[i], x))
        if self.last_norm is not None:
            x = self._norm(self.last_norm, x)
        return x.transpose(1, 2) if pointwise else x
