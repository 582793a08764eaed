"""Shipped pretraining recipes start from the network their source builds (issue 17)."""

from __future__ import annotations

import pytest
import torch

from bam_dense.core.config import load_config
from bam_dense.core.errors import UserFacingError
from bam_dense.core.paths import bundled
from bam_dense.models.backbones import build_backbone

PRETRAIN = bundled("configs/pretrain", required=True)

# Whether each ResNet recipe zero-initialises the last BatchNorm of every residual block, and why:
# * LEWEL_B / BYOL: LayneH/LEWEL 4ee47eb backbone/resnet.py:116 (zero_init_residual=False, never overridden by
#   models/lewel.py EncoderObj or main.py): every BN scale starts at one.
# * CO-BYOL: no public code; it follows the BYOL/LEWEL_B recipe.
# * BAM, CO-BAM, LEWEL-BAM: DanielShalam/BAM fd85871 utils.py:79-83 builds a ResNet with timm's constructor,
#   whose zero_init_last defaults to True.
# * tiny configs: no source; timm's default, which docs/benchmarks.md's tiny figures were measured with.
# * MoCo v3 / CO-MoCoV3 (rf29_resnet18 tiny configs): facebookresearch/moco-v3 main_moco.py builds torchvision's
#   ResNet with zero_init_residual=True. CO-DINO: facebookresearch/dino main_dino.py builds torchvision's
#   resnet50() as is (zero_init_residual=False); DINO on rf29 as CO-DINO. CO-BYOL on rf29: the torchvision init of
#   the CO-BYOL recipes it scales down (co_byol_r50_100ep, co_byol_rf99_r50_100ep).
# * Full MoCo v3 / CO-MoCoV3 recipes (ResNet-50, RF99-ResNet50): moco-v3 main_moco.py, zero_init_residual=True.
#   Full CO-DINO recipes: DINO's README ResNet-50 command, torchvision resnet50() as is. CO-BYOL on RF99: as CO-BYOL.
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
    "dino_rf29_tiny_cpu": False,
    "co_byol_rf29_tiny_cpu": False,
    "mocov3_r50_100ep": True,
    "co_mocov3_r50_100ep": True,
    "co_mocov3_rf99_r50_100ep": True,
    "co_dino_r50_100ep": False,
    "co_dino_rf99_r50_100ep": False,
    "co_byol_rf99_r50_100ep": False,
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


# ---------------------------------------------------------------------------------------------
# Distinctive values of the full recipes against their sources
# ---------------------------------------------------------------------------------------------


def _flat(name: str) -> dict:
    from bam_dense.core.config import to_dict

    out: dict = {}

    def walk(prefix: str, node) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(f"{prefix}.{key}" if prefix else key, value)
        else:
            out[prefix] = node

    walk("", to_dict(load_config(PRETRAIN / f"{name}.yaml")))
    return out


def _differences(a: str, b: str) -> dict:
    fa, fb = _flat(a), _flat(b)
    return {k: (fa.get(k), fb.get(k)) for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k)}


def test_dino_300_epoch_recipe_is_the_100_epoch_one_plus_the_readme_boosts():
    # facebookresearch/dino@7c446df README "Boosting DINO performance": --epochs 300 --teacher_temp 0.07
    # --warmup_teacher_temp_epochs 30 --norm_last_layer false; the vanilla run keeps main_dino.py's defaults.
    assert _differences("dino_vit_small_100ep", "dino_vit_small_300ep") == {
        "run.output_dir": ("runs/dino_vit_small_100ep", "runs/dino_vit_small_300ep"),
        "optim.epochs": (100, 300),
        "method.teacher_temp": (0.04, 0.07),
        "method.warmup_teacher_temp_epochs": (0, 30),
        "method.norm_last_layer": (True, False),
    }
    cfg = load_config(PRETRAIN / "dino_vit_small_100ep.yaml")
    assert cfg.model.drop_path_rate == 0.1 and cfg.method.freeze_last_layer == 1 and cfg.method.out_dim == 65536
    assert (cfg.optim.weight_decay, cfg.optim.weight_decay_end, cfg.teacher.momentum) == (0.04, 0.4, 0.996)
    assert cfg.optim.clip_grad == 3.0 and cfg.optim.clip_grad_mode == "per_param"  # utils.clip_gradients
    assert (cfg.data.views.local_crops, cfg.data.views.local_scale) == (8, [0.05, 0.4])


def test_mocov3_recipes_take_their_config_md_rows():
    # facebookresearch/moco-v3@c349e6e CONFIG.md: ResNet-50 keeps main_moco.py's LARS, lr 0.6, --moco-t 1.0 and
    # sets --crop-min .2; ViT-S sets AdamW 1.5e-4, wd 0.1, 40 warm-up epochs, --moco-t .2 and keeps crop-min 0.08.
    r50, vit = load_config(PRETRAIN / "mocov3_r50_100ep.yaml"), load_config(PRETRAIN / "mocov3_vit_small_300ep.yaml")
    assert (r50.optim.name, r50.optim.lr, r50.optim.weight_decay, r50.method.temperature) == ("lars", 0.6, 1e-6, 1.0)
    assert r50.data.views.global_scale == [0.2, 1.0] and r50.optim.epochs == 100
    assert (vit.optim.name, vit.optim.lr, vit.optim.weight_decay, vit.method.temperature) == ("adamw", 1.5e-4, 0.1, 0.2)
    assert vit.data.views.global_scale == [0.08, 1.0] and (vit.optim.epochs, vit.optim.warmup_epochs) == (300, 40)
    assert vit.model.kwargs == {"num_heads": 12} and vit.model.freeze_patch_embed  # vits.py, --stop-grad-conv1
    for cfg in (r50, vit):
        assert cfg.teacher.momentum == 0.99 and cfg.optim.min_lr == 0.0 and cfg.optim.weight_decay_end is None
        assert cfg.data.batch_size_per_gpu * 16 == 4096  # the 16-GPU layout of CONFIG.md's batch


@pytest.mark.parametrize(("co", "base", "method_keys"), [
    ("co_mocov3_r50_100ep", "mocov3_r50_100ep", {"local_weight", "convex", "grid", "target_head"}),
    ("co_mocov3_rf99_r50_100ep", "co_mocov3_r50_100ep", set()),
    ("co_dino_rf99_r50_100ep", "co_dino_r50_100ep", set()),
    ("co_byol_rf99_r50_100ep", "co_byol_r50_100ep", set()),
])
def test_co_ssl_recipe_is_its_base_recipe_plus_the_local_term(co, base, method_keys):
    """A CO recipe differs from the official recipe it reconstructs from only by its method (or backbone)."""
    changed = set(_differences(co, base))
    expected = {"run.output_dir"} | {f"method.{k}" for k in method_keys} | ({"method.name"} if method_keys else set())
    if "rf99" in co and "rf99" not in base:  # RF-ResNet, with its post-pool MLP (widths from the 23.7 M parameters)
        expected |= {"model.arch"} | {f"method.global_mlp.{k}" for k in ("layers", "hidden_dim", "out_dim", "bn", "last_bn",
                                                                          "bias", "act")}
        mlp = load_config(PRETRAIN / f"{co}.yaml").method.global_mlp
        assert (mlp.layers, mlp.hidden_dim, mlp.out_dim, mlp.bn, mlp.last_bn, mlp.bias, mlp.act) == \
               (2, 2048, 256, True, False, False, "relu")
    assert changed == expected


def test_co_dino_resnet_recipe_is_the_dino_readme_resnet50_command():
    # facebookresearch/dino@7c446df README: --optimizer sgd --lr 0.03 --weight_decay 1e-4 --weight_decay_end 1e-4
    # --global_crops_scale 0.14 1 --local_crops_scale 0.05 0.14 (100 epochs, 8 GPUs x 64).
    cfg = load_config(PRETRAIN / "co_dino_r50_100ep.yaml")
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.weight_decay_end) == ("sgd", 0.03, 1e-4, 1e-4)
    assert cfg.data.views.global_scale == [0.14, 1.0] and cfg.data.views.local_scale == [0.05, 0.14]
    assert cfg.model.sync_bn and cfg.method.local_weight == 0.3 and cfg.optim.epochs == 100
