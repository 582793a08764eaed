"""One position-table rule per source layout, each equal to the source's own function (recorded fixtures), and
applied by every protocol that loads the encoder (DAVIS, linear probe, linear segmentation, retrieval, dense probe)."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from timm.layers import resample_abs_pos_embed

from bam_dense.convert.sources import native_pos_rule, resolve_pos_resample
from bam_dense.core.errors import UserFacingError
from bam_dense.models.pos_embed import POS_RULES, resample_pos_table, set_pos_rule, vit_forward_features

FIXTURES = Path(__file__).parent / "fixtures"
RULES = torch.load(FIXTURES / "pos_rules.pt", weights_only=True)  # tests/fixtures/make_pos_rules_fixture.py
LAYOUT_RULE = {"ibot": native_pos_rule("ibot"), "dinov2": native_pos_rule("dinov2", {"pos_embed": 0}),
               "dinov2-reg": native_pos_rule("dinov2", {"reg_token": 0}), "mae": native_pos_rule("mae")}


def test_each_source_layout_has_its_own_rule():
    assert LAYOUT_RULE == {"ibot": "dino", "dinov2": "dinov2", "dinov2-reg": "dinov2-reg", "mae": "deit"}
    assert {f: native_pos_rule(f) for f in ("dino", "dinov3", "mocov3", "bam-dense", "bam-official", "timm")} == {
        "dino": "dino", "dinov3": "rope", "mocov3": "deit", "bam-dense": "timm", "bam-official": "timm", "timm": "timm"}
    assert native_pos_rule("timm", {"dist_token": 0}) == "deit"  # a distilled DeiT in timm's names
    assert resolve_pos_resample("auto", "dinov2-reg") == "dinov2-reg" and resolve_pos_resample("deit", "dino") == "deit"
    assert resolve_pos_resample("auto", None) == "timm"  # --checkpoint random
    with pytest.raises(UserFacingError, match="choose from auto, timm, dino"):
        resolve_pos_resample("bilinear", "dino")


_CASES = [(layout, size) for layout in ("ibot", "dinov2", "dinov2-reg") for size in RULES["sizes"]]


@pytest.mark.parametrize("layout,size", _CASES)
def test_rule_equals_the_sources_interpolate_pos_encoding(layout, size):
    rec = RULES["layouts"][layout]
    h, w = RULES["sizes"][size]
    pixels = (h * rec["patch"], w * rec["patch"])
    ours = resample_pos_table(RULES["table"], LAYOUT_RULE[layout], pixels, rec["patch"])
    torch.testing.assert_close(ours, rec["out"][size], rtol=0, atol=1e-6)
    if size != "same_8x8":  # the rule matters: DINO's (what DINOv2 with registers got before) is another table
        other = "dinov2-reg" if LAYOUT_RULE[layout] != "dinov2-reg" else "dino"
        assert (resample_pos_table(RULES["table"], other, pixels, rec["patch"]) - rec["out"][size]).abs().max() > 0.05


@pytest.mark.parametrize("size", list(RULES["mae_sizes"]))
def test_deit_rule_equals_maes_interpolate_pos_embed(size):
    side = RULES["mae_sizes"][size]
    official = RULES["layouts"]["mae"]["out"][size]
    ours = resample_pos_table(RULES["table"], "deit", (side * 16, side * 16), 16)
    torch.testing.assert_close(ours, official, rtol=0, atol=1e-6)
    timm_table = resample_abs_pos_embed(RULES["table"], [side, side], [8, 8], num_prefix_tokens=1)
    if side != 8:  # timm's antialiased resampling is another table
        assert (timm_table - official).abs().max() > 0.05


def _vit(**extra) -> torch.nn.Module:
    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch16_224", num_classes=0, img_size=64, embed_dim=16, depth=1, num_heads=2,
                              dynamic_img_size=True, **extra).eval()
    with torch.no_grad():
        model.pos_embed.normal_()
    return model


@pytest.mark.parametrize("extra", [{}, {"reg_tokens": 2, "no_embed_class": True}], ids=["cls", "registers"])
def test_a_recorded_rule_changes_only_the_table_in_every_forward_path(extra):
    """Every rule gives timm's own forward on the table's grid; off it, forward_features and forward_intermediates
    (what the linear probe and linear segmentation call) both take the rule's table."""
    model = _vit(**extra)
    x_same, x_other = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 48, 80)
    with torch.no_grad():
        reference = model.forward_features(x_same)
        timm_other = model.forward_features(x_other)
        for rule in ("dino", "dinov2", "dinov2-reg", "deit"):
            set_pos_rule(model, rule)
            assert model.pos_rule == rule
            torch.testing.assert_close(model.forward_features(x_same), reference, rtol=0, atol=0)
            other = model.forward_features(x_other)
            inter = model.forward_intermediates(x_other, indices=1, norm=True, intermediates_only=True,
                                                output_fmt="NLC")[-1]
            torch.testing.assert_close(inter, other[:, model.num_prefix_tokens:])
            if rule != "dinov2-reg":  # dinov2-reg is timm's arithmetic (size, antialiased)
                assert (other - timm_other).abs().max() > 1e-3, rule
        torch.testing.assert_close(vit_forward_features(model, x_other, "timm"), timm_other)  # an explicit override
        assert model.pos_rule == "deit"  # ... that does not stay


def test_dino_rule_needs_a_square_image_to_skip_resampling():
    """DINO's early-out: the table's patch count *and* a square image; a 4x16 grid has the 8x8 table's count."""
    table = RULES["table"]
    assert resample_pos_table(table, "dino", (128, 128), 16) is table
    assert resample_pos_table(table, "deit", (128, 128), 16) is table
    torch.testing.assert_close(resample_pos_table(table, "dino", (64, 256), 16), RULES["layouts"]["ibot"]["out"]["same_count_4x16"])


def test_rules_that_do_not_apply_are_refused():
    with pytest.raises(ValueError, match="has a position table"):
        set_pos_rule(_vit(), "rope")
    with pytest.raises(ValueError, match="unknown position-embedding resampling"):
        set_pos_rule(_vit(), "bilinear")
    assert set(POS_RULES) == {"timm", "dino", "dinov2", "dinov2-reg", "deit", "rope"}


def test_the_cli_offers_every_rule():
    from bam_dense.cli import POS_RESAMPLE_CHOICES
    from bam_dense.convert.sources import pos_resample_choices

    assert POS_RESAMPLE_CHOICES == pos_resample_choices()


DINOV2 = torch.load(FIXTURES / "dinov2_official.pt", weights_only=True)  # make_dinov2_official_fixture.py


def test_the_rule_travels_with_the_converted_encoder_and_every_protocol_applies_it(tmp_path):
    """A DINOv2-with-registers teacher file: converted to safetensors, the file records ``dinov2-reg``; loaded (from
    the source or the converted file), the encoder carries it, and the linear probe's tokens (forward_intermediates),
    the dense extractor of DAVIS / retrieval / the dense probe (forward_features) equal DINOv2's own at 70x84."""
    from bam_dense.convert import convert, load_source
    from bam_dense.encoders import FeatureExtractor, load_backbone
    from bam_dense.eval.linear_probe import probe_features

    record = DINOV2["reg4"]
    src = tmp_path / "teacher_checkpoint.pth"
    torch.save(record["checkpoint"], src)
    report = convert(src, "safetensors", tmp_path / "enc.safetensors")
    assert report.pos_resample == "dinov2-reg"
    assert load_source(tmp_path / "enc.safetensors").pos_rule == "dinov2-reg"  # the converted file says so
    x, official = record["inputs"]["other_70x84"], record["outputs"]["other_70x84"]
    for path in (src, tmp_path / "enc.safetensors"):
        backbone = load_backbone(str(path), None, None, False).eval()
        assert backbone.pos_rule == "dinov2-reg"
        feats = probe_features(backbone, x)
        torch.testing.assert_close(feats["cls"][:, -1], official["cls"], atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(feats["patch_mean"], official["patch"].mean(1), atol=2e-5, rtol=1e-4)
        dense = FeatureExtractor(backbone, torch.device("cpu"))(x)
        torch.testing.assert_close(dense.flatten(2).transpose(1, 2), official["patch"], atol=2e-5, rtol=1e-4)
    wrong = FeatureExtractor(backbone, torch.device("cpu"), pos_resample="dino")  # the old rule for this layout
    assert wrong.pos_resample == "dino" and (wrong(x).flatten(2).transpose(1, 2) - official["patch"]).abs().max() > 1e-2


def test_a_rule_that_does_not_fit_the_encoder_is_a_clear_error(synthetic_root, tmp_path):
    from bam_dense.encoders import FeatureExtractor
    from bam_dense.eval import linear_probe

    with pytest.raises(UserFacingError, match="has a position table, not RoPE"):
        FeatureExtractor(_vit(), torch.device("cpu"), pos_resample="rope")
    with pytest.raises(UserFacingError, match="--pos-resample rope"):
        linear_probe.run("random", str(synthetic_root / "imagenet"), arch="vit_small_patch16_224", pos_resample="rope",
                         resolution=32, epochs=1, device="cpu", progress=False)
