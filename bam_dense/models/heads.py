"""One MLP head factory for every method: projectors, predictors, local (pointwise) heads; and DINO's head.

``MLPHead`` maps ``B x C`` to ``B x D``, and in pointwise use ``B x C x N`` to ``B x D x N`` with the
same weights applied at every position (a 1x1 convolution). BatchNorm in a pointwise call normalises
over the batch *and* the positions jointly, which is what LEWEL's neck needs when the pooled vector and
every pixel pass through the projector in one call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn

from bam_dense.core.config import COUNT, Range

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU}


@dataclass
class HeadConfig:
    """An MLP head: ``layers`` Linear layers, optional BN between them, optional affine-free BN at the end."""

    layers: int = 3
    hidden_dim: int = 4096
    out_dim: int = 4096
    bn: bool = False
    last_bn: bool = False
    bias: bool = True
    act: str = "gelu"  # gelu | relu
    RANGES: ClassVar[dict[str, Range]] = {"layers": COUNT, "hidden_dim": COUNT, "out_dim": COUNT}


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
            elif init == "torch_default":  # MoCo v3's MLPs keep nn.Linear's own initialisation
                continue
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


@torch.no_grad()
def trunc_normal_icdf_(tensor: torch.Tensor, std: float, a: float = -2.0, b: float = 2.0) -> torch.Tensor:
    """Fill ``tensor`` with N(0, std^2) truncated to [a, b] by inverse-CDF sampling, in place.

    A uniform draw on ``[2 Phi(a/std) - 1, 2 Phi(b/std) - 1]`` mapped through ``sqrt(2) std erfinv``. This is the
    sampler of DINO's ``utils.trunc_normal_`` (and of torch's own before it switched to rejection sampling, which
    draws the same distribution but different numbers), so that a seeded DINO head starts from DINO's weights.
    """
    def phi(x: float) -> float:
        return (1.0 + math.erf(x / math.sqrt(2.0))) / 2.0

    lo, hi = phi(a / std), phi(b / std)
    return tensor.uniform_(2 * lo - 1, 2 * hi - 1).erfinv_().mul_(std * math.sqrt(2.0)).clamp_(min=a, max=b)


class WeightNormLinear(nn.Module):
    r"""A bias-free linear layer with weight normalisation: ``W = g * V / ||V||`` row by row.

    The function of ``nn.utils.weight_norm(nn.Linear(in_dim, out_dim, bias=False))`` (dim 0), which DINO's
    head uses, written out with two plain parameters so that it does not depend on torch's deprecated
    weight_norm hook nor on its parametrisation replacement. The names ``weight_g`` (``out x 1``) and
    ``weight_v`` (``out x in``) are the hook's, so official DINO state dicts load as they are.
    """

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        weight = nn.Linear(in_dim, out_dim, bias=False).weight.detach()  # nn.Linear's default init, as DINO draws it
        self.weight_g = nn.Parameter(weight.norm(dim=1, keepdim=True))
        self.weight_v = nn.Parameter(weight.clone())

    @property
    def weight(self) -> torch.Tensor:
        return self.weight_g * self.weight_v / self.weight_v.norm(dim=1, keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight)


class DINOHead(nn.Module):
    r"""DINO's projection head (Caron et al. 2021; facebookresearch/dino vision_transformer.py ``DINOHead``).

    ``B x in_dim`` -> ``B x out_dim``: an MLP of ``layers`` linear layers (GELU between them, BatchNorm before
    each GELU if ``bn``) from ``in_dim`` through ``hidden_dim`` to a ``bottleneck_dim`` code, L2-normalised,
    then a weight-normalised linear layer without bias to ``out_dim`` prototypes,
    ``logits = (g / ||V||) * V z / ||z||`` row-wise. ``g`` starts at 1 and, with ``norm_last_layer`` (DINO's
    default), stays 1 (not trained), so every logit is a cosine similarity. MLP weights: truncated normal
    with std 0.02 (DINO's sampler, :func:`trunc_normal_icdf_`), biases zero. State-dict names are the official ones (``mlp.*``, ``last_layer.weight_g``,
    ``last_layer.weight_v``) and, with the same seed, so are the initial weights.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        layers: int = 3,
        bn: bool = False,
        norm_last_layer: bool = True,
    ):
        super().__init__()
        layers = max(layers, 1)
        if layers == 1:
            self.mlp: nn.Module = nn.Linear(in_dim, bottleneck_dim)
        else:
            mods: list[nn.Module] = []
            dims = [in_dim] + [hidden_dim] * (layers - 1) + [bottleneck_dim]
            for i in range(layers):
                mods.append(nn.Linear(dims[i], dims[i + 1]))
                if i < layers - 1:
                    mods += [nn.BatchNorm1d(dims[i + 1])] if bn else []
                    mods.append(nn.GELU())
            self.mlp = nn.Sequential(*mods)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_icdf_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim)
        with torch.no_grad():
            self.last_layer.weight_g.fill_(1.0)
        self.last_layer.weight_g.requires_grad_(not norm_last_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B x in_dim`` -> ``B x out_dim`` logits."""
        return self.last_layer(nn.functional.normalize(self.mlp(x), dim=-1, p=2))


MOCOV3_LAYERS = {  # (projector layers, predictor layers, predictor's last BatchNorm), moco-v3 moco/builder.py
    "cnn": (2, 2, False),  # MoCo_ResNet
    "vit": (3, 2, True),  # MoCo_ViT
}


def _mocov3_family(family: str) -> tuple[int, int, bool]:
    if family not in MOCOV3_LAYERS:
        raise ValueError(f"MoCo v3 heads are defined for backbone families {sorted(MOCOV3_LAYERS)}, not {family!r}")
    return MOCOV3_LAYERS[family]


def mocov3_projector(in_dim: int, family: str, mlp_dim: int = 4096, dim: int = 256) -> MLPHead:
    """MoCo v3's projector (``_build_mlp(n, in_dim, mlp_dim, dim)``): bias-free linears, BN + ReLU between them,
    a last BatchNorm without affine parameters; 2 layers after a ResNet (``family='cnn'``), 3 after a ViT."""
    layers, _, _ = _mocov3_family(family)
    return MLPHead(in_dim, mlp_dim, dim, layers=layers, bn=True, last_bn=True, bias=False, act="relu",
                   init="torch_default")


def mocov3_predictor(family: str, mlp_dim: int = 4096, dim: int = 256) -> MLPHead:
    """MoCo v3's predictor: 2 layers ``dim -> mlp_dim -> dim``; its last BatchNorm (no affine) only after a ViT."""
    _, layers, last_bn = _mocov3_family(family)
    return MLPHead(dim, mlp_dim, dim, layers=layers, bn=True, last_bn=last_bn, bias=False, act="relu",
                   init="torch_default")
