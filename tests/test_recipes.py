"""Shipped pretraining recipes start from the network their source builds (issue 17)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bam_dense.core.config import load_config
from bam_dense.core.errors import UserFacingError
from bam_dense.models.backbones import build_backbone

PRETRAIN = Path(__file__).parents[1] / "configs" / "pretrain"

# Whether each ResNet recipe zero-initialises the last BatchNorm of every residual block, and why:
# * LEWEL_B / BYOL: LayneH/LEWEL 4ee47eb backbone/resnet.py:116 (zero_init_residual=False, never overridden by
#   models/lewel.py EncoderObj or main.py): every BN scale starts at one.
# * CO-BYOL: no public code; it follows the BYOL/LEWEL_B recipe.
# * BAM, CO-BAM, LEWEL-BAM: DanielShalam/BAM fd85871 utils.py:79-83 builds a ResNet with timm's constructor,
#   whose zero_init_last defaults to True.
# * tiny configs: no source; timm's default, which docs/benchmarks.md's tiny figures were measured with.
# * MoCo v3 / CO-MoCoV3 (rf29_resnet18 tiny configs): facebookresearch/moco-v3 main_moco.py builds torchvision's
#   ResNet with zero_init_residual=True. CO-DINO: facebookresearch/dino main_dino.py builds torchvision's
#   resnet50() as is (zero_init_residual=False).
RESNET_RECIPES = {
    "byol_r50_eman_200ep": False,
    "lewel_b_r50_eman_200ep": False,
    "lewel_b_r50_syncbn_400ep": False,
    "co_byol_r50_100ep": False,
    "bam_resnet50": True,
    "co_bam_resnet50": True,
    "lewel_bam_resnet50": True,
    "byol_tiny_cpu": True,
    "lewel_b_tiny_cpu": True,
    "co_byol_tiny_cpu": True,
    "co_bam_tiny_cpu": True,
    "lewel_bam_tiny_cpu": True,
    "bam_tiny_resnet_cpu": True,
    "mocov3_tiny_cpu": True,
    "co_mocov3_tiny_cpu": True,
    "co_dino_tiny_cpu": False,
}


def test_every_resnet_recipe_is_listed():
    resnets = {p.stem for p in PRETRAIN.glob("*.yaml") if load_config(p).model.arch.startswith(("resnet", "rf"))}
    assert resnets == set(RESNET_RECIPES)


def _last_bns(backbone: torch.nn.Module) -> list[torch.nn.BatchNorm2d]:
    """The last BatchNorm of every residual block (bn3 of a bottleneck, bn2 of a basic block)."""
    return [block.bn3 if hasattr(block, "bn3") else block.bn2
            for name in ("layer1", "layer2", "layer3", "layer4") for block in getattr(backbone, name)]


def _all(modules, value: float) -> bool:
    return all(torch.equal(m.weight.detach(), torch.full_like(m.weight, value)) for m in modules)


@pytest.mark.parametrize("recipe", sorted(RESNET_RECIPES))
def test_resnet_recipe_initialises_residual_bns_as_its_source(recipe):
    cfg = load_config(PRETRAIN / f"{recipe}.yaml")
    assert cfg.model.zero_init_residual is RESNET_RECIPES[recipe]
    backbone = build_backbone(cfg.model)
    last = _last_bns(backbone)
    assert last and _all(last, 0.0 if RESNET_RECIPES[recipe] else 1.0)
    # every other BatchNorm starts at one, in torchvision and in timm alike
    others = [m for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d) and all(m is not b for b in last)]
    assert others and _all(others, 1.0)


def test_zero_init_residual_defaults_to_torchvision_and_is_refused_where_it_cannot_apply():
    cfg = load_config(data={"model": {"arch": "resnet18", "kwargs": {}}})
    assert cfg.model.zero_init_residual is False
    assert _all(_last_bns(build_backbone(cfg.model)), 1.0)
    vit = load_config(data={"model": {"arch": "vit_small_patch16_224", "kwargs": {"depth": 1}, "zero_init_residual": True}})
    with pytest.raises(UserFacingError, match="zero_init_residual"):
        build_backbone(vit.model)
    both = load_config(data={"model": {"arch": "resnet18", "kwargs": {"zero_init_last": False}}})
    with pytest.raises(UserFacingError, match="zero_init_residual"):
        build_backbone(both.model)
