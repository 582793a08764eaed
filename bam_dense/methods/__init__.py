"""Pretraining methods. ``build_method(params, backbone)`` picks the class from ``params.name``."""

from __future__ import annotations

import torch.nn as nn

from bam_dense.methods.base import Method


def build_method(params, backbone: nn.Module) -> Method:
    name = params.name
    if name == "bam":
        from bam_dense.methods.bam import BAM

        return BAM(backbone, params)
    if name in ("byol", "lewel_b"):
        from bam_dense.methods.lewel import LEWELB

        return LEWELB(backbone, params)
    if name == "co_byol":
        from bam_dense.methods.co_byol import COBYOL

        return COBYOL(backbone, params)
    if name == "co_bam":
        from bam_dense.methods.co_bam import COBAM

        return COBAM(backbone, params)
    if name == "lewel_bam":
        from bam_dense.methods.lewel_bam import LEWELBAM

        return LEWELBAM(backbone, params)
    if name == "dino":
        from bam_dense.methods.dino import DINO

        return DINO(backbone, params)
    if name == "co_dino":
        from bam_dense.methods.co_dino import CODINO

        return CODINO(backbone, params)
    if name == "mocov3":
        from bam_dense.methods.mocov3 import MoCoV3

        return MoCoV3(backbone, params)
    if name == "co_mocov3":
        from bam_dense.methods.co_mocov3 import COMoCoV3

        return COMoCoV3(backbone, params)
    raise ValueError(f"unknown method {name!r}")
