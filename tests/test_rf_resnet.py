"""RF-ResNet: the computed receptive field is the measured one, presets by name, the features interface."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
import torch
import torch.nn as nn

from bam_dense.core.config import ModelConfig
from bam_dense.core.errors import UserFacingError
from bam_dense.models.backbones import build_backbone, create_backbone, describe, features
from bam_dense.models.rf_resnet import PRESETS, RFResNet, RFResNetConfig, output_stride, receptive_field

NARROW = {"widths": (2, 4, 4, 4), "stem_width": 4}  # the field depends on geometry only; narrow keeps it cheap


def measured_receptive_field(cfg: RFResNetConfig) -> int:
    """Side of the input region that reaches the central output cell, from the support of its input gradient.

    Made so that no pixel of the theoretical field can hide: every convolution weight is the positive constant
    1 / fan_in, BatchNorm is in eval mode at the identity (weight 1, bias 0, mean 0, variance 1), the input is all
    ones, so every activation is positive, every ReLU passes its gradient and no sum of positive terms cancels;
    max-pools become average pools of the same kernel, stride and padding (the same connectivity: a max-pool's
    gradient reaches only its arg-max, which would measure which pixel won, not which ones are connected);
    float64 so that small path products do not underflow. The support must be one full square, strictly
    inside the input (else the field was clipped by the border and the input must grow).
    """
    model = RFResNet(cfg).double().eval()
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, nn.Conv2d):
                m.weight.fill_(1.0 / m.weight[0].numel())
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
                m.weight.fill_(1.0)
                m.bias.zero_()
            elif isinstance(m, nn.MaxPool2d):
                parent, _, attr = name.rpartition(".")
                setattr(model.get_submodule(parent) if parent else model, attr,
                        nn.AvgPool2d(m.kernel_size, m.stride, m.padding))
    stride, rf = output_stride(cfg), receptive_field(cfg)
    size = (rf // stride + 5) * stride
    x = torch.ones(1, cfg.in_chans, size, size, dtype=torch.float64, requires_grad=True)
    out = model.forward_features(x)
    h, w = out.shape[-2:]
    out[0, :, h // 2, w // 2].sum().backward()
    support = x.grad[0].abs().sum(0) > 0
    rows = support.any(1).nonzero().flatten()
    cols = support.any(0).nonzero().flatten()
    top, bottom, left, right = rows.min().item(), rows.max().item(), cols.min().item(), cols.max().item()
    assert 0 < top and bottom < size - 1 and 0 < left and right < size - 1, "field clipped by the border"
    assert support[top:bottom + 1, left:right + 1].all(), "the support is not a full square"
    assert bottom - top == right - left
    return bottom - top + 1


@pytest.mark.parametrize("name, expected", [("rf99_resnet50", 99), ("rf29_resnet18", 29)])
def test_preset_receptive_field_computed_and_measured(name, expected):
    cfg = PRESETS[name]
    assert receptive_field(cfg) == expected
    assert measured_receptive_field(replace(cfg, **NARROW)) == expected


def _random_config(seed: int) -> RFResNetConfig:
    rng = random.Random(seed)
    layers = tuple(rng.randint(1, 3) for _ in range(4))
    stem_kernel, stem_stride = rng.choice([(7, 2), (3, 1), (5, 2)])
    return RFResNetConfig(block=rng.choice(["bottleneck", "basic"]), layers=layers,
                          spatial=tuple(rng.randint(0, n) for n in layers), maxpool=rng.random() < 0.5,
                          strides=tuple(rng.choice([1, 2]) for _ in range(3)), stem_kernel=stem_kernel,
                          stem_stride=stem_stride, **NARROW)


@pytest.mark.parametrize("seed", range(6))
def test_random_configuration_receptive_field_computed_equals_measured(seed):
    cfg = _random_config(seed)
    assert measured_receptive_field(cfg) == receptive_field(cfg), cfg


def test_standard_resnet50_geometry_gives_its_427_px_field():
    assert receptive_field(RFResNetConfig(layers=(3, 4, 6, 3), spatial=(3, 4, 6, 3), maxpool=True)) == 427


def test_field_stops_growing_with_depth_beyond_the_spatial_blocks():
    """Figure 2: once a stage has more blocks than spatial ones, more blocks do not enlarge the field."""
    deeper = replace(PRESETS["rf99_resnet50"], layers=(8, 8, 8, 8))
    assert receptive_field(deeper) == 99


def test_presets_keep_resnet_widths():
    assert create_backbone("rf99_resnet50").num_features == 2048
    assert create_backbone("rf29_resnet18").num_features == 512


@pytest.mark.parametrize("name, channels", [("rf99_resnet50", 2048), ("rf29_resnet18", 512)])
def test_features_by_name_pooled_and_dense(name, channels):
    backbone = create_backbone(name).eval()
    facts = describe(backbone)
    assert facts.family == "cnn" and (facts.pooled_dim, facts.dense_dim) == (channels, channels)
    assert facts.patch_size == 16
    with torch.no_grad():
        feats = features(backbone, torch.randn(2, 3, 64, 48))
    assert feats.dense.shape == (2, channels, 4, 3)
    assert feats.pooled.shape == (2, channels)
    torch.testing.assert_close(feats.pooled, feats.dense.mean(dim=(2, 3)))


def test_build_backbone_from_config_with_overrides():
    backbone = build_backbone(ModelConfig(arch="rf29_resnet18", kwargs={"spatial": [1, 1, 1, 0]}))
    assert backbone.cfg.spatial == (1, 1, 1, 0) and backbone.receptive_field == 29 + 8 + 16
    with pytest.raises(UserFacingError, match="rf29_resnet18"):
        build_backbone(ModelConfig(arch="rf29_resnet18", kwargs={"kernel": 3}))


def test_zero_init_residual_switch():
    zero = create_backbone("rf29_resnet18", zero_init_residual=True)
    one = create_backbone("rf29_resnet18", zero_init_residual=False)
    assert zero.layer1[0].bn2.weight.abs().sum() == 0 and torch.all(one.layer1[0].bn2.weight == 1)


def test_invalid_configuration_is_refused_with_the_field_named():
    with pytest.raises(ValueError, match="spatial"):
        RFResNetConfig(layers=(2, 2, 2, 2), spatial=(3, 0, 0, 0))
    with pytest.raises(ValueError, match="stem"):
        RFResNetConfig(stem_kernel=4)


def _n_params(cfg: RFResNetConfig) -> int:
    return sum(p.numel() for p in RFResNet(cfg).parameters())


def test_no_rf99_layout_of_resnet50_blocks_reaches_the_papers_23_7_million():
    """The paper's ~23.7 M for RF99-ResNet50 is not a backbone of ResNet-50 blocks (docs/methods.md, RF-ResNet).

    Strides and the max-pool change no parameter count, a stem kernel below 7 only removes weights, and each block
    that drops its 3x3 loses ``8 w^2``.
    So ResNet-50 itself (every block spatial, 23,508,032) bounds the family, and among the layouts whose field
    stops growing with n (at most 2 spatial blocks per stage, Figure 2) the preset's 2-2-2-2 has the most.
    """
    resnet50 = RFResNetConfig(spatial=(3, 4, 6, 3), maxpool=True)
    full = _n_params(resnet50)
    assert full == 23_508_032 < 23_650_000
    rng = random.Random(0)
    for _ in range(2):
        spatial = tuple(rng.randint(0, n) for n in resnet50.layers)
        cfg = replace(resnet50, spatial=spatial, strides=tuple(rng.choice((1, 2)) for _ in range(3)),
                      maxpool=rng.random() < 0.5, stem_kernel=rng.choice((3, 7)), stem_stride=rng.choice((1, 2)))
        saved = sum((n - s) * 8 * w * w for n, s, w in zip(cfg.layers, spatial, cfg.widths))
        saved += cfg.in_chans * cfg.stem_width * (7 * 7 - cfg.stem_kernel ** 2)  # a smaller stem only loses weights
        assert _n_params(cfg) == full - saved
    preset = PRESETS["rf99_resnet50"]
    assert preset.spatial == (2, 2, 2, 2) and receptive_field(preset) == 99
    assert _n_params(preset) == 19_018_816
