"""DINO's head and MoCo v3's projector/predictor equal the official modules (recorded in tests/fixtures)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn
from official_maps import mocov3_mlp_to_mlphead

from bam_dense.models.heads import DINOHead, MLPHead, mocov3_predictor, mocov3_projector

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def dino_official():
    return torch.load(FIXTURES / "dino_official.pt", weights_only=False)["head"]


@pytest.fixture(scope="module")
def mocov3_official():
    return torch.load(FIXTURES / "mocov3_official.pt", weights_only=False)


def _dino_head(kwargs: dict) -> DINOHead:
    return DINOHead(kwargs["in_dim"], kwargs["out_dim"], hidden_dim=kwargs["hidden_dim"],
                    bottleneck_dim=kwargs["bottleneck_dim"], layers=kwargs["nlayers"], bn=kwargs.get("use_bn", False),
                    norm_last_layer=kwargs.get("norm_last_layer", True))


def test_dino_head_defaults_are_dinos():
    head = DINOHead(384)
    linears = [m for m in head.mlp if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(384, 2048), (2048, 2048), (2048, 256)]
    assert sum(isinstance(m, nn.GELU) for m in head.mlp) == 2 and not any(isinstance(m, nn.BatchNorm1d) for m in head.mlp)
    assert head.last_layer.weight_v.shape == (65536, 256)
    assert torch.equal(head.last_layer.weight_g, torch.ones(65536, 1)) and not head.last_layer.weight_g.requires_grad


@pytest.mark.parametrize("case", ["default", "bn_free_g"])
def test_dino_head_same_seed_same_weights_as_official(dino_official, case):
    rec = dino_official[case]
    torch.manual_seed(0)
    ours = _dino_head(rec["kwargs"]).state_dict()
    official = rec["state_dict"]
    assert sorted(ours) == sorted(official)
    for key in ours:
        if key == "last_layer.weight_g" and case == "bn_free_g":
            torch.testing.assert_close(ours[key], torch.ones_like(ours[key]))  # the fixture set g afterwards
            continue
        # the same draws through the same ops; torch's vectorised erfinv rounds the last bit differently on some CPUs
        # (the fixture's machine and an AVX-512 one differ by one ulp in 1-2 of 128 weights), so: 4 ulps, no more
        torch.testing.assert_close(ours[key], official[key], rtol=5e-7, atol=1e-12, msg=key)


@pytest.mark.parametrize("case", ["default", "bn_free_g"])
def test_dino_head_output_equals_official(dino_official, case):
    rec = dino_official[case]
    head = _dino_head(rec["kwargs"])
    head.load_state_dict(rec["state_dict"])
    head.train()
    torch.testing.assert_close(head(rec["x"]), rec["y"], rtol=1e-5, atol=1e-6)
    assert head.last_layer.weight_g.requires_grad == rec["g_trainable"]


def test_dino_head_last_layer_is_a_cosine_with_g_one():
    head = DINOHead(5, out_dim=7, hidden_dim=6, bottleneck_dim=4)
    with torch.no_grad():
        head.last_layer.weight_v.mul_(torch.arange(1.0, 8.0)[:, None])  # row scales do not matter
    z = nn.functional.normalize(head.mlp(torch.randn(3, 5)), dim=-1)
    cosines = z @ nn.functional.normalize(head.last_layer.weight_v, dim=1).t()
    torch.testing.assert_close(head.last_layer(z), cosines)


def test_dino_head_frozen_g_gets_no_gradient_but_v_does():
    head = DINOHead(5, out_dim=7, hidden_dim=6, bottleneck_dim=4)
    head(torch.randn(3, 5)).sum().backward()
    assert head.last_layer.weight_g.grad is None and head.last_layer.weight_v.grad is not None


@pytest.mark.parametrize("family", ["cnn", "vit"])
def test_mocov3_heads_same_seed_same_weights_as_official(mocov3_official, family):
    cfg = mocov3_official["config"]
    for seed, rec in mocov3_official["init"][family].items():
        torch.manual_seed(seed)
        proj = mocov3_projector(cfg["C"], family, mlp_dim=cfg["mlp_dim"], dim=cfg["dim"])
        pred = mocov3_predictor(family, mlp_dim=cfg["mlp_dim"], dim=cfg["dim"])
        for ours, official in ((proj, rec["projector"]), (pred, rec["predictor"])):
            mapped = mocov3_mlp_to_mlphead(official)
            assert sorted(ours.state_dict()) == sorted(mapped)
            for key, value in ours.state_dict().items():
                torch.testing.assert_close(value, mapped[key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("family", ["cnn", "vit"])
def test_mocov3_heads_output_equals_official(mocov3_official, family):
    cfg, rec = mocov3_official["config"], mocov3_official["mlp"][family]
    proj = mocov3_projector(cfg["C"], family, mlp_dim=cfg["mlp_dim"], dim=cfg["dim"]).train()
    pred = mocov3_predictor(family, mlp_dim=cfg["mlp_dim"], dim=cfg["dim"]).train()
    proj.load_state_dict(mocov3_mlp_to_mlphead(rec["projector_state"]))
    pred.load_state_dict(mocov3_mlp_to_mlphead(rec["predictor_state"]))
    z = proj(rec["x"])
    torch.testing.assert_close(z, rec["z"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pred(z), rec["p"], rtol=1e-5, atol=1e-6)


def test_mocov3_layer_counts_per_family():
    """moco-v3 builder.py: ResNet projector 2 layers, predictor 2 without last BN; ViT projector 3, predictor 2 with it."""
    def shape(head: MLPHead) -> tuple[int, bool]:
        return len(head.linears), head.last_norm is not None

    assert shape(mocov3_projector(2048, "cnn")) == (2, True) and shape(mocov3_predictor("cnn")) == (2, False)
    assert shape(mocov3_projector(384, "vit")) == (3, True) and shape(mocov3_predictor("vit")) == (2, True)
    assert mocov3_projector(2048, "cnn").last_norm.affine is False
    with pytest.raises(ValueError, match="families"):
        mocov3_projector(8, "metaformer")
