"""A backbone describes itself once: :class:`BackboneFacts` (``models/backbones.py``) of every supported family
equals what the model's own forward pass shows (widths, patch size or output stride, prefix tokens, stages), and
the stated values below."""

from __future__ import annotations

import copy
import math

import pytest
import timm
import torch

from bam_dense.core.errors import UserFacingError
from bam_dense.models.backbones import create_backbone, describe

TINY_VIT = {"depth": 2, "embed_dim": 32, "num_heads": 2, "img_size": 32}
# name: (arch, kwargs, create_backbone options, the facts: family, pooled, dense, patch, stage widths, stage strides,
#        prefix tokens, registers, position embedding)
CASES = {
    "vit": ("vit_small_patch16_224", TINY_VIT, {}, ("vit", 32, 32, 16, (32, 32), (16, 16), 1, 0, "table")),
    "vit-avg-no-class-token": ("vit_small_patch16_224", {**TINY_VIT, "class_token": False, "global_pool": "avg"}, {},
                               ("vit", 32, 32, 16, (32, 32), (16, 16), 0, 0, "table")),
    "vit-registers": ("vit_small_patch14_reg4_dinov2", {**TINY_VIT, "img_size": 28}, {"pos_embed": "learned"},
                      ("vit", 32, 32, 14, (32, 32), (14, 14), 5, 4, "table")),
    "deit-distilled": ("deit_tiny_distilled_patch16_224", {**TINY_VIT, "depth": 1}, {"pos_embed": "learned"},
                       ("vit", 32, 32, 16, (32,), (16,), 2, 1, "table")),  # the distillation token counts as a register
    "eva-dinov3": ("vit_small_patch16_dinov3", TINY_VIT, {"pos_embed": "learned"},
                   ("eva", 32, 32, 16, (32, 32), (16, 16), 5, 4, "rope")),
    "resnet18-timm": ("resnet18", {}, {}, ("cnn", 512, 512, 32, (64, 128, 256, 512), (4, 8, 16, 32), 0, 0, None)),
    "resnet50-torchvision-init": ("resnet50", {}, {"zero_init_residual": False},
                                  ("cnn", 2048, 2048, 32, (256, 512, 1024, 2048), (4, 8, 16, 32), 0, 0, None)),
    "rf29_resnet18": ("rf29_resnet18", {}, {}, ("cnn", 512, 512, 16, (64, 128, 256, 512), (2, 4, 8, 16), 0, 0, None)),
    "metaformer": ("metaformer", {}, {}, ("metaformer", 64, 64, 32, (), (), 0, 0, None)),
}


def _build(arch: str, kwargs: dict, options: dict):
    """``create_backbone``'s model; a tiny timm MetaFormer built directly (timm's named ones fix their widths, and
    the smallest, caformer_s18, takes seconds to build)."""
    if arch == "metaformer":
        from timm.models.metaformer import MetaFormer

        return MetaFormer(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64), num_classes=0)
    return create_backbone(arch, kwargs, **options)


def _facts(facts) -> tuple:
    return (facts.family, facts.pooled_dim, facts.dense_dim, facts.patch_size, facts.stage_dims, facts.stage_strides,
            facts.prefix_tokens, facts.registers, facts.position)


@torch.no_grad()
def _measured(model, family: str, side: int) -> tuple:
    """The same facts read from forward passes at ``side x side`` and ``side x 2 side``, not from the attributes
    :func:`describe` reads: widths from the output shapes, the patch (or stride) from how many cells the input
    size gives, prefix tokens as the tokens that are not cells, stages from hooks on ``blocks[k]`` / ``layer{k}``.
    Two are read from the model's attributes all the same, and pinned by each case's expected values instead: the
    registers (``reg_token``, ``dist_token``) and the position rule (``rope``)."""
    tokens = family in ("vit", "eva")
    stages = list(model.blocks) if tokens else [getattr(model, f"layer{k}") for k in range(1, 5) if hasattr(model, f"layer{k}")]
    shapes: list[list[tuple]] = [[], []]
    for i, (h, w) in enumerate([(side, side), (side, 2 * side)]):
        hooks = [m.register_forward_hook(lambda _m, _i, out, i=i: shapes[i].append(tuple(out.shape))) for m in stages]
        x = torch.randn(1, 3, h, w)
        out = model.forward_features(x)
        for hook in hooks:
            hook.remove()
        shapes[i].append(tuple(out.shape))
        if i == 0:  # timm's pooled features; an RF-ResNet's forward is its pooled map
            pooled = (model.forward_head(out, pre_logits=True) if hasattr(model, "forward_head") else model(x)).shape[-1]
    if tokens:  # B x N x D: side x 2 side has as many more cells as side x side has
        cells = [b[1] - a[1] for a, b in zip(*shapes)]
        dims = [a[2] for a in shapes[0]]
        strides = [side // math.isqrt(c) for c in cells]
        prefix = shapes[0][-1][1] - cells[-1]
        reg = getattr(model, "reg_token", None)
        registers = (0 if reg is None else reg.shape[1]) + int(getattr(model, "dist_token", None) is not None)
        position = "rope" if getattr(model, "rope", None) is not None else "table"
    else:  # B x C x h x w
        dims = [a[1] for a in shapes[0]]
        strides = [side // a[2] for a in shapes[0]]
        prefix = registers = 0
        position = None
    return (family, pooled, dims[-1], strides[-1], tuple(dims[:-1]), tuple(strides[:-1]), prefix, registers, position)


@pytest.mark.parametrize("case", list(CASES))
def test_facts_equal_the_forward_pass_and_timms_attributes(case):
    arch, kwargs, options, expected = CASES[case]
    torch.manual_seed(0)
    model = _build(arch, kwargs, options).eval()
    facts = describe(model)
    assert _facts(facts) == expected
    assert _measured(model, expected[0], kwargs.get("img_size", 64)) == expected
    assert facts.dense_dim == model.num_features and facts.name == type(model).__name__
    if facts.tokens:  # timm's own records
        assert (facts.patch_size, facts.patch_size) == tuple(model.patch_embed.patch_size)
        assert facts.prefix_tokens == model.num_prefix_tokens
        assert facts.stage_count == len(model.blocks)
    else:
        assert facts.patch_size == model.feature_info[-1]["reduction"]


@pytest.mark.parametrize("case", ["vit-registers", "eva-dinov3", "resnet18-timm"])
def test_a_backbone_built_elsewhere_is_described_the_same_once(case):
    """A bare timm model (a test's, the converters' meta-device one) gets the facts create_backbone builds; they are
    kept with it (the same object every time, copied with it) and stay out of its state dict."""
    from bam_dense.convert.sources import create_meta_model

    arch, kwargs, options, expected = CASES[case]
    bare = timm.create_model(arch, num_classes=0, **kwargs)
    keys = list(bare.state_dict())
    facts = describe(bare)
    assert _facts(facts) == expected and describe(bare) is facts
    assert list(bare.state_dict()) == keys
    assert describe(copy.deepcopy(bare)) == facts
    assert _facts(describe(create_meta_model(arch, kwargs))) == expected


def test_stage_checks_name_the_key_and_the_backbone():
    vit = describe(create_backbone("vit_small_patch16_224", TINY_VIT))
    assert vit.stage_dim(None) == vit.stage_dim(2) == 32 and vit.stage_stride(1) == 16
    vit.check_stage(None, "method.local_stage")
    vit.check_stage(2, "method.local_stage")
    for bad in (0, 3, True, 1.0):
        with pytest.raises(UserFacingError, match=r"method.local_stage: .* is not a stage of VisionTransformer: choose 1-2"):
            vit.check_stage(bad, "method.local_stage")
    resnet = describe(create_backbone("resnet18"))
    assert [resnet.stage_dim(k) for k in (1, 2, 3, 4, None)] == [64, 128, 256, 512, 512]
    assert [resnet.stage_stride(k) for k in (1, 2, 3, 4, None)] == [4, 8, 16, 32, 32]
    meta = describe(_build("metaformer", {}, {}))
    meta.check_stage(None, "method.local_stage")
    with pytest.raises(UserFacingError, match="intermediate stages are not supported for the MetaFormer backbone"):
        meta.check_stage(1, "method.local_stage")
